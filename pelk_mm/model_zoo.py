"""PeLK's model index: a model name for every config, for mmpretrain, the mmseg / mmdet inferencers and timm.

``model-index.yml`` at the repository root imports one ``metafile.yml`` per config folder, in OpenMMLab's format
(``Collections`` / ``Models`` with ``Name``, ``Config``, ``Metadata``, ``Results``, ``Weights``). A config's name is
its file name with ``pelk_`` written ``pelk-`` (``configs/pelk_t_in1k.py`` -> ``pelk-t_in1k``; ablations without the
prefix get it: ``pelk-dense_k13_nosparse_in1k_120e``). ``tools/update_model_index.py`` writes the metafiles from the
configs, and a test checks that they are up to date.

No PeLK weights are published, so every entry has ``Weights: null``. Asking for an entry's weights
(``get_model(name, pretrained=True)``, ``inference_model(name, ...)``, an mmseg / mmdet inferencer without
``weights=``) raises :class:`~pelk_mm.errors.MissingWeightsError`, one line naming the config to train and the file
it writes; ``pretrained='file.pth'`` / ``weights='file.pth'`` load a local checkpoint.

``import pelk_mm`` connects the index (:func:`install`), whichever is imported first:

* mmpretrain's ``ModelHub`` gets the classification entries, so ``mmpretrain.get_model('pelk-t_in1k', ...)``,
  ``list_models('*pelk*')`` and ``inference_model`` take them (mmpretrain's public ``register_model_index`` would
  register the segmentation and detection entries too, which mmpretrain cannot build);
* mmengine's ``BaseInferencer`` looks PeLK names up in this index before the codebase's own (mmseg's and mmdet's
  inferencers resolve names only in their package's ``.mim`` folder, with no registration API), so
  ``MMSegInferencer('pelk-t_upernet_ade20k', weights=...)`` and ``DetInferencer('pelk-t_cascade_mask_rcnn_coco',
  weights=...)`` work;
* timm gets ``pelk_t``, ``pelk_s``, ... (:mod:`pelk_mm.timm`) when it is installed.

The index reads the configs of the source checkout (``pip install -e .``, as ``tools/setup.sh`` installs pelk_mm).
"""
from __future__ import annotations

import fnmatch
import importlib.abc
import os.path as osp
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ['REPO_ROOT', 'INDEX_FILE', 'CODEBASE_TASKS', 'ModelEntry', 'model_name', 'model_entries', 'get_entry',
           'list_models', 'missing_weights_message', 'register_mmpretrain_models', 'patch_inferencer_lookup',
           'when_imported', 'install', 'build_metafiles']

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
INDEX_FILE = osp.join(REPO_ROOT, 'model-index.yml')

#: the ``Results`` tasks of each codebase's entries (the first one names the codebase of an entry)
CODEBASE_TASKS: Dict[str, Tuple[str, ...]] = {
    'mmpretrain': ('Image Classification', ),
    'mmseg': ('Semantic Segmentation', ),
    'mmdet': ('Object Detection', 'Instance Segmentation'),
}
#: how to use an entry of each codebase by name
_CODEBASE_USE = {
    'mmpretrain': "mmpretrain.get_model / inference_model / ImageClassificationInferencer",
    'mmseg': "mmseg.apis.MMSegInferencer",
    'mmdet': "mmdet.apis.DetInferencer",
}
_DATASETS = {'mmpretrain': 'ImageNet-1k', 'mmseg': 'ADE20K', 'mmdet': 'COCO'}
_PAPER = {'Title': 'PeLK: Parameter-efficient Large Kernel ConvNets with Peripheral Convolution',
          'URL': 'https://arxiv.org/abs/2403.07589'}
_ARCHITECTURE = ['Peripheral Convolution', 'Kernel-wise Positional Embedding', 'Partial Convolution',
                 'Layer Scale', 'Dynamic Sparsity']


# --------------------------------------------------------------------------------------------------- the index
@dataclass(frozen=True)
class ModelEntry:
    """One model of the index.

    Attributes:
        name: The model name (lower case).
        config: Absolute path of the config.
        codebase: ``'mmpretrain'``, ``'mmseg'`` or ``'mmdet'``.
        tasks: The ``Results`` tasks.
        weights: The published weights (``None``: none exist).
        checkpoint: The checkpoint that training with the config writes, relative to where ``tools/train.py`` runs.
        metafile: Absolute path of the metafile that lists the entry.
        raw: The entry as the metafile writes it.
    """
    name: str
    config: str
    codebase: str
    tasks: Tuple[str, ...] = ()
    weights: Optional[str] = None
    checkpoint: str = ''
    metafile: str = ''
    raw: Dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def config_rel(self) -> str:
        """The config path relative to the repository root."""
        return osp.relpath(self.config, REPO_ROOT)


def model_name(config: str) -> str:
    """The model name of a config (a path; only the file name counts): ``pelk_t_in1k.py`` -> ``pelk-t_in1k``,
    ``dense_k13_nosparse_in1k_120e.py`` -> ``pelk-dense_k13_nosparse_in1k_120e``."""
    stem = osp.splitext(osp.basename(config))[0].lower()
    return 'pelk-' + (stem[len('pelk_'):] if stem.startswith('pelk_') else stem)


def _codebase_of(tasks) -> Optional[str]:
    for codebase, names in CODEBASE_TASKS.items():
        if tasks and tasks[0] in names:
            return codebase
    return None


def _checkpoint_of(config_rel: str, metadata: dict) -> str:
    stem = osp.splitext(osp.basename(config_rel))[0]
    if metadata.get('Iterations'):
        return f'work_dirs/{stem}/iter_{metadata["Iterations"]}.pth'
    if metadata.get('Epochs'):
        return f'work_dirs/{stem}/epoch_{metadata["Epochs"]}.pth'
    return f'work_dirs/{stem}/'


def _read_yaml(path: str):
    import yaml
    with open(path) as f:
        return yaml.load(f, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))  # the C parser: 10x faster


_ENTRIES: Dict[str, Dict[str, ModelEntry]] = {}


def model_entries(index_file: str = INDEX_FILE) -> Dict[str, ModelEntry]:
    """``{name: entry}`` of every model of the index (read once per file).

    Raises:
        ModelIndexError: the index file does not exist (pelk_mm installed without its source checkout).
    """
    from pelk_mm.errors import ModelIndexError
    if index_file in _ENTRIES:
        return _ENTRIES[index_file]
    if not osp.isfile(index_file):
        raise ModelIndexError(f'pelk_mm\'s model index {index_file} does not exist: the names of PeLK models need the '
                              f'configs of a source checkout; install pelk_mm with `pip install -e .` from a clone')
    root = osp.dirname(index_file)
    entries: Dict[str, ModelEntry] = {}
    for metafile in _read_yaml(index_file).get('Import', []):
        metafile = osp.join(root, metafile)
        for model in (_read_yaml(metafile) or {}).get('Models', []):
            tasks = tuple(r['Task'] for r in model.get('Results') or [])
            entries[model['Name'].lower()] = ModelEntry(
                name=model['Name'].lower(), config=osp.join(root, model['Config']), codebase=_codebase_of(tasks),
                tasks=tasks, weights=model.get('Weights'),
                checkpoint=_checkpoint_of(model['Config'], model.get('Metadata') or {}), metafile=metafile, raw=model)
    _ENTRIES[index_file] = entries
    return entries


def list_models(pattern: str = '*', codebase: Optional[str] = None) -> List[str]:
    """Sorted names of the index matching the wildcard ``pattern`` (and of ``codebase``, if given)."""
    return sorted(n for n, e in model_entries().items()
                  if fnmatch.fnmatch(n, pattern.lower()) and (codebase is None or e.codebase == codebase))


def get_entry(name: str, codebase: Optional[str] = None) -> ModelEntry:
    """The entry named ``name`` (case-insensitive), of ``codebase`` if given.

    Raises:
        ModelIndexError: no such name (the closest is named), or the entry is of another codebase.
    """
    from pelk_mm.errors import ModelIndexError
    entries = model_entries()
    entry = entries.get(name.lower())
    if entry is None:
        import difflib
        match = difflib.get_close_matches(name.lower(), sorted(entries), n=1, cutoff=0.6)
        hint = f" (did you mean '{match[0]}'?)" if match else ''
        raise ModelIndexError(f'pelk_mm\'s model index has no model {name!r}{hint}; pelk_mm.model_zoo.list_models() '
                              f'lists the {len(entries)} names')
    if codebase is not None and entry.codebase != codebase:
        raise ModelIndexError(f'{entry.name} is an {entry.codebase} model ({entry.config_rel}), not an {codebase} one: '
                              f'use it with {_CODEBASE_USE[entry.codebase]}')
    return entry


def missing_weights_message(entry: ModelEntry, argument: str = 'pretrained') -> str:
    """The one line of :class:`~pelk_mm.errors.MissingWeightsError` for ``entry``, whose weights were asked for
    through ``argument`` (``'pretrained'``: mmpretrain / timm; ``'weights'``: an inferencer)."""
    asked = 'pretrained=True' if argument == 'pretrained' else 'no weights= given'
    random = ', or pretrained=False for randomly initialised weights' if argument == 'pretrained' else ''
    return (f'{entry.name} has no published weights ({asked}; no PeLK weights are released): train them with '
            f'`python tools/train.py {entry.config_rel}`, which writes {entry.checkpoint}, and pass '
            f"{argument}='{entry.checkpoint}'{random}")


# --------------------------------------------------------------------------------------------------- mmpretrain
_UNPUBLISHED: Dict[type, type] = {}


def _unpublished_model_class(base: type) -> type:
    """A subclass of modelindex's ``Model`` whose ``weights`` raise :class:`MissingWeightsError` when none exist."""
    if base not in _UNPUBLISHED:

        class UnpublishedModel(base):
            """An index entry without published weights."""

            @property
            def weights(self):
                # NOTE: mmpretrain's get_model reads `metainfo.weights` only for `pretrained=True` and, finding
                # None, warns and returns randomly initialised weights; naming the config to train is the answer
                weights = self.data.get('Weights', None)
                if weights is None:
                    from pelk_mm.errors import MissingWeightsError
                    raise MissingWeightsError(missing_weights_message(get_entry(self.name)))
                return weights

            @weights.setter
            def weights(self, value):
                self.data['Weights'] = value

        _UNPUBLISHED[base] = UnpublishedModel
    return _UNPUBLISHED[base]


def register_mmpretrain_models(model_module=None) -> List[str]:
    """Register the classification entries of the index in mmpretrain's ``ModelHub`` (idempotent); returns their
    names. ``model_module`` is ``mmpretrain.apis.model`` (imported if not given)."""
    if model_module is None:
        model_module = importlib.import_module('mmpretrain.apis.model')
    hub = model_module.ModelHub
    names = []
    for entry in model_entries().values():
        if entry.codebase != 'mmpretrain':
            continue
        held = hub._models_dict.get(entry.name)
        if held is not None and not osp.abspath(held.filepath or '').startswith(REPO_ROOT + osp.sep):
            raise ValueError(f'the model name {entry.name} of {entry.metafile} is already registered in mmpretrain '
                             f'by {held.filepath}')
        # NOTE: what ModelHub.register_model_index does per model (the config path made absolute), for the
        # classification entries only
        from modelindex.models.Model import Model as model_class  # mmpretrain's index format
        if entry.weights is None:
            model_class = _unpublished_model_class(model_class)
        hub._models_dict[entry.name] = model_class.from_dict(dict(entry.raw, Config=entry.config),
                                                             _filepath=entry.metafile)
        names.append(entry.name)
    return names


# --------------------------------------------------------------------------------------------------- inferencers
#: inferencer scopes -> the codebase of this index's entries
CODEBASE_ALIASES = {'mmcls': 'mmpretrain'}


def patch_inferencer_lookup(infer_module=None) -> bool:
    """Make mmengine's ``BaseInferencer`` (the base of mmseg's and mmdet's inferencers) find PeLK model names.

    Replaces ``BaseInferencer._load_model_from_metafile``, which reads only the ``model-index.yml`` of the
    inferencer's codebase package, by a lookup that answers names of this index first and hands every other name
    to the original (``pelk_mm.model_zoo.list_models(codebase='mmseg')`` lists them). A PeLK name of another codebase
    is one :class:`~pelk_mm.errors.ModelIndexError` naming the right one; a name without ``weights=``
    is :class:`~pelk_mm.errors.MissingWeightsError` (the original would build randomly initialised weights). Written
    for mmengine 0.10.7; applied where the method still has that signature. Returns whether it is applied.
    """
    if infer_module is None:
        infer_module = importlib.import_module('mmengine.infer.infer')
    base = infer_module.BaseInferencer
    original = base.__dict__.get('_load_model_from_metafile')
    if getattr(original, '_pelk_mm', False):
        return True
    import inspect
    if original is None or list(inspect.signature(original).parameters) != ['self', 'model']:
        warnings.warn('pelk_mm: mmengine\'s BaseInferencer has no _load_model_from_metafile(self, model); the mmseg / '
                      'mmdet inferencers do not know PeLK model names (pass the config file instead)')
        return False
    from pelk_mm.compat import version_matches
    version_matches('mmengine', 'inferencer model names')  # warns once on another version

    def _load_model_from_metafile(self, model: str):
        from mmengine.config import Config
        if not isinstance(model, str) or not (model.lower() in model_entries() or model.lower().startswith('pelk')):
            return original(self, model)  # not a PeLK name (a misspelt one gets the closest from get_entry)
        entry = get_entry(model, CODEBASE_ALIASES.get(self.scope, self.scope))
        weights_given = getattr(self, '_pelk_mm_weights_given', False)
        if entry.weights is None and not weights_given:
            from pelk_mm.errors import MissingWeightsError
            raise MissingWeightsError(missing_weights_message(entry, 'weights'))
        return Config.fromfile(entry.config), entry.weights

    _load_model_from_metafile._pelk_mm = True
    base._load_model_from_metafile = _load_model_from_metafile

    init = base.__init__

    def __init__(self, model=None, weights=None, *args, **kwargs):
        # NOTE: the name lookup runs inside __init__ and learns nothing of `weights`; remember whether it was given
        self._pelk_mm_weights_given = weights is not None
        init(self, model, weights, *args, **kwargs)

    __init__.__wrapped__ = init
    base.__init__ = __init__

    return True


# --------------------------------------------------------------------------------------------------- import hooks
class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback(module)`` once, right after the module ``name`` is first imported (then leaves
    ``sys.meta_path``)."""

    def __init__(self, name: str, callback: Callable):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, 'find_spec', None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, 'exec_module'):
            return spec
        exec_module = loader.exec_module
        callback = self.callback

        def exec_then_call(module):
            # NOTE: the wrapper lives on this module's loader object only, for this one execution
            try:
                del loader.exec_module
            except AttributeError:
                pass
            exec_module(module)
            _call(callback, module)

        loader.exec_module = exec_then_call
        return spec


def _call(callback: Callable, module) -> None:
    try:
        callback(module)
    except Exception as err:  # noqa: BLE001 - the user's import must not fail for our registration
        warnings.warn(f'pelk_mm: connecting PeLK model names to {module.__name__} failed: '
                      f'{type(err).__name__}: {err}')


def when_imported(name: str, callback: Callable) -> None:
    """Call ``callback(module)`` when the module ``name`` is imported: now if it already is, else right after its
    first import."""
    if name in sys.modules:
        _call(callback, sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name and f.callback is callback for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))


def _register_timm(_timm) -> None:
    import importlib.util
    try:
        has_mmengine = importlib.util.find_spec('mmengine') is not None
    except ImportError:
        has_mmengine = False
    if has_mmengine:  # the backbone needs mmengine; a torch + timm process without it just has no PeLK in timm
        importlib.import_module('pelk_mm.timm')


def install() -> None:
    """Connect the index to mmpretrain, mmengine's inferencers and timm, each when it is (or as soon as it gets)
    imported (``import pelk_mm`` calls this; it imports none of them)."""
    if not osp.isfile(INDEX_FILE):
        return
    when_imported('mmpretrain.apis.model', register_mmpretrain_models)
    when_imported('mmengine.infer.infer', patch_inferencer_lookup)
    when_imported('timm', _register_timm)


# --------------------------------------------------------------------------------------------------- metafiles
def indexed_configs(root: str = REPO_ROOT) -> List[str]:
    """The configs the index covers, relative to ``root``: every ``configs/**/*.py`` outside ``configs/_base_/``
    (``configs/ablations/_base_/`` holds complete configs and is covered)."""
    import glob
    found = glob.glob(osp.join(root, 'configs', '**', '*.py'), recursive=True)
    rel = [osp.relpath(p, root) for p in found]
    return sorted(p for p in rel if p.split(osp.sep)[1] != '_base_')


def _metafile_of(config_rel: str) -> str:
    """The metafile listing a config: ``metafile.yml`` of its folder (the configs of ``ablations/_base_`` go in
    ``configs/ablations/metafile.yml``)."""
    folder = osp.dirname(config_rel)
    if osp.basename(folder) == '_base_':
        folder = osp.dirname(folder)
    return osp.join(folder, 'metafile.yml')


def _model_dict(config_rel: str, merged: dict) -> dict:
    scope = merged.get('default_scope')
    if scope not in CODEBASE_TASKS:
        raise ValueError(f'{config_rel}: default_scope={scope!r} is not one of {sorted(CODEBASE_TASKS)}')
    train_cfg = merged.get('train_cfg') or {}
    demo = config_rel.split(osp.sep)[1] == 'demo'
    dataset = (f'demo data ({_DATASETS[scope]} format)' if demo else _DATASETS[scope])
    metadata = {'Training Data': dataset}
    if train_cfg.get('max_iters'):
        metadata['Iterations'] = int(train_cfg['max_iters'])
    elif train_cfg.get('max_epochs'):
        metadata['Epochs'] = int(train_cfg['max_epochs'])
    return {
        'Name': model_name(config_rel),
        'In Collection': 'PeLK',
        'Config': config_rel.replace(osp.sep, '/'),
        'Metadata': metadata,
        'Results': [{'Task': task, 'Dataset': dataset, 'Metrics': {}} for task in CODEBASE_TASKS[scope]],
        'Weights': None,
    }


_HEADER = ('# Written by tools/update_model_index.py from the configs; do not edit. No PeLK weights are published\n'
           '# (Weights: null) and no run of these configs was trained here (Metrics: {}); the paper\'s numbers are in\n'
           '# README.md. Train a model with `python tools/train.py <Config>`.\n')


def build_metafiles(merged_config: Callable[[str], dict], root: str = REPO_ROOT) -> Dict[str, str]:
    """The text of ``model-index.yml`` and of every ``metafile.yml``, ``{path relative to root: text}``.

    Args:
        merged_config: ``config path relative to root -> the config's merged dict`` (``Config.fromfile(path)
            .to_dict()``; only ``default_scope`` and ``train_cfg`` are read).
    """
    import yaml
    by_file: Dict[str, List[dict]] = {}
    for config_rel in indexed_configs(root):
        by_file.setdefault(_metafile_of(config_rel), []).append(_model_dict(config_rel, merged_config(config_rel)))
    names = [m['Name'] for models in by_file.values() for m in models]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f'configs with the same model name {twice}: rename one of the files')
    collection = {'Name': 'PeLK', 'Metadata': {'Architecture': _ARCHITECTURE}, 'Paper': _PAPER}
    out = {}
    for metafile, models in sorted(by_file.items()):
        readme = osp.relpath(osp.join(root, 'README.md'), osp.join(root, osp.dirname(metafile)))
        text = yaml.safe_dump({'Collections': [dict(collection, README=readme.replace(osp.sep, '/'))],
                               'Models': models}, sort_keys=False, width=120)
        out[metafile.replace(osp.sep, '/')] = _HEADER + text
    out['model-index.yml'] = _HEADER + yaml.safe_dump({'Import': sorted(out)}, sort_keys=False)
    return out
