"""Kernel-wise positional embedding (KPE, PeLK Eq. 3).

``Y(p) = sum_t w(t) * (X(p + t) + h(t))``: the embedding ``h`` (one value per conv channel and dense kernel tap) is
added to the input taps inside the sliding window. Expanding the sum, the extra term ``sum_t w(t) h(t) [p + t inside
the image]`` does not depend on the input, so it is computed once per forward for the whole batch.

The term is recomputed at every forward, never cached: it depends on the weights and the embedding, which
checkpoint loading, EMA swaps and teacher updates change through ``.data`` without any trace a cache key could
see (no version bump, same storage). Its cost is batch-independent and small next to the layer's
(:func:`kpe_input_term` on the kernel cropped to the map).

Modes (project decision 2 in the reference notes; the paper is silent on the exact variant):

* ``'input'`` -- Eq. 3 literally: ``h`` is added only to taps that fall inside the image (zero padding stays zero).
  The term is ``A_H (w * h) A_W^T`` per channel with 0/1 band matrices ``A``: ``O(C K (H + W) K)``, no convolution.
* ``'bias'`` -- ``h`` added at every tap, padding included: a per-channel constant ``<w, h>``.
* ``'weight'`` -- ``h`` added to the dense kernel (``w + h``), as some re-implementations do; it breaks the block
  sharing of the kernel, so it always runs the dense convolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

KPE_MODES = ('input', 'bias', 'weight')


class KernelPositionEmbedding(nn.Module):
    """One learnable ``(C, K, K)`` embedding, shared by all the blocks of a PeLK stage.

    Args:
        channels (int): Number of convolved channels ``C``.
        kernel_size (int): Dense kernel size ``K``.
        std (float): Std of the truncated-normal init. Defaults to 0.02.
    """

    def __init__(self, channels: int, kernel_size: int, std: float = 0.02):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, kernel_size))
        self.std = std
        trunc_normal_(self.weight, std=std)

    def extra_repr(self) -> str:
        c, k, _ = self.weight.shape
        return f'channels={c}, kernel_size={k}'


def border_band(size: int, kernel_size: int, device=None, dtype=None) -> torch.Tensor:
    """0/1 matrix ``A[y, t] = 1`` iff tap ``t`` of a "same"-padded kernel at output ``y`` is inside ``[0, size)``."""
    pad = kernel_size // 2
    y = torch.arange(size, device=device).unsqueeze(1)
    t = torch.arange(kernel_size, device=device).unsqueeze(0)
    pos = y + t - pad
    return ((pos >= 0) & (pos < size)).to(dtype or torch.float32)


def kpe_input_term(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Border-aware KPE term ``conv(ones, kernel)`` for an ``H x W`` map, computed by two band matmuls.

    Args:
        kernel (Tensor): ``(C, Kh, Kw)`` with odd ``Kh``, ``Kw``, i.e. ``w * h`` (dense weight times embedding),
            centred on the tap offset 0 (a kernel cropped to the map keeps its centre).
        height (int): Map height ``H``.
        width (int): Map width ``W``.

    Returns:
        Tensor: ``(1, C, H, W)``.
    """
    a_h = border_band(height, kernel.shape[-2], kernel.device, kernel.dtype)
    a_w = border_band(width, kernel.shape[-1], kernel.device, kernel.dtype)
    return torch.matmul(torch.matmul(a_h, kernel), a_w.t()).unsqueeze(0)
