"""Pure-PyTorch implementations (any device, autograd and ``torch.compile`` friendly).

* ``dense_cl``: the dense kernel cropped to the map, channels_last ``F.conv2d`` (oneDNN / cuDNN depthwise path).
* ``fft``: ``rfft2`` with 2/3/5-smooth sizes ``>= H + pad`` (the least that avoids wrap-around into the kept
  window), the kernel spectrum computed once per call and broadcast over the batch; half types run in float32.
* ``box``: structure-aware, three matmuls and no K x K work: banded 0/1 matrix along W (one band per W-cell),
  a per-channel ``k' x k'`` contraction with the block weights, banded 0/1 matrix along H. Backward is autograd's,
  which for this chain is exactly the transposed structure (``O(k'^2 + (H + W) k')`` per pixel).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._cells import AxisCells, axis_cells, crop_weight, cropped_dense_kernel

_HALF = (torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------ dense_cl
def dense_cl_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Cropped dense kernel, channels_last conv. ``(N, C, H, W)`` -> ``(N, C, H, W)`` (channels_last)."""
    kernel, pad = cropped_dense_kernel(weight, grid, x.shape[-2], x.shape[-1])
    x = x.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, kernel.to(x.dtype), padding=pad, groups=x.shape[1])


# ------------------------------------------------------------------------------------------------ fft
def smooth_size(n: int) -> int:
    """Smallest 2/3/5-smooth integer ``>= n`` (fast FFT length)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Circular correlation on a padded ``Lh x Lw`` torus, ``L >= size + pad``: ``y = irfft2(X * conj(K))``."""
    H, W = x.shape[-2:]
    kernel, (ph, pw) = cropped_dense_kernel(weight, grid, H, W)
    compute = torch.float32 if x.dtype in _HALF else x.dtype
    lh, lw = smooth_size(H + ph), smooth_size(W + pw)
    k = kernel[:, 0].to(compute)
    k = F.pad(k, (0, lw - k.shape[-1], 0, lh - k.shape[-2])).roll((-ph, -pw), dims=(-2, -1))
    kf = torch.fft.rfft2(k, s=(lh, lw))  # (C, Lh, Lw//2+1), shared by the whole batch
    xf = torch.fft.rfft2(x.to(compute), s=(lh, lw))
    y = torch.fft.irfft2(xf * kf.conj(), s=(lh, lw))[..., :H, :W]
    return y.to(x.dtype).contiguous()


# ------------------------------------------------------------------------------------------------ box
def band_right(size: int, cells: AxisCells, device, dtype) -> torch.Tensor:
    """``(size, G * size)`` band matrix, ``B[j', g * size + j] = 1`` iff ``lo_g <= j' - j <= hi_g``.

    ``x @ B`` gives the per-cell box sums along the last axis.
    """
    pos = torch.arange(size, device=device)
    diff = (pos[:, None] - pos[None, :])[:, None, :]  # (j', 1, j)
    lo = torch.tensor(cells.lo, device=device)[None, :, None]
    hi = torch.tensor(cells.hi, device=device)[None, :, None]
    return ((diff >= lo) & (diff <= hi)).to(dtype).reshape(size, len(cells.lo) * size)


def band_left(size: int, cells: AxisCells, device, dtype) -> torch.Tensor:
    """``(size, size * G)`` band matrix, ``B[i, r * G + g] = 1`` iff ``lo_g <= r - i <= hi_g``.

    ``B @ T`` sums, for every cell ``g``, the rows ``i + lo_g .. i + hi_g`` of ``T (r, g, :)``.
    """
    pos = torch.arange(size, device=device)
    diff = (pos[None, :] - pos[:, None])[:, :, None]  # (i, r, 1)
    lo = torch.tensor(cells.lo, device=device)[None, None, :]
    hi = torch.tensor(cells.hi, device=device)[None, None, :]
    return ((diff >= lo) & (diff <= hi)).to(dtype).reshape(size, size * len(cells.lo))


def box_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Structure-aware conv as three matmuls. ``(N, C, H, W)`` -> ``(N, C, H, W)`` (contiguous)."""
    N, C, H, W = x.shape
    ch, cw = axis_cells(grid, H), axis_cells(grid, W)
    gh, gw = len(ch.lo), len(cw.lo)
    w = crop_weight(weight, ch, cw).to(x.dtype)  # (C, Gh, Gw)
    r = torch.matmul(x.reshape(N * C * H, W), band_right(W, cw, x.device, x.dtype))  # (NCH, Gw*W)
    t = torch.matmul(w.reshape(1, C, 1, gh, gw), r.reshape(N, C, H, gw, W))  # (N, C, H, Gh, W)
    y = torch.matmul(band_left(H, ch, x.device, x.dtype), t.reshape(N, C, H * gh, W))  # (N, C, H, W)
    return y

