"""Kernel-wise positional embedding (KPE, PeLK Eq. 3).

``Y(p) = sum_t w(t) * (X(p + t) + h(t))``: the embedding ``h`` (one value per conv channel and dense kernel tap) is
added to the input taps inside the sliding window. Expanding the sum, the extra term ``sum_t w(t) h(t) [p + t inside
the image]`` does not depend on the input, so it is computed once per forward for the whole batch.

The term is recomputed at every forward, never cached: it depends on the weights and the embedding, which
checkpoint loading, EMA swaps and teacher updates change through ``.data`` without any trace a cache key could
see (no version bump, same storage). Its cost is batch-independent and small next to the layer's: one gather of
the block weights into the dense kernel cropped to the map, one product with the embedding and two band matmuls
(:func:`blocked_kpe_input_term`); only the gather indices and band matrices, which depend on nothing but the
grid and the map size, are kept between calls (:func:`kpe_term_plan`).

Modes (the paper does not pin down the variant; ``'input'`` is the literal reading of Eq. 3):

* ``'input'`` -- Eq. 3 literally: ``h`` is added only to taps that fall inside the image (zero padding stays zero).
  The term is ``A_H (w * h) A_W^T`` per channel with 0/1 band matrices ``A``: ``O(C K (H + W) K)``, no convolution.
* ``'bias'`` -- ``h`` added at every tap, padding included: a per-channel constant ``<w, h>``.
* ``'weight'`` -- ``h`` added to the dense kernel (``w + h``), as some re-implementations do; it breaks the block
  sharing of the kernel, so it always runs the dense convolution.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import torch

from pelk_mm.ops._cells import axis_cells, cropped_grid

KPE_MODES = ('input', 'bias', 'weight')


def border_band(size: int, kernel_size: int, device=None, dtype=None) -> torch.Tensor:
    """0/1 matrix ``A[y, t] = 1`` iff tap ``t`` of a "same"-padded kernel at output ``y`` is inside ``[0, size)``."""
    pad = kernel_size // 2
    y = torch.arange(size, device=device).unsqueeze(1)
    t = torch.arange(kernel_size, device=device).unsqueeze(0)
    pos = y + t - pad
    return ((pos >= 0) & (pos < size)).to(dtype or torch.float32)


def kpe_term_plan(grid: Tuple[int, ...], height: int, width: int, device: torch.device,
                  dtype: torch.dtype) -> Tuple[torch.Tensor, Tuple[int, int, int, int], torch.Tensor, torch.Tensor]:
    """Weight-independent constants of :func:`blocked_kpe_input_term` for one grid and map size.

    Returns:
        tuple: ``(index, (r0, r1, c0, c1), a_h, a_w_t)``: ``index`` gathers the flattened block weights
        ``(C, k' * k')`` into the dense kernel cropped to the map ``(C, Kh * Kw)``; ``[r0:r1, c0:c1]`` is that
        crop of a ``(K, K)`` embedding; ``a_h`` ``(H, Kh)`` and ``a_w_t`` ``(Kw, W)`` are the border bands.
    """
    if torch.compiler.is_compiling():
        # NOTE: under torch.compile / torch.export the plan is built in the traced code and becomes constants of
        # the graph, once per compilation; through the cache, dynamo would warn that it ignores the cache wrapper.
        return _kpe_term_plan(grid, height, width, device, dtype)
    return _cached_kpe_term_plan(grid, height, width, device, dtype)


@functools.lru_cache(maxsize=512)
def _cached_kpe_term_plan(grid, height, width, device, dtype):
    # NOTE: built with inference mode off: a plan first made under torch.inference_mode (validation, benchmarks)
    # is reused by training steps, and inference tensors cannot be saved for backward.
    with torch.inference_mode(False):
        return _kpe_term_plan(grid, height, width, device, dtype)


def _kpe_term_plan(grid, height, width, device, dtype):
    ch, cw = axis_cells(grid, height), axis_cells(grid, width)
    k = len(grid)
    rows = [ch.first + i for i, s in enumerate(cropped_grid(ch)) for _ in range(s)]
    cols = [cw.first + i for i, s in enumerate(cropped_grid(cw)) for _ in range(s)]
    index = torch.tensor([r * k + c for r in rows for c in cols], device=device)
    centre = sum(grid) // 2
    crop = (centre - ch.radius, centre + ch.radius + 1, centre - cw.radius, centre + cw.radius + 1)
    a_h = border_band(height, len(rows), device, dtype)
    a_w_t = border_band(width, len(cols), device, dtype).t().contiguous()
    return index, crop, a_h, a_w_t


def blocked_kpe_input_term(weight: torch.Tensor, kpe: torch.Tensor, grid: Sequence[int], height: int,
                           width: int) -> torch.Tensor:
    """Border-aware KPE term of block-shared weights: ``conv(ones, expand(weight) * kpe)`` on an ``H x W`` map.

    Args:
        weight (Tensor): ``(C, 1, k', k')`` block weights.
        kpe (Tensor): ``(C, K, K)`` embedding.
        grid (Sequence[int]): The sharing grid (``k'`` cells summing to ``K``).

    Returns:
        Tensor: ``(1, C, H, W)`` in ``weight``'s dtype.
    """
    index, (r0, r1, c0, c1), a_h, a_w_t = kpe_term_plan(tuple(int(s) for s in grid), int(height), int(width),
                                                        weight.device, weight.dtype)
    c = weight.shape[0]
    v = weight.reshape(c, -1).index_select(1, index).view(c, r1 - r0, c1 - c0) * kpe[:, r0:r1, c0:c1].to(
        weight.dtype)
    return torch.matmul(a_h, torch.matmul(v, a_w_t)).unsqueeze(0)
