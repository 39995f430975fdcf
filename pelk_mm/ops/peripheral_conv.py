"""One interface for every implementation of the depthwise peripheral convolution.

``peripheral_conv2d(x, weight, grid)`` computes the stride-1, "same"-padded depthwise convolution of ``x``
``(N, C, H, W)`` with the dense kernel obtained by expanding the block-shared ``weight`` ``(C, 1, k', k')`` over the
axis ``grid`` (see :mod:`pelk_mm.ops.sharing_grid`). All implementations compute the same function (exactly, up to
floating-point rounding) with their own forward and backward; they differ only in speed and memory:

============  =====================================================================================  ==========
name          method                                                                                 devices
============  =====================================================================================  ==========
``cpp``       fused C++/OpenMP box sums over the sharing grid, ``O(K + k'^2)`` per pixel (JIT-built)  CPU
``triton``    one fused Triton kernel per pass, ``O(K + k'^2)`` per pixel, any layout in place       CUDA
``box``       the same structure as three PyTorch matmuls (banded 0/1 matrices)                       any
``fft``       ``rfft2`` on 2/3/5-smooth sizes, kernel spectrum shared across the batch                 any
``dense_cl``  dense kernel cropped to the map, channels_last ``F.conv2d``                             any
``cumsum``    prefix sums + slices + ``k' x k'`` 1x1 conv: standard ops only (export form; never ``auto``)  any
``dense``     reference: full dense kernel, ``F.conv2d`` (what the paper does)                        any
============  =====================================================================================  ==========

Every implementation except ``dense`` crops the kernel to the map first (offsets ``|o| >= H`` only see padding).

Which one runs (policy):

1. the ``impl`` argument (``'auto'`` by default; modules expose it as ``conv_impl``),
2. else the environment variable ``PELK_MM_CONV_IMPL`` (e.g. ``dense`` to force the reference),
3. else, with autotuning on (by default for CUDA inputs; ``PELK_MM_CONV_AUTOTUNE=1``/``0`` or
   :func:`set_autotune` switch it for every device), the fastest candidate for this ``(device type, dtype, N, C,
   H, W, grid, memory format, grad needed)`` key: synchronised timing after a warm-up, median of three runs,
   forward + backward when a gradient is needed (``dense`` only for small kernels on CUDA, ``cumsum`` never). The
   choice is kept in memory (:func:`autotune_cache`) and in a cache file per device model, torch and triton
   version (:func:`autotune_cache_file`), so later runs do not re-time; in a process group rank 0 decides and
   broadcasts, so every DDP rank runs the same implementation. Each choice is logged once. It never runs while
   ``torch.compile`` traces,
4. else the static rule: the highest-priority implementation whose ``supports`` (and ``auto``) accept the input:
   ``cpp`` on CPU when the extension builds, ``triton`` on CUDA when triton imports, else ``box``.

Under autocast the input is cast to the autocast dtype first (as ``F.conv2d`` would be) and the implementation runs
with autocast off; half types are accumulated in float32 (``cpp`` and ``fft`` compute them in float32).
New implementations register with :func:`register_impl`.

Export and tracing. While the op is traced for a graph that must hold standard operators only -- ONNX export with
either exporter (:func:`torch.onnx.is_in_onnx_export`), ``torch.export`` (:func:`torch.compiler.is_exporting`) and
jit tracing (:func:`torch.jit.is_tracing`: ``torch.jit.trace``, the jit FLOP counters of mmengine / fvcore) -- it
lowers itself to an *export form* instead of a custom kernel, so ``torch.onnx.export`` of any model holding the op
needs no extra step:

* ``'structured'`` (default): ``cumsum``, prefix sums + slices + the ``k' x k'`` contraction as a grouped
  ``1 x 1`` conv, ``O(K + k'^2)`` per pixel, the block weights stay ``k' x k'`` in the graph;
* ``'dense'``: ``dense_cl``, the dense kernel cropped to the map and one grouped ``K x K`` conv (for runtimes that
  only optimise convolutions).

The form comes from :func:`export_conv_form` (a context manager), else ``$PELK_MM_EXPORT_CONV_FORM``, else
``'structured'``. An implementation named explicitly (argument or ``$PELK_MM_CONV_IMPL``) that is itself made of
standard operators (``dense``, ``dense_cl``, ``cumsum``, ``box``: ``exportable`` in :func:`register_impl`) is kept;
``'auto'`` and the kernels (``cpp``, ``triton``, ``fft``) give the export form. ``torch.compile`` is not export: it
keeps the runtime policy (the kernels are opaque custom ops there).
"""
from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import _impl_cpp, _impl_onnx, _impl_torch, _impl_triton, _tune_store
from .sharing_grid import expand_kernel

logger = logging.getLogger(__name__)

ENV_VAR = 'PELK_MM_CONV_IMPL'
AUTOTUNE_ENV_VAR = 'PELK_MM_CONV_AUTOTUNE'
EXPORT_FORM_ENV_VAR = 'PELK_MM_EXPORT_CONV_FORM'

#: export forms of the peripheral conv (see the module docstring) -> the implementation that writes it
EXPORT_FORMS = {'structured': 'cumsum', 'dense': 'dense_cl'}

ConvFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]
Predicate = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], bool]


@dataclass
class ConvImpl:
    name: str
    fn: ConvFn
    supports: Predicate  # can run this input at all (explicit choice)
    priority: int  # higher runs first under 'auto'
    auto: Predicate  # may be picked by 'auto' / autotuning for this input
    exportable: bool = False  # made of standard operators: kept under export / tracing when named explicitly


_IMPLS: Dict[str, ConvImpl] = {}
_AUTOTUNE: Dict[tuple, str] = {}
_RANK_CHOICES: Dict[tuple, str] = {}  # in a process group: rank key -> rank 0's choice
_autotune_flag: Optional[bool] = None  # None: follow $PELK_MM_CONV_AUTOTUNE
_export_form: Optional[str] = None  # None: follow $PELK_MM_EXPORT_CONV_FORM


def _always(x, w, g) -> bool:
    return True


def register_impl(name: str, fn: ConvFn, supports: Optional[Predicate] = None, priority: int = 0,
                  auto: Optional[Predicate] = None, exportable: bool = False) -> None:
    """Register ``fn(x, weight, grid) -> y`` under ``name``.

    Args:
        supports: ``(x, weight, grid) -> bool``, whether ``fn`` can run the input (default: always).
        priority: order under ``'auto'`` (highest first).
        auto: ``(x, weight, grid) -> bool``, whether ``'auto'`` may pick it (default: same as ``supports``).
        exportable: ``fn`` is made of standard PyTorch operators that trace to standard ONNX / ATen, so an explicit
            choice of it is kept under export and tracing (default: replaced by the export form there).
    """
    supports = supports or _always
    _IMPLS[name] = ConvImpl(name, fn, supports, priority, auto or supports, exportable)
    _AUTOTUNE.clear()


def available_impls() -> List[str]:
    """Registered implementation names, highest ``auto`` priority first."""
    return [i.name for i in sorted(_IMPLS.values(), key=lambda i: -i.priority)]


# ----------------------------------------------------------------------------------------------- export
def _check_form(form: str, source: str) -> str:
    if form not in EXPORT_FORMS:
        raise ValueError(f'{source}={form!r} is not an export form of the peripheral conv: use one of '
                         f'{sorted(EXPORT_FORMS)}')
    return form


def get_export_conv_form() -> str:
    """The form the op lowers to under export and tracing: the innermost :func:`export_conv_form`, else
    ``$PELK_MM_EXPORT_CONV_FORM``, else ``'structured'``."""
    if _export_form is not None:
        return _export_form
    env = os.environ.get(EXPORT_FORM_ENV_VAR, '').strip().lower()
    return _check_form(env, f'${EXPORT_FORM_ENV_VAR}') if env else 'structured'


@contextlib.contextmanager
def export_conv_form(form: str) -> Iterator[str]:
    """Within the block, export and tracing write the peripheral conv in ``form`` (``'structured'`` or
    ``'dense'``, :data:`EXPORT_FORMS`); the previous setting is restored on exit. Process-wide (not per thread)::

        with pelk_mm.ops.export_conv_form('dense'):
            torch.onnx.export(model, (x, ), 'model.onnx')
    """
    global _export_form
    _check_form(form, 'export_conv_form')
    saved, _export_form = _export_form, form
    try:
        yield form
    finally:
        _export_form = saved


def is_export_trace() -> bool:
    """Whether the op is being traced for a standard-operator graph: ONNX export (either exporter),
    ``torch.export`` or jit tracing. ``torch.compile`` alone is not such a trace."""
    # NOTE: the TorchScript exporter traces with the jit and the dynamo exporter captures with torch.export, so the
    # first two checks cover both; the ONNX flag (the documented signal, but 3 us a call: it imports inside) comes
    # last, for a capture path that sets neither. torch.compile sets none of the three.
    return bool(torch.jit.is_tracing() or _is_exporting() or torch.onnx.is_in_onnx_export())


def _is_exporting() -> bool:
    """Whether ``torch.export`` is capturing (strict or not), and not merely ``torch.compile``."""
    # NOTE: dynamo folds a call of `torch.compiler.is_exporting()` to a constant, and torch 2.11 folds it to True in
    # every dynamo trace, so under torch.compile the op would lower to standard operators instead of running its
    # kernel. torch.export sets the flag that the function returns; read directly, it is False under torch.compile
    # on every version.
    flag = getattr(torch.compiler, '_is_exporting_flag', None)
    return bool(flag) if isinstance(flag, bool) else torch.compiler.is_exporting()


def _export_choice(impl: str) -> ConvImpl:
    """Under an export trace: the explicitly named implementation when it is exportable, else the export form."""
    if impl != 'auto' and _IMPLS[impl].exportable:
        return _IMPLS[impl]
    return _IMPLS[EXPORT_FORMS[get_export_conv_form()]]


# ----------------------------------------------------------------------------------------------- autotune
def set_autotune(enabled: Optional[bool]) -> None:
    """Turn autotuning on/off for this process; ``None`` follows ``$PELK_MM_CONV_AUTOTUNE`` again."""
    global _autotune_flag
    _autotune_flag = enabled


def autotune_enabled(x: Optional[torch.Tensor] = None) -> bool:
    """Whether ``auto`` times the candidates: :func:`set_autotune`, else ``$PELK_MM_CONV_AUTOTUNE``, else on for
    CUDA inputs (where the fastest implementation depends on the GPU, dtype and layout) and off on CPU (``cpp``)."""
    if _autotune_flag is not None:
        return _autotune_flag
    env = _tune_store.env_switch(AUTOTUNE_ENV_VAR, 'time the implementations', 'static choice', 'timed on CUDA only')
    if env is not None:
        return env
    return x is not None and x.device.type == 'cuda'


def autotune_cache() -> Dict[tuple, str]:
    """A copy of the in-process autotune cache ``{key: implementation name}``."""
    return dict(_AUTOTUNE)


def clear_autotune_cache() -> None:
    """Forget the in-process choices (the cache file is kept; delete it to re-time)."""
    _AUTOTUNE.clear()
    _RANK_CHOICES.clear()
    _tune_store.forget()
    _impl_triton.clear_variant_cache()


autotune_cache_file = _tune_store.cache_file
_package_version = _tune_store.package_version
_key_text = _tune_store.key_text
_persisted = _tune_store.load
_persist = _tune_store.save


def _distributed() -> Optional[tuple]:
    """``(rank, world_size)`` inside an initialised process group of more than one rank, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def autotune_key(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> tuple:
    """``(device type, dtype, N, C, H, W, grid, channels_last, needs grad)``."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return (x.device.type, x.dtype, *x.shape, tuple(int(s) for s in grid), channels_last, needs_grad)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time_once(impl: ConvImpl, x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int], grad: bool) -> float:
    xx = x.detach().requires_grad_(grad and x.requires_grad)
    ww = weight.detach().requires_grad_(grad and weight.requires_grad)
    _sync(x.device)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        y = impl.fn(xx, ww, grid)
        if grad:
            y.backward(torch.ones_like(y))
    _sync(x.device)
    return time.perf_counter() - start


def _candidates(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> List[ConvImpl]:
    # NOTE: the dense reference is only a candidate where it can win: small kernels on CUDA (cuDNN)
    dense_ok = x.device.type == 'cuda' and sum(grid) <= 31
    return [i for i in sorted(_IMPLS.values(), key=lambda i: -i.priority)
            if (i.name != 'dense' or dense_ok) and i.name != 'cumsum' and i.auto(x, weight, grid)]


def _time_candidates(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int], key: tuple):
    grad = key[-1]
    best_name, best = None, float('inf')
    for impl in _candidates(x, weight, grid):
        try:
            if grad and _time_once(impl, x, weight, grid, False) > 5 * best:
                continue  # its forward alone is far slower than the best forward+backward: skip the backward
            first = _time_once(impl, x, weight, grid, grad)  # warm-up (builds, caches, plans)
            if first > 20 * best:
                continue  # hopeless: skip the timed runs
            median = statistics.median(_time_once(impl, x, weight, grid, grad) for _ in range(3))
        except Exception as err:  # noqa: BLE001 - a failing candidate is just not chosen
            logger.debug('pelk_mm autotune: %s failed on %s: %s', impl.name, key, err)
            continue
        if median < best:
            best_name, best = impl.name, median
    return best_name or 'dense', best


def _rank_key(key: tuple) -> tuple:
    """The part of an autotune key that every DDP rank meets at the same call: without ``N, H, W``, which can differ
    between ranks (multi-scale detection batches, a smaller last batch)."""
    return key[:2] + (key[3], ) + key[6:]


def _autotune(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int], key: tuple) -> ConvImpl:
    """The choice for a new key: from the cache file, else timed; in a process group rank 0 decides and every rank
    receives its choice, so all DDP ranks run the same implementation.

    NOTE: the broadcast is a collective, so it must happen at the same call on every rank. In a process group the
    decision is therefore made once per :func:`_rank_key` (device, dtype, channels, grid, layout, grad) -- the first
    forward of a layer, which all DDP ranks run in the same iteration whatever their input sizes -- from rank 0's
    first input, and reused for every later size."""
    dist_info = _distributed()
    if dist_info is not None and _rank_key(key) in _RANK_CHOICES:
        _AUTOTUNE[key] = _RANK_CHOICES[_rank_key(key)]
        return _IMPLS[_AUTOTUNE[key]]
    name, how = None, 'rank 0'
    if dist_info is None or dist_info[0] == 0:
        path = autotune_cache_file(x.device)
        choices = _persisted(path)
        stored = choices.get(_key_text(key))
        if stored in _IMPLS and _IMPLS[stored].auto(x, weight, grid):
            name, how = stored, f'cache file {path}'
        else:
            name, best = _time_candidates(x, weight, grid, key)
            how = f'timed, {best * 1e3:.3f} ms'
            choices[_key_text(key)] = name
            _persist(path, choices)
    if dist_info is not None:
        import torch.distributed as dist
        box = [name]
        dist.broadcast_object_list(box, src=0)
        name = box[0] if box[0] in _IMPLS and _IMPLS[box[0]].supports(x, weight, grid) \
            else _static_choice(x, weight, grid).name
        how = how if dist_info[0] == 0 else 'from rank 0'
        _RANK_CHOICES[_rank_key(key)] = name
    _AUTOTUNE[key] = name
    logger.info('pelk_mm autotune: %s -> %s (%s)', key, name, how)
    return _IMPLS[name]


# ----------------------------------------------------------------------------------------------- dispatch
def _check_inputs(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> None:
    if x.dim() != 4:
        raise ValueError(f'peripheral_conv2d expects x of shape (N, C, H, W), got shape {tuple(x.shape)}')
    k = len(grid)
    if weight.shape != (x.shape[1], 1, k, k):
        raise ValueError(f'weight must have shape (C, 1, k\', k\') = ({x.shape[1]}, 1, {k}, {k}) for '
                         f'{x.shape[1]} channels and a {k}-cell grid, got {tuple(weight.shape)}')
    if any(int(s) < 1 for s in grid) or sum(grid) % 2 == 0:
        raise ValueError(f'grid must be positive cell widths summing to an odd kernel size, got grid={list(grid)} '
                         f'(sum {sum(grid)})')


def _static_choice(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> ConvImpl:
    for cand in sorted(_IMPLS.values(), key=lambda i: -i.priority):
        if cand.auto(x, weight, grid):
            return cand
    return _IMPLS['dense']


def resolve_impl(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int], impl: str = 'auto') -> ConvImpl:
    """The implementation that :func:`peripheral_conv2d` would run for these inputs (see the module policy and,
    under export and tracing, the export form)."""
    if impl in (None, 'auto'):
        impl = os.environ.get(ENV_VAR, 'auto') or 'auto'
    if impl != 'auto' and impl not in _IMPLS:
        raise ValueError(f'unknown peripheral conv implementation {impl!r} (from the conv_impl argument or '
                         f'${ENV_VAR}); available: {available_impls()} or "auto"')
    if is_export_trace():
        return _export_choice(impl)
    if impl != 'auto':
        chosen = _IMPLS[impl]
        if not chosen.supports(x, weight, grid):
            raise ValueError(f'peripheral conv implementation {impl!r} does not support input '
                             f'{tuple(x.shape)} {x.dtype} on {x.device}; use conv_impl="auto"')
        return chosen
    if autotune_enabled(x) and not torch.compiler.is_compiling():
        key = autotune_key(x, weight, grid)
        if key in _AUTOTUNE:
            return _IMPLS[_AUTOTUNE[key]]
        return _autotune(x, weight, grid, key)
    return _static_choice(x, weight, grid)


def peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                      impl: str = 'auto') -> torch.Tensor:
    """Depthwise peripheral convolution, stride 1, "same" padding, no bias.

    Args:
        x (Tensor): ``(N, C, H, W)`` input (any memory format; float16/bfloat16/float32/float64).
        weight (Tensor): ``(C, 1, k', k')`` block-shared weights.
        grid (Sequence[int]): axis sharing grid with ``k'`` cells summing to the odd kernel size ``K``.
        impl (str): implementation name or ``'auto'`` (see the module docstring for the policy).

    Returns:
        Tensor: ``(N, C, H, W)`` in the dtype of ``x`` (the autocast dtype under autocast).
    """
    _check_inputs(x, weight, grid)
    grid = tuple(int(s) for s in grid)
    device_type = x.device.type
    if device_type in ('cpu', 'cuda') and torch.is_autocast_enabled(device_type):
        x = x.to(torch.get_autocast_dtype(device_type))
        with torch.autocast(device_type, enabled=False):
            return resolve_impl(x, weight, grid, impl).fn(x, weight, grid)
    return resolve_impl(x, weight, grid, impl).fn(x, weight, grid)


def dense_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Reference: expand to the dense ``K x K`` kernel and run ``F.conv2d`` (as the paper does)."""
    dense = expand_kernel(weight, grid)
    return F.conv2d(x, dense.to(x.dtype), padding=sum(grid) // 2, groups=x.shape[1])


def _is_cpu(x, w, g) -> bool:
    return x.device.type == 'cpu'


def _is_cuda(x, w, g) -> bool:
    return x.is_cuda


def _floating(x, w, g) -> bool:
    return x.is_floating_point()


register_impl('dense', dense_peripheral_conv2d, priority=0, exportable=True)
register_impl('cumsum', _impl_onnx.cumsum_peripheral_conv2d, _floating, priority=5, auto=lambda x, w, g: False,
              exportable=True)
register_impl('dense_cl', _impl_torch.dense_cl_peripheral_conv2d, _floating, priority=10, exportable=True)
register_impl('fft', _impl_torch.fft_peripheral_conv2d, _floating, priority=20)
register_impl('box', _impl_torch.box_peripheral_conv2d, _floating, priority=30, exportable=True)
register_impl('triton', _impl_triton.triton_peripheral_conv2d, _impl_triton.supports, priority=40,
              auto=lambda x, w, g: _is_cuda(x, w, g) and _impl_triton.supports(x, w, g))
register_impl('cpp', _impl_cpp.cpp_peripheral_conv2d, _impl_cpp.supports, priority=50,
              auto=lambda x, w, g: _is_cpu(x, w, g) and _impl_cpp.supports(x, w, g))
