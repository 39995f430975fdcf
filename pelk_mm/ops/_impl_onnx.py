"""``cumsum``: the structure-aware peripheral conv from prefix sums, slices and one small matmul.

Written with operators every exporter maps to standard ONNX (``CumSum``, ``Slice``, ``Pad``, ``Sub``, ``Concat``,
``MatMul``, ``Reshape``), so an exported deployed PeLK keeps the ``O(K + k'^2)`` cost per pixel instead of a dense
``K x K`` ``Conv``. Per ``(image, channel)`` plane, with the kernel cropped to the map:

1. row prefix sums ``S`` of the zero-padded input (one ``CumSum``); the box sum of W-cell ``b`` at column ``j`` is
   ``S[j + beta_{b+1}] - S[j + beta_b]`` over the ``Gw + 1`` cell boundaries ``beta`` (``Gw + 1`` slices, one
   difference);
2. the ``k' x k'`` contraction with the block weights, as one batched ``MatMul`` over ``(Gw, H*W)`` planes; the
   weights are first differenced along H (``w[a-1] - w[a]``, ``Gh + 1`` rows), which turns step 3's ``Gh`` box sums
   into ``Gh + 1`` shifted prefix sums;
3. column prefix sums of the ``Gh + 1`` contracted planes (one ``CumSum``) and the sum of ``Gh + 1`` slices.

It is exact up to rounding; the prefix sums are one-dimensional (a row, then a column), so the rounding grows with
the map side, not its area. ``'auto'`` never picks it (``cpp``/``triton``/``box`` are faster at runtime); the ONNX
export selects it explicitly. Backward is autograd's.
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


def cumsum_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Peripheral conv as prefix sums + ``k' x k'`` matmul. ``(N, C, H, W)`` -> ``(N, C, H, W)`` (contiguous)."""
    N, C, H, W = x.shape
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    gh, gw = len(ch.lo), len(cw.lo)
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    xc = x.to(compute)
    w = crop_weight(weight, ch, cw).to(compute)  # (C, Gh, Gw)
    # NOTE: pad pw + 1 on the left so that the inclusive prefix at index j + beta + pw is the sum of x[< j + beta]
    # for every boundary beta in [-pw, pw + 1] (the first one reads the leading zero).
    pw, ph = cw.radius, ch.radius
    s = torch.cumsum(F.pad(xc, (pw + 1, pw)), dim=-1)  # (N, C, H, W + 2 pw + 1)
    e = torch.stack([s[..., b + pw:b + pw + W] for b in _boundaries(cw)], dim=2)  # (N, C, Gw + 1, H, W)
    # NOTE: -1 for the batch keeps it a dynamic dimension when the function is traced for ONNX export.
    r = (e[:, :, 1:] - e[:, :, :-1]).reshape(-1, C, gw, H * W)  # row box sums per W-cell
    wd = F.pad(w, (0, 0, 1, 0)) - F.pad(w, (0, 0, 0, 1))  # (C, Gh + 1, Gw): w[a - 1] - w[a]
    t = torch.matmul(wd, r).reshape(-1, C, gh + 1, H, W)
    tc = torch.cumsum(F.pad(t, (0, 0, ph + 1, ph)), dim=-2)  # (N, C, Gh + 1, H + 2 ph + 1, W)
    y = None
    for k, b in enumerate(_boundaries(ch)):
        part = tc[:, :, k, b + ph:b + ph + H]
        y = part if y is None else y + part
    return y.to(x.dtype)
