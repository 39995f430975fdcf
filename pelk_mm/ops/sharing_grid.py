"""Sharing grids of peripheral convolution (PeLK, Eq. 1-2).

A sharing grid ``S = [s_0, ..., s_{k'-1}]`` splits one axis of a ``K x K`` kernel into ``k'`` consecutive cells
(``sum(S) == K``). The dense kernel is ``W[x, y] = w[a(x), b(y)]`` where ``a(x)`` is the cell holding ``x``; the same
grid is used on both axes, so ``k' x k'`` parameters describe ``K x K`` taps.

PeLK's grid (Eq. 2) is axis-symmetric: cells of width 1 in a central fine region of radius ``r_c`` and cells of
width ``m ** (|i| - r_c)`` beyond it. Eq. 2 rarely sums to ``K`` exactly, so (the rule that reproduces every grid
printed in the paper) the outermost cell takes what remains of the half-width ``(K - 1) / 2``; a remainder narrower
than the base ``m`` is merged into the previous *shared* cell.

Paper notation ("half grid") lists one side from the outside in, ending with the centre cell, e.g. K=51 with a
5x5 centre is ``[9, 8, 4, 2, 1, 1, 1]`` and the full grid is ``[9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9]``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from pelk_mm.errors import check_int


def _check_odd_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool):
        raise ValueError(f'kernel_size must be an int, got {kernel_size!r}')
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size must be a positive odd int (stride-1 "same" padding needs a centre tap), '
                         f'got kernel_size={kernel_size}; use {kernel_size + 1} or {max(1, kernel_size - 1)}')


def peripheral_half_grid(kernel_size: int, center_size: int = 5, base: int = 2) -> List[int]:
    """PeLK's half grid (outer -> centre, the last entry is the centre cell).

    Args:
        kernel_size (int): Odd dense kernel size ``K``.
        center_size (int): Odd side of the unshared central region (``2 * r_c + 1``), at most ``K``.
        base (int): Growth base ``m`` of the peripheral cells, at least 2.

    Returns:
        list[int]: e.g. ``peripheral_half_grid(51, 5) == [9, 8, 4, 2, 1, 1, 1]``.
    """
    _check_odd_kernel(kernel_size)
    check_int('center_size', center_size, odd=True, why='side of the unshared centre')
    if center_size > kernel_size:
        raise ValueError(f'center_size={center_size} is larger than kernel_size={kernel_size}; '
                         f'the central fine region must fit inside the kernel (use center_size <= {kernel_size})')
    check_int('base', base, minimum=2, why='exponential growth of the peripheral cells')
    half_width = (kernel_size - 1) // 2
    r_c = (center_size - 1) // 2
    cells: List[int] = []  # centre -> outside, excluding the centre cell itself
    used, i = 0, 1
    while used < half_width:
        width = 1 if i <= r_c else base ** (i - r_c)
        width = min(width, half_width - used)
        if i > r_c + 1 and width < base:
            cells[-1] += width  # too narrow for a cell of its own: merge into the previous shared cell
        else:
            cells.append(width)
        used += width
        i += 1
    return cells[::-1] + [1]


def full_grid_from_half(half_grid: Sequence[int]) -> Tuple[int, ...]:
    """Mirror a half grid (outer -> centre, centre cell last) into the full axis grid."""
    half = [int(s) for s in half_grid]
    if len(half) == 0 or any(s < 1 for s in half):
        raise ValueError(f'half_grid must be a non-empty list of positive cell widths, got {list(half_grid)!r}')
    if half[-1] != 1:
        raise ValueError(f'the last entry of half_grid is the centre cell and must be 1, got half_grid={half}')
    return tuple(half + half[-2::-1])


def peripheral_grid(kernel_size: int, center_size: int = 5, base: int = 2,
                    half_grid: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """Full axis grid (sums to ``kernel_size``), from Eq. 2 or from an explicit ``half_grid``."""
    if half_grid is None:
        return full_grid_from_half(peripheral_half_grid(kernel_size, center_size, base))
    _check_odd_kernel(kernel_size)
    grid = full_grid_from_half(half_grid)
    if sum(grid) != kernel_size:
        raise ValueError(f'half_grid={list(half_grid)} spans {sum(grid)} taps, but kernel_size={kernel_size}; '
                         f'the mirrored grid must sum to the kernel size')
    return grid


def grid_index(grid: Sequence[int], device=None) -> torch.Tensor:
    """Index map ``idx[x] = a`` (cell of tap ``x``) as a LongTensor of length ``sum(grid)``."""
    # NOTE: built from Python ints, not torch.repeat_interleave of a sizes tensor: under torch.compile that op has a
    # data-dependent output shape, a graph break inside the model, and mmengine's compiled train_step (whose forward
    # runs in a context manager that cannot be split) then falls back to eager as a whole
    return torch.tensor([cell for cell, width in enumerate(grid) for _ in range(int(width))], dtype=torch.long,
                        device=device)


def grid_bounds(grid: Sequence[int]) -> List[Tuple[int, int]]:
    """Per cell, the tap offsets ``[lo, hi]`` (inclusive) relative to the kernel centre."""
    pad = (sum(grid) - 1) // 2
    bounds, start = [], 0
    for s in grid:
        bounds.append((start - pad, start + s - 1 - pad))
        start += s
    return bounds


def expand_kernel(weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Expand block-shared weights ``(..., k', k')`` to the dense kernel ``(..., K, K)``."""
    idx = grid_index(grid, weight.device)
    return weight.index_select(-1, idx).index_select(-2, idx)
