"""Large kernels of a PeLK backbone and the parameter count against the kernel size (paper Fig. 6).

:func:`large_kernel_convs` finds the large-kernel conv of one block per stage, :func:`expanded_kernel` gives its
dense ``K x K`` kernel in either form, and :func:`param_curve` counts the parameters of a ConvNeXt-T-like network
with every kernel ``K x K`` in the peripheral, dense and stripe forms.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['FIG6_KERNELS', 'CONVNEXT_T', 'large_kernel_convs', 'expanded_kernel', 'param_curve']

#: kernel sizes of Fig. 6
FIG6_KERNELS = (7, 13, 21, 31, 51, 71, 101, 151)
#: ConvNeXt-T: depths and widths of Fig. 6's network (every kernel replaced by K, every channel convolved)
CONVNEXT_T = dict(depths=[3, 3, 9, 3], channels=[96, 192, 384, 768])


def large_kernel_convs(backbone: nn.Module, block: int) -> List[Tuple[int, nn.Module]]:
    """``[(stage index, conv module)]`` of the large-kernel conv of block ``block`` (the last block of a shorter
    stage) of every stage."""
    out = []
    for i, stage in enumerate(backbone.stages):
        blocks = list(stage)
        if not blocks:
            continue
        b = blocks[min(block, len(blocks) - 1)]
        conv = getattr(getattr(b, 'token_mixer', None), 'conv', None)
        if conv is not None:
            out.append((i, conv))
    return out


def expanded_kernel(conv: nn.Module) -> torch.Tensor:
    """``(C, K, K)`` dense kernel of any large-kernel form (re-parameterised weight once deployed)."""
    return conv.dense_weight().detach()[:, 0]


def param_curve(kernel_sizes: Sequence[int] = FIG6_KERNELS) -> Dict[str, List[int]]:
    """Parameters of a ConvNeXt-T-like PeLK (every channel convolved, 5x5 re-param branch, no KPE, no sparsity)
    with every stage kernel set to ``K``, for the peripheral, dense and stripe forms.

    One block per stage is built (a dense K=151 ConvNeXt-T would hold 150 M kernel weights); the count is
    ``params(depth-1 net) + sum_i (depth_i - 1) * params(block of stage i)``, exact since blocks of a stage are
    identical.

    Returns:
        dict: ``kernel_size`` (the sizes) and one list of counts per form (``peripheral``, ``dense``, ``stripe``).
    """
    from pelk_mm.models import PeLK
    curve = {'kernel_size': list(kernel_sizes)}
    depths = CONVNEXT_T['depths']
    for form in ('peripheral', 'dense', 'stripe'):
        counts = []
        for k in kernel_sizes:
            m = PeLK(arch=dict(depths=[1] * len(depths), channels=CONVNEXT_T['channels'], kernel_sizes=[k] * 4),
                     conv_type=form, conv_ratio=1.0, kpe_mode=None, init_cfg=None)
            n = sum(p.numel() for p in m.parameters())
            n += sum((d - 1) * sum(p.numel() for p in m.stages[i][0].parameters()) for i, d in enumerate(depths))
            counts.append(int(n))
            del m
        curve[form] = counts
    return curve
