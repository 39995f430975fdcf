"""Patches of third-party behaviour, each scoped to what it replaces and checked against the version it was written
for (torch 2.14, mmengine 0.10.7, mmcv 2.1.0).

Applied on ``import pelk_mm`` (so every entry point that imports pelk_mm, including any config with
``custom_imports=dict(imports=['pelk_mm'])``, gets them):

1. **Safe checkpoint loading** -- replaces mmengine's scheme loaders (``load_from_local``, ``load_from_http`` and the
   model-zoo / ceph loaders built on them), which call ``torch.load`` with its default ``weights_only`` (True in
   torch >= 2.6, so Runner checkpoints do not load) or, for URLs, ``torch.hub.load_state_dict_from_url`` with
   ``weights_only=False`` (any pickle runs). Every scheme now goes through
   :func:`pelk_mm.checkpoint.load_checkpoint_file`: CRC-verified, ``weights_only=True`` with a data-type allow-list,
   unpickled beyond it only when the user's trust names that file. URLs are downloaded with a timeout into a cache
   keyed on the whole URL (:func:`pelk_mm.checkpoint.download_checkpoint`; torch hub keys it on the file name).
   Applied on any mmengine version (either upstream form is unsafe or fails on Runner checkpoints); another version
   gets a one-line warning.
2. **Atomic checkpoint writes** -- replaces ``LocalBackend.put`` / ``put_text`` (a plain ``open(path, 'wb')``, so a
   kill while saving leaves a truncated file that ``--resume`` then picks) by temp file + fsync + rename.
3. **RoIAlign on channels-last maps** -- mmcv 2.1's CPU ``RoIAlign`` kernel indexes the feature map as
   NCHW-contiguous, so a channels-last-strided map gives wrong RoI features without an error; the input is made
   contiguous first. On another mmcv version a probe compares both layouts and the patch is applied only if they
   differ.
6. **Image errors name the file** -- mmcv's ``LoadImageFromFile`` re-raises decoder errors without the path (an
   empty or corrupt image in a million); they become one ``DataFileError`` naming it.
7. **Checkpoint removals stay in the run's folder** -- ``CheckpointHook`` removes the previous best checkpoint by the
   path restored from the resumed checkpoint's message hub, which names another work dir after ``--resume
   A/epoch_2.pth --work-dir B`` or in a ``cp -r`` copy; the hook now removes only files inside its own folder.
8. **Plain-data checkpoints** -- mmengine's ``save_checkpoint`` pickles the message hub's ``HistoryBuffer`` objects
   and numpy values, which torch's default ``torch.load(path)`` (``weights_only=True``) refuses, so stock tools
   (mmpretrain's ``publish_model.py``, ``reparameterize_model.py``) fail on every Runner checkpoint. It now writes
   :func:`pelk_mm.checkpoint.plain_checkpoint` data (tensors and builtins); the loader restores the objects.

Applied by the project's launchers only (:func:`apply_launcher_patches`, called by ``tools/train.py`` /
``tools/test.py``), since only ``tools/dist_*.sh`` on CPU-only machines needs them:

4. **CPU launcher** -- mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally and
   initialises NCCL; on a machine without CUDA the process group is initialised with ``gloo`` and no device is set.
   The DDP wrapper gets no ``device_ids`` for a CPU model, and SyncBN (CUDA-only in torch) is reverted to BN on CPU
   as the Runner already does for single-process runs.
5. **Elastic restarts** -- under torchrun's elastic agent (``--max-restarts``) the process-group rendezvous keys are
   namespaced by restart attempt, so restarted workers never read a dead worker's address (see
   :func:`elastic_attempt_store`).

Each patch is idempotent.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Callable, Dict, Optional

import torch

from .checkpoint import atomic_write, load_checkpoint_file, path_inside, plain_checkpoint
from .errors import DataFileError

__all__ = ['apply', 'apply_launcher_patches', 'elastic_attempt_store', 'WRITTEN_FOR']

#: the version of each package that the patches were written and tested for (``major.minor.patch`` prefix)
WRITTEN_FOR: Dict[str, str] = {'mmengine': '0.10.7', 'mmcv': '2.1.0', 'torch': '2.14'}

_APPLIED: Dict[str, bool] = {}


#: the distributions that install each package, in the order they are looked up; mmcv's setup.py names a build
#: without compiled ops (MMCV_WITH_OPS=0) ``mmcv-lite``, still imported as ``mmcv``
_DISTRIBUTIONS: Dict[str, tuple] = {'mmcv': ('mmcv', 'mmcv-lite')}


def _version(package: str) -> Optional[str]:
    from importlib.metadata import version
    for name in _DISTRIBUTIONS.get(package, (package, )):
        try:
            return version(name)
        except Exception:  # noqa: BLE001 - not installed under this name
            continue
    return None


def _warn(message: str) -> None:
    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)


def version_matches(package: str, patch: str) -> bool:
    """Whether ``package`` is the version ``patch`` was written for; warns once (one line) when it is not."""
    found, expected = _version(package), WRITTEN_FOR[package]
    if found is not None and (found == expected or found.startswith(expected + '.')
                              or found.split('+')[0] == expected):
        return True
    key = f'warned:{patch}'
    if not _APPLIED.get(key):
        _APPLIED[key] = True
        _warn(f'pelk_mm: the patch "{patch}" was written for {package} {expected}, found {found}; it is applied '
              f'only where pelk_mm checks that it is still needed (pelk_mm.compat)')
    return False


def _once(name: str, fn: Callable[[], None]) -> None:
    if not _APPLIED.get(name):
        fn()
        _APPLIED[name] = True


# --------------------------------------------------------------------------------------------------- 1. loading
# NOTE: the loaders keep mmengine's ``load_from_<scheme>`` names: ``CheckpointLoader.load_checkpoint`` logs
# ``Loads checkpoint by {name[10:]} backend``, which reads the scheme from the function's name.
def load_from_local(filename: str, map_location=None):
    return load_checkpoint_file(filename, map_location=map_location)


def load_from_http(filename: str, map_location=None, model_dir: Optional[str] = None):
    """A URL: downloaded with a timeout into a cache keyed on the whole URL, removed again if it is damaged
    (:func:`pelk_mm.checkpoint.download_checkpoint`), then loaded safely."""
    return load_checkpoint_file(filename, map_location=map_location, model_dir=model_dir)


def load_from_torchvision(filename: str, map_location=None):
    from mmengine.runner.checkpoint import get_torchvision_models
    name = filename.split('://', 1)[1]
    return load_from_http(get_torchvision_models()[name], map_location=map_location)


def load_from_openmmlab(filename: str, map_location=None):
    import os.path as osp

    from mmengine.runner.checkpoint import _get_mmengine_home, get_deprecated_model_names, get_external_models
    name = filename.split('://', 1)[1]
    name = get_deprecated_model_names().get(name, name)
    url = get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    return load_checkpoint_file(osp.join(_get_mmengine_home(), url), map_location=map_location)


def load_from_mmcls(filename: str, map_location=None):
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint, get_mmcls_models
    checkpoint = load_from_http(get_mmcls_models()[filename[len('mmcls://'):]], map_location=map_location)
    return _process_mmcls_checkpoint(checkpoint)


def load_from_ceph(filename: str, map_location=None, backend: str = 'petrel'):
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(filename)
    return load_checkpoint_file(io.BytesIO(data), map_location=map_location, name=filename)


def load_from_pavi(filename: str, map_location=None):
    import tempfile

    from pavi import modelcloud  # noqa: F401 - the pavi client is optional, as in mmengine
    model = modelcloud.get(filename[len('pavi://'):])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, model.name)
        model.download(path)
        return load_checkpoint_file(path, map_location=map_location, name=filename)


#: mmengine's scheme prefixes (``mmengine/runner/checkpoint.py``) -> the safe loader that replaces it
SAFE_LOADERS = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def _patch_checkpoint_loading() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    version_matches('mmengine', 'safe checkpoint loading')  # applied on any version: see the module docstring
    for prefixes, loader in SAFE_LOADERS.items():
        CheckpointLoader.register_scheme(prefixes=list(prefixes) if isinstance(prefixes, tuple) else prefixes,
                                         loader=loader, force=True)


def _patch_plain_checkpoints() -> None:
    """mmengine's ``save_checkpoint`` (called by ``Runner.save_checkpoint``, the deploy converter ...) pickles the
    message hub's ``HistoryBuffer`` objects and numpy values as they are, which torch's default ``torch.load(path)``
    refuses. The checkpoint is written as :func:`pelk_mm.checkpoint.plain_checkpoint` data instead (after every
    ``before_save_checkpoint`` hook ran); :func:`pelk_mm.checkpoint.load_checkpoint_file` restores the objects."""
    import mmengine.runner as runner_package
    import mmengine.runner.checkpoint as checkpoint_module
    import mmengine.runner.runner as runner_module

    version_matches('mmengine', 'plain-data checkpoints')  # applied on any version: the argument is a dict
    original = checkpoint_module.save_checkpoint
    if getattr(original, '_pelk_mm_plain', False):
        return

    def save_plain_checkpoint(checkpoint, filename, *args, **kwargs):
        return original(plain_checkpoint(checkpoint, str(filename)), filename, *args, **kwargs)

    save_plain_checkpoint.__doc__ = original.__doc__
    save_plain_checkpoint._pelk_mm_plain = True
    for module in (checkpoint_module, runner_package, runner_module):  # the names it is imported under
        if getattr(module, 'save_checkpoint', None) is original:
            module.save_checkpoint = save_plain_checkpoint


# --------------------------------------------------------------------------------------------------- 2. writing
def _patch_atomic_writes() -> None:
    from mmengine.fileio.backends.local_backend import LocalBackend

    if not version_matches('mmengine', 'atomic checkpoint writes'):
        import inspect
        if 'os.replace' in inspect.getsource(LocalBackend.put):
            return  # upstream already writes atomically

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj, filepath, 'w', encoding=encoding)

    put.__doc__ = 'Atomically write bytes to ``filepath`` (temp file + fsync + rename; patched by pelk_mm).'
    put_text.__doc__ = 'Atomically write text to ``filepath`` (temp file + fsync + rename; patched by pelk_mm).'
    LocalBackend.put = put
    LocalBackend.put_text = put_text


# --------------------------------------------------------------------------------------------------- 7. own files
class _OwnFilesBackend:
    """The file backend of a ``CheckpointHook`` that removes only files inside the hook's own checkpoint folder;
    every other call goes to the wrapped backend."""

    def __init__(self, backend, root: str, logger):
        self._backend, self._root, self._logger = backend, str(root), logger

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def _allowed(self, path) -> bool:
        if path_inside(path, self._root):
            return True
        self._logger.warning(f'[checkpoint] not removing {path}: it is outside this run\'s checkpoint folder '
                             f'{self._root} (a file of another run, e.g. the work dir resumed from or copied)')
        return False

    def remove(self, path) -> None:
        if self._allowed(path):
            self._backend.remove(path)

    def rmtree(self, path) -> None:
        if self._allowed(path):
            self._backend.rmtree(path)


def _own_best_checkpoint(hook, runner, path: Optional[str], info_key: str) -> Optional[str]:
    """A best checkpoint restored from the message hub that is outside the hook's folder: this folder's file of the
    same name (a copied work dir) if there is one, else None (a run resumed from another work dir saves its own
    best checkpoint when a validation beats the recorded best score)."""
    if not path or path_inside(path, hook.out_dir):
        return path
    own = hook.file_backend.join_path(hook.out_dir, os.path.basename(str(path)))
    found = hook.file_backend.isfile(own)
    runner.message_hub.update_info(info_key, own if found else None)
    runner.logger.warning(
        f'[checkpoint] the best checkpoint recorded in the resumed checkpoint, {path}, is outside this run\'s '
        f'checkpoint folder {hook.out_dir}: ' + (f'using this folder\'s {own} instead' if found else
                                                 'it is left alone, and this run saves its own best checkpoint when '
                                                 'a validation beats the recorded best score'))
    return own if found else None


def _patch_checkpoint_removals() -> None:
    """mmengine's ``CheckpointHook.before_train`` restores ``best_ckpt`` from the message hub on resume, and
    ``_save_best_checkpoint`` removes that path when a better one is saved: a run resumed from another work dir
    (``--resume A/epoch_2.pth --work-dir B``) or in a ``cp -r`` copy of one deletes the other run's best checkpoint.
    After the original ``before_train``, a restored best checkpoint outside the hook's folder (``out_dir``, the work
    dir by default) is mapped to this folder's file of the same name, else forgotten, and the hook's file backend
    removes only files inside that folder (also for the rotation of ``max_keep_ckpts`` and ResumeStateHook's)."""
    from mmengine.hooks import CheckpointHook

    version_matches('mmengine', 'checkpoint removals stay in the run\'s folder')  # attribute access is guarded
    before_train = CheckpointHook.before_train

    def before_train_own_files(self, runner) -> None:
        before_train(self, runner)
        backend = getattr(self, 'file_backend', None)
        if backend is None or isinstance(backend, _OwnFilesBackend) or not getattr(self, 'out_dir', None):
            return
        if getattr(self, 'best_ckpt_path', None):
            self.best_ckpt_path = _own_best_checkpoint(self, runner, self.best_ckpt_path, 'best_ckpt')
        for key, path in list((getattr(self, 'best_ckpt_path_dict', None) or {}).items()):
            self.best_ckpt_path_dict[key] = _own_best_checkpoint(self, runner, path, f'best_ckpt_{key}')
        self.file_backend = _OwnFilesBackend(backend, self.out_dir, runner.logger)
        if getattr(self, 'file_client', None) is backend:
            self.file_client = self.file_backend

    before_train_own_files.__doc__ = before_train.__doc__
    CheckpointHook.before_train = before_train_own_files


# --------------------------------------------------------------------------------------------------- 3. RoIAlign
def _roi_align_misreads_channels_last() -> bool:
    """Whether mmcv's compiled RoIAlign kernel (called directly, past any patch) misreads a channels-last map."""
    from mmcv.ops.roi_align import ext_module
    x = torch.arange(2 * 4 * 6 * 6, dtype=torch.float32).reshape(2, 4, 6, 6)
    rois = torch.tensor([[0., 0., 0., 4., 4.], [1., 1., 1., 5., 5.]])

    def raw(inp):
        out = inp.new_zeros(2, 4, 2, 2)
        ext_module.roi_align_forward(inp, rois, out, inp.new_zeros(0), inp.new_zeros(0), aligned_height=2,
                                     aligned_width=2, spatial_scale=1.0, sampling_ratio=2, pool_mode=1, aligned=True)
        return out

    return not torch.equal(raw(x), raw(x.to(memory_format=torch.channels_last)))


def _patch_roi_align() -> None:
    try:
        from mmcv.ops.roi_align import RoIAlignFunction
    except (ImportError, OSError):
        return  # mmcv without compiled ops: no RoIAlign to fix
    if not version_matches('mmcv', 'RoIAlign contiguous input') and \
            not _roi_align_misreads_channels_last():
        return
    forward = RoIAlignFunction.forward

    def contiguous_forward(ctx, input, rois, *args, **kwargs):
        return forward(ctx, input.contiguous(), rois.contiguous(), *args, **kwargs)

    RoIAlignFunction.forward = staticmethod(contiguous_forward)


# --------------------------------------------------------------------------------------------------- 6. images
def _patch_image_loading() -> None:
    """mmcv's ``LoadImageFromFile`` re-raises decoder errors that do not name the file (an empty file gives
    ``cv2.error: ... !buf.empty()``): any error while loading becomes :class:`pelk_mm.errors.DataFileError` with
    the path. Applied on any mmcv version: it only adds the path to an error that is raised anyway."""
    try:
        from mmcv.transforms.loading import LoadImageFromFile
    except ImportError:
        return
    version_matches('mmcv', 'image errors name the file')
    transform = LoadImageFromFile.transform

    def transform_naming_the_file(self, results: dict):
        try:
            return transform(self, results)
        except DataFileError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            reason = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()
            path = results.get('img_path', None)
            raise DataFileError(
                f'cannot read image {path!r}: {type(err).__name__}: {reason}. Fix: replace it with a readable '
                f'image, or remove it from the dataset (its annotation list / folder)') from None

    transform_naming_the_file.__doc__ = transform.__doc__
    LoadImageFromFile.transform = transform_naming_the_file


# --------------------------------------------------------------------------------------------------- 4./5. launcher
def elastic_attempt_store(timeout=None):
    """The store for ``init_process_group`` under a torchrun elastic agent, namespaced by restart attempt.

    torch 2.14's ``env://`` rendezvous connects every worker to the agent's shared TCPStore *without* a per-attempt
    prefix (``torch/distributed/rendezvous.py``: "We create a new TCPStore for every retry", but the c10d
    rendezvous handler caches and reuses one server across restarts). After ``--max-restarts`` restarts the
    workers, the previous attempt's keys are still there: a fast rank 0 reads the dead rank 1's gloo address
    (or NCCL unique id) and fails with ``connectFullMesh failed ... Connection refused`` after the full timeout.
    Prefixing the keys with ``TORCHELASTIC_RESTART_COUNT`` (as torch < 2.4 did) makes each attempt rendezvous on
    its own keys. Returns None outside an elastic agent (plain ``env://`` is used then).
    """
    env = os.environ
    if env.get('TORCHELASTIC_USE_AGENT_STORE') != 'True' or 'TORCHELASTIC_RESTART_COUNT' not in env:
        return None
    from datetime import timedelta

    import torch.distributed as torch_dist
    store = torch_dist.TCPStore(
        host_name=env['MASTER_ADDR'], port=int(env['MASTER_PORT']), world_size=int(env['WORLD_SIZE']),
        is_master=False, timeout=timeout or timedelta(minutes=30))
    return torch_dist.PrefixStore(f'/worker/attempt_{env["TORCHELASTIC_RESTART_COUNT"]}', store)


def _patch_cpu_launcher() -> None:
    import mmengine.dist.utils as dist_utils
    from mmengine.model import revert_sync_batchnorm
    from mmengine.model.wrappers import MMDistributedDataParallel
    from mmengine.runner import Runner

    version_matches('mmengine', 'CPU launcher')  # the launcher's own tests cover other versions
    version_matches('torch', 'elastic rendezvous prefix')
    original = dist_utils._init_dist_pytorch

    def _init_dist_pytorch(backend, init_backend='torch', **kwargs) -> None:
        if init_backend != 'torch':
            return original(backend, init_backend=init_backend, **kwargs)
        import torch.distributed as torch_dist
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
        elif backend == 'nccl':  # the default of every config; NCCL needs GPUs
            backend = 'gloo'
        store = elastic_attempt_store(kwargs.get('timeout'))
        if store is not None:
            kwargs.update(store=store, rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE']))
        torch_dist.init_process_group(backend=backend, **kwargs)

    dist_utils._init_dist_pytorch = _init_dist_pytorch

    ddp_init = MMDistributedDataParallel.__init__

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs):
        if not any(p.is_cuda for p in module.parameters()):
            kwargs.pop('device_ids', None)  # DDP rejects device_ids for CPU modules
            kwargs.pop('output_device', None)
        ddp_init(self, module, detect_anomalous_params=detect_anomalous_params, **kwargs)

    MMDistributedDataParallel.__init__ = __init__

    wrap_model = Runner.wrap_model

    def wrap_model_cpu_safe(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available():
            model = revert_sync_batchnorm(model)  # torch's SyncBatchNorm runs on CUDA only
        return wrap_model(self, model_wrapper_cfg, model)

    Runner.wrap_model = wrap_model_cpu_safe


def apply() -> None:
    """The patches every entry point needs (1-3, 6-8); idempotent."""
    _once('checkpoint loading', _patch_checkpoint_loading)
    _once('plain checkpoints', _patch_plain_checkpoints)
    _once('atomic writes', _patch_atomic_writes)
    _once('checkpoint removals', _patch_checkpoint_removals)
    _once('roi align', _patch_roi_align)
    _once('image loading', _patch_image_loading)


def apply_launcher_patches() -> None:
    """The patches of ``tools/train.py`` / ``tools/test.py`` (4-5); idempotent."""
    _once('cpu launcher', _patch_cpu_launcher)


apply()
