"""Sharing grids: every grid printed in the PeLK paper (Fig. 1b, Tables 5 and 6) and the argument checks."""
import pytest
import torch

from pelk_mm.ops import (expand_kernel, full_grid_from_half, grid_bounds, grid_index, peripheral_grid,
                         peripheral_half_grid)


@pytest.mark.parametrize('kernel_size, center_size, expected', [
    (31, 5, [7, 4, 2, 1, 1, 1]),            # Fig. 1b: 31x31 kernel from 11x11 parameters
    (33, 5, [8, 4, 2, 1, 1, 1]),            # Table 5 row 5 (0.11x of a 33x33 dense kernel)
    (51, 1, [11, 8, 4, 2, 1]),              # Table 6, 1x1 centre
    (51, 3, [10, 8, 4, 2, 1, 1]),           # Table 6, 3x3 centre
    (51, 5, [9, 8, 4, 2, 1, 1, 1]),         # Table 6, 5x5 centre (PeLK default, stage 1)
    (51, 7, [8, 8, 4, 2, 1, 1, 1, 1]),      # Table 6, 7x7 centre
    (101, 7, [17, 16, 8, 4, 2, 1, 1, 1, 1]),  # PeLK-101 stage 1
    (67, 7, [16, 8, 4, 2, 1, 1, 1, 1]),     # PeLK-101 stage 3 (exact fit)
    (69, 7, [17, 8, 4, 2, 1, 1, 1, 1]),     # PeLK-101 stage 2: 1-wide remainder merged
    (13, 5, [2, 2, 1, 1, 1]),               # stage 4
])
def test_paper_grids(kernel_size, center_size, expected):
    half = peripheral_half_grid(kernel_size, center_size)
    assert half == expected
    full = peripheral_grid(kernel_size, center_size)
    assert sum(full) == kernel_size
    assert list(full) == expected + expected[-2::-1]
    assert full == tuple(reversed(full))  # axis-symmetric


def test_table5_parameter_ratio():
    # Table 5 row 5: [8,4,2,1,1,1] parameterises 33x33 with 11x11 -> 0.11x
    k = len(peripheral_grid(33, 5))
    assert round(k * k / 33 ** 2, 2) == 0.11
    # Table 6 ratio column: the unshared centre's share of the 51x51 kernel area
    for center, ratio in [(1, 0.04), (3, 0.35), (5, 0.96), (7, 1.88)]:
        assert round(100 * center ** 2 / 51 ** 2, 2) == ratio


def test_explicit_half_grid_for_ablations():
    # Table 5 row 2: uniform coarse grid with 1x1 centre (33 taps)
    grid = peripheral_grid(33, half_grid=[2] * 8 + [1])
    assert sum(grid) == 33 and len(grid) == 17
    with pytest.raises(ValueError, match='kernel_size=31'):
        peripheral_grid(31, half_grid=[2] * 8 + [1])
    with pytest.raises(ValueError, match='centre cell'):
        full_grid_from_half([2, 2])


def test_every_odd_kernel_up_to_151_is_valid():
    for k in range(3, 152, 2):
        for c in (1, 3, 5, 7):
            if c > k:
                continue
            g = peripheral_grid(k, c)
            assert sum(g) == k
            half = (len(g) - 1) // 2
            # the centre stays unshared
            assert all(s == 1 for s in g[half - c // 2: half + c // 2 + 1])
            # inner peripheral cells follow Eq. 2 exactly (2, 4, 8, ... outwards); only the outermost cell
            # is truncated (what remains of the half-width) or widened (a merged remainder narrower than 2)
            outer = list(g[:half - c // 2])
            assert outer[1:][::-1] == [2 ** j for j in range(1, len(outer))]
            if outer:
                assert 1 <= outer[0] < 2 ** len(outer) + 2


@pytest.mark.parametrize('kwargs, name', [
    (dict(kernel_size=50), 'kernel_size'),
    (dict(kernel_size=0), 'kernel_size'),
    (dict(kernel_size=5, center_size=7), 'center_size'),
    (dict(kernel_size=51, center_size=4), 'center_size'),
    (dict(kernel_size=51, base=1), 'base'),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        peripheral_half_grid(**kwargs)


def test_expand_kernel_matches_cell_definition():
    grid = peripheral_grid(13, 5)
    w = torch.randn(3, 1, len(grid), len(grid))
    dense = expand_kernel(w, grid)
    assert dense.shape == (3, 1, 13, 13)
    idx = grid_index(grid)
    bounds = grid_bounds(grid)
    for a, (lo, hi) in enumerate(bounds):
        for x in range(lo, hi + 1):
            assert idx[x + 6] == a
    for x in range(13):
        for y in range(13):
            assert torch.equal(dense[:, :, x, y], w[:, :, idx[x], idx[y]])
