"""Shared builders of the deployment tests (fixtures: ``--import-mode=importlib`` cannot import a conftest):
tiny PeLK backbones with random weights and non-trivial BatchNorms."""
import copy
import types

import pytest
import torch

from pelk_mm.models import PeLK

#: a 4-stage PeLK small enough for CPU tests (kernels 13..5 on 32-48 px inputs, so some maps are smaller than
#: their kernel)
TINY = dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 48], kernel_sizes=[13, 11, 9, 5], center_sizes=[5, 5, 3, 3])


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (layer scale included, so every block matters) and random BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.3)
            if name.endswith('gamma'):
                p.abs_()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model


def tiny_pelk(seed: int = 0, **kwargs) -> PeLK:
    """A randomised tiny PeLK in eval mode; ``kwargs`` go to the constructor."""
    torch.manual_seed(seed)
    kwargs.setdefault('arch', copy.deepcopy(TINY))
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    kwargs.setdefault('gap_before_final_norm', False)
    return randomise(PeLK(**kwargs), seed).eval()


def max_rel_err(outs, refs) -> float:
    """Largest ``max|a - b| / max|b|`` over a tuple of outputs."""
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, refs))


@pytest.fixture(scope='session')
def helpers():
    """``helpers.tiny_pelk(seed, **kwargs)``, ``helpers.randomise(model, seed)``, ``helpers.max_rel_err(outs, refs)``,
    ``helpers.TINY``."""
    return types.SimpleNamespace(tiny_pelk=tiny_pelk, randomise=randomise, max_rel_err=max_rel_err, TINY=TINY)
