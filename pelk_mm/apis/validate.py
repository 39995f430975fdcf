"""Check a config before any heavy work (building the Runner, the dataloaders or the model's weights).

:func:`validate_config` raises :class:`ConfigValidationError` (or :class:`~pelk_mm.apis.check_data.MissingDataError`)
with one line naming the config key, the bad value and the fix, within seconds instead of a stack trace from deep
inside mmengine after minutes of start-up. It checks:

* the PeLK backbone arguments (``arch`` name, even kernel sizes, kernel sizes smaller than their central region,
  ``out_indices`` range, ...), by building the backbone with its parameters on the ``meta`` device (no memory, no
  weight initialisation), so every argument check of the constructor runs;
* the channels that the neck/heads expect against the backbone's outputs: an mmpretrain ``head.in_channels``
  (last width), mmseg ``decode_head.in_channels`` / ``auxiliary_head.in_channels`` (through their ``in_index``), an
  mmdet ``neck.in_channels`` (FPN list) or ``rpn_head``-free necks with a list;
* the dataset paths the run needs (:func:`pelk_mm.apis.check_data.check_data_paths`);
* ``model.backbone.init_cfg`` ``Pretrained`` checkpoints: readable, and their (prefix-filtered) keys and shapes
  match the backbone (missing keys such as the per-output norms of dense-prediction mode are fine; any shape
  mismatch, or no overlap, is an error that names the likely arch);
* ``load_from`` / ``--resume`` targets: readable and intact (every zip record's CRC-32 is checked). For
  ``--resume`` without a path, a ``last_checkpoint`` that is empty or points at a missing, unreadable or damaged
  file (a run killed while saving, a disk error) falls back to the newest intact checkpoint in ``work_dir`` with a
  warning.
"""
from __future__ import annotations

import contextlib
import glob
import os.path as osp
import re
from typing import List, Optional, Tuple

from pelk_mm.errors import CheckpointLoadError, ConfigValidationError, UnsafeCheckpointError

from .check_data import check_data_paths

__all__ = ['ConfigValidationError', 'validate_config', 'backbone_out_channels', 'check_checkpoint_file',
           'check_earlier_run', 'check_resume_exact', 'check_resume_recipe', 'check_resume_world_size',
           'check_train_batches', 'check_work_dir', 'launcher_rank', 'lock_work_dir', 'resolve_resume',
           'WorkDirLock']

_PELK_TYPES = ('pelk_mm.PeLK', 'PeLK')


def _fail(key: str, problem: str, fix: str):
    raise ConfigValidationError(f'config key `{key}`: {problem}. Fix: {fix}', key)


# --------------------------------------------------------------------------------------------------- backbone
@contextlib.contextmanager
def _params_on_meta():
    """Create every nn.Parameter on the meta device (no memory, initialisation is a no-op)."""
    import torch
    import torch.nn as nn
    register = nn.Module.register_parameter

    def register_parameter(self, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(torch.empty_like(param, device='meta'), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _is_pelk(backbone_cfg) -> bool:
    t = backbone_cfg.get('type', '') if hasattr(backbone_cfg, 'get') else ''
    return (t in _PELK_TYPES) if isinstance(t, str) else getattr(t, '__name__', '') == 'PeLK'


def _innermost_reason(err: BaseException) -> str:
    """mmengine's registry prefixes 'class `X` in file: ' to errors raised while building; keep the reason."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    return re.sub(r'^(class `\w+` in [^:]+: )+', '', msg)


#: the fix shown for a bad value of each PeLK backbone argument
_BACKBONE_FIXES = {
    'model.backbone.arch': 'use arch one of tiny/small/base/tiny-101/base-101/tiny-151, or a dict with depths, '
                           'channels, odd kernel_sizes and center_sizes (each kernel size >= its centre)',
    'model.backbone.out_indices': 'list stage indices from 0 to the number of stages - 1 (e.g. [0, 1, 2, 3]; -1 '
                                  'is the last stage)',
    'model.backbone.frozen_stages': 'use -1 (nothing frozen) or a stage index up to the number of stages - 1',
    'model.backbone.half_grids': 'give one half grid per stage (outer -> centre, the centre cell 1 last) whose '
                                 'cells add up to (kernel size + 1) / 2, or None for the default grids',
    'model.backbone.kpe_mode': "use 'input', 'bias', 'weight' or None",
    'model.backbone.conv_type': "use 'peripheral', 'dense', 'stripe' or a registered LargeKernelConv form, and give "
                                "each form only its own settings (docs/architecture.md, 'A new large-kernel conv "
                                "form')",
    'model.backbone.conv_cfg': 'give the conv form only its own arguments (e.g. stripe_width for stripe); the '
                               'kernel and centre sizes, base, half_grids and conv_impl are PeLK arguments',
    'model.backbone.conv_impl': "use 'auto' or one of the implementations pelk_mm.ops.available_impls() lists",
    'model.backbone.drop_path_rate': 'use a rate in [0, 1), e.g. 0.1',
    'model.backbone.conv_ratio': 'use a fraction in (0, 1] of the channels that go through the large kernel '
                                 '(PeLK: 0.375)',
    'model.backbone': 'check the argument named in the message against the PeLK docstring (README "Using PeLK in '
                      'configs")',
}


def _backbone_key_for(reason: str) -> str:
    for name in ('conv_cfg', 'out_indices', 'kernel_sizes', 'center_sizes', 'frozen_stages', 'half_grids', 'kpe_mode',
                 'conv_type', 'conv_impl', 'drop_path_rate', 'conv_ratio'):
        if name in reason:
            return 'model.backbone.arch' if name in ('kernel_sizes', 'center_sizes') else f'model.backbone.{name}'
    if 'arch' in reason:
        return 'model.backbone.arch'
    return 'model.backbone'


def build_backbone_meta(backbone_cfg):
    """The PeLK backbone of a config with meta parameters; raises :class:`ConfigValidationError` on a bad arg."""
    import copy
    from mmengine.registry import MODELS
    import pelk_mm.models  # noqa: F401  (registers pelk_mm.PeLK)
    from .backbone_keys import check_backbone_keys
    check_backbone_keys(backbone_cfg)  # a misspelt key or name: one line with the closest valid one
    cfg = copy.deepcopy(dict(backbone_cfg))
    cfg['type'] = 'pelk_mm.PeLK'
    cfg.pop('init_cfg', None)
    try:
        with _params_on_meta():
            return MODELS.build(cfg)
    except (ValueError, TypeError, KeyError, AssertionError) as err:
        reason = _innermost_reason(err)
        key = _backbone_key_for(reason)
        value = _get(backbone_cfg, key[len('model.backbone.'):]) if key != 'model.backbone' else None
        shown = f' (= {value!r})' if value is not None else ''
        _fail(key, f'{reason}{shown}', _BACKBONE_FIXES.get(key, _BACKBONE_FIXES['model.backbone']))


def _get(cfg, dotted: str, default=None):
    cur = cfg
    for part in dotted.split('.'):
        if not part:
            continue
        if hasattr(cur, 'get'):
            cur = cur.get(part, default)
        else:
            return default
        if cur is default:
            return default
    return cur


def backbone_out_channels(backbone) -> List[int]:
    """Channels of the backbone's outputs, in output order (stage order of ``out_indices``)."""
    return [backbone.channels[i] for i in sorted(backbone.out_indices)]


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_head(head_cfg, key: str, outs: List[int]) -> None:
    if not hasattr(head_cfg, 'get') or head_cfg.get('in_channels', None) is None:
        return
    in_channels = head_cfg['in_channels']
    in_index = head_cfg.get('in_index', None)
    if in_index is None:
        in_index = list(range(len(outs))) if isinstance(in_channels, (list, tuple)) else -1
    try:
        expected = [outs[i] for i in _as_list(in_index)]
    except IndexError:
        _fail(f'{key}.in_index', f'in_index={in_index!r} but the backbone has {len(outs)} outputs (channels '
              f'{outs})',
              f'set {key}.in_index within 0..{len(outs) - 1} or add the stage to model.backbone.out_indices')
    expected_value = expected if isinstance(in_channels, (list, tuple)) else expected[0]
    if _as_list(in_channels) != expected:
        _fail(f'{key}.in_channels', f'{in_channels!r} does not match the backbone outputs it reads '
              f'(in_index={in_index!r} -> {expected_value!r}; backbone output channels {outs})',
              f'set {key}.in_channels={expected_value!r} (or change model.backbone.arch / out_indices)')


def _check_model(cfg) -> None:
    model = cfg.get('model', None)
    if not hasattr(model, 'get'):
        return
    if model.get('type', '') in ('SegTTAModel', 'DetTTAModel') or 'module' in model:
        model = model.get('module', model)
    backbone_cfg = model.get('backbone', None)
    if not hasattr(backbone_cfg, 'get') or not _is_pelk(backbone_cfg):
        return
    backbone = build_backbone_meta(backbone_cfg)
    outs = backbone_out_channels(backbone)
    scope = cfg.get('default_scope', None)
    neck = model.get('neck', None)
    if scope == 'mmpretrain' or model.get('head', None) is not None:
        head = model.get('head', None)
        if hasattr(head, 'get') and head.get('in_channels', None) is not None and (
                neck is None or (hasattr(neck, 'get') and 'GlobalAveragePooling' in str(neck.get('type', '')))):
            if head['in_channels'] != outs[-1]:
                _fail('model.head.in_channels', f'{head["in_channels"]!r} but the backbone\'s last output has '
                      f'{outs[-1]} channels (arch widths {backbone.channels}, out_indices {backbone.out_indices})',
                      f'set model.head.in_channels={outs[-1]}')
    for name in ('decode_head', 'auxiliary_head'):
        heads = model.get(name, None)
        if isinstance(heads, (list, tuple)):
            for i, h in enumerate(heads):
                _check_head(h, f'model.{name}[{i}]', outs)
        else:
            _check_head(heads, f'model.{name}', outs)
    if hasattr(neck, 'get') and isinstance(neck.get('in_channels', None), (list, tuple)):
        in_channels = list(neck['in_channels'])
        start = neck.get('start_level', 0)
        if in_channels != outs:
            _fail('model.neck.in_channels', f'{in_channels} does not match the backbone output channels {outs} '
                  f'(arch widths {backbone.channels}, out_indices {backbone.out_indices})',
                  f'set model.neck.in_channels={outs} (start_level={start} only skips levels inside the neck)')
    return backbone


# --------------------------------------------------------------------------------------------------- checkpoints
def check_checkpoint_file(path: str, key: str, missing_fix: Optional[str] = None) -> None:
    """Readability check of a local checkpoint: exists, non-empty, and every zip record matches its CRC-32."""
    if '://' in str(path):
        return
    if not osp.isfile(path):
        _fail(key, f'checkpoint {path!r} does not exist', missing_fix or 'give the path of an existing .pth file '
              '(e.g. work_dirs/<config>/epoch_N.pth or iter_N.pth)')
    size = osp.getsize(path)
    if size == 0:
        _fail(key, f'checkpoint {path!r} is empty (0 bytes)', 'use an intact checkpoint, e.g. an earlier '
              'epoch_*.pth / iter_*.pth in the same folder')
    from pelk_mm.checkpoint import check_checkpoint_safety, verify_checkpoint
    try:
        verify_checkpoint(path)  # every record's CRC-32 (cached: the load that follows does not repeat it)
        check_checkpoint_safety(path)  # refused globals, from the pickle's opcodes (nothing runs)
    except UnsafeCheckpointError:
        raise  # its message names the file, the refused global and the opt-in
    except CheckpointLoadError as err:
        _fail(key, str(err).split('. Fix: ')[0], 'use an intact checkpoint, e.g. an earlier epoch_*.pth / '
              'iter_*.pth in the same folder, or an intact copy of the file')
    except OSError as err:
        _fail(key, f'checkpoint {path!r} cannot be read ({err})', 'check the file\'s permissions')


def _readable(path: str) -> bool:
    try:
        check_checkpoint_file(path, 'resume')
        return True
    except ConfigValidationError:
        return False


def _step_of(path: str) -> Tuple[int, float]:
    m = re.search(r'(\d+)\.pth$', osp.basename(path))
    return (int(m.group(1)) if m else -1, osp.getmtime(path))


def resolve_resume(cfg) -> List[str]:
    """``--resume`` without a path: make sure ``work_dir/last_checkpoint`` leads to a readable checkpoint.

    Returns warnings. When ``last_checkpoint`` is missing, empty, or names a missing or damaged file, the newest
    intact ``epoch_*.pth``/``iter_*.pth`` in ``work_dir`` is used instead (``cfg.load_from`` is set to it), so an
    earlier run's checkpoints are continued, never rotated away by a fresh start. A work dir without any
    checkpoint starts a new run (with a note); one whose checkpoints are all damaged is an error. In a copy of a work
    dir (``cp -r``), whose ``last_checkpoint`` names the original's file, the copy's own file of that name is
    resumed, so the copy neither reads from nor writes to the original.
    """
    notes: List[str] = []
    if not cfg.get('resume', False):
        return notes
    load_from = cfg.get('load_from', None)
    if load_from:
        check_checkpoint_file(load_from, 'resume (--resume PATH / load_from)')
        return notes
    work_dir = cfg.get('work_dir', None)
    if not work_dir:
        return notes
    marker = osp.join(work_dir, 'last_checkpoint')
    from pelk_mm.checkpoint import links_elsewhere  # a symlink to another run's checkpoint is not this run's
    candidates = [p for p in glob.glob(osp.join(glob.escape(work_dir), '*.pth'))
                  if re.match(r'(epoch|iter)_\d+\.pth$', osp.basename(p)) and not links_elsewhere(p, work_dir)]
    candidates.sort(key=_step_of, reverse=True)
    if not osp.exists(marker):
        if not glob.glob(osp.join(glob.escape(work_dir), '*.pth')):
            notes.append(f'--resume: {work_dir} holds no checkpoint yet (no last_checkpoint, no *.pth): starting '
                         f'a new run there')
            return notes
        why = 'does not exist'
        target = ''
    else:
        with open(marker) as f:
            target = f.read().strip()
        from pelk_mm.checkpoint import path_inside
        own = osp.join(work_dir, osp.basename(target)) if target and '://' not in target else ''
        if own and not path_inside(target, work_dir) and osp.isfile(own) and _readable(own):
            # NOTE: mmengine would resume the file named there, in the other folder, and carry that run's best
            # checkpoint path along; this folder's file of the same name is what a copied work dir means
            cfg.load_from = own
            notes.append(f'--resume: {marker} names {target}, outside {work_dir} (a copied work dir?); resuming from '
                         f'{own}, this work dir\'s file of that name, instead')
            return notes
        if target and osp.isfile(target) and _readable(target):
            return notes
        why = ('is empty' if not target else f'names {target!r}, which does not exist' if not osp.isfile(target)
               else f'names {target!r}, which is truncated or corrupt')
    for path in candidates:
        if _readable(path):
            cfg.load_from = path
            notes.append(f'--resume: {marker} {why}; resuming from the newest intact checkpoint {path} instead')
            return notes
    _fail('resume', f'{marker} {why} and {work_dir} holds no intact epoch_*.pth / iter_*.pth to resume from '
          f'(looked for last_checkpoint, then epoch_*.pth / iter_*.pth)',
          'pass --resume PATH to an intact checkpoint, or start a new run in another --work-dir (starting here would '
          'overwrite or rotate away the files in it)')


def check_work_dir(cfg) -> None:
    """``work_dir`` must be a folder (or not exist yet) that this process can write: a file there, or a folder on a
    read-only disk or without write permission, fails only when the first log or checkpoint is written."""
    work_dir = cfg.get('work_dir', None)
    if not work_dir or '://' in str(work_dir):
        return
    if osp.exists(work_dir) and not osp.isdir(work_dir):
        _fail('work_dir', f'{work_dir!r} is a file, not a folder', 'give --work-dir a folder (it is created if '
              'missing), e.g. work_dirs/<config name>')
    folder = osp.abspath(work_dir)
    while not osp.exists(folder):  # the folder the run would create it in
        folder = osp.dirname(folder)
    if not osp.isdir(folder):
        _fail('work_dir', f'{work_dir!r} cannot be created: {folder!r} is a file', 'give --work-dir a path under a '
              'folder')
    import tempfile
    try:
        # NOTE: a real write, not os.access: root passes os.access on a read-only mount or a folder of mode 0555
        # only where the write itself succeeds
        with tempfile.TemporaryFile(dir=folder, prefix='.pelk_mm-write-check-'):
            pass
    except OSError as err:
        what = work_dir if folder == osp.abspath(work_dir) else f'{folder} (where {work_dir} would be created)'
        _fail('work_dir', f'{what} cannot be written ({type(err).__name__}: {err.strerror or err})',
              'give --work-dir a folder you can write (the run writes its logs and checkpoints there), or fix the '
              'folder\'s permissions / mount it writable')


#: the lock file of a work dir, held by the launching process (rank 0) for the run's life
LOCK_NAME = '.pelk_mm.lock'


class WorkDirLock:
    """One run per work dir: a POSIX record lock (``fcntl.lockf``) on ``work_dir/.pelk_mm.lock``.

    The kernel drops the lock when the process ends, however it ends (``kill -9`` included), so a killed run never
    leaves it stuck. Record locks are not inherited by forked children (dataloader workers), so nothing but the
    holder keeps it. The file holds the holder's pid, host and start time, for the message of a refused run.
    """

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def release(self) -> None:
        """Drop the lock (the file stays: removing it could let a third run lock a file a second one has open)."""
        import os
        if self.fd is not None:
            os.close(self.fd)  # closing drops the record lock
            self.fd = None


def launcher_rank(launcher: str = 'none', environ=None) -> int:
    """This process's global rank before the process group exists (from the launcher's environment)."""
    import os
    environ = os.environ if environ is None else environ
    name = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}.get(launcher, None)
    return int(environ.get(name, '0') or 0) if name else 0


def lock_work_dir(cfg, create: bool = True) -> Tuple[Optional[WorkDirLock], List[str]]:
    """Take the work dir's lock for this run (rank 0 only: the N processes of one distributed run share it).

    Returns ``(lock, notes)``; ``lock`` is None on other ranks, for URLs, where the file system has no locks (with a
    note), and, with ``create=False``, where the work dir has no lock file yet (nothing is created then). A work dir
    locked by a running process is refused in one line naming it and the holder.
    """
    import errno
    import fcntl
    import os
    import socket
    import time
    work_dir = cfg.get('work_dir', None)
    if not work_dir or '://' in str(work_dir) or launcher_rank(cfg.get('launcher', 'none')) != 0:
        return None, []
    path = osp.join(work_dir, LOCK_NAME)
    if not create and not osp.isfile(path):
        return None, []
    os.makedirs(work_dir, exist_ok=True)
    # NOTE: this process opens the lock file only here: closing any descriptor of a file drops the process's
    # record locks on it
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = ''
        if err.errno in (errno.EACCES, errno.EAGAIN):
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 512, 0).decode('utf-8', 'replace').strip()
        os.close(fd)
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return None, [f'{work_dir}: the file system does not support locks ({err.strerror}), so a second run '
                          f'started in this work dir would not be refused; start only one run per work dir']
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        _fail('work_dir', f'{work_dir} is in use by another run ({holder or "holder unknown"}; lock file {path}): a '
              f'second run there would overwrite its checkpoints and logs',
              'wait until that run ends (or stop it), or start this one in another --work-dir')
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()} since '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode(), 0)
    return WorkDirLock(fd, path), []


def _resume_target(cfg) -> Optional[str]:
    """The local checkpoint that ``--resume`` continues (after :func:`resolve_resume`), or None."""
    if not cfg.get('resume', False):
        return None
    path = cfg.get('load_from', None)
    marker = osp.join(cfg.get('work_dir', None) or '', 'last_checkpoint')
    if not path and cfg.get('work_dir', None) and osp.isfile(marker):
        with open(marker) as f:
            path = f.read().strip()  # what mmengine's auto-resume picks (resolve_resume checked it)
    if not path or '://' in str(path) or not osp.isfile(path):
        return None
    return path


def _world_size() -> int:
    import os
    return int(os.environ.get('WORLD_SIZE', os.environ.get('SLURM_NTASKS', '1')) or 1)


def check_resume_world_size(cfg, world_size: Optional[int] = None, rescale: bool = False) -> List[str]:
    """``--resume`` with another number of processes than the checkpoint's run: the global batch, the per-epoch
    iteration count (and with it every iteration-based schedule milestone) and the random streams would all change
    silently, so it is refused -- unless ``rescale`` (``--resume-other-world-size``): then the per-process batch
    size is scaled so that the global batch, the iterations per epoch, the schedule and the lr stay as they were.
    Returns the note saying so."""
    path = _resume_target(cfg)
    if path is None:
        return []
    from pelk_mm.checkpoint import load_checkpoint_file
    state = load_checkpoint_file(path, map_location='cpu', mmap=True).get('resume_state', None) or {}
    saved = state.get('world_size', None)
    world_size = world_size if world_size is not None else _world_size()
    if saved is None or saved == world_size:
        return []
    if not rescale:
        _fail('resume', f'{path} was written by a run of {saved} process(es), this run has {world_size}: the '
              f'global batch size, the iterations per epoch and the learning-rate schedule would change',
              f'resume with the same number of processes (tools/dist_train.sh CONFIG {saved} --resume), add '
              f'--resume-other-world-size to keep the global batch by rescaling the per-process batch size, or '
              f'start a new run from it with load_from (fine-tuning semantics)')
    loader = cfg.get('train_dataloader', None) or {}
    batch = loader.get('batch_size', None)
    total = batch * saved if isinstance(batch, int) else None
    if total is None or total % world_size:
        _fail('resume', f'--resume-other-world-size: the global batch {total} ({saved} x {batch}) of {path} cannot be '
              f'split evenly over {world_size} process(es)',
              f'use a process count that divides {total}, or the original {saved}')
    cfg.train_dataloader.batch_size = total // world_size
    return [f'--resume-other-world-size: {path} was written by {saved} process(es) x batch {batch}; this run has '
            f'{world_size}, so train_dataloader.batch_size is {total // world_size} per process: the global batch '
            f'({total}), iterations per epoch, schedule and lr stay the same (the random streams differ: not '
            f'bit-identical to an uninterrupted run)']


def check_resume_recipe(cfg, allow_changes: bool = False, world_size: Optional[int] = None) -> List[str]:
    """``--resume`` with a config whose recipe (model, optimizer, lr schedule, ``auto_scale_lr``, batch size)
    differs from the one the checkpoint was trained with (``meta['cfg']``): mmengine would restore the checkpoint's
    optimizer settings and schedule and silently ignore the config's. Refused in one line listing each changed key
    ``old -> new``, unless ``allow_changes`` (``--resume-with-changes``): then the config's values apply
    (:class:`pelk_mm.engine.ResumeChangesHook`) and the returned note lists them. Run it after
    :func:`check_resume_world_size`, whose rescaled batch keeps the global batch (compared as such)."""
    path = _resume_target(cfg)
    if path is None:
        return []
    from pelk_mm.checkpoint import load_checkpoint_file
    from pelk_mm.engine.hooks.resume_changes_hook import format_changes, read_config_text, recipe_changes
    ckpt = load_checkpoint_file(path, map_location='cpu', mmap=True)
    saved = read_config_text(str((ckpt.get('meta', None) or {}).get('cfg', '') or ''))
    if not saved:
        return []  # not written by an mmengine Runner: no recipe to compare with
    try:
        current = read_config_text(cfg.pretty_text)
    except Exception:  # noqa: BLE001 - a config mmengine cannot print; the Runner reports it
        return []
    state = ckpt.get('resume_state', None) or {}
    world_size = world_size if world_size is not None else _world_size()
    changes = recipe_changes(saved, current or {}, state.get('world_size', None), world_size)
    if not changes:
        return []
    listed = format_changes(changes)
    if allow_changes:
        return [f'--resume-with-changes: the config differs from the recipe of {path}, and the config\'s values '
                f'apply: {listed} (the optimizer settings and the lr schedule are the config\'s, advanced to the '
                f'resumed iteration; weights, optimizer moments and counters come from the checkpoint)']
    _fail('resume', f'the config differs from the recipe {path} was trained with: {listed}; a resume would keep '
          f'the checkpoint\'s optimizer settings and lr schedule (mmengine restores them) but take the batch size '
          f'and model from the config',
          f'resume with the checkpoint\'s values (drop these changes), add --resume-with-changes to continue from '
          f'the checkpoint with the config\'s values (the lr schedule is re-applied at the resumed iteration), or '
          f'start a new run from its weights with --cfg-options load_from={path} in another --work-dir')


def check_train_batches(runner) -> None:
    """Every process of an epoch-based run gets the same, non-zero number of batches per epoch.

    A process with fewer batches leaves the epoch while the others wait for it in the gradient all-reduce, which
    hangs until the collective timeout; with none anywhere an epoch trains nothing. Runs on every rank (the counts
    are gathered), after the Runner is built and before training, so every rank raises the same one-line error.
    """
    from mmengine.dist import all_gather_object, is_distributed
    from mmengine.runner.loops import EpochBasedTrainLoop
    loop = runner._train_loop  # the train_cfg dict until runner.train() (or runner.train_loop) builds it
    if not (isinstance(loop, EpochBasedTrainLoop) or isinstance(loop, dict) and _is_epoch_based(dict(train_cfg=loop))):
        return
    loader = runner.train_dataloader  # builds the train loop and its dataloader (runner.train() reuses them)
    try:
        count = len(loader)
    except TypeError:
        return  # an iterable dataset without a length
    counts = all_gather_object(count) if is_distributed() else [count]
    if min(counts) > 0 and len(set(counts)) == 1:
        return
    dataset = loader.dataset
    batch_sampler = getattr(loader, 'batch_sampler', None)
    sampler = getattr(batch_sampler, 'sampler', None) or getattr(loader, 'sampler', None)
    batch = loader.batch_size if loader.batch_size is not None else getattr(batch_sampler, 'batch_size', None)
    drop_last = loader.drop_last if loader.batch_size is not None else getattr(batch_sampler, 'drop_last', None)
    round_up = getattr(sampler, 'round_up', None)
    try:
        size = len(dataset)
    except TypeError:
        size = None
    ws = len(counts)
    name = type(dataset).__name__
    root = getattr(dataset, 'data_root', None) or getattr(dataset, 'ann_file', None)
    what = (f'the train dataset {name}' + (f' ({root})' if root else '') + f' has {size} samples; with {ws} '
            f'process(es) x batch_size={batch} (drop_last={drop_last}, {type(sampler).__name__}'
            + (f' round_up={round_up}' if round_up is not None else '') + f') the processes get {counts} batches '
            f'per epoch: ')
    if max(counts) == 0:
        what += 'an epoch would train nothing'
    else:
        what += ('a process with fewer batches leaves the epoch while the others wait for it in the gradient '
                 'all-reduce, a hang until the collective timeout')
    per_process = (size // ws) if size is not None else None
    fixes = []
    if round_up is False:
        fixes.append('set train_dataloader.sampler.round_up=True (every process then gets the same number of '
                     'samples)')
    if drop_last and per_process is not None and batch:
        fixes.append(f'use train_dataloader.batch_size <= {max(per_process, 1)} or drop_last=False')
    if size is not None and size < ws:
        fixes.append(f'use at most {max(size, 1)} process(es)')
    fixes.append('or train on more data')
    _fail('train_dataloader', what, ', '.join(fixes))


def check_earlier_run(cfg) -> None:
    """A new run (no ``--resume``) must not overwrite or rotate away the checkpoints of an earlier run: a
    ``work_dir`` that already holds ``epoch_*.pth`` / ``iter_*.pth`` is refused."""
    work_dir = cfg.get('work_dir', None)
    if cfg.get('resume', False) or not work_dir or not osp.isdir(work_dir):
        return
    found = sorted((p for p in glob.glob(osp.join(glob.escape(work_dir), '*.pth'))
                    if re.match(r'(epoch|iter)_\d+\.pth$', osp.basename(p))), key=_step_of)
    if found:
        names = ', '.join(osp.basename(p) for p in found[-3:])
        _fail('work_dir', f'{work_dir} already holds checkpoints of an earlier run ({names}); a new run there '
              f'would overwrite them or rotate them away (max_keep_ckpts)',
              'continue that run with --resume, or start the new one in another --work-dir')


def _is_epoch_based(cfg) -> bool:
    train_cfg = cfg.get('train_cfg', None) or {}
    loop = str(train_cfg.get('type', ''))
    return loop.endswith('EpochBasedTrainLoop') or (not loop and bool(train_cfg.get('by_epoch', True)))


def check_resume_exact(cfg) -> None:
    """``--resume`` of a run that promises bit-exact resumes (``pelk_mm.ResumeStateHook``) with loader settings
    that cannot deliver it is an error, not a warning at start-up: persistent workers in an epoch-based loop keep
    their random state in processes that no checkpoint captures."""
    hooks = [h for h in _as_list(cfg.get('custom_hooks', None) or []) if hasattr(h, 'get')]
    if not cfg.get('resume', False) or not any(str(h.get('type', '')).endswith('ResumeStateHook') for h in hooks):
        return
    loader = cfg.get('train_dataloader', None) or {}
    if _is_epoch_based(cfg) and int(loader.get('num_workers', 0) or 0) > 0 and loader.get('persistent_workers'):
        _fail('train_dataloader.persistent_workers',
              'True in an epoch-based loop: the workers\' random state lives in the worker processes, which no '
              'checkpoint captures, so --resume cannot continue this run bit-exactly as ResumeStateHook promises',
              'set train_dataloader.persistent_workers=False in the config for runs that must resume exactly; to '
              'continue this run anyway (not bit-identical to an uninterrupted one), resume with --cfg-options '
              'train_dataloader.persistent_workers=False')


def _pretrained_cfgs(backbone_cfg) -> List[dict]:
    init_cfg = backbone_cfg.get('init_cfg', None)
    out = []
    for item in _as_list(init_cfg) if init_cfg is not None else []:
        if hasattr(item, 'get') and item.get('type', None) == 'Pretrained' and item.get('checkpoint', None):
            out.append(item)
    return out


def _guess_arch(state_dict) -> Optional[str]:
    from pelk_mm.models.backbones.pelk import PeLK
    depths, i = [], 0
    while any(k.startswith(f'stages.{i}.') for k in state_dict):
        depths.append(len({k.split('.')[2] for k in state_dict if k.startswith(f'stages.{i}.')
                           and k.split('.')[2].isdigit()}))
        i += 1
    stem = state_dict.get('downsample_layers.0.0.weight', None)
    if stem is None:
        return None
    for name, arch in PeLK.arch_settings.items():
        if arch['depths'] == depths and arch['channels'][0] == stem.shape[0]:
            return name
    return f'depths={depths}, stem width {stem.shape[0]}'


def _check_pretrained(cfg, backbone) -> None:
    model = cfg.get('model', None)
    backbone_cfg = model.get('backbone', None) if hasattr(model, 'get') else None
    if backbone is None or not hasattr(backbone_cfg, 'get'):
        return
    for init in _pretrained_cfgs(backbone_cfg):
        path, prefix = init['checkpoint'], init.get('prefix', None)
        key = 'model.backbone.init_cfg.checkpoint'
        if '://' in str(path):
            continue
        check_checkpoint_file(path, key, missing_fix=(
            'train or download the ImageNet-1k PeLK checkpoint and put it there (README "Pretrained weights"), '
            'point the key at your copy with --cfg-options model.backbone.init_cfg.checkpoint=/path/to.pth, or '
            'train from scratch with --cfg-options model.backbone.init_cfg=None'))
        from pelk_mm.checkpoint import load_checkpoint_file
        try:
            ckpt = load_checkpoint_file(path, map_location='cpu')
        except UnsafeCheckpointError:
            raise  # its message names the file, the refused global and the opt-in
        except CheckpointLoadError as err:
            _fail(key, str(err).split('. Fix: ')[0], 'use an intact checkpoint')
        state = ckpt.get('state_dict', ckpt.get('model', ckpt)) if isinstance(ckpt, dict) else {}
        if prefix:
            p = prefix if prefix.endswith('.') else prefix + '.'
            state = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
            if not state:
                _fail('model.backbone.init_cfg.prefix', f'no key of {path!r} starts with {prefix!r}',
                      'set prefix to the part before the backbone keys (\'backbone.\' for mmpretrain/mmseg/mmdet '
                      'checkpoints) or None for a backbone-only state_dict')
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items() if hasattr(v, 'shape')}
        expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
        common = [k for k in expected if k in state]
        mismatched = [k for k in common if tuple(state[k].shape) != expected[k]]
        if mismatched or len(common) < len(expected) // 2:
            guess = _guess_arch(state)
            arch = backbone_cfg.get('arch', 'tiny')
            detail = (f'{len(mismatched)} of {len(common)} shared keys differ in shape, e.g. {mismatched[0]} '
                      f'{tuple(state[mismatched[0]].shape)} in the checkpoint vs {expected[mismatched[0]]} in the '
                      f'model' if mismatched else
                      f'only {len(common)} of the backbone\'s {len(expected)} keys are in the checkpoint')
            _fail(key, f'{path!r} does not match model.backbone (arch={arch!r}): {detail}'
                  + (f'; the checkpoint looks like arch {guess!r}' if guess else ''),
                  'use the checkpoint of this arch, or set model.backbone.arch to the checkpoint\'s'
                  + ('' if prefix else '; for a full-model checkpoint set init_cfg prefix=\'backbone.\''))


def _check_evaluator_files(cfg, mode: str) -> None:
    """COCO-style evaluators read their own annotation file (``val_evaluator.ann_file``)."""
    keys = ('val_evaluator', ) if mode == 'val' else ('test_evaluator', ) if mode == 'test' else ('val_evaluator', )
    if mode == 'train' and not cfg.get('val_cfg', None):
        return
    for key in keys:
        for i, ev in enumerate(_as_list(cfg.get(key, None))):
            ann = ev.get('ann_file', None) if hasattr(ev, 'get') else None
            if isinstance(ann, str) and ann and '://' not in ann and not osp.exists(ann):
                name = key if not isinstance(cfg.get(key), (list, tuple)) else f'{key}[{i}]'
                _fail(f'{name}.ann_file', f'annotation file {ann!r} does not exist',
                      f'point it at the dataset\'s annotation json (the same file as the dataloader\'s ann_file), '
                      f'e.g. --cfg-options {name}.ann_file=/path/to/instances_val2017.json')


# --------------------------------------------------------------------------------------------------- entry point
def validate_config(cfg, mode: str = 'train', config_name: str = '', check_data: bool = True,
                    check_checkpoints: bool = True, resume_other_world_size: bool = False,
                    resume_with_changes: bool = False) -> List[str]:
    """Validate ``cfg`` for ``mode`` ('train', 'val', 'test') before the Runner is built.

    Raises :class:`ConfigValidationError` / :class:`MissingDataError` (one line each); returns warnings (e.g. a
    resume fallback) for the caller to log.
    """
    from .check_settings import check_settings
    notes: List[str] = []
    notes += check_settings(cfg, mode)
    backbone = _check_model(cfg)
    if check_data:
        check_data_paths(cfg, mode=mode, config_name=config_name)
        _check_evaluator_files(cfg, mode)
    if check_checkpoints:
        _check_pretrained(cfg, backbone)
        if mode == 'train':
            check_work_dir(cfg)
            check_earlier_run(cfg)
            check_resume_exact(cfg)
            notes += resolve_resume(cfg)
            notes += check_resume_world_size(cfg, rescale=resume_other_world_size)
            notes += check_resume_recipe(cfg, allow_changes=resume_with_changes)
            if not cfg.get('resume', False) and cfg.get('load_from', None):
                check_checkpoint_file(cfg['load_from'], 'load_from')
        elif cfg.get('load_from', None):
            check_checkpoint_file(cfg['load_from'], 'load_from (the checkpoint argument)')
    return notes
