"""Cell bounds of a sharing grid, cropped to a feature map (shared by every structure-aware implementation).

A grid ``(s_0, ..., s_{k'-1})`` with ``sum == K`` (odd) puts cell ``a`` on the tap offsets ``[lo_a, hi_a]`` relative to
the kernel centre (:func:`~pelk_mm.ops.sharing_grid.grid_bounds`). On an ``H``-long axis, offsets with ``|o| >= H``
only ever read zero padding, so every implementation may crop the kernel to ``[-(H - 1), H - 1]``: cells entirely
outside are dropped (with their weight rows), border cells are narrowed. This keeps maps smaller than the kernel
(e.g. 7x7 maps with K=13, 14x14 with K=47) cheap and exact.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import torch

from .sharing_grid import grid_bounds


class AxisCells(NamedTuple):
    """Cropped cells along one axis: ``lo[i] <= hi[i]`` offsets, kept cells ``first .. first + len(lo) - 1``."""
    lo: Tuple[int, ...]
    hi: Tuple[int, ...]
    first: int

    @property
    def radius(self) -> int:
        """Largest ``|offset|`` of the cropped kernel (the "same" padding it needs)."""
        return max(-self.lo[0], self.hi[-1])


def axis_cells(grid: Sequence[int], size: int) -> AxisCells:
    """Cells of ``grid`` cropped to offsets ``[-(size - 1), size - 1]`` for an axis of length ``size >= 1``."""
    lim = max(int(size), 1) - 1
    lo, hi, first = [], [], None
    for i, (a, b) in enumerate(grid_bounds(grid)):
        a, b = max(a, -lim), min(b, lim)
        if a <= b:
            first = i if first is None else first
            lo.append(a)
            hi.append(b)
    return AxisCells(tuple(lo), tuple(hi), first)


def crop_weight(weight: torch.Tensor, ch: AxisCells, cw: AxisCells) -> torch.Tensor:
    """Block weights ``(C, 1, k', k')`` -> the kept cells ``(C, Gh, Gw)`` (a view; autograd flows back)."""
    return weight[:, 0, ch.first:ch.first + len(ch.lo), cw.first:cw.first + len(cw.lo)]


def cropped_grid(cells: AxisCells) -> List[int]:
    """Cell widths of cropped cells (they sum to ``2 * radius + 1`` for a centred grid)."""
    return [h - lo + 1 for lo, h in zip(cells.lo, cells.hi)]


def cropped_dense_kernel(weight: torch.Tensor, grid: Sequence[int], h: int, w: int):
    """Dense kernel cropped to an ``h x w`` map: ``((C, 1, Kh, Kw), (pad_h, pad_w))``, ``K* = 2 * pad + 1``."""
    ch, cw = axis_cells(grid, h), axis_cells(grid, w)
    wc = crop_weight(weight, ch, cw).unsqueeze(1)
    idx_h = torch.tensor([i for i, s in enumerate(cropped_grid(ch)) for _ in range(s)], device=weight.device)
    idx_w = torch.tensor([i for i, s in enumerate(cropped_grid(cw)) for _ in range(s)], device=weight.device)
    dense = wc.index_select(-2, idx_h).index_select(-1, idx_w)
    return dense, (ch.radius, cw.radius)  # symmetric crop of a centred kernel: still centred


def mirror_cells(lo: List[int], hi: List[int]):
    """Cells of the mirrored kernel (offset ``o -> -o``), as ``(lo, hi)`` lists in increasing order: the
    grad-input of a structure-aware conv is the same conv with flipped weights over mirrored cells."""
    return [-h for h in reversed(hi)], [-v for v in reversed(lo)]


def save_cells_context(ctx, inputs, output):
    """``setup_context`` shared by the custom ops ``(x, w, lo_h, hi_h, lo_w, hi_w) -> y``."""
    x, w, lo_h, hi_h, lo_w, hi_w = inputs
    ctx.save_for_backward(x, w)
    ctx.cells = (lo_h, hi_h, lo_w, hi_w)
