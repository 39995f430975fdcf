"""Effective receptive field (ERF) of a backbone's last stage, as RepLKNet/SLaK/PeLK (paper Fig. 4) measure it.

For each image the gradient of ``sum_c relu(y[c, h/2, w/2])`` (the central point of the last stage's feature map)
with respect to the input is taken; its positive part, summed over channels, is accumulated over the images
(:func:`compute_erf`). The map is ``log10(x + 1)``-scaled and normalised to [0, 1] (:func:`normalised_log_map`),
and the high-contribution area ratio ``r(t)`` is the area of the smallest centred square holding a fraction ``t``
of the total (:func:`high_contribution_ratios`).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .builder import load_image

__all__ = ['THRESHOLDS', 'last_stage_map', 'input_grad', 'normalised_log_map', 'high_contribution_ratios',
           'compute_erf']

#: the paper's thresholds t of r(t)
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def last_stage_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last ``(N, C, H, W)`` feature map of the backbone (PeLK/ConvNeXt: pooled outputs are turned off)."""
    if hasattr(backbone, 'gap_before_final_norm'):
        backbone.gap_before_final_norm = False
    outs = backbone(x)
    outs = outs if isinstance(outs, (tuple, list)) else (outs, )
    maps = [o for o in outs if torch.is_tensor(o) and o.dim() == 4]
    if not maps:
        raise ValueError('the backbone returned no (N, C, H, W) feature map; ERF needs spatial outputs')
    return maps[-1]


def input_grad(backbone: nn.Module, x: torch.Tensor) -> np.ndarray:
    """RepLKNet's ``get_input_grad``: relu(d sum_c relu(y_c(centre)) / dx) summed over batch and channels."""
    x = x.clone().requires_grad_(True)
    y = last_stage_map(backbone, x)
    h, w = y.shape[-2:]
    central = torch.relu(y[:, :, h // 2, w // 2]).sum()
    grad, = torch.autograd.grad(central, x)
    return torch.relu(grad).sum((0, 1)).detach().cpu().double().numpy()


def normalised_log_map(erf: np.ndarray) -> np.ndarray:
    """``log10(erf + 1)`` scaled to a maximum of 1 (unchanged if all zero): the map that is plotted and measured."""
    data = np.log10(erf + 1)
    if data.max() > 0:
        data = data / data.max()
    return data


def high_contribution_ratios(erf: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, dict]:
    """RepLKNet's ``analyze_erf``: log-scale, normalise, then per threshold the smallest centred square holding that
    fraction of the total: ``{t: dict(side=..., area_ratio=...)}`` (``None`` entries if none does)."""
    data = normalised_log_map(erf)
    h, w = data.shape
    total = data.sum()
    out = {}
    for t in thresholds:
        side = ratio = None
        for i in range(1, min(h, w) // 2 + 1):
            area = data[max(h // 2 - i, 0):h // 2 + 1 + i, max(w // 2 - i, 0):w // 2 + 1 + i]
            if total > 0 and area.sum() / total > t:
                side, ratio = 2 * i + 1, min((2 * i + 1) / h, 1) * min((2 * i + 1) / w, 1)
                break
        out[str(t)] = dict(side=side, area_ratio=ratio)
    return out


def compute_erf(backbone: nn.Module, paths: List[str], size: int, mean: Sequence[float], std: Sequence[float],
                device: str = 'cpu', log: Callable[[str], None] = print) -> Tuple[np.ndarray, int]:
    """The ERF of ``backbone`` averaged over the images ``paths`` (resized to ``size x size``, normalised).

    Images whose gradient is not finite are skipped (``log`` says which).

    Returns:
        tuple: ``(erf, used)``: the ``(size, size)`` mean input-gradient map and how many images went into it.

    Raises:
        RuntimeError: every image gave a non-finite gradient.
    """
    acc, used = None, 0
    for path in paths:
        g = input_grad(backbone, load_image(path, size, mean, std).to(device))
        if not np.isfinite(g).all():
            log(f'skipping {path}: non-finite gradient')
            continue
        acc = g if acc is None else acc + g
        used += 1
    if acc is None:
        raise RuntimeError('every image gave a non-finite gradient')
    return acc / used, used
