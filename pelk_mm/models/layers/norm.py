"""Normalisation and stochastic depth for PeLK: channels-first LayerNorm, the norm builder of the large-kernel
branches and DropPath, with torch and mmengine only (the backbone builds where mmcv's compiled package is absent)."""
from __future__ import annotations

import inspect
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.utils.dl_utils.parrots_wrapper import SyncBatchNorm

__all__ = ['LayerNorm2d', 'DropPath', 'build_norm']

#: norm types of ``norm_cfg`` that need no registry (mmcv's names for them)
_NORM_TYPES = {'BN': nn.BatchNorm2d, 'BN1d': nn.BatchNorm1d, 'BN2d': nn.BatchNorm2d, 'BN3d': nn.BatchNorm3d,
               'SyncBN': SyncBatchNorm, 'GN': nn.GroupNorm, 'LN': nn.LayerNorm, 'IN': nn.InstanceNorm2d,
               'IN1d': nn.InstanceNorm1d, 'IN2d': nn.InstanceNorm2d, 'IN3d': nn.InstanceNorm3d}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an ``(N, C, H, W)`` tensor (any memory format)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs):
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # pooled (N, C) features
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def build_norm(cfg: Optional[dict], channels: int) -> Optional[nn.Module]:
    """The norm layer of ``cfg`` (``dict(type='BN' | 'SyncBN' | 'GN' | ..., **kwargs)``) for ``channels``, as
    mmcv's ``build_norm_layer(cfg, channels)[1]`` builds it (same classes, ``eps`` 1e-5 unless given,
    ``requires_grad``); ``None`` for ``cfg=None``. Other types are looked up in mmengine's ``MODELS``."""
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f'norm_cfg must be None or a dict with a type (e.g. dict(type=\'BN\')), got {cfg!r}')
    cfg = dict(cfg)
    norm_type = cfg.pop('type')
    requires_grad = cfg.pop('requires_grad', True)
    cfg.setdefault('eps', 1e-5)
    if inspect.isclass(norm_type):
        cls = norm_type
    else:
        cls = _NORM_TYPES.get(norm_type) or MMENGINE_MODELS.get(norm_type)
        if cls is None:
            raise ValueError(f'norm_cfg type {norm_type!r} is unknown; use one of {sorted(_NORM_TYPES)} or a norm '
                             f'class registered in mmengine.registry.MODELS')
    layer = cls(num_channels=channels, **cfg) if cls is nn.GroupNorm else cls(channels, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return layer


def drop_path(x: torch.Tensor, drop_prob: float = 0., training: bool = False) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``drop_prob`` and rescale the rest (stochastic
    depth); the identity in eval mode or for ``drop_prob=0``."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    # NOTE: one uniform draw per sample, in x's dtype, then floor: the draws (and so the dropped samples for a given
    # seed) are those of timm's and mmcv's DropPath, so runs reproduce across the three
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    return x.div(keep_prob) * random_tensor.floor()


class DropPath(nn.Module):
    """Stochastic depth per sample on a residual branch (see :func:`drop_path`).

    Args:
        drop_prob (float): Probability of dropping a sample's branch. Defaults to 0.1.
    """

    def __init__(self, drop_prob: float = 0.1):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
