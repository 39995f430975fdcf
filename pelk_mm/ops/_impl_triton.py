"""Triton implementation (CUDA; on CPU only through the interpreter, ``TRITON_INTERPRET=1``, for tests).

Fused kernels (:mod:`._triton_kernels`), no ``K x K`` loop and no ``k'``-times intermediate in memory:

* forward: one kernel, one program per ``(n * C + c, row block, column tile)``: input rows streamed with their halo,
  W-cell box sums from prefix sums (O(1) per cell), the ``k' x k'`` contraction and the H-cell box sums in
  registers; only ``y`` is written.
* grad-input: the same kernel on the mirrored cells with the flipped weights.
* grad-weight: one kernel writing a ``k' x k'`` float32 partial per program (a chunk of images x a row/column tile
  of one channel), summed over the programs in a fixed order (``torch.sum`` over the partials): the same bits on
  every run.

Accumulation is float32 for float32/bfloat16/float16 inputs and float64 for float64. The kernels read and write
through the tensors' strides: NCHW, channels_last and channel slices are used in place, and the output has the
memory format of the input (``torch.empty_like``). The ops are ``torch.library`` custom ops, so ``torch.compile``
treats each as one opaque node.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import List, NamedTuple, Sequence, Tuple

import torch

from ._cells import axis_cells, crop_weight, mirror_cells, save_cells_context

_BLOCK_ELEMS = 8192  # elements of the forward's (k'_h, k'_w, BW) register block of the contraction
_GRAD_W_BLOCK_ELEMS = 4096  # grad-weight: the (k'_h, k'_w, BW) accumulator and its update are both live
_MAX_BH = 64  # output rows per program
_MAX_BW = 32  # output columns per program
_GRAD_W_PROGRAMS = 1024  # grad-weight: images per program chosen so that about this many programs run


# NOTE: looked up once at import: `supports()` runs inside torch.compile traces, and torch 2.11's dynamo refuses to
# trace `importlib.util.find_spec` (a fullgraph compile would fail on it)
_TRITON_FOUND = importlib.util.find_spec('triton') is not None


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return _TRITON_FOUND


def interpreter_mode() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter (slow; for tests)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def kernels():
    """The kernel module, imported on first use (``triton.jit`` reads ``TRITON_INTERPRET`` at that import)."""
    return importlib.import_module('._triton_kernels', __package__)


def _next_pow2(n: int, least: int = 1) -> int:
    return max(1 << max(int(n) - 1, 0).bit_length(), least)


def _cdiv(a: int, b: int) -> int:
    import triton
    return triton.cdiv(a, b)


class Tiles(NamedTuple):
    """Block sizes of one launch: output rows / columns per program, the row segment (tile + halo) and the padded
    cell counts."""
    bh: int
    bw: int
    bwh: int
    ghp: int
    gwp: int
    num_warps: int


def tiles(h: int, w: int, gh: int, gw: int, kw: int, block: int = _BLOCK_ELEMS) -> Tiles:
    """Block sizes for an ``h x w`` map, ``gh x gw`` cells, a cropped kernel ``kw`` taps wide and a register block
    of at most ``block`` elements."""
    ghp, gwp = _next_pow2(gh, 2), _next_pow2(gw, 2)
    bh = min(_next_pow2(h, 4), _MAX_BH)
    bw = min(_next_pow2(w, 8), _MAX_BW)
    # NOTE: the (k'_h, k'_w, BW) contraction block lives in registers; for 17-cell grids (padded to 32) narrower
    # column tiles keep it within the block budget instead of spilling
    while ghp * gwp * bw > block and bw > 8:
        bw //= 2
    elems = max(ghp * gwp * bw, bh * bw)
    num_warps = 8 if elems >= 8192 else 4 if elems >= 2048 else 2
    # NOTE: Triton's gather lowering asserts when the source (GHP, BW) tile holds fewer elements than the program
    # has threads; small grids get padded cells (zero weights) instead
    ghp = max(ghp, 32 * num_warps // bw)
    return Tiles(bh, bw, _next_pow2(bw + kw - 1), ghp, gwp, num_warps)


@functools.lru_cache(maxsize=256)
def _int_table(values: Tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def _cell_of(lo: Sequence[int], hi: Sequence[int]) -> Tuple[int, ...]:
    """Cell index of every offset ``lo[0] .. hi[-1]`` (the cropped cells are contiguous)."""
    return tuple(a for a, (l, h) in enumerate(zip(lo, hi)) for _ in range(h - l + 1))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward_triton(x: torch.Tensor, w: torch.Tensor, lo_h: Sequence[int], hi_h: Sequence[int],
                   lo_w: Sequence[int], hi_w: Sequence[int]) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` (any strides), ``w`` ``(C, Gh, Gw)`` -> ``y`` in the memory format of ``x``."""
    N, C, H, W = x.shape
    y = torch.empty_like(x)
    if y.numel() == 0:
        return y
    gh, gw = len(lo_h), len(lo_w)
    kw = hi_w[-1] - lo_w[0] + 1
    t = tiles(H, W, gh, gw, kw)
    dev = str(x.device)
    grid = (N * C, _cdiv(H, t.bh), _cdiv(W, t.bw))
    kernels().periconv_fwd_kernel[grid](
        x, w.contiguous(), y, _int_table(_cell_of(lo_h, hi_h), dev), _int_table(tuple(lo_w), dev),
        _int_table(tuple(hi_w), dev), C, H, W, gh, gw, lo_h[0], hi_h[-1], lo_w[0], kw, *x.stride(), *y.stride(),
        BH=t.bh, BW=t.bw, BWH=t.bwh, GHP=t.ghp, GWP=t.gwp, F64=x.dtype == torch.float64, num_warps=t.num_warps)
    return y


def grad_weight_triton(x: torch.Tensor, gy: torch.Tensor, lo_h: Sequence[int], hi_h: Sequence[int],
                       lo_w: Sequence[int], hi_w: Sequence[int]) -> torch.Tensor:
    """``gw[c, a, b] = sum_{n, i, j} gy[n, c, i, j] * (cell (a, b) box sum of x around (i, j))`` ->
    ``(C, Gh, Gw)`` float32 (float64 for float64 inputs), from per-program partials summed in a fixed order."""
    N, C, H, W = x.shape
    gh, gw = len(lo_h), len(lo_w)
    acc = _acc_dtype(x)
    if x.numel() == 0:
        return x.new_zeros((C, gh, gw), dtype=acc)
    kw = hi_w[-1] - lo_w[0] + 1
    t = tiles(H, W, gh, gw, kw, _GRAD_W_BLOCK_ELEMS)
    n_hw = _cdiv(H, t.bh) * _cdiv(W, t.bw)
    # NOTE: the split depends on the shape only, so the summation order (and the result) is the same on every run
    # and every GPU model
    per_program = _cdiv(N, min(N, max(1, _cdiv(_GRAD_W_PROGRAMS, C * n_hw))))
    chunks = _cdiv(N, per_program)
    part = torch.empty((chunks * n_hw, C, gh, gw), dtype=acc, device=x.device)
    dev = str(x.device)
    smax = max(h - l + 1 for l, h in zip(lo_h, hi_h))
    kernels().periconv_grad_w_kernel[(chunks, C, n_hw)](
        x, gy, part, _int_table(tuple(lo_h), dev), _int_table(tuple(hi_h), dev), _int_table(tuple(lo_w), dev),
        _int_table(tuple(hi_w), dev), N, C, H, W, gh, gw, lo_w[0], kw, smax, per_program, *x.stride(), *gy.stride(),
        BH=t.bh, BW=t.bw, BWH=t.bwh, GHP=t.ghp, GWP=t.gwp, F64=x.dtype == torch.float64, num_warps=t.num_warps)
    return part.sum(0)


# ----------------------------------------------------------------------------------------------------------- ops
@torch.library.custom_op('pelk_mm::periconv_triton', mutates_args=())
def periconv_triton(x: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                    hi_w: List[int]) -> torch.Tensor:
    """Fused Triton forward on the cropped cells; ``x`` ``(N, C, H, W)`` any strides, ``w`` ``(C, Gh, Gw)``."""
    return forward_triton(x, w, lo_h, hi_h, lo_w, hi_w)


@periconv_triton.register_fake
def _(x, w, lo_h, hi_h, lo_w, hi_w):
    return torch.empty_like(x)


@torch.library.custom_op('pelk_mm::periconv_triton_grad_w', mutates_args=())
def periconv_triton_grad_w(x: torch.Tensor, gy: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                           hi_w: List[int]) -> torch.Tensor:
    """Gradient wrt the cropped block weights, ``(C, Gh, Gw)`` in the accumulation dtype."""
    return grad_weight_triton(x, gy, lo_h, hi_h, lo_w, hi_w)


@periconv_triton_grad_w.register_fake
def _(x, gy, lo_h, hi_h, lo_w, hi_w):
    return x.new_empty((x.shape[1], len(lo_h), len(lo_w)), dtype=_acc_dtype(x))


def _backward(ctx, gy):
    x, w = ctx.saved_tensors
    lo_h, hi_h, lo_w, hi_w = ctx.cells
    gx = gw = None
    if ctx.needs_input_grad[0]:  # conv with the mirrored kernel: flipped weights over mirrored cells
        gx = periconv_triton(gy, w.flip(-2, -1).contiguous(), *mirror_cells(lo_h, hi_h), *mirror_cells(lo_w, hi_w))
    if ctx.needs_input_grad[1]:
        gw = periconv_triton_grad_w(x, gy, lo_h, hi_h, lo_w, hi_w).to(w.dtype)
    return gx, gw, None, None, None, None


periconv_triton.register_autograd(_backward, setup_context=save_cells_context)


def supports(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> bool:
    """CUDA tensors (or any tensor in interpreter mode) of a floating dtype, when triton imports."""
    return (x.is_cuda or interpreter_mode()) and x.is_floating_point() and triton_available()


def triton_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Fused Triton structure-aware conv: output in ``x``'s dtype and memory format (no layout copy of ``x``)."""
    H, W = x.shape[-2:]
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    w = crop_weight(weight, ch, cw).to(x.dtype).contiguous()
    return periconv_triton(x, w, list(ch.lo), list(ch.hi), list(cw.lo), list(cw.hi))
