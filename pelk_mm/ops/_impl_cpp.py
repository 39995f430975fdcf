"""Fused C++ (OpenMP via ``at::parallel_for``) CPU implementation, JIT-built on first use.

Build: ``torch.utils.cpp_extension.load`` of ``csrc/peripheral_conv_cpu.cpp`` with ``-O3 -march=native -fopenmp`` into
``$PELK_MM_EXT_DIR`` (default ``~/.cache/pelk_mm/torch_extensions/<name>``), outside the repository; torch hashes the
sources and flags, so later processes just load the cached ``.so`` (~0.1 s). If there is no C++ compiler, the build
fails, or ``PELK_MM_NO_CPP_EXT=1`` is set, :func:`extension` returns ``None`` once, logs the reason, and the
dispatcher falls back to the pure-PyTorch ``'box'`` implementation.

The op is a ``torch.library`` custom op (``pelk_mm::periconv_cpu``) with its own backward, so it works under
``torch.compile`` (opaque node) and autograd; double backward is not supported.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import threading
from typing import List, Optional, Sequence, Tuple

import torch

from ._cells import axis_cells, crop_weight, mirror_cells, save_cells_context

logger = logging.getLogger(__name__)

_NAME = 'pelk_mm_periconv_cpu'
_SOURCE = os.path.join(os.path.dirname(__file__), 'csrc', 'peripheral_conv_cpu.cpp')
_lock = threading.Lock()
_state = {'tried': False, 'module': None, 'reason': None}


def _cpu_tag() -> str:
    """Short hash of the CPU's feature flags: ``-march=native`` builds must not be shared across CPU models."""
    flags = ''
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith(('flags', 'Features'))), '')
    except OSError:
        pass
    return hashlib.sha1(f'{platform.machine()} {flags}'.encode()).hexdigest()[:8]


def build_dir() -> str:
    """Where the JIT build lives (outside the repository; one folder per CPU feature set and torch version)."""
    root = os.environ.get('PELK_MM_EXT_DIR', os.path.join(os.path.expanduser('~'), '.cache', 'pelk_mm',
                                                              'torch_extensions'))
    return os.path.join(root, f'{_NAME}_{platform.machine()}-{_cpu_tag()}_torch{torch.__version__.split("+")[0]}')


def extension():
    """The compiled module, building it on the first call; ``None`` (reason logged once) if it cannot be built."""
    if _state['tried']:
        return _state['module']
    with _lock:
        if _state['tried']:
            return _state['module']
        _state['module'], _state['reason'] = _build()
        _state['tried'] = True
        if _state['module'] is None:
            logger.warning('pelk_mm: C++ peripheral conv extension unavailable (%s); falling back to the PyTorch '
                           '"box" implementation on CPU', _state['reason'])
    return _state['module']


def unavailable_reason() -> Optional[str]:
    """Why the extension could not be used (``None`` if it loaded or was not tried yet)."""
    return _state['reason']


class _DropCudaHomeNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith('No CUDA runtime is found')


@contextlib.contextmanager
def _without_cuda_home_notice():
    """Importing ``torch.utils.cpp_extension`` on a machine with a CUDA toolkit but no GPU logs "No CUDA runtime is
    found, using CUDA_HOME=..."; this extension is CPU-only, so the notice is nothing for the user to act on."""
    # NOTE: only that record is dropped, and only during the import: every other warning of the module still shows.
    cpp_logger = logging.getLogger('torch.utils.cpp_extension')
    notice = _DropCudaHomeNotice()
    cpp_logger.addFilter(notice)
    try:
        yield
    finally:
        cpp_logger.removeFilter(notice)


def _build():
    if os.environ.get('PELK_MM_NO_CPP_EXT', '0') not in ('', '0'):
        return None, 'disabled by PELK_MM_NO_CPP_EXT'
    cxx = os.environ.get('CXX', 'c++')
    if shutil.which(cxx) is None:
        return None, f'no C++ compiler {cxx!r} on PATH'
    try:
        with _without_cuda_home_notice():
            from torch.utils.cpp_extension import load
        os.makedirs(build_dir(), exist_ok=True)
        module = load(name=_NAME, sources=[_SOURCE], build_directory=build_dir(),
                      extra_cflags=['-O3', '-march=native', '-fopenmp', '-ffp-contract=fast'],
                      extra_ldflags=['-fopenmp'], verbose=False)
        return module, None
    except Exception as err:  # noqa: BLE001 - any build/load failure means "fall back"
        lines = str(err).strip().splitlines() or ['']
        detail = next((line for line in lines if 'error' in line.lower()), lines[-1])
        return None, f'build failed ({type(err).__name__}): {detail.strip()[:400]}; build dir {build_dir()}'


# ----------------------------------------------------------------------------------------------------------- op
@torch.library.custom_op('pelk_mm::periconv_cpu', mutates_args=())
def periconv_cpu(x: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                 hi_w: List[int]) -> torch.Tensor:
    """``(N, C, H, W)`` float32/64 in any memory layout, ``w`` ``(C, Gh, Gw)`` -> ``(N, C, H, W)`` in ``x``'s layout
    (no layout copies: unit-stride rows are read in place, channels_last blocks of channels transposed in the kernel)."""
    return extension().forward(x, w, lo_h, hi_h, lo_w, hi_w)


@periconv_cpu.register_fake
def _(x, w, lo_h, hi_h, lo_w, hi_w):
    return torch.empty_like(x)


@torch.library.custom_op('pelk_mm::periconv_cpu_backward', mutates_args=())
def periconv_cpu_backward(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int],
                          lo_w: List[int], hi_w: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_w)`` in one fused pass (the column box sums of ``gy`` are shared by both); ``grad_x`` in
    ``x``'s layout, ``grad_w`` ``(C, Gh, Gw)`` accumulated in float64 inside."""
    gx, gw = extension().backward(x, gy, w, lo_h, hi_h, lo_w, hi_w, True, True)
    return gx, gw


@periconv_cpu_backward.register_fake
def _(x, gy, w, lo_h, hi_h, lo_w, hi_w):
    return torch.empty_like(x), x.new_empty((x.shape[1], len(lo_h), len(lo_w)))


@torch.library.custom_op('pelk_mm::periconv_cpu_grad_w', mutates_args=())
def periconv_cpu_grad_w(x: torch.Tensor, gy: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int],
                        lo_w: List[int], hi_w: List[int]) -> torch.Tensor:
    """Gradient wrt the block weights alone, ``(C, Gh, Gw)``."""
    return extension().backward(x, gy, w, lo_h, hi_h, lo_w, hi_w, False, True)[1]


@periconv_cpu_grad_w.register_fake
def _(x, gy, w, lo_h, hi_h, lo_w, hi_w):
    return x.new_empty((x.shape[1], len(lo_h), len(lo_w)))


def _backward(ctx, gy):
    x, w = ctx.saved_tensors
    lo_h, hi_h, lo_w, hi_w = ctx.cells
    gx = gw = None
    if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
        gx, gw = periconv_cpu_backward(x, gy, w, lo_h, hi_h, lo_w, hi_w)
    elif ctx.needs_input_grad[0]:  # conv with the mirrored kernel: flipped weights over mirrored cells
        gx = periconv_cpu(gy, w.flip(-2, -1).contiguous(), *mirror_cells(lo_h, hi_h), *mirror_cells(lo_w, hi_w))
    elif ctx.needs_input_grad[1]:
        gw = periconv_cpu_grad_w(x, gy, w, lo_h, hi_h, lo_w, hi_w)
    return gx, gw, None, None, None, None


periconv_cpu.register_autograd(_backward, setup_context=save_cells_context)


def available() -> bool:
    """Whether the extension is (or can be) built; builds it on the first call."""
    return extension() is not None


# NOTE: a constant to torch.compile: dynamo calls it once at trace time instead of tracing the build and its lock
# (an unsupported context manager: a graph break, an error under fullgraph=True, in a process where the op has not
# run eagerly yet); the answer never changes within a process. This is the mark that
# torch.compiler.assume_constant_result sets, set here without importing torch._dynamo (1.4 s, and triton, whose
# interpreter mode must be chosen before its first import) with pelk_mm.ops.
available._dynamo_marked_constant = True


def supports(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> bool:
    """CPU tensors of a floating dtype, when the extension is (or can be) built."""
    return x.device.type == 'cpu' and x.is_floating_point() and available()


def cpp_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Fused C++ structure-aware conv; half types are computed in float32 and cast back (output in ``x``'s layout)."""
    H, W = x.shape[-2:]
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    w = crop_weight(weight, ch, cw).to(compute).contiguous()
    y = periconv_cpu(x.to(compute), w, list(ch.lo), list(ch.hi), list(cw.lo), list(cw.hi))
    return y.to(x.dtype)
