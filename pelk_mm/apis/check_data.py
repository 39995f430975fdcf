"""Fail fast, with one readable paragraph, when a config's dataset paths do not exist or its annotations are broken.

Without this check a missing dataset surfaces as a stack trace from deep inside a dataset class (``assert
osp.isfile(self.ann_file)``, pycocotools ``FileNotFoundError``, an empty folder scan ...) after the model has been
built. :func:`check_data_paths` walks the dataloaders a run will build, resolves ``data_root`` / ``ann_file`` /
``data_prefix`` exactly as mmengine's ``BaseDataset`` does (relative ``ann_file`` and prefixes are joined to
``data_root``), and raises :class:`MissingDataError` naming the config key, the missing path, the expected layout
and how to get the data. With the paths present it checks the annotations' content (ImageNet label lists, COCO
files, segmentation masks; :mod:`pelk_mm.datasets.annotations` says what is read and at what cost), so that data
mmdet / mmseg would train on silently wrong, or crash on mid-run, stops the run before anything is built.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from pelk_mm.errors import DataFileError, MissingDataError

__all__ = ['MissingDataError', 'find_missing_data', 'check_data_paths', 'check_label_lists', 'check_coco_files',
           'check_seg_files', 'check_ann_file_kinds', 'dataset_classes', 'dataset_num_classes',
           'DATALOADERS_FOR_MODE']

#: dataloaders each mode builds (the Runner builds val only when validation is on)
DATALOADERS_FOR_MODE = {
    'train': ('train_dataloader', 'val_dataloader'),
    'val': ('val_dataloader', ),
    'test': ('test_dataloader', ),
}


def _is_remote(path: str, backend_args: Optional[dict]) -> bool:
    if '://' in str(path) or str(path).startswith(('s3:', 'petrel:', 'openmmlab:', 'http:', 'https:')):
        return True
    if backend_args and backend_args.get('backend', 'local') not in ('local', 'disk'):
        return True
    return False


def _join(root: str, path: str) -> str:
    if not root or osp.isabs(path):
        return path
    return osp.join(root, path)


def _type_name(dataset_cfg) -> str:
    t = dataset_cfg.get('type', '')
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def _walk_datasets(cfg, key: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(config key, dataset cfg)`` for a dataset cfg and the datasets wrapped inside it."""
    if not hasattr(cfg, 'get'):
        return
    yield key, cfg
    inner = cfg.get('dataset', None)
    if hasattr(inner, 'get'):
        yield from _walk_datasets(inner, f'{key}.dataset')
    inners = cfg.get('datasets', None)
    if isinstance(inners, (list, tuple)):
        for i, d in enumerate(inners):
            yield from _walk_datasets(d, f'{key}.datasets[{i}]')


def _paths_of(dataset_cfg, key: str) -> List[Tuple[str, str]]:
    """``(config key, resolved path)`` pairs that must exist for this dataset cfg (its own keys only)."""
    backend_args = dataset_cfg.get('backend_args', None)
    root = dataset_cfg.get('data_root', '') or ''
    out: List[Tuple[str, str]] = []
    if root:
        out.append((f'{key}.data_root', root))
    ann_file = dataset_cfg.get('ann_file', '') or ''
    if isinstance(ann_file, str) and ann_file:
        out.append((f'{key}.ann_file', _join(root, ann_file)))
    prefix = dataset_cfg.get('data_prefix', None)
    type_name = _type_name(dataset_cfg)
    split = dataset_cfg.get('split', '') or ''
    if (prefix in (None, '') and split and 'ImageNet' in type_name):
        # mmpretrain ImageNet(split='train') reads images from <data_root>/<split>
        out.append((f'{key}.split', _join(root, split)))
    elif isinstance(prefix, str) and prefix:
        out.append((f'{key}.data_prefix', _join(root, prefix)))
    elif hasattr(prefix, 'items'):
        for name, value in prefix.items():
            if isinstance(value, str) and value:
                out.append((f'{key}.data_prefix.{name}', _join(root, value)))
    # a relative ann_file/prefix under a remote data_root is remote as well
    return [(k, p) for k, p in out if not _is_remote(p, backend_args)]


def find_missing_data(cfg, mode: str = 'train',
                      dataloaders: Optional[Sequence[str]] = None) -> List[Tuple[str, str, dict]]:
    """All missing dataset paths: a list of ``(config key, path, dataset cfg)``, in config order."""
    if dataloaders is None:
        if mode not in DATALOADERS_FOR_MODE:
            raise ValueError(f'mode must be one of {sorted(DATALOADERS_FOR_MODE)}, got {mode!r}')
        dataloaders = DATALOADERS_FOR_MODE[mode]
    missing, seen = [], set()
    for loader_key in dataloaders:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for key, ds in _walk_datasets(loader['dataset'], f'{loader_key}.dataset'):
            for path_key, path in _paths_of(ds, key):
                if path in seen:
                    continue
                seen.add(path)
                if not osp.exists(path):
                    missing.append((path_key, path, ds))
    # a missing data_root implies its ann_file/prefixes are missing: report the root only
    roots = [osp.normpath(p) for _, p, _ in missing]
    return [m for m in missing
            if not any(osp.normpath(m[1]).startswith(r + os.sep) for r in roots if r != osp.normpath(m[1]))]


def _how_to_get(type_name: str, root: str) -> Tuple[str, Optional[str]]:
    """(instructions, demo kind) for a dataset type."""
    where = root or '<data_root>'
    if 'ADE20K' in type_name:
        return (f'ADE20K (SceneParsing, 150 classes) must be at {where}, holding images/{{training,validation}}/*.jpg '
                f'and annotations/{{training,validation}}/*.png: download ADEChallengeData2016.zip from '
                f'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip and unzip it into the '
                f'parent folder of {where} (mmseg docs: user_guides/2_dataset_prepare.md, "ADE20K")', 'ade20k')
    if 'Coco' in type_name or 'COCO' in type_name:
        return (f'COCO 2017 must be at {where}, holding train2017/, val2017/ and '
                f'annotations/instances_{{train,val}}2017.json: download train2017.zip, val2017.zip and '
                f'annotations_trainval2017.zip from https://cocodataset.org/#download and unzip them into {where}',
                'coco')
    if 'ImageNet' in type_name or 'CustomDataset' in type_name:
        return (f'ImageNet-1k (ILSVRC2012) must be at {where}, holding train/<wnid>/*.JPEG class folders, val/ '
                f'images and the label lists meta/train.txt and meta/val.txt ("<relative path> <label>" lines): '
                f'download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org '
                f'(registration required), extract train/ into one folder per class and val/ flat, and add the '
                f'meta/ label lists (mmpretrain docs: user_guides/dataset_prepare.md, "ImageNet")', 'imagenet')
    return (f'put the {type_name or "dataset"} data there (see the dataset class docstring for its layout)', None)


def _format_message(key: str, path: str, ds, config_name: str, n_more: List[str]) -> str:
    type_name = _type_name(ds)
    root = ds.get('data_root', '') or ''
    how, kind = _how_to_get(type_name, root)
    msg = (f'Dataset not found: config {config_name + " " if config_name else ""}key `{key}` points to '
           f'{path!r} (absolute: {osp.abspath(path)}), which does not exist. {how}. Or point the config at '
           f'your copy with --cfg-options {key}=/path/to/it')
    if kind is not None:
        msg += (f'. To try the pipeline without the real data, generate a small synthetic stand-in with '
                f'`python tools/dataset_converters/make_demo_data.py {kind}` (writes data/demo/) or add '
                f'demo_data = dict(kind=\'{kind}\', root=\'data/demo\') to the config and point its data_root at '
                f'the generated folder')
    if n_more:
        msg += f'. Also missing: {", ".join(n_more[:4])}' + (' ...' if len(n_more) > 4 else '')
    return msg + '.'


def dataset_num_classes(dataset_cfg, scope: Optional[str] = None) -> Optional[int]:
    """Number of classes a dataset config yields: its ``classes`` / ``metainfo.classes`` override (a list, or a file
    of names as mmpretrain reads it), else the ``METAINFO`` of its class in ``scope``'s registry; None when it cannot
    be told without reading the data. Wrappers (``RepeatDataset`` ...) are looked through."""
    classes = dataset_classes(dataset_cfg, scope)
    return len(classes) if classes else None


def check_label_lists(cfg, mode: str = 'train', dataloaders: Optional[Sequence[str]] = None) -> None:
    """mmpretrain's ``<relative image path> <integer label>`` annotation lists (``ImageNet`` / ``CustomDataset``
    ``ann_file``): a line without a label, a label that is not an integer or is outside ``[0, classes)``, or a
    list without images raises :class:`pelk_mm.errors.DataFileError` naming the file and the line (mmpretrain
    fails on these deep inside the dataset, or trains on an out-of-range label until the loss crashes)."""
    for loader_key in dataloaders or DATALOADERS_FOR_MODE[mode]:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for key, ds in _walk_datasets(loader['dataset'], f'{loader_key}.dataset'):
            type_name = _type_name(ds)
            ann = ds.get('ann_file', '') or ''
            split = ds.get('split', '') or ''
            if not ann and split and 'ImageNet' in type_name:
                ann = osp.join('meta', f'{split}.txt')  # what mmpretrain's ImageNet(split=...) reads if present
            if not ('ImageNet' in type_name or 'CustomDataset' in type_name) or not isinstance(ann, str) or not ann \
                    or ds.get('with_label', True) is False or split == 'test':
                continue  # an unlabelled list (the test split) holds paths only
            path = _join(ds.get('data_root', '') or '', ann)
            if _is_remote(path, ds.get('backend_args', None)) or not osp.isfile(path):
                continue
            classes = dataset_num_classes(ds, cfg.get('default_scope', None) or 'mmpretrain')
            fix = (f'each line of {path} must read "<image path relative to the split folder> <label>", separated by '
                   f'one space, with an integer label in [0, {classes if classes else "number of classes"})')
            count = 0
            with open(path) as f:
                for number, line in enumerate(f, 1):
                    text = line.rstrip('\n\r')
                    parts = text.strip().rsplit(' ', 1)
                    if len(parts) != 2 or not parts[0]:
                        raise DataFileError(f'{key}.ann_file {path!r} line {number}: {text!r} has no label. '
                                            f'Fix: {fix}')
                    try:
                        label = int(parts[1])
                    except ValueError:
                        raise DataFileError(f'{key}.ann_file {path!r} line {number}: label {parts[1]!r} is not an '
                                            f'integer. Fix: {fix}') from None
                    if label < 0 or (classes is not None and label >= classes):
                        raise DataFileError(f'{key}.ann_file {path!r} line {number}: label {label} is outside '
                                            f'[0, {classes}) ({classes} classes). Fix: {fix}')
                    count += 1
            if count == 0:
                raise DataFileError(f'{key}.ann_file {path!r} lists no images. Fix: {fix}')


_COCO_IMAGE_KEYS = ('id', 'file_name', 'height', 'width')
_COCO_ANN_KEYS = ('id', 'image_id', 'category_id', 'bbox', 'area')


def _coco_problem(data) -> Optional[str]:
    if not isinstance(data, dict):
        return f'the file holds a {type(data).__name__}, not the COCO dict'
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key, None), list):
            return f'it has no {key!r} list (top-level keys: {", ".join(sorted(data)) or "none"})'
    for what, items, keys in (('images', data['images'], _COCO_IMAGE_KEYS),
                              ('annotations', data['annotations'], _COCO_ANN_KEYS),
                              ('categories', data['categories'], ('id', 'name'))):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not all(k in item for k in keys):
                missing = [k for k in keys if not isinstance(item, dict) or k not in item]
                return f'{what}[{i}] has no {missing[0]!r}'
            if what == 'annotations':
                bbox = item['bbox']
                if not (isinstance(bbox, list) and len(bbox) == 4
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
                    return f'annotations[{i}] (id {item.get("id")}) has bbox {bbox!r}, not [x, y, width, height]'
    return None


def dataset_classes(dataset_cfg, scope: Optional[str] = None) -> Optional[List[str]]:
    """The class names a dataset config yields (see :func:`dataset_num_classes`), or None when they cannot be
    told without reading the data."""
    if not hasattr(dataset_cfg, 'get'):
        return None
    if hasattr(dataset_cfg.get('dataset', None), 'get') and 'classes' not in dataset_cfg:
        return dataset_classes(dataset_cfg['dataset'], scope)
    classes = (dataset_cfg.get('metainfo', None) or {}).get('classes', None) or dataset_cfg.get('classes', None)
    if isinstance(classes, (list, tuple)):
        return [str(c) for c in classes]
    if isinstance(classes, str):
        if not osp.isfile(classes):
            return None
        with open(classes) as f:
            return [line.strip() for line in f if line.strip()]
    meta = getattr(_dataset_class(dataset_cfg, scope), 'METAINFO', None) or {}
    return [str(c) for c in meta['classes']] if meta.get('classes') else None


def _dataset_class(dataset_cfg, scope: Optional[str]):
    """The registered class of a dataset config in ``scope``'s registry, or None."""
    if scope is None:
        return None
    t = dataset_cfg.get('type', '')
    if not isinstance(t, str):
        return t
    import importlib
    try:
        return importlib.import_module(f'{scope}.registry').DATASETS.get(t)
    except Exception:  # noqa: BLE001 - an unknown dataset type is reported when it is built
        return None


def _pipeline_has(dataset_cfg, transform: str) -> bool:
    return any(hasattr(t, 'get') and str(t.get('type', '')).split('.')[-1] == transform
               for t in dataset_cfg.get('pipeline', None) or [])


#: results of the content checks in this process: the launcher checks the data twice (before and after the
#: codebase is imported), the files are read once
_CHECKED: Dict[tuple, Tuple[List[str], List[str]]] = {}


def _local_rank() -> int:
    for name in ('SLURM_LOCALID', 'OMPI_COMM_WORLD_LOCAL_RANK', 'LOCAL_RANK'):
        if os.environ.get(name, '').isdigit():
            return int(os.environ[name])
    return 0


def _report(key: tuple, compute) -> None:
    """Run ``compute() -> (refusals, warnings)`` once per ``key``; log the warnings, raise the refusals.

    Only the first process of each machine reads the files: they are the same for its other ranks, and a parsed
    COCO train2017 file holds about 4 GB while it is checked. A refusal stops that process, and torchrun / srun then
    stop the others, which wait for it at the process-group rendezvous."""
    if _local_rank() != 0:
        return
    if key not in _CHECKED:
        _CHECKED[key] = compute()
        from mmengine.logging import print_log
        for line in _CHECKED[key][1]:
            print_log(f'data check: {line}', logger='current', level=logging.WARNING)
    refusals = _CHECKED[key][0]
    if refusals:
        err = DataFileError('\n'.join(refusals))
        err.lines = list(refusals)  # one `error:` line per kind of problem (pelk_mm.apis.cli)
        raise err


def check_coco_files(cfg, mode: str = 'train', dataloaders: Optional[Sequence[str]] = None) -> None:
    """COCO-format annotation files (``CocoDataset`` ``ann_file``): a file that misses ``images`` /
    ``annotations`` / ``categories`` or an entry's required key raises :class:`pelk_mm.errors.DataFileError`
    naming the file and the entry (pycocotools and mmdet fail on these with a bare ``KeyError``); then its content
    is checked by :func:`pelk_mm.datasets.annotations.coco_findings` (duplicated ids, unknown categories, negative
    boxes, class names, image sizes of a bounded sample): one line per kind of problem, with a count and the first
    entry; boxes mmdet drops as degenerate are a logged warning."""
    import json

    from pelk_mm.datasets.annotations import IMAGE_SAMPLE, coco_findings, sample_bound
    scope = cfg.get('default_scope', None)
    for loader_key in dataloaders or DATALOADERS_FOR_MODE[mode]:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for key, ds in _walk_datasets(loader['dataset'], f'{loader_key}.dataset'):
            ann = ds.get('ann_file', '') or ''
            if 'Coco' not in _type_name(ds) or not isinstance(ann, str) or not ann:
                continue
            root = ds.get('data_root', '') or ''
            path = _join(root, ann)
            if _is_remote(path, ds.get('backend_args', None)) or not osp.isfile(path):
                continue
            prefix = ds.get('data_prefix', None)
            # NOTE: mmdet joins data_prefix['img'] and file_name; without that key no image folder is configured
            img = prefix.get('img', None) if hasattr(prefix, 'get') else None
            img_dir = _join(root, img) if isinstance(img, str) else None
            image_dir = None if img_dir is None or _is_remote(img_dir, ds.get('backend_args', None)) else img_dir
            classes = dataset_classes(ds, scope)
            sample = sample_bound(IMAGE_SAMPLE)
            stat = os.stat(path)

            def compute(path=path, key=key, image_dir=image_dir, classes=classes, sample=sample):
                fix = ('use the COCO instances format (images with id/file_name/height/width, annotations with '
                       'id/image_id/category_id/bbox [x, y, w, h], categories with id/name)')
                try:
                    with open(path) as f:
                        data = json.load(f)
                except ValueError as err:
                    return [f'{key}.ann_file {path!r} is not valid JSON ({err}). Fix: {fix}'], []
                problem = _coco_problem(data)
                if problem:
                    return [f'{key}.ann_file {path!r}: {problem}. Fix: {fix}'], []
                found, covered = coco_findings(data, f'{key}.ann_file {path!r}', image_dir,
                                               classes if data['categories'] else None, sample)
                refusals = found.lines(refuse=True)
                if refusals and covered:
                    refusals[-1] += f' (checked every entry; {covered})'
                return refusals, found.lines(refuse=False)

            _report(('coco', path, stat.st_mtime_ns, stat.st_size, key, image_dir, tuple(classes or ()), sample),
                    compute)


def check_seg_files(cfg, mode: str = 'train', dataloaders: Optional[Sequence[str]] = None) -> None:
    """mmseg datasets (``data_prefix`` with ``img_path`` and ``seg_map_path``, e.g. ``ADE20KDataset``): images
    without a mask, masks of another size than their image, masks that are not single-channel or hold labels
    beyond the classes raise :class:`pelk_mm.errors.DataFileError`, one line per kind of problem with a count and
    the first file (:func:`pelk_mm.datasets.annotations.seg_findings` says what is sampled). Masks are checked
    only where the pipeline loads them (``LoadAnnotations``)."""
    import inspect

    from pelk_mm.datasets.annotations import (IMAGE_SAMPLE, MASK_SAMPLE, list_seg_pairs, sample_bound,
                                              seg_findings)
    scope = cfg.get('default_scope', None) or 'mmseg'
    for loader_key in dataloaders or DATALOADERS_FOR_MODE[mode]:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for key, ds in _walk_datasets(loader['dataset'], f'{loader_key}.dataset'):
            prefix = ds.get('data_prefix', None)
            if not hasattr(prefix, 'get') or 'seg_map_path' not in prefix or 'img_path' not in prefix:
                continue
            backend_args = ds.get('backend_args', None)
            root = ds.get('data_root', '') or ''
            img_dir, ann_dir = _join(root, prefix['img_path'] or ''), _join(root, prefix['seg_map_path'] or '')
            if _is_remote(img_dir, backend_args) or not osp.isdir(img_dir) or not osp.isdir(ann_dir):
                continue
            cls = _dataset_class(ds, scope)
            defaults = {}
            for klass in reversed(getattr(cls, '__mro__', ())):
                init = klass.__dict__.get('__init__', None)
                if init is not None:
                    defaults.update({n: p.default for n, p in inspect.signature(init).parameters.items()
                                     if p.default is not inspect.Parameter.empty})
            setting = {name: ds.get(name, defaults.get(name, default)) for name, default in (
                ('img_suffix', '.jpg'), ('seg_map_suffix', '.png'), ('reduce_zero_label', False),
                ('ignore_index', 255))}
            meta = getattr(cls, 'METAINFO', None) or {}
            # NOTE: mask values index the class's own classes (a config subset is mapped by mmseg's label_map)
            raw_classes = len(meta['classes']) if meta.get('classes') else len(dataset_classes(ds, scope) or [])
            ann = ds.get('ann_file', '') or ''
            split = _join(root, ann) if isinstance(ann, str) and ann else ''
            names = None
            if split and osp.isfile(split):
                with open(split) as f:
                    names = [line.strip() for line in f if line.strip()]
            bounds = (sample_bound(IMAGE_SAMPLE), sample_bound(MASK_SAMPLE))
            check_masks = _pipeline_has(ds, 'LoadAnnotations')

            def compute(key=key, img_dir=img_dir, ann_dir=ann_dir, setting=setting, names=names,
                        raw_classes=raw_classes, check_masks=check_masks, bounds=bounds):
                pairs = list_seg_pairs(img_dir, ann_dir, setting['img_suffix'], setting['seg_map_suffix'], names)
                found, scope_notes, covered = seg_findings(
                    pairs, f'{key} ({img_dir})', raw_classes or None, bool(setting['reduce_zero_label']),
                    int(setting['ignore_index']), check_masks, *bounds)
                refusals = found.lines(refuse=True, scope=scope_notes)
                if refusals and covered:
                    refusals[-1] += f' ({covered}; the rest is checked as each sample loads)'
                return refusals, found.lines(refuse=False)

            _report(('seg', key, img_dir, ann_dir, tuple(sorted(setting.items())), raw_classes, check_masks,
                     tuple(names or ()), bounds), compute)


def check_ann_file_kinds(cfg, mode: str = 'train', dataloaders: Optional[Sequence[str]] = None) -> None:
    """An ``ann_file`` that is a folder (mmdet and mmpretrain read it as a file: ``IsADirectoryError``) raises
    :class:`pelk_mm.errors.DataFileError` naming the key and the annotation files inside. mmseg datasets are
    exempt: they read a folder there as "no split file"."""
    for loader_key in dataloaders or DATALOADERS_FOR_MODE[mode]:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for key, ds in _walk_datasets(loader['dataset'], f'{loader_key}.dataset'):
            ann = ds.get('ann_file', '') or ''
            prefix = ds.get('data_prefix', None)
            if not isinstance(ann, str) or not ann or (hasattr(prefix, 'get') and 'seg_map_path' in prefix):
                continue
            path = _join(ds.get('data_root', '') or '', ann)
            if _is_remote(path, ds.get('backend_args', None)) or not osp.isdir(path):
                continue
            inside = sorted(f for f in os.listdir(path) if f.endswith(('.json', '.txt', '.pkl')))
            hint = (f' (it holds {", ".join(inside[:3])}{" ..." if len(inside) > 3 else ""})' if inside else '')
            role = loader_key.split('_')[0]  # train / val / test: the likely file of this loader
            likely = ([f for f in inside if role in f] or inside or ['instances_train2017.json'])[0]
            raise DataFileError(f'{key}.ann_file {path!r} is a folder, not an annotation file{hint}. Fix: point it '
                                f'at the file, e.g. --cfg-options {key}.ann_file={osp.join(ann, likely)}')


def _install_guards(cfg, mode: str, dataloaders: Optional[Sequence[str]]) -> None:
    """The per-sample checks (:mod:`pelk_mm.datasets.guards`) for the codebases whose datasets the run builds."""
    from pelk_mm.datasets.guards import install_data_guards
    for loader_key in dataloaders or DATALOADERS_FOR_MODE[mode]:
        loader = cfg.get(loader_key, None)
        if not hasattr(loader, 'get') or loader.get('dataset', None) is None:
            continue
        for _, ds in _walk_datasets(loader['dataset'], loader_key):
            prefix = ds.get('data_prefix', None)
            if hasattr(prefix, 'get') and 'seg_map_path' in prefix:
                install_data_guards('mmseg')
            elif 'Coco' in _type_name(ds) or cfg.get('default_scope', None) == 'mmdet':
                install_data_guards('mmdet')


def check_data_paths(cfg, mode: str = 'train', dataloaders: Optional[Sequence[str]] = None,
                     config_name: str = '') -> None:
    """Raise :class:`MissingDataError` (one paragraph) if a dataset path the run needs is missing, and
    :class:`pelk_mm.errors.DataFileError` for an ``ann_file`` that is a folder, a malformed annotation list
    (:func:`check_label_lists`) or COCO file (:func:`check_coco_files`) and broken segmentation masks
    (:func:`check_seg_files`), one line per kind of problem. Then the per-sample checks of the mmseg / mmdet
    pipelines are installed (:mod:`pelk_mm.datasets.guards`), for what the bounded checks here did not read."""
    missing = find_missing_data(cfg, mode, dataloaders)
    if not missing:
        check_ann_file_kinds(cfg, mode, dataloaders)
        check_label_lists(cfg, mode, dataloaders)
        check_coco_files(cfg, mode, dataloaders)
        check_seg_files(cfg, mode, dataloaders)
        _install_guards(cfg, mode, dataloaders)
        return
    key, path, ds = missing[0]
    more = [f'`{k}` ({p})' for k, p, _ in missing[1:]]
    raise MissingDataError(_format_message(key, path, ds, config_name, more), key, path)
