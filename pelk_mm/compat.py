"""Fixes for running the OpenMMLab 2.0 stack (mmengine 0.10.7, mmcv 2.1, mmpretrain 1.2, mmseg 1.2.2, mmdet 3.3)
on modern PyTorch. Imported by ``pelk_mm/__init__.py``, so every entry point that imports pelk_mm (our tools, and
any config with ``custom_imports=dict(imports=['pelk_mm'])``) gets them. Each patch is idempotent.

1. ``torch.load`` defaults to ``weights_only=True`` since torch 2.6, so mmengine's local checkpoint loader cannot
   read Runner checkpoints (``--resume``, ``load_from``, ``init_cfg=Pretrained``). Local files are loaded with
   ``weights_only=False`` (they are the user's own checkpoints), and an unreadable file raises one clear error
   naming the file instead of an unpickling traceback.
2. mmengine writes checkpoints with a plain ``open(path, 'wb')``: a kill while saving leaves a truncated file that
   ``--resume`` then picks. Local writes go to a temporary file in the same folder, are fsync'ed and renamed over
   the target (atomic on POSIX).
3. mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` unconditionally, which fails on CPU-only
   machines; there the process group is initialised with ``gloo`` and no device is set. Likewise the DDP wrapper
   gets no ``device_ids`` for a CPU model, and SyncBN (CUDA-only in torch) is reverted to BN on CPU as the Runner
   already does for single-process runs.
4. Under torchrun's elastic agent (``--max-restarts``), the process-group rendezvous keys are namespaced by restart
   attempt, so restarted workers never read a dead worker's address (see ``elastic_attempt_store``).
5. mmcv 2.1's CPU ``RoIAlign`` kernel indexes the feature map as NCHW-contiguous: a channels-last-strided map
   (what convs produce from a permuted LayerNorm output) gives wrong RoI features without any error. Inputs are
   made contiguous first (a no-op for contiguous maps).
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
import warnings

import torch

_PATCHED = False


class CheckpointLoadError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, corrupt, or not a checkpoint)."""


def load_local_checkpoint(filename: str, map_location=None):
    """``torch.load`` a local checkpoint with ``weights_only=False`` and a one-line error on failure."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename!r} does not exist')
    size = osp.getsize(filename)
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointLoadError(
            f'cannot read checkpoint {filename!r} ({size} bytes): {type(err).__name__}: {reason}. The file is '
            f'truncated or corrupt (e.g. the run was killed while writing it) or not a PyTorch checkpoint; '
            f'use another checkpoint (e.g. an earlier epoch_*.pth / iter_*.pth in the same work_dir)') from None


def atomic_write(data, filepath, mode: str = 'w', encoding=None) -> None:
    """Write ``data`` to ``filepath`` via a temp file in the same folder, fsync and rename (atomic on POSIX)."""
    filepath = str(filepath)
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(filepath) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise


def _patch_checkpoint_io() -> None:
    from mmengine.fileio.backends.local_backend import LocalBackend
    from mmengine.runner.checkpoint import CheckpointLoader

    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, filepath, 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj, filepath, 'w', encoding=encoding)

    put.__doc__ = 'Atomically write bytes to ``filepath`` (temp file + fsync + rename; patched by pelk_mm).'
    put_text.__doc__ = 'Atomically write text to ``filepath`` (temp file + fsync + rename; patched by pelk_mm).'
    LocalBackend.put = put
    LocalBackend.put_text = put_text


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

    from mmengine.model import revert_sync_batchnorm
    from mmengine.model.wrappers import MMDistributedDataParallel
    from mmengine.runner import Runner

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


def _patch_roi_align() -> None:
    from mmcv.ops.roi_align import RoIAlignFunction

    forward = RoIAlignFunction.forward

    def contiguous_forward(ctx, input, rois, *args, **kwargs):
        return forward(ctx, input.contiguous(), rois.contiguous(), *args, **kwargs)

    RoIAlignFunction.forward = staticmethod(contiguous_forward)


def apply() -> None:
    global _PATCHED
    if _PATCHED:
        return
    # setuptools<81 is pinned on purpose (mmengine's `pkg::` config bases need pkg_resources): silence its notice
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
    _patch_checkpoint_io()
    _patch_cpu_launcher()
    _patch_roi_align()
    _PATCHED = True


apply()
