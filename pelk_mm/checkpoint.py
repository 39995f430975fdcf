"""Checkpoint files: safe and verified loading, plain-data saving, downloads, atomic writing.

A checkpoint is a pickle, and unpickling an arbitrary file can run any code it names. Every checkpoint that pelk_mm
or mmengine loads in a process that imported pelk_mm goes through :func:`load_checkpoint_file`:

* ``torch.load(..., weights_only=True)`` with a short allow-list of the *data types* that checkpoints of this stack
  written before pelk_mm saved plain data hold besides tensors and plain Python values (:data:`SAFE_GLOBALS`:
  mmengine's ``HistoryBuffer`` in the message hub, numpy arrays, dtypes and scalars). No callable beyond numpy's
  array/scalar reconstructors is allowed; ``getattr``, which mmengine's ``HistoryBuffer`` pickles for its four
  statistics methods, resolves to a stand-in that returns exactly those and refuses anything else. A file whose
  unpickling would call ``os.system``, ``eval``, ``open`` ... is refused with one line naming the file and the
  global, before any of its code runs (the globals are read from the pickle's opcodes first).
* **Integrity**: the CRC-32 of every record of a zip checkpoint (the format ``torch.save`` writes) is checked
  before it is unpickled, so a bit flip in a tensor record stops the load instead of giving silently wrong weights.
  Measured cost: about 0.2 ms per MB read from the page cache (0.11 s for a 547 MB PeLK-T checkpoint with its
  AdamW state, on 2 EPYC cores); each file is verified once per process (keyed on path, size and mtime). Files in
  torch's legacy (non-zip) format and ``.safetensors`` files hold no checksums: they load with one warning saying
  that they cannot be verified. A ``.safetensors`` file loads as its state dict (with the ``safetensors`` package).
* **Bounded work**: what a file makes the loader do is bounded by the bytes it stores. Zip records that repeat or
  overlap, or that would inflate to more than :data:`MAX_INFLATION` times the file's size (``torch.save`` stores
  its records uncompressed), are refused before any is read; the non-finite check of the weights
  (:func:`nonfinite_weights`) reads each tensor storage once, so a zero-stride view of 10^11 elements stored as one
  value costs one value.
* **Trust names a file**: a file the allow-list refuses loads with ``weights_only=False`` only when the user names
  it: ``--trust-checkpoint PATH`` on the tools, or :data:`TRUST_ENV` in the environment (any entry point), a list
  of entries separated by ``os.pathsep``: a path trusts the file it resolves to, ``sha256:<hex>`` a content, a URL
  that exact URL and nothing else. Every other checkpoint of the run is still refused; every trusted load logs a
  warning. The old value ``1`` (trust everything) is an error that says to name the file.
* **Plain data**: checkpoints saved through mmengine's ``save_checkpoint`` (which :mod:`pelk_mm.compat` wraps with
  :func:`plain_checkpoint`) hold tensors and plain Python data only (:func:`to_plain`), so stock tools read them with
  a plain ``torch.load(path)``; the loader turns them back into the same ``HistoryBuffer`` and numpy objects
  (:func:`from_plain`), so ``--resume`` restores exactly what was saved.

``http(s)://`` checkpoints are downloaded by :func:`download_checkpoint` into a cache keyed on the whole URL; a
server that sends nothing for :data:`DOWNLOAD_TIMEOUT_ENV` seconds fails the download with one line and no partial
file. :func:`load_checkpoint_file` takes URLs wherever it takes a path. The loaders for mmengine's schemes (local
paths, ``http(s)://`` and the ``torchvision://`` / ``open-mmlab://`` / ``mmcls://`` model zoos that resolve to
URLs, ``s3://`` / ``petrel://``) are installed by :mod:`pelk_mm.compat`.
"""
from __future__ import annotations

import copy
import errno
import hashlib
import io
import math
import os
import os.path as osp
import pickle
import re
import struct
import sys
import tempfile
import zipfile
from collections import Counter, OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch

from .errors import CheckpointLoadError, CorruptCheckpointError, DiskFullError, UnsafeCheckpointError

__all__ = [
    'SAFE_GLOBALS', 'TRUST_ENV', 'DOWNLOAD_TIMEOUT_ENV', 'MAX_INFLATION', 'PLAIN_TAG',
    'trust_entry', 'trusted_entries', 'set_trust_checkpoints', 'checkpoint_trust', 'verify_checkpoint',
    'refused_globals', 'check_checkpoint_safety', 'load_checkpoint_file', 'download_checkpoint', 'download_timeout',
    'to_plain', 'from_plain', 'plain_checkpoint', 'checkpoint_weights', 'weights_mismatch', 'nonfinite_tensors',
    'nonfinite_weights', 'check_checkpoint_fits', 'links_elsewhere', 'remove_stale_writes', 'atomic_write'
]

#: environment variable naming the checkpoints :func:`load_checkpoint_file` may unpickle although the allow-list
#: refuses them: entries separated by ``os.pathsep``, each a path, ``sha256:<hex digest>`` or an exact URL
TRUST_ENV = 'PELK_MM_TRUST_CHECKPOINTS'
#: environment variable: seconds a checkpoint download may go without receiving data (default 60)
DOWNLOAD_TIMEOUT_ENV = 'PELK_MM_DOWNLOAD_TIMEOUT'
_DEFAULT_DOWNLOAD_TIMEOUT = 60.0
#: the most bytes the records of a zip checkpoint may hold uncompressed per byte of the file (torch.save: 1)
MAX_INFLATION = 64

#: ``module:qualname`` of the non-tensor types that checkpoints of this stack written without plain data contain
#: (found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on Runner checkpoints of the
#: classification, segmentation and detection demos with the EMA, sparsity and resume-state hooks on). numpy 1 and
#: 2 spell the array module differently (``numpy.core`` / ``numpy._core``); both are listed.
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


# --------------------------------------------------------------------------------------------------- trust
_OFF = ('', '0', 'false', 'no', 'off')
_EVERYTHING = ('1', 'true', 'yes', 'on')
_SHA256 = re.compile(r'^(?:sha256:)?([0-9a-fA-F]{64})$')
_URL = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')
#: one entry of a ``:``-separated list: a digest and a URL keep their own colons (``sha256:``, scheme, port)
_ENTRY = re.compile(r'sha256:[0-9A-Fa-f]{64}|[A-Za-z][A-Za-z0-9+.-]*://[^/:]*(?::\d+)?[^:]*|[^:]+')


def _is_url(name) -> bool:
    return isinstance(name, str) and bool(_URL.match(name))


def trust_entry(value: str) -> str:
    """The normal form of one thing to trust: ``sha256:<lower-case hex>`` for a digest (``sha256:`` optional), the
    URL as given, else the real path of an existing file. Raises :class:`CheckpointLoadError` for anything else."""
    value = str(value).strip()
    digest = _SHA256.match(value)
    if digest and not osp.exists(value):
        return 'sha256:' + digest.group(1).lower()
    if _is_url(value):
        return value
    path = osp.expanduser(value)
    if not value or not osp.isfile(path):
        raise CheckpointLoadError(
            f'--trust-checkpoint {value!r} names no file (nor a URL or a sha256 digest). Fix: name the checkpoint '
            f'you trust by its path, its sha256 (sha256:<64 hex digits>) or its exact URL')
    return osp.realpath(path)


def _split_entries(value: str) -> List[str]:
    parts = _ENTRY.findall(value) if os.pathsep == ':' else value.split(os.pathsep)
    return [p.strip() for p in parts if p.strip()]


def trusted_entries() -> Tuple[str, ...]:
    """The entries of :data:`TRUST_ENV` (none when unset or ``0``/``off``). Its old value ``1`` (trust every
    checkpoint) raises :class:`CheckpointLoadError`: trust names the file it applies to."""
    value = os.environ.get(TRUST_ENV, '').strip()
    if value.lower() in _OFF:
        return ()
    if value.lower() in _EVERYTHING:
        raise CheckpointLoadError(
            f'{TRUST_ENV}={os.environ[TRUST_ENV]!r} would trust every checkpoint the run loads (a pretrained file '
            f'or URL set in the config included); trust must name the file it applies to. Fix: name the file: '
            f'{TRUST_ENV}=/path/to/file.pth (several separated by {os.pathsep!r}; sha256:<hex> trusts a content, an '
            f'exact URL that URL), or --trust-checkpoint /path/to/file.pth on the tools')
    return tuple(_split_entries(value))


def set_trust_checkpoints(entries: Iterable[str] = ()) -> None:
    """Trust exactly ``entries`` (see :func:`trust_entry`) in this process and the processes it starts; none when
    empty."""
    entries = list(dict.fromkeys(str(e) for e in entries))
    if entries:
        os.environ[TRUST_ENV] = os.pathsep.join(entries)
    else:
        os.environ.pop(TRUST_ENV, None)


_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def _sha256(source: Union[str, io.BytesIO]) -> str:
    key = _file_key(source) if isinstance(source, str) else None
    if key is not None and key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    if isinstance(source, str):
        with open(source, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 24), b''):
                digest.update(chunk)
    else:
        digest.update(source.getbuffer())
    if key is not None:
        _DIGESTS[key] = digest.hexdigest()
    return digest.hexdigest()


def checkpoint_trust(source: Union[str, io.BytesIO], name: Optional[str] = None) -> Optional[str]:
    """The entry of :data:`TRUST_ENV` that trusts this checkpoint, or None.

    A checkpoint read from a URL (``name`` with a scheme) is trusted only by that exact URL; a local file by its real
    path or its sha256; an in-memory buffer by its sha256."""
    entries = trusted_entries()
    if not entries:
        return None
    if _is_url(name):
        return name if name in entries else None
    if isinstance(source, str):
        real = osp.realpath(source)
        for entry in entries:
            if not entry.startswith('sha256:') and not _is_url(entry) and \
                    osp.realpath(osp.expanduser(entry)) == real:
                return entry
    digests = {e[len('sha256:'):].lower() for e in entries if e.startswith('sha256:')}
    if digests:
        digest = _sha256(source)
        if digest in digests:
            return f'sha256:{digest}'
    return None


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
    etc., so every Runner checkpoint written without plain data names ``builtins.getattr``. This accessor returns
    those four methods (which ``HistoryBuffer.__setstate__`` registers anyway) and refuses every other use, so no
    attribute of any object can be reached through it.
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
_UNVERIFIABLE_WARNED: set = set()  # legacy / safetensors files already said to be unverifiable


def _file_key(path: str) -> Tuple[str, int, int]:
    stat = os.stat(path)
    return osp.realpath(path), stat.st_size, stat.st_mtime_ns


def _describe(source: Union[str, io.BytesIO]) -> str:
    return repr(source) if isinstance(source, str) else 'the downloaded checkpoint'


def _size(source: Union[str, io.BytesIO]) -> int:
    return osp.getsize(source) if isinstance(source, str) else len(source.getbuffer())


def _head(source: Union[str, io.BytesIO], count: int = 16) -> bytes:
    if isinstance(source, str):
        with open(source, 'rb') as f:
            return f.read(count)
    head = source.read(count)
    source.seek(0)
    return head


def _checkpoint_format(source: Union[str, io.BytesIO]) -> str:
    """``'zip'`` (torch.save), ``'safetensors'``, ``'legacy'`` (torch's pre-1.6 pickle) or ``'unknown'``."""
    if zipfile.is_zipfile(source):
        if not isinstance(source, str):
            source.seek(0)
        return 'zip'
    if not isinstance(source, str):
        source.seek(0)
    head, size = _head(source), _size(source)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) >= 9 and head[8:9] == b'{' and 2 <= int.from_bytes(head[:8], 'little') <= size - 8:
        return 'safetensors'
    if head[:1] == b'\x80':  # a pickle protocol opcode: torch's legacy format
        return 'legacy'
    return 'unknown'


def _check_zip_layout(zf: zipfile.ZipFile, size: int, what: str) -> None:
    """Refuse a zip whose directory repeats a record, whose records overlap, or whose records would inflate to more
    than :data:`MAX_INFLATION` times the file: reading such a file costs far more than the bytes it stores."""
    def malformed(detail: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is malformed: {detail}, which torch.save never writes (a crafted or '
            f'damaged file; reading it would cost far more than the bytes it stores). Fix: {_FIX_DAMAGED}')

    infos = zf.infolist()
    names, offsets = set(), set()
    for info in infos:
        if info.filename in names or info.header_offset in offsets:
            raise malformed(f'its zip directory repeats the record {info.filename!r}')
        names.add(info.filename)
        offsets.add(info.header_offset)
    inflated = sum(info.file_size for info in infos)
    if inflated > MAX_INFLATION * size:
        raise malformed(f'its records hold {inflated} bytes uncompressed, more than {MAX_INFLATION} times the file')
    directory = getattr(zf, 'start_dir', size)
    end, previous = 0, None
    for info in sorted(infos, key=lambda i: i.header_offset):
        zf.fp.seek(info.header_offset)
        header = zf.fp.read(30)
        if len(header) < 30 or header[:4] != b'PK\x03\x04':
            raise malformed(f'the record {info.filename!r} has no local header where the zip directory says')
        name_len, extra_len = struct.unpack('<HH', header[26:30])
        if info.header_offset < end:
            raise malformed(f'the records {previous!r} and {info.filename!r} overlap')
        end = info.header_offset + 30 + name_len + extra_len + info.compress_size
        if end > directory:
            raise malformed(f'the record {info.filename!r} extends past the records into the zip directory')
        previous = info.filename


def verify_checkpoint(source: Union[str, io.BytesIO]) -> None:
    """Raise :class:`CorruptCheckpointError` unless every record of a zip checkpoint matches its CRC-32.

    ``source`` is a path or an in-memory buffer. A zip whose records repeat, overlap or inflate beyond
    :data:`MAX_INFLATION` times the file is refused before any record is read. Files in torch's legacy (non-zip)
    format and safetensors files carry no checksums and pass unchecked (the loader says so); anything else (a
    truncated file, a random file) is an error.
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
    kind = _checkpoint_format(source)
    if kind in ('legacy', 'safetensors'):  # no checksums to verify
        return
    if kind != 'zip':
        raise CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is truncated or not a PyTorch checkpoint (no zip directory at its '
            f'end; a run killed while writing leaves such a file). Fix: {_FIX_DAMAGED}')
    try:
        with zipfile.ZipFile(source) as zf:
            _check_zip_layout(zf, size, what)
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
    except (OSError, EOFError, ValueError, NotImplementedError, struct.error) as err:
        raise CorruptCheckpointError(
            f'checkpoint {what} ({size} bytes) is corrupt ({type(err).__name__}: {err}). Fix: {_FIX_DAMAGED}') from None
    finally:
        if not isinstance(source, str):
            source.seek(0)
    if key is not None:
        _VERIFIED[key] = True


def _warn_unverifiable(source: Union[str, io.BytesIO], what: str, kind: str) -> None:
    key = _file_key(source) if isinstance(source, str) else None
    if key is not None:
        if key in _UNVERIFIABLE_WARNED:
            return
        _UNVERIFIABLE_WARNED.add(key)
    form = ('torch\'s legacy (non-zip) format' if kind == 'legacy' else 'the safetensors format')
    _log_warning(f'checkpoint {what} is in {form}, which holds no checksums: it cannot be verified, so damage to '
                 f'its data (a disk, copy or download error) would go unnoticed. Fix: save it once with torch.save '
                 f'(the zip format, whose CRC-32s every load checks) and use that file')


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
        if not isinstance(source, str):
            source.seek(0)
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


def _refuse(source, name: Optional[str], what: str, refused: List[str]) -> UnsafeCheckpointError:
    shown = ', '.join(refused[:3]) + (f' (+{len(refused) - 3} more)' if len(refused) > 3 else '')
    target = name if _is_url(name) else source if isinstance(source, str) else f'sha256:{_sha256(source)}'
    return UnsafeCheckpointError(
        f'checkpoint {what} was refused: unpickling it would call {shown or "a global"}, which is not among the '
        f'data types genuine checkpoints hold, and such a file can run code when loaded. If you trust this file '
        f'and where it came from, name it: --trust-checkpoint {target} (tools/train.py, tools/test.py, '
        f'tools/analysis, tools/deploy) or {TRUST_ENV}={target} in the environment (any entry point); trust '
        f'applies to the named file only')


def check_checkpoint_safety(source: Union[str, io.BytesIO], name: Optional[str] = None) -> None:
    """Raise :class:`UnsafeCheckpointError` when the file needs a refused global and no trust entry names it.

    Executes nothing, so the config checks run it before the Runner is built."""
    what = repr(name) if name else _describe(source)
    try:
        refused = refused_globals(source)
    except Exception as err:  # noqa: BLE001 - an unreadable pickle record
        raise _unreadable(source, what, err) from None
    if refused and checkpoint_trust(source, name) is None:
        raise _refuse(source, name, what, refused)


def _load_trusted(source, map_location, what: str, refused: List[str], entry: str):
    _log_warning(f'loading checkpoint {what} with weights_only=False because it is trusted ({TRUST_ENV} / '
                 f'--trust-checkpoint names {entry}): it names {", ".join(refused) or "globals"} outside the '
                 f'allow-list, and unpickling it runs whatever code it names')
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


def _load_safetensors(source: Union[str, io.BytesIO], map_location, what: str) -> Dict[str, torch.Tensor]:
    try:
        import safetensors.torch as st
    except ImportError:
        raise CheckpointLoadError(
            f'checkpoint {what} is a safetensors file (a state dict of tensors, not a torch.save pickle), and the '
            f'safetensors package that reads it is not installed. Fix: pip install safetensors, or convert it to '
            f'a .pth file with torch.save where safetensors is installed') from None
    try:
        state = st.load_file(source) if isinstance(source, str) else st.load(bytes(source.getbuffer()))
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise CorruptCheckpointError(
            f'checkpoint {what} ({_size(source)} bytes) is a damaged safetensors file '
            f'({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}). Fix: {_FIX_DAMAGED}') from None
    if isinstance(map_location, (str, torch.device)) and str(map_location) != 'cpu':
        state = {k: v.to(map_location) for k, v in state.items()}
    return state


def load_checkpoint_file(source: Union[str, io.BytesIO], map_location=None, name: Optional[str] = None,
                         mmap: bool = False, model_dir: Optional[str] = None):
    """Load a checkpoint safely: CRC-verified, then ``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS`.

    Args:
        source: A local path, a URL (``http(s)://`` downloaded by :func:`download_checkpoint`, other schemes through
            mmengine's loaders) or an in-memory buffer.
        map_location: As in :func:`torch.load`.
        name: How to name the file in messages (the URL of a downloaded file). Defaults to the path. A URL here is
            also what a trust entry must name.
        mmap: Map the tensors of a zip checkpoint file instead of reading them (to look at a few entries cheaply).
        model_dir: Where an ``http(s)`` URL is cached (see :func:`cached_download_path`).

    Returns:
        The checkpoint, with the plain-data entries of :func:`to_plain` turned back into their objects; the state
        dict of a safetensors file.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        CorruptCheckpointError: truncated, malformed, or a record fails its CRC-32.
        UnsafeCheckpointError: the file needs a global outside the allow-list and no trust entry names it.
        CheckpointLoadError: any other unreadable file, or a failed download.
    """
    if isinstance(source, str) and _is_url(source):
        if re.match(r'^https?://', source, re.IGNORECASE):
            cached = download_checkpoint(source, model_dir)
            try:
                return load_checkpoint_file(cached, map_location=map_location, name=name or source, mmap=mmap)
            except CorruptCheckpointError as err:
                if osp.isfile(cached):
                    os.unlink(cached)  # damaged in transfer or on disk: the next load downloads it again
                raise CorruptCheckpointError(f'{err} (the cached copy {cached} was removed: the next run downloads '
                                             f'it again)') from None
        from mmengine.runner import CheckpointLoader  # the model zoos and object stores: pelk_mm.compat's loaders
        return CheckpointLoader.load_checkpoint(source, map_location=map_location)
    if isinstance(source, str):
        source = osp.expanduser(source)
        if not osp.isfile(source):
            raise FileNotFoundError(f'checkpoint file {source!r} does not exist')
    what = repr(name) if name else _describe(source)
    try:
        verify_checkpoint(source)
    except CorruptCheckpointError as err:
        raise CorruptCheckpointError(str(err).replace(_describe(source), what, 1)) from None
    kind = _checkpoint_format(source)
    if kind in ('legacy', 'safetensors'):
        _warn_unverifiable(source, what, kind)
        if kind == 'safetensors':
            return _load_safetensors(source, map_location, what)
    try:
        refused = refused_globals(source)
    except Exception as err:  # noqa: BLE001 - an unreadable pickle record
        raise _unreadable(source, what, err) from None
    if refused:
        entry = checkpoint_trust(source, name)
        if entry is None:
            raise _refuse(source, name, what, refused)
        return from_plain(_load_trusted(source, map_location, what, refused, entry))
    extra = dict(mmap=True) if mmap and isinstance(source, str) and kind == 'zip' else {}
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return from_plain(torch.load(source, map_location=map_location, weights_only=True, **extra))
    except pickle.UnpicklingError as err:  # a legacy-format file (no opcode scan) that needs more
        refused = re.findall(r'GLOBAL (\S+)', str(err))
        entry = checkpoint_trust(source, name)
        if entry is None:
            raise _refuse(source, name, what, refused) from None
        return from_plain(_load_trusted(source, map_location, what, refused, entry))
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise _unreadable(source, what, err) from None


def _unreadable(source, what: str, err: BaseException) -> CheckpointLoadError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return CheckpointLoadError(
        f'cannot read checkpoint {what} ({_size(source)} bytes): {type(err).__name__}: {reason}. The file is '
        f'truncated or corrupt (e.g. the run was killed while writing it) or not a PyTorch checkpoint. Fix: '
        f'{_FIX_DAMAGED}')


# --------------------------------------------------------------------------------------------------- downloads
def download_timeout() -> float:
    """Seconds a download may go without receiving data: :data:`DOWNLOAD_TIMEOUT_ENV`, else 60."""
    value = os.environ.get(DOWNLOAD_TIMEOUT_ENV, '').strip()
    if not value:
        return _DEFAULT_DOWNLOAD_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float('nan')
    if not (math.isfinite(seconds) and seconds > 0):
        raise CheckpointLoadError(f'{DOWNLOAD_TIMEOUT_ENV}={value!r} is not a number of seconds above 0. Fix: e.g. '
                                  f'{DOWNLOAD_TIMEOUT_ENV}={int(_DEFAULT_DOWNLOAD_TIMEOUT)}, or unset it')
    return seconds


def cached_download_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where :func:`download_checkpoint` keeps ``url``: ``<model_dir>/<sha256 of the URL, 16 hex>/<file name>``
    (``model_dir`` defaults to torch hub's ``checkpoints/pelk_mm``), so two URLs never share a file."""
    from urllib.parse import urlparse
    if model_dir is None:
        from torch.hub import get_dir
        model_dir = osp.join(get_dir(), 'checkpoints', 'pelk_mm')
    name = osp.basename(urlparse(url).path) or 'checkpoint.pth'
    return osp.join(model_dir, hashlib.sha256(url.encode()).hexdigest()[:16], name)


_PARTIAL = re.compile(r'^\..+\.pelk_mm-(?P<pid>\d+)-[A-Za-z0-9_]+\.partial$')


def _remove_dead_partials(folder: str) -> None:
    """Delete what downloads of processes that no longer run left in ``folder`` (a kill during the download)."""
    for entry in os.scandir(folder):
        m = _PARTIAL.match(entry.name)
        if not m or int(m.group('pid')) == os.getpid():
            continue
        try:
            os.kill(int(m.group('pid')), 0)
        except ProcessLookupError:
            try:
                os.unlink(entry.path)
            except OSError:
                pass
        except OSError:
            pass  # alive (another user's process)


def _fetch(url: str, target: str) -> None:
    import http.client
    import socket
    import urllib.error
    import urllib.request
    timeout = download_timeout()
    folder = osp.dirname(target)
    os.makedirs(folder, exist_ok=True)
    _remove_dead_partials(folder)
    fd, partial = tempfile.mkstemp(prefix=f'.{osp.basename(target)}.pelk_mm-{os.getpid()}-', suffix='.partial',
                                   dir=folder)
    fix = 'download the file yourself and give its path'
    try:
        received, expected = 0, None
        with os.fdopen(fd, 'wb') as f:
            request = urllib.request.Request(url, headers={'User-Agent': 'pelk_mm'})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                expected = response.headers.get('Content-Length')
                for chunk in iter(lambda: response.read(1 << 20), b''):
                    f.write(chunk)
                    received += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and expected.strip().isdigit() and received != int(expected):
            raise CheckpointLoadError(f'the download of checkpoint {url} ended after {received} of {expected} bytes '
                                      f'(the connection closed early). Fix: try again, or {fix}')
        os.chmod(partial, 0o666 & ~_umask())
        os.replace(partial, target)
    except CheckpointLoadError:
        raise
    except urllib.error.HTTPError as err:
        raise CheckpointLoadError(f'cannot download checkpoint {url}: the server answered HTTP {err.code} '
                                  f'{err.reason}. Fix: check the URL, or {fix}') from None
    except (TimeoutError, socket.timeout, urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, 'reason', err)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise CheckpointLoadError(
                f'downloading checkpoint {url}: the server sent nothing for {timeout:g} s ({DOWNLOAD_TIMEOUT_ENV}), '
                f'so the download was stopped and nothing was kept. Fix: check the URL and that the server is up, '
                f'set {DOWNLOAD_TIMEOUT_ENV} to more seconds for a slow server, or {fix}') from None
        raise CheckpointLoadError(f'cannot download checkpoint {url}: {type(reason).__name__}: {reason}. Fix: check '
                                  f'the URL and the network, or {fix}') from None
    finally:
        if osp.exists(partial):
            os.unlink(partial)


def _dist_info() -> Tuple[int, int]:
    try:
        from mmengine.dist import get_dist_info
    except ImportError:
        return 0, 1
    return get_dist_info()


def download_checkpoint(url: str, model_dir: Optional[str] = None) -> str:
    """The local copy of the ``http(s)`` checkpoint ``url`` (:func:`cached_download_path`), downloaded when missing:
    by rank 0 first in a distributed run, then by any rank that does not see the file (another node).

    The download waits at most :func:`download_timeout` seconds for data, writes to a temporary file removed on any
    failure, and replaces the cached file atomically. Raises :class:`CheckpointLoadError` (one line)."""
    cached = cached_download_path(url, model_dir)
    rank, world_size = _dist_info()
    if rank == 0 and not osp.isfile(cached):
        _fetch(url, cached)
    if world_size > 1:
        torch.distributed.barrier()
        if not osp.isfile(cached):
            _fetch(url, cached)
    return cached


# --------------------------------------------------------------------------------------------------- plain data
#: the key of the dicts :func:`to_plain` writes in place of objects that torch's ``weights_only`` loader refuses
PLAIN_TAG = '__pelk_mm_plain__'
#: leaf types torch's default ``weights_only`` unpickler takes (exact types: numpy's float64 subclasses float)
_PLAIN_LEAVES = (str, int, float, bool, complex, bytes, bytearray, type(None))
_PLAIN_MAPPINGS = (dict, OrderedDict, Counter)


def _is_history_buffer(obj) -> bool:
    cls = type(obj)
    return cls.__name__ == 'HistoryBuffer' and cls.__module__ == 'mmengine.logging.history_buffer'


def _array_plain(array, tag: str) -> Optional[dict]:
    """A numpy array (or the 0-d array of a scalar) as a tagged dict of a tensor; None if it has no plain form."""
    dtype = array.dtype
    if dtype.kind == 'O' or dtype.fields is not None or dtype.subdtype is not None:
        return None
    array = array.copy(order='C')
    if dtype.kind in 'biufc' and dtype.isnative:
        try:
            return {PLAIN_TAG: tag, 'dtype': dtype.str, 'data': torch.from_numpy(array)}
        except TypeError:  # a dtype torch has no tensor type for
            pass
    raw = torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8) if array.nbytes else \
        torch.zeros(0, dtype=torch.uint8)
    return {PLAIN_TAG: tag, 'dtype': dtype.str, 'shape': list(array.shape), 'bytes': raw}


def _encode(obj, path: str, left: List[Tuple[str, str]]):
    cls = type(obj)
    if cls in _PLAIN_LEAVES or isinstance(obj, (torch.Tensor, torch.device, torch.dtype, torch.Size)):
        return obj
    if cls in _PLAIN_MAPPINGS:
        out = None
        for key, value in obj.items():
            if type(key) not in _PLAIN_LEAVES:
                left.append((f'{path}[key {key!r}]', type(key).__name__))
            new = _encode(value, f'{path}[{key!r}]', left)
            if new is not value:
                if out is None:
                    out = copy.copy(obj)  # the same type, and its attributes (a state dict's _metadata)
                out[key] = new
        return obj if out is None else out
    if cls in (list, tuple):
        items = [_encode(value, f'{path}[{i}]', left) for i, value in enumerate(obj)]
        if all(new is old for new, old in zip(items, obj)):
            return obj
        return items if cls is list else tuple(items)
    if cls in (set, frozenset):
        if cls is frozenset or any(type(v) not in _PLAIN_LEAVES for v in obj):
            left.append((path, cls.__name__))
        return obj
    if _is_history_buffer(obj):
        state = {k: v for k, v in vars(obj).items() if k != 'statistics_methods'}
        return {PLAIN_TAG: 'HistoryBuffer', 'state': _encode(state, path, left)}
    np = sys.modules.get('numpy')
    if np is not None:
        plain = None
        if cls is np.ndarray:
            plain = _array_plain(obj, 'ndarray')
        elif isinstance(obj, np.generic):
            plain = _array_plain(np.asarray(obj), 'numpy_scalar')
        elif isinstance(obj, np.dtype) and obj.fields is None and obj.subdtype is None:
            plain = {PLAIN_TAG: 'numpy_dtype', 'dtype': obj.str}
        if plain is not None:
            return plain
    left.append((path, f'{cls.__module__}.{cls.__qualname__}'))
    return obj


def to_plain(obj, left: Optional[List[Tuple[str, str]]] = None):
    """``obj`` with every object that torch's default ``weights_only`` loader refuses and that has a plain form
    (mmengine's ``HistoryBuffer``, numpy arrays, scalars and dtypes) replaced by a dict tagged with
    :data:`PLAIN_TAG` holding tensors and builtins; :func:`from_plain` is its exact inverse.

    Containers are copied only where something inside them changed (``obj`` itself is not modified). The paths and
    types of objects without a plain form are appended to ``left`` (they stay as they are)."""
    return _encode(obj, '', [] if left is None else left)


def _decode_array(tagged: dict):
    import numpy as np
    dtype = np.dtype(tagged['dtype'])
    if 'data' in tagged:
        array = tagged['data'].detach().cpu().numpy()
        array = array.astype(dtype, copy=True) if array.dtype != dtype else array.copy()
    else:
        array = np.frombuffer(tagged['bytes'].detach().cpu().numpy().tobytes(), dtype=dtype).reshape(
            tagged['shape']).copy()
    return array[()] if tagged[PLAIN_TAG] == 'numpy_scalar' else array


def _restore(tagged: dict):
    kind = tagged.get(PLAIN_TAG)
    try:
        if kind in ('ndarray', 'numpy_scalar'):
            return _decode_array(tagged)
        if kind == 'numpy_dtype':
            import numpy as np
            return np.dtype(tagged['dtype'])
        if kind == 'HistoryBuffer':
            from mmengine.logging import HistoryBuffer
            buffer = HistoryBuffer.__new__(HistoryBuffer)
            buffer.__setstate__(dict(tagged['state']))  # as unpickling does: default statistics, then the state
            return buffer
    except ImportError:
        pass
    return tagged  # a tag of a newer pelk_mm, or a package missing here: left as it is


def _decode(obj):
    cls = type(obj)
    if cls in _PLAIN_MAPPINGS:
        out = None
        for key, value in obj.items():
            new = _decode(value)
            if new is not value:
                if out is None:
                    out = copy.copy(obj)
                out[key] = new
        obj = obj if out is None else out
        return _restore(obj) if cls is dict and PLAIN_TAG in obj else obj
    if cls in (list, tuple):
        items = [_decode(value) for value in obj]
        if all(new is old for new, old in zip(items, obj)):
            return obj
        return items if cls is list else tuple(items)
    return obj


def from_plain(obj):
    """The inverse of :func:`to_plain`: the tagged dicts become ``HistoryBuffer`` and numpy objects again (equal
    types, dtypes, shapes and bytes). Anything else is returned as it is."""
    return _decode(obj)


def plain_checkpoint(checkpoint, filename: str = ''):
    """``checkpoint`` as :func:`to_plain` data, with one warning naming what has no plain form (such a file needs
    ``--trust-checkpoint`` and cannot be read by stock tools' ``torch.load(path)``)."""
    left: List[Tuple[str, str]] = []
    plain = to_plain(checkpoint, left)
    if left:
        shown = ', '.join(f'{path} ({kind})' for path, kind in left[:3]) + \
            (f' (+{len(left) - 3} more)' if len(left) > 3 else '')
        _log_warning(f'checkpoint {filename or ""} holds {len(left)} object(s) that are neither tensors nor plain '
                     f'data: {shown}. torch.load(path) with its defaults (stock tools) and pelk_mm\'s safe loader '
                     f'refuse such a file unless it is trusted. Fix: store plain values (numbers, strings, lists, '
                     f'dicts, tensors) in the checkpoint instead')
    return plain


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


def _storage_view(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The whole storage of a strided tensor as a flat tensor of its dtype (None for other layouts)."""
    if t.layout != torch.strided or t.is_meta:
        return None
    storage = t.untyped_storage()
    return t.new_empty(0).set_(storage, 0, (storage.nbytes() // t.element_size(),))


def _span(t: torch.Tensor) -> Tuple[int, int]:
    """First and last storage index (inclusive) a tensor with non-negative strides reaches."""
    start = t.storage_offset()
    return start, start + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def nonfinite_weights(weights: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``weights`` that hold NaN or inf (other entries are skipped).

    The work is bounded by the bytes stored: each storage is checked once (one fused reduction per device), so a
    zero-stride view of 10^11 elements costs what it stores. Only the tensors of a storage that holds a NaN/inf are
    looked at one by one: by their own elements (stride-0 dimensions once), or, past a budget of a few times the
    stored elements, by whether a non-finite element lies in the storage range they span."""
    names = [k for k, v in weights.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    groups: Dict[tuple, List[str]] = {}
    views: Dict[tuple, torch.Tensor] = {}
    direct: List[str] = []
    for k in names:
        t = weights[k]
        view = _storage_view(t)
        if view is None:
            direct.append(k)
            continue
        key = (t.device, t.dtype, t.untyped_storage().data_ptr(), view.numel())
        groups.setdefault(key, []).append(k)
        views.setdefault(key, view)
    bad = set()
    if direct:
        bad.update(k for k, flag in zip(direct, nonfinite_tensors([weights[k] for k in direct]).tolist()) if flag)
    keys = list(views)
    flags = nonfinite_tensors([views[key] for key in keys]).tolist() if keys else []
    budget = 4 * sum(views[key].numel() for key in keys) + (1 << 20)
    for key, flag in zip(keys, flags):
        if not flag:
            continue
        view = views[key]
        positions = None
        for k in groups[key]:
            t = weights[k]
            for dim in range(t.dim()):
                if t.stride(dim) == 0 and t.shape[dim] > 1:
                    t = t.narrow(dim, 0, 1)  # equal elements along a stride-0 dimension: one is enough
            if t.numel() <= min(view.numel(), budget):
                budget -= t.numel()
                if not bool(torch.isfinite(t).all()):
                    bad.add(k)
                continue
            if positions is None:
                positions = (~torch.isfinite(view)).nonzero().flatten()
            start, end = _span(t)
            first = int(torch.searchsorted(positions, torch.tensor(start, device=positions.device)))
            if first < positions.numel() and int(positions[first]) <= end:
                bad.add(k)
    return [k for k in names if k in bad]


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


def links_elsewhere(path: str, folder: str) -> bool:
    """Whether ``path`` is a symlink that resolves outside ``folder``: a file of another run (another task's
    checkpoint linked in) that a glob of ``folder`` would pick up as this run's. Call it on each candidate before
    resuming from the newest one; a link to a file inside ``folder`` is that file."""
    if not osp.islink(path):
        return False
    real, root = osp.realpath(path), osp.realpath(folder)
    return osp.commonpath([real, root]) != root


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
