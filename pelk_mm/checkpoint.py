"""Checkpoint files: safe and verified loading, atomic writing.

A checkpoint is a pickle, and unpickling an arbitrary file can run any code it names. Every checkpoint that pelk_mm
or mmengine loads in a process that imported pelk_mm goes through :func:`load_checkpoint_file`:

* ``torch.load(..., weights_only=True)`` with a short allow-list of the *data types* that genuine checkpoints of
  this stack hold besides tensors and plain Python values (:data:`SAFE_GLOBALS`: mmengine's ``HistoryBuffer`` in
  the message hub, numpy arrays, dtypes and scalars). No callable beyond numpy's array/scalar reconstructors is
  allowed; ``getattr``, which mmengine's ``HistoryBuffer`` pickles for its four statistics methods, resolves to a
  stand-in that returns exactly those and refuses anything else. A file whose unpickling would call
  ``os.system``, ``eval``, ``open`` ... is refused with one line naming the file and the global, before any of its
  code runs (the globals are read from the pickle's opcodes first).
* **Integrity**: the CRC-32 of every record of a zip checkpoint (the format ``torch.save`` writes) is checked
  before it is unpickled, so a bit flip in a tensor record stops the load instead of giving silently wrong weights.
  Measured cost: about 0.2 ms per MB read from the page cache (0.11 s for a 547 MB PeLK-T checkpoint with its
  AdamW state, on 2 EPYC cores); each file is verified once per process (keyed on path, size and mtime).
* **Opt-in for trusted legacy files**: a file the allow-list refuses loads with ``weights_only=False`` only when
  the user says they trust it: ``--trust-checkpoint`` on the tools, or ``PELK_MM_TRUST_CHECKPOINTS=1`` in the
  environment (for configs run by any entry point). It is never on by default and every such load logs a warning.

The loaders for mmengine's schemes (local paths, ``http(s)://`` and the ``torchvision://`` / ``open-mmlab://`` /
``mmcls://`` model zoos that resolve to URLs, ``s3://`` / ``petrel://``) are installed by :mod:`pelk_mm.compat`.
"""
from __future__ import annotations

import errno
import io
import os
import os.path as osp
import pickle
import re
import tempfile
import zipfile
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from .errors import CheckpointLoadError, CorruptCheckpointError, DiskFullError, UnsafeCheckpointError

__all__ = [
    'SAFE_GLOBALS', 'TRUST_ENV',
    'set_trust_checkpoints', 'checkpoints_trusted', 'verify_checkpoint', 'refused_globals',
    'check_checkpoint_safety', 'load_checkpoint_file', 'checkpoint_weights', 'weights_mismatch',
    'nonfinite_tensors', 'nonfinite_weights', 'check_checkpoint_fits', 'remove_stale_writes', 'atomic_write'
]

#: environment variable that lets :func:`load_checkpoint_file` unpickle files the allow-list refuses
TRUST_ENV = 'PELK_MM_TRUST_CHECKPOINTS'

#: ``module:qualname`` of the non-tensor types genuine checkpoints of this stack contain (found with
#: ``torch.serialization.get_unsafe_globals_in_checkpoint`` on Runner checkpoints of the classification,
#: segmentation and detection demos with the EMA, sparsity and resume-state hooks on). numpy 1 and 2 spell the
#: array module differently (``numpy.core`` / ``numpy._core``); both are listed.
SAFE_GLOBALS: Tuple[str, ...] = (
    'mmengine.logging.history_buffer:HistoryBuffer',
    'numpy:ndarray',
    'numpy:dtype',
    'numpy._core.multiarray:_reconstruct',
    'numpy._core.multiarray:scalar',
    'numpy.core.multiarray:_reconstruct',
    'numpy.core.multiarray:scalar',
)
#: numpy >= 1.25 pickles a dtype through its class in ``numpy.dtypes`` (``Float64DType`` ...): data types only
_NUMPY_DTYPE_CLASSES = re.compile(r'^[A-Za-z0-9]+DType$')

_FIX_DAMAGED = ('use an intact copy of the file (download or copy it again), or an earlier epoch_*.pth / '
                'iter_*.pth in the same work_dir')


# --------------------------------------------------------------------------------------------------- trust opt-in
def set_trust_checkpoints(enabled: bool = True) -> None:
    """Let this process (and the processes it starts) load checkpoints the allow-list refuses."""
    if enabled:
        os.environ[TRUST_ENV] = '1'
    else:
        os.environ.pop(TRUST_ENV, None)


def checkpoints_trusted() -> bool:
    value = os.environ.get(TRUST_ENV, '').strip().lower()
    if value in ('', '0', 'false', 'no', 'off'):
        return False
    if value in ('1', 'true', 'yes', 'on'):
        return True
    raise CheckpointLoadError(f'{TRUST_ENV}={os.environ[TRUST_ENV]!r} is neither on nor off. Fix: set it to 1 to '
                              f'load checkpoints the safe loader refuses (only files you trust), or unset it')


def _resolve(name: str):
    module, _, qualname = name.partition(':')
    try:
        obj = __import__(module, fromlist=[qualname.split('.')[0]])
        for part in qualname.split('.'):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError):
        return None  # e.g. numpy.core under numpy 2 without the shim, mmengine absent


#: the statistics mmengine's ``HistoryBuffer.__getstate__`` pickles as ``getattr(HistoryBuffer, name)``
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    """Stands in for ``builtins.getattr`` while unpickling: resolves only HistoryBuffer's default statistics.

    mmengine's ``HistoryBuffer.__getstate__`` pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``
    etc., so every Runner checkpoint names ``builtins.getattr``. This accessor returns those four methods (which
    ``HistoryBuffer.__setstate__`` registers anyway) and refuses every other use, so no attribute of any object can
    be reached through it.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'GLOBAL builtins.getattr was used for getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}); '
        f'only HistoryBuffer statistics are allowed')


def _safe_globals() -> List[Any]:
    found = [obj for obj in map(_resolve, SAFE_GLOBALS) if obj is not None]
    if _resolve(SAFE_GLOBALS[0]) is not None:  # mmengine is importable
        found.append((_history_buffer_getattr, 'builtins.getattr'))
    try:
        import numpy.dtypes as np_dtypes
        found += [getattr(np_dtypes, n) for n in dir(np_dtypes)
                  if _NUMPY_DTYPE_CLASSES.match(n) and isinstance(getattr(np_dtypes, n), type)]
    except ImportError:
        pass
    return found


# --------------------------------------------------------------------------------------------------- integrity
_VERIFIED: Dict[Tuple[str, int, int], bool] = {}  # files whose every record matched its CRC-32
_REFUSED: Dict[Tuple[str, int, int], Tuple[str, ...]] = {}  # file -> the globals it names beyond the allow-list


def _file_key(path: str) -> Tuple[str, int, int]:
    stat = os.stat(path)
    return osp.realpath(path), stat.st_size, stat.st_mtime_ns


def _describe(source: Union[str, io.BytesIO]) -> str:
    return repr(source) if isinstance(source, str) else 'the downloaded checkpoint'


def verify_checkpoint(source: Union[str, io.BytesIO]) -> None:
    """Raise :class:`CorruptCheckpointError` unless every record of a zip checkpoint matches its CRC-32.

    ``source`` is a path or an in-memory buffer. Files in torch's legacy (non-zip) format carry no checksums and
    pass unchecked; anything else that is not a zip archive (a truncated file, a random file) is an error.
    """
    key = None
    if isinstance(source, str):
        key = _file_key(source)
        if key in _VERIFIED:
            return
        size = key[1]
    else:
        size = len(source.getbuffer())
    what = _describe(source)
    if size == 0:
        raise CorruptCheckpointError(f'checkpoint {what} is empty (0 bytes). Fix: {_FIX_DAMAGED}')
    if not zipfile.is_zipfile(source):
        head = _head(source)
        if head[:1] == b'\x80':  # torch's legacy pickle format: no checksums to verify
            return
        raise CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is truncated or not a PyTorch checkpoint (no zip directory at its '
            f'end; a run killed while writing leaves such a file). Fix: {_FIX_DAMAGED}')
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                with zf.open(info) as member:  # ZipExtFile compares the CRC-32 when the record is read to its end
                    while member.read(1 << 24):
                        pass
    except zipfile.BadZipFile as err:
        record = re.search(r"for file '([^']+)'", str(err))
        detail = (f'record {record.group(1)!r} does not match its stored CRC-32' if record else f'{err}')
        raise CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is damaged: {detail} (the data changed after the file was written: '
            f'a disk, copy or download error). Fix: {_FIX_DAMAGED}') from None
    except (OSError, EOFError, ValueError, NotImplementedError) as err:
        raise CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is corrupt ({type(err).__name__}: {err}). Fix: {_FIX_DAMAGED}') from None
    finally:
        if not isinstance(source, str):
            source.seek(0)
    if key is not None:
        _VERIFIED[key] = True


def _head(source: Union[str, io.BytesIO]) -> bytes:
    if isinstance(source, str):
        with open(source, 'rb') as f:
            return f.read(2)
    head = source.read(2)
    source.seek(0)
    return head


# --------------------------------------------------------------------------------------------------- loading
def _allowed_names() -> set:
    return {g[1] if isinstance(g, tuple) else f'{g.__module__}.{g.__qualname__}' for g in _safe_globals()}


def refused_globals(source: Union[str, io.BytesIO]) -> List[str]:
    """The globals a zip checkpoint's pickle names beyond tensors, plain data and :data:`SAFE_GLOBALS`.

    Read from the pickle's opcodes (``torch.serialization.get_unsafe_globals_in_checkpoint``): nothing in the file
    is executed. Empty for a legacy (non-zip) file, whose globals only show when it is unpickled.
    """
    key = _file_key(source) if isinstance(source, str) else None
    if key is not None and key in _REFUSED:
        return list(_REFUSED[key])  # the config check scanned it already
    if not zipfile.is_zipfile(source):
        return []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    finally:
        if not isinstance(source, str):
            source.seek(0)
    allowed = _allowed_names()
    refused = [n for n in names if n not in allowed]
    if key is not None:
        _REFUSED[key] = tuple(refused)
    return refused


def _refuse(what: str, refused: List[str]) -> UnsafeCheckpointError:
    shown = ', '.join(refused[:3]) + (f' (+{len(refused) - 3} more)' if len(refused) > 3 else '')
    return UnsafeCheckpointError(
        f'checkpoint {what} was refused: unpickling it would call {shown or "a global"}, which is not among the '
        f'data types genuine checkpoints hold, and such a file can run code when loaded. If you trust the file '
        f'and where it came from, load it anyway with --trust-checkpoint (tools/train.py, tools/test.py, '
        f'tools/analysis) or {TRUST_ENV}=1 in the environment (any entry point)')


def check_checkpoint_safety(source: Union[str, io.BytesIO], name: Optional[str] = None) -> None:
    """Raise :class:`UnsafeCheckpointError` when the file needs a refused global and trust is not enabled.

    Executes nothing, so the config checks run it before the Runner is built."""
    what = repr(name) if name else _describe(source)
    try:
        refused = refused_globals(source)
    except Exception as err:  # noqa: BLE001 - an unreadable pickle record
        raise _unreadable(source, what, err) from None
    if refused and not checkpoints_trusted():
        raise _refuse(what, refused)


def _load_trusted(source, map_location, what: str, refused: List[str]):
    _log_warning(f'loading checkpoint {what} with weights_only=False because {TRUST_ENV} / --trust-checkpoint is '
                 f'set: it names {", ".join(refused) or "globals"} outside the allow-list, and unpickling it runs '
                 f'whatever code it names')
    if not isinstance(source, str):
        source.seek(0)
    try:
        return torch.load(source, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise _unreadable(source, what, err) from None


def _log_warning(message: str) -> None:
    try:
        import logging

        from mmengine.logging import print_log
        print_log(message, logger='current', level=logging.WARNING)
    except ImportError:
        import warnings
        warnings.warn(message, stacklevel=3)


def load_checkpoint_file(source: Union[str, io.BytesIO], map_location=None, name: Optional[str] = None,
                         mmap: bool = False):
    """Load a checkpoint safely: CRC-verified, then ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS`.

    Args:
        source: A local path or an in-memory buffer (remote schemes read into one).
        map_location: As in :func:`torch.load`.
        name: How to name the file in messages (the URL of a downloaded buffer). Defaults to the path.
        mmap: Map the tensors of a zip checkpoint file instead of reading them (to look at a few entries cheaply).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        CorruptCheckpointError: truncated, or a record fails its CRC-32.
        UnsafeCheckpointError: the file needs a global outside the allow-list and trust is not enabled.
        CheckpointLoadError: any other unreadable file.
    """
    if isinstance(source, str):
        source = osp.expanduser(source)
        if not osp.isfile(source):
            raise FileNotFoundError(f'checkpoint file {source!r} does not exist')
    what = repr(name) if name else _describe(source)
    try:
        verify_checkpoint(source)
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(str(err).replace(_describe(source), what, 1)) from None
    try:
        refused = refused_globals(source)
    except Exception as err:  # noqa: BLE001 - an unreadable pickle record
        raise _unreadable(source, what, err) from None
    if refused:
        if not checkpoints_trusted():
            raise _refuse(what, refused)
        return _load_trusted(source, map_location, what, refused)
    extra = dict(mmap=True) if mmap and isinstance(source, str) and zipfile.is_zipfile(source) else {}
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(source, map_location=map_location, weights_only=True, **extra)
    except pickle.UnpicklingError as err:  # a legacy-format file (no opcode scan) that needs more
        refused = re.findall(r'GLOBAL (\S+)', str(err))
        if not checkpoints_trusted():
            raise _refuse(what, refused) from None
        return _load_trusted(source, map_location, what, refused)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise _unreadable(source, what, err) from None


def _unreadable(source, what: str, err: BaseException) -> CheckpointLoadError:
    size = osp.getsize(source) if isinstance(source, str) else len(source.getbuffer())
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointLoadError(
        f'cannot read checkpoint {what} ({size} bytes): {type(err).__name__}: {reason}. The file is truncated or '
        f'corrupt (e.g. the run was killed while writing it) or not a PyTorch checkpoint. Fix: {_FIX_DAMAGED}')


# --------------------------------------------------------------------------------------------------- contents
def checkpoint_weights(checkpoint) -> Dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint (its ``state_dict``, else the dict itself), without a DDP
    ``module.`` prefix."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items() if torch.is_tensor(v)}


def _first(names: List[str], count: int = 3) -> str:
    return ', '.join(names[:count]) + (f' (+{len(names) - count} more)' if len(names) > count else '')


def weights_mismatch(model: torch.nn.Module, weights: Dict[str, torch.Tensor],
                     allowed_prefixes: Tuple[str, ...] = ()) -> Optional[str]:
    """``None`` when ``weights`` cover every entry of ``model.state_dict()`` with the same shapes; else one phrase
    with the counts and the first keys. Keys under ``allowed_prefixes`` (an intended mismatch, such as a new
    classification head when fine-tuning) are not counted."""
    expected = model.state_dict()
    counted = [k for k in expected if not k.startswith(tuple(allowed_prefixes))]
    missing = [k for k in counted if k not in weights]
    shaped = [k for k in counted if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if not missing and not shaped:
        return None
    parts = []
    if missing:
        parts.append(f'{len(missing)} of the model\'s {len(counted)} weights are missing (e.g. {_first(missing)})')
    if shaped:
        k = shaped[0]
        parts.append(f'{len(shaped)} have another shape (e.g. {k}: {tuple(weights[k].shape)} in the checkpoint, '
                     f'{tuple(expected[k].shape)} in the model)')
    return '; '.join(parts)


def nonfinite_tensors(tensors: List[torch.Tensor]) -> torch.Tensor:
    """Boolean tensor, one entry per tensor: whether it holds a NaN/inf (one fused reduction per device)."""
    norms = torch._foreach_norm(tensors, float('inf'))
    return ~torch.isfinite(torch.stack([n.float() for n in norms]))


def nonfinite_weights(weights: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``weights`` that hold NaN or inf (other entries are skipped)."""
    names = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    flags = nonfinite_tensors([weights[k] for k in names])
    return [k for k, bad in zip(names, flags.tolist()) if bad]


def check_checkpoint_fits(model: torch.nn.Module, checkpoint, what: str) -> None:
    """Raise :class:`CheckpointLoadError` (one line) unless ``checkpoint`` holds every weight of ``model`` with the
    right shape and only finite values: what evaluating or analysing a trained model needs."""
    weights = checkpoint_weights(checkpoint)
    problem = weights_mismatch(model, weights)
    if problem:
        raise CheckpointLoadError(
            f'checkpoint {what} does not fit the model: {problem}. Fix: use a checkpoint trained with this config '
            f'(the same model and arch), or the config the checkpoint was trained with')
    bad = nonfinite_weights(weights)
    if bad:
        raise CheckpointLoadError(
            f'checkpoint {what} holds NaN/inf in {len(bad)} weight tensors (e.g. {_first(bad)}): evaluating it '
            f'would report meaningless numbers. Fix: use an earlier checkpoint of the run')


# --------------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the marker in the name of every temporary file of :func:`atomic_write`: ``.<target>.pelk_mm-<pid>-<random>.tmp``
TMP_MARKER = 'pelk_mm'
_TMP_NAME = re.compile(r'^\.(?P<target>.+)\.' + TMP_MARKER + r'-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$')
#: the files of a work dir whose interrupted writes :func:`remove_stale_writes` removes: checkpoints and the
#: ``last_checkpoint`` marker (the files the project writes there through :func:`atomic_write`)
_OWN_TARGET = re.compile(r'^(.+\.pth|last_checkpoint)$')


def stale_write_target(name: str) -> Optional[str]:
    """The file that the temporary file ``name`` of an interrupted :func:`atomic_write` was to replace, or None when
    ``name`` is not such a file (any other name, including a user's own ``*.tmp``)."""
    m = _TMP_NAME.match(name)
    return m.group('target') if m and _OWN_TARGET.match(m.group('target')) else None


def remove_stale_writes(folder: str) -> List[str]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left in ``folder`` (only
    ``.<checkpoint or last_checkpoint>.pelk_mm-<pid>-<random>.tmp``; any other file is kept); returns their paths.
    Call it only where no other process is writing into ``folder`` (the launcher holds the work dir's lock)."""
    removed = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name) if osp.isdir(folder) else []:
        if stale_write_target(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.path)
    return removed


def atomic_write(data, filepath, mode: str = 'w', encoding=None) -> None:
    """Write ``data`` to ``filepath`` via a temp file in the same folder, fsync and rename (atomic on POSIX).

    The temp file is named ``.<name>.pelk_mm-<pid>-<random>.tmp``: a kill during the write leaves only a file of
    that unmistakable form, which :func:`remove_stale_writes` recognises."""
    filepath = str(filepath)
    folder = osp.dirname(osp.abspath(filepath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(filepath)}.{TMP_MARKER}-{os.getpid()}-', suffix='.tmp',
                               dir=folder)
    try:
        # NOTE: mkstemp creates the file 0600; a plain open() would give 0666 minus the umask, as users expect
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException as err:
        if osp.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise _disk_full(filepath, folder, len(data)) from None
        raise


def _disk_full(filepath: str, folder: str, size: int):
    import shutil
    free = shutil.disk_usage(folder).free
    return DiskFullError(
        errno.ENOSPC, f'no space left on the disk of {folder} while writing {filepath} ({size / 2**20:.1f} MB; '
        f'{free / 2**20:.1f} MB free): the files written before are intact. Fix: free space there (or point '
        f'--work-dir at a larger disk), then continue with --resume')


def path_inside(path, folder) -> bool:
    """Whether ``path`` lies inside ``folder`` (symlinks resolved for local paths; a prefix test for URLs)."""
    path, folder = str(path), str(folder)
    if '://' in folder or '://' in path:
        return path.startswith(folder.rstrip('/') + '/')
    real, folder = osp.realpath(path), osp.realpath(folder)
    return real != folder and osp.commonpath([real, folder]) == folder
