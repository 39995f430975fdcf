"""Inference throughput (images/s) of a model, paper Table 8 protocol: FP32, a batch of random images,
``warmup`` untimed iterations, then ``iters`` timed ones, the device synchronised around the timed region,
``torch.inference_mode``.

The timed forward is :func:`pelk_mm.analysis.forward.analysed_forward`'s ``part='features'``: backbone + neck +
head for a classifier, backbone + neck (``extract_feat``) for segmentors and detectors.
"""
from __future__ import annotations

import time
from typing import Dict, Sequence

import torch
import torch.nn as nn

from .forward import analysed_forward

__all__ = ['benchmark', 'impl_of']


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)


def impl_of(model: nn.Module) -> str:
    """The ``conv_impl`` values of the model's large-kernel convs, comma-separated and sorted (``'-'`` if none)."""
    impls = {getattr(m, 'conv_impl', None) for m in model.modules() if hasattr(m, 'conv_impl')}
    impls.discard(None)
    return ','.join(sorted(impls)) or '-'


@torch.inference_mode()
def benchmark(model: nn.Module, codebase: str, batch_size: int, shape: Sequence[int], warmup: int, iters: int,
              device: str, channels_last: bool = False) -> Dict[str, float]:
    """Time the analysed forward of ``model`` on a random ``(batch_size, 3, H, W)`` batch on ``device``.

    Returns:
        dict: ``images_per_s`` and ``ms_per_batch`` over the ``iters`` timed iterations.
    """
    run, _ = analysed_forward(model, codebase, part='features')
    x = torch.randn(batch_size, 3, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        run(x)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        run(x)
    _sync(device)
    elapsed = time.perf_counter() - start
    return dict(images_per_s=batch_size * iters / elapsed, ms_per_batch=1000 * elapsed / iters)
