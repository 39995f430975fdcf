"""Triton implementation (CUDA; on CPU only through the interpreter, ``TRITON_INTERPRET=1``, for tests).

Forward = two structure-aware kernels, no K x K loop:

1. ``_rowbox_contract``: one program per (image row, W-tile). For each W-cell ``b`` it sums the cell's taps of the row
   (``K`` loads per pixel in total) and adds ``w[c, :, b] (outer) rowbox_b`` into a ``(Gh, BW)`` register tile:
   ``T[n, c, h, a, j] = sum_b w[c, a, b] * sum_{v in cell b} x[n, c, h, j + v]``.
2. ``_colbox``: one program per (output row, W-tile): ``y[i, j] = sum_a sum_{u in cell a} T[i + u, a, j]``.

Accumulation is float32 (float64 for float64 inputs). grad_x reuses the forward on the mirrored kernel; grad_w
is the box-summed correlation ``sum V_a R_b`` done with PyTorch matmuls (cuBLAS) - see :func:`grad_weight_torch`.
The op is a ``torch.library`` custom op, so ``torch.compile`` treats it as one opaque node.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import List, Sequence

import torch

from ._cells import axis_cells, crop_weight, mirror_cells, save_cells_context
from ._impl_torch import band_left, band_right

_BW = 32  # W-tile width


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec('triton') is not None


def interpreter_mode() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter (slow; for tests)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    """Define the kernels lazily (``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined)."""
    import triton
    import triton.language as tl
    # the interpreter and the JIT resolve ``tl`` through the kernel's module globals
    globals().update(triton=triton, tl=tl)

    @triton.jit
    def _rowbox_contract(x_ptr, w_ptr, t_ptr, lo_w_ptr, hi_w_ptr, C, H, W, GH, GW,
                         GP: tl.constexpr, BW: tl.constexpr):
        row = tl.program_id(0)  # (n * C + c) * H + h
        c = (row // H) % C
        offs_j = tl.program_id(1) * BW + tl.arange(0, BW)
        offs_a = tl.arange(0, GP)
        mask_j = offs_j < W
        mask_a = offs_a < GH
        acc = tl.zeros((GP, BW), dtype=t_ptr.dtype.element_ty)
        for b in range(0, GW):
            lo = tl.load(lo_w_ptr + b)
            hi = tl.load(hi_w_ptr + b)
            r = tl.zeros((BW,), dtype=t_ptr.dtype.element_ty)
            for v in range(lo, hi + 1):
                jj = offs_j + v
                r += tl.load(x_ptr + row * W + jj, mask=mask_j & (jj >= 0) & (jj < W), other=0.0).to(
                    t_ptr.dtype.element_ty)
            wcol = tl.load(w_ptr + c * GH * GW + offs_a * GW + b, mask=mask_a, other=0.0).to(t_ptr.dtype.element_ty)
            acc += wcol[:, None] * r[None, :]
        ptrs = t_ptr + (row * GH + offs_a[:, None]) * W + offs_j[None, :]
        tl.store(ptrs, acc, mask=mask_a[:, None] & mask_j[None, :])

    @triton.jit
    def _colbox(t_ptr, y_ptr, lo_h_ptr, hi_h_ptr, H, W, GH, BW: tl.constexpr):
        row = tl.program_id(0)  # nc * H + i
        nc = row // H
        i = row % H
        offs_j = tl.program_id(1) * BW + tl.arange(0, BW)
        mask_j = offs_j < W
        acc = tl.zeros((BW,), dtype=t_ptr.dtype.element_ty)
        for a in range(0, GH):
            r0 = tl.maximum(i + tl.load(lo_h_ptr + a), 0)
            r1 = tl.minimum(i + tl.load(hi_h_ptr + a), H - 1)
            for r in range(r0, r1 + 1):
                acc += tl.load(t_ptr + ((nc * H + r) * GH + a) * W + offs_j, mask=mask_j, other=0.0)
        tl.store(y_ptr + row * W + offs_j, acc.to(y_ptr.dtype.element_ty), mask=mask_j)

    return _rowbox_contract, _colbox


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _forward_triton(x: torch.Tensor, w: torch.Tensor, lo_h, hi_h, lo_w, hi_w) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` contiguous, ``w`` ``(C, Gh, Gw)`` -> ``y`` like ``x``."""
    N, C, H, W = x.shape
    gh, gw = len(lo_h), len(lo_w)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.empty((N * C, H, gh, W), device=x.device, dtype=acc_dtype)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    rowbox, colbox = _kernels(interpreter_mode())
    as_idx = lambda v: torch.tensor(list(v), dtype=torch.int32, device=x.device)  # noqa: E731
    grid = (N * C * H, triton_cdiv(W, _BW))
    rowbox[grid](x, w.contiguous(), t, as_idx(lo_w), as_idx(hi_w), C, H, W, gh, gw, GP=max(_next_pow2(gh), 2),
                 BW=_BW)
    colbox[grid](t, y, as_idx(lo_h), as_idx(hi_h), H, W, gh, BW=_BW)
    return y


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def grad_weight_torch(x: torch.Tensor, gy: torch.Tensor, lo_h, hi_h, lo_w, hi_w) -> torch.Tensor:
    """``sum_{n,h,j} V[n,c,h,a,j] R[n,c,h,b,j]`` -> ``(C, Gh, Gw)``; R = W-box sums of x, V = transposed H-box of gy."""
    from ._cells import AxisCells
    N, C, H, W = x.shape
    ch, cw = AxisCells(tuple(lo_h), tuple(hi_h), 0), AxisCells(tuple(lo_w), tuple(hi_w), 0)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, gy = x.to(dt), gy.to(dt)
    r = torch.matmul(x.reshape(N * C * H, W), band_right(W, cw, x.device, dt)).reshape(N, C, H, len(lo_w), W)
    v = torch.matmul(band_left(H, ch, x.device, dt).t(), gy.reshape(N * C, H, W)).reshape(N, C, H, len(lo_h), W)
    return torch.einsum('nchaj,nchbj->cab', v, r)


@torch.library.custom_op('pelk_mm::periconv_triton', mutates_args=())
def periconv_triton(x: torch.Tensor, w: torch.Tensor, lo_h: List[int], hi_h: List[int], lo_w: List[int],
                    hi_w: List[int]) -> torch.Tensor:
    """Triton forward on the cropped cells; ``x`` contiguous ``(N, C, H, W)``, ``w`` ``(C, Gh, Gw)``."""
    return _forward_triton(x, w, lo_h, hi_h, lo_w, hi_w)


@periconv_triton.register_fake
def _(x, w, lo_h, hi_h, lo_w, hi_w):
    return x.new_empty(x.shape)


def _backward(ctx, gy):
    x, w = ctx.saved_tensors
    lo_h, hi_h, lo_w, hi_w = ctx.cells
    gy = gy.contiguous()
    gx = gw = None
    if ctx.needs_input_grad[0]:
        gx = periconv_triton(gy, w.flip(-2, -1).contiguous(), *mirror_cells(lo_h, hi_h), *mirror_cells(lo_w, hi_w))
    if ctx.needs_input_grad[1]:
        gw = grad_weight_torch(x, gy, lo_h, hi_h, lo_w, hi_w).to(w.dtype)
    return gx, gw, None, None, None, None


periconv_triton.register_autograd(_backward, setup_context=save_cells_context)


def supports(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> bool:
    """CUDA tensors (or any tensor in interpreter mode) of a floating dtype, when triton imports."""
    return (x.is_cuda or interpreter_mode()) and x.is_floating_point() and triton_available()


def triton_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Triton structure-aware conv (output NCHW-contiguous, dtype of ``x``)."""
    H, W = x.shape[-2:]
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    w = crop_weight(weight, ch, cw).to(x.dtype).contiguous()
    return periconv_triton(x.contiguous(), w, list(ch.lo), list(ch.hi), list(cw.lo), list(cw.hi))
