"""One interface for every implementation of the depthwise peripheral convolution.

``peripheral_conv2d(x, weight, grid)`` computes the stride-1, "same"-padded depthwise convolution of ``x``
``(N, C, H, W)`` with the dense kernel obtained by expanding the block-shared ``weight`` ``(C, 1, k', k')`` over the
axis ``grid`` (see :mod:`pelk_mm.ops.sharing_grid`). All implementations compute the same function (exactly, up to
floating-point rounding); they differ only in speed and memory. Which one runs is chosen by

1. the ``impl`` argument (``'auto'`` by default; modules expose it as ``conv_impl``),
2. else the environment variable ``PELK_MM_CONV_IMPL`` (e.g. ``dense`` to force the reference),
3. else the first registered implementation whose ``supports`` accepts the input, in priority order.

New implementations register with :func:`register_impl`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

from .sharing_grid import expand_kernel

ENV_VAR = 'PELK_MM_CONV_IMPL'

ConvFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]


@dataclass
class ConvImpl:
    name: str
    fn: ConvFn
    supports: Callable[[torch.Tensor, torch.Tensor, Sequence[int]], bool]
    priority: int  # higher runs first under 'auto'


_IMPLS: Dict[str, ConvImpl] = {}


def register_impl(name: str, fn: ConvFn, supports=None, priority: int = 0) -> None:
    """Register an implementation ``fn(x, weight, grid) -> y`` under ``name``."""
    _IMPLS[name] = ConvImpl(name, fn, supports or (lambda x, w, g: True), priority)


def available_impls() -> List[str]:
    """Registered implementation names, highest ``auto`` priority first."""
    return [i.name for i in sorted(_IMPLS.values(), key=lambda i: -i.priority)]


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> None:
    if x.dim() != 4:
        raise ValueError(f'peripheral_conv2d expects x of shape (N, C, H, W), got shape {tuple(x.shape)}')
    k = len(grid)
    if weight.shape != (x.shape[1], 1, k, k):
        raise ValueError(f'weight must have shape (C, 1, k\', k\') = ({x.shape[1]}, 1, {k}, {k}) for '
                         f'{x.shape[1]} channels and a {k}-cell grid, got {tuple(weight.shape)}')


def resolve_impl(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int], impl: str = 'auto') -> ConvImpl:
    """The implementation that :func:`peripheral_conv2d` would run for these inputs."""
    if impl in (None, 'auto'):
        impl = os.environ.get(ENV_VAR, 'auto') or 'auto'
    if impl != 'auto':
        if impl not in _IMPLS:
            raise ValueError(f'unknown peripheral conv implementation {impl!r} (from the conv_impl argument or '
                             f'${ENV_VAR}); available: {available_impls()} or "auto"')
        chosen = _IMPLS[impl]
        if not chosen.supports(x, weight, grid):
            raise ValueError(f'peripheral conv implementation {impl!r} does not support input '
                             f'{tuple(x.shape)} {x.dtype} on {x.device}; use conv_impl="auto"')
        return chosen
    for cand in sorted(_IMPLS.values(), key=lambda i: -i.priority):
        if cand.supports(x, weight, grid):
            return cand
    return _IMPLS['dense']


def peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                      impl: str = 'auto') -> torch.Tensor:
    """Depthwise peripheral convolution, stride 1, "same" padding, no bias.

    Args:
        x (Tensor): ``(N, C, H, W)`` input (any memory format).
        weight (Tensor): ``(C, 1, k', k')`` block-shared weights.
        grid (Sequence[int]): axis sharing grid with ``k'`` cells summing to the odd kernel size ``K``.
        impl (str): implementation name or ``'auto'``.

    Returns:
        Tensor: ``(N, C, H, W)``.
    """
    _check_inputs(x, weight, grid)
    return resolve_impl(x, weight, grid, impl).fn(x, weight, tuple(grid))


def dense_peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Reference: expand to the dense ``K x K`` kernel and run ``F.conv2d`` (as the paper does)."""
    dense = expand_kernel(weight, grid)
    return F.conv2d(x, dense.to(x.dtype), padding=sum(grid) // 2, groups=x.shape[1])


register_impl('dense', dense_peripheral_conv2d, priority=0)
