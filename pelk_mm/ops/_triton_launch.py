"""Small helpers of the Triton launchers (:mod:`._impl_triton`, :mod:`._triton_kernels_cl`): block sizes and the
int32 cell tables the kernels read."""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import torch


def next_pow2(n: int, least: int = 1) -> int:
    """The smallest power of two ``>= n`` and ``>= least`` (Triton block dimensions are powers of two)."""
    return max(1 << max(int(n) - 1, 0).bit_length(), least)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints."""
    return -(-int(a) // int(b))


@functools.lru_cache(maxsize=256)
def int_table(values: Tuple[int, ...], device: str) -> torch.Tensor:
    """``values`` as an int32 tensor on ``device``, made once per (values, device)."""
    return torch.tensor(values, dtype=torch.int32, device=device)


def cell_of(lo: Sequence[int], hi: Sequence[int]) -> Tuple[int, ...]:
    """Cell index of every offset ``lo[0] .. hi[-1]`` (the cropped cells are contiguous)."""
    return tuple(a for a, (l, h) in enumerate(zip(lo, hi)) for _ in range(h - l + 1))
