"""``cumsum``: the structure-aware peripheral conv written with standard operators only (the export form).

Written with operators every exporter and tracer maps to standard ONNX / ATen (``CumSum``, ``Slice``, ``Pad``,
``Sub``, ``Concat``, a ``1 x 1`` grouped ``Conv``, ``Reshape``), so an exported PeLK keeps the ``O(K + k'^2)`` cost
per pixel instead of a dense ``K x K`` ``Conv``. Per ``(image, channel)`` plane, with the kernel cropped to the map
(``Gh x Gw`` cells left):

1. row prefix sums ``S`` of the zero-padded input (one ``CumSum``); the box sum of W-cell ``b`` at column ``j`` is
   ``S[j + beta_{b+1}] - S[j + beta_b]`` over the ``Gw + 1`` cell boundaries ``beta`` (``Gw + 1`` slices, one
   difference);
2. the ``k' x k'`` contraction with the block weights, as one ``1 x 1`` convolution with ``groups = C`` (``Gw`` box
   sums in, ``Gh + 1`` planes out per channel): the weights are first differenced along H (``w[a - 1] - w[a]``,
   ``Gh + 1`` rows), which turns step 3's ``Gh`` box sums into ``Gh + 1`` shifted prefix sums. ``(Gh + 1) * Gw``
   multiply-adds per output pixel, the only multiplications of the form. A ``Conv`` rather than a ``MatMul``
   because every jit FLOP counter (mmengine's, fvcore's) counts a convolution exactly, batch included; onnxruntime
   runs both at the same speed;
3. column prefix sums of the ``Gh + 1`` contracted planes (one ``CumSum``) and the sum of ``Gh + 1`` slices.

It is exact up to rounding; the prefix sums are one-dimensional (a row, then a column), so the rounding grows with
the map side, not its area. ``'auto'`` never picks it at runtime (``cpp``/``triton``/``box`` are faster); it is the
``'structured'`` export form that :func:`~pelk_mm.ops.peripheral_conv2d` runs under ONNX export, ``torch.export``
and jit tracing. Backward is autograd's.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F

from ._cells import AxisCells, axis_cells, crop_weight

_HALF = (torch.float16, torch.bfloat16)


def _boundaries(cells: AxisCells) -> List[int]:
    """The ``G + 1`` offsets where the cropped cells start and end: ``lo_0, hi_0 + 1, ..., hi_{G-1} + 1``."""
    return [cells.lo[0]] + [h + 1 for h in cells.hi]


def _pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    # NOTE: constant_pad_nd is what F.pad(mode='constant') runs; called directly, a jit trace records it by that
    # name, which the jit FLOP counters know as a zero-cost op (F.pad would trace as the unknown aten::pad).
    return torch.constant_pad_nd(x, list(pad), 0.0)


def cumsum_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Peripheral conv as prefix sums + a ``k' x k'`` grouped ``1 x 1`` conv. ``(N, C, H, W)`` -> ``(N, C, H, W)``
    (contiguous)."""
    _, C, H, W = x.shape
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    gh, gw = len(ch.lo), len(cw.lo)
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    xc = x.to(compute)
    w = crop_weight(weight, ch, cw).to(compute)  # (C, Gh, Gw)
    # NOTE: pad pw + 1 on the left so that the inclusive prefix at index j + beta + pw is the sum of x[< j + beta]
    # for every boundary beta in [-pw, pw + 1] (the first one reads the leading zero).
    pw, ph = cw.radius, ch.radius
    s = torch.cumsum(_pad(xc, (pw + 1, pw)), dim=-1)  # (N, C, H, W + 2 pw + 1)
    e = torch.stack([s[..., b + pw:b + pw + W] for b in _boundaries(cw)], dim=2)  # (N, C, Gw + 1, H, W)
    # NOTE: flatten / -1 instead of sizes computed from the traced shape: the batch stays a dynamic dimension
    # when the function is traced for export, and a jit trace holds no arithmetic on sizes.
    r = (e[:, :, 1:] - e[:, :, :-1]).flatten(1, 2)  # (N, C * Gw, H, W): row box sums per W-cell
    # NOTE: differencing the weights rather than the contracted planes costs Gw multiply-adds per pixel but saves
    # two full passes over Gh + 1 activation planes (pads and a subtraction): about 15 % faster in onnxruntime.
    # NOTE: slices and a concatenation rather than two pads: the TorchScript exporter must infer the conv weight's
    # shape, and it does not through Pad.
    wd = torch.cat([-w[:, :1], w[:, :-1] - w[:, 1:], w[:, -1:]], dim=1)  # (C, Gh + 1, Gw): w[a - 1] - w[a]
    td = F.conv2d(r, wd.reshape(-1, gw, 1, 1), groups=C).reshape(-1, C, gh + 1, H, W)
    tc = torch.cumsum(_pad(td, (0, 0, ph + 1, ph)), dim=-2)  # (N, C, Gh + 1, H + 2 ph + 1, W)
    y = None
    for k, b in enumerate(_boundaries(ch)):
        part = tc[:, :, k, b + ph:b + ph + H]
        y = part if y is None else y + part
    return y.to(x.dtype)


def structured_macs(x_shape: Sequence[int], grid: Sequence[int]) -> int:
    """Multiply-adds of the structured form on an ``(N, C, H, W)`` input: ``N C H W (Gh + 1) Gw`` with the grid
    cropped to the map (``(k' + 1) k'`` per output pixel when the kernel fits the map; the ``cpp`` / ``triton``
    kernels do ``k'^2``). The prefix sums and box differences are additions, which multiply-add counts leave out."""
    n, c, h, w = (int(v) for v in x_shape)
    return n * c * h * w * (len(axis_cells(grid, h).lo) + 1) * len(axis_cells(grid, w).lo)
