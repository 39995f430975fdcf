"""PeLK in timm: ``timm.create_model('pelk_t', ...)``, ``features_only=True`` included (needs ``pip install timm``).

Importing this module registers the models with timm; ``import pelk_mm`` does it as soon as timm is imported too::

    import pelk_mm, timm
    model = timm.create_model('pelk_t', num_classes=10, drop_path_rate=0.1)
    backbone = timm.create_model('pelk_t', features_only=True, out_indices=(1, 2, 3))   # maps at 1/8, 1/16, 1/32

=============  ==============  ================================================
timm name      PeLK arch       config the weights come from (train it first)
=============  ==============  ================================================
``pelk_t``     ``tiny``        ``configs/pelk_t_in1k.py``
``pelk_s``     ``small``       ``configs/pelk_s_in1k.py``
``pelk_b``     ``base``        ``configs/pelk_b_in1k.py``
``pelk_b101``  ``base-101``    ``configs/pelk_b101_in1k.py``
``pelk_t101``  ``tiny-101``    ``configs/ablations/table7_kernel_size/pelk_t_k101_224_in1k_120e.py``
``pelk_t151``  ``tiny-151``    ``configs/ablations/table7_kernel_size/pelk_t_k151_224_in1k_120e.py``
=============  ==============  ================================================

The classifier (:class:`PeLKNet`) is the mmpretrain ``ImageClassifier`` of those configs with the same state-dict
keys (``backbone.*``, ``head.fc.*``) and outputs, so a checkpoint of ``tools/train.py`` loads as it is:
``pretrained=True, pretrained_cfg_overlay=dict(file='work_dirs/pelk_t_in1k/epoch_300.pth')`` (read by pelk_mm's safe,
CRC-checked loader; a checkpoint of an mmseg / mmdet config gives the backbone). No PeLK weights are published:
``pretrained=True`` without a file is one :class:`~pelk_mm.errors.MissingWeightsError` naming the config to train.

``features_only=True`` returns timm's ``FeatureGetterNet`` around a :class:`PeLKNet` in dense-prediction form: the
backbone that the mmseg / mmdet configs build (``out_indices`` stages, ``gap_before_final_norm=False``, a
LayerNorm per output), so its maps equal those of ``PeLK(..., out_indices=..., gap_before_final_norm=False)``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices

from pelk_mm.errors import CheckpointLoadError, MissingWeightsError
from pelk_mm.models import PeLK

__all__ = ['PeLKNet', 'TIMM_MODELS']

#: timm name -> (PeLK arch, model-index name of the config whose checkpoint the model loads)
TIMM_MODELS: Dict[str, Tuple[str, str]] = {
    'pelk_t': ('tiny', 'pelk-t_in1k'),
    'pelk_s': ('small', 'pelk-s_in1k'),
    'pelk_b': ('base', 'pelk-b_in1k'),
    'pelk_b101': ('base-101', 'pelk-b101_in1k'),
    'pelk_t101': ('tiny-101', 'pelk-t_k101_224_in1k_120e'),
    'pelk_t151': ('tiny-151', 'pelk-t_k151_224_in1k_120e'),
}


class PeLKNet(nn.Module):
    """PeLK as a timm model: the backbone, global average pooling, its LayerNorm and a linear classifier.

    Args:
        arch (str | dict): PeLK arch (see :class:`~pelk_mm.models.PeLK`). Defaults to ``'tiny'``.
        num_classes (int): Classifier outputs; 0 for none (``forward`` gives the pooled features).
        in_chans (int): Input channels.
        global_pool (str): Only ``'avg'`` (PeLK pools before its final norm).
        drop_rate (float): Dropout before the classifier.
        drop_path_rate (float): Stochastic depth of the backbone.
        dense_out_indices (Sequence[int], optional): Build the dense-prediction backbone with a LayerNorm per
            listed stage (``features_only`` sets it); ``None`` builds the classifier.
        **kwargs: Further :class:`~pelk_mm.models.PeLK` arguments (``kernel_sizes``, ``conv_impl``, ...).
    """

    def __init__(self, arch: Union[str, dict] = 'tiny', num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = 'avg', drop_rate: float = 0., drop_path_rate: float = 0.,
                 dense_out_indices: Optional[Sequence[int]] = None, **kwargs):
        super().__init__()
        if global_pool != 'avg':
            raise ValueError(f"PeLK pools by average before its final norm: global_pool must be 'avg', got "
                             f'global_pool={global_pool!r}')
        dense = dense_out_indices is not None
        self.backbone = PeLK(arch=arch, in_channels=in_chans, drop_path_rate=drop_path_rate,
                             out_indices=tuple(dense_out_indices) if dense else -1, gap_before_final_norm=not dense,
                             **kwargs)
        _init_quietly(self.backbone)
        channels = self.backbone.channels
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = channels[-1]
        stride = self.backbone.downsample_layers[0][0].stride[0]
        self.feature_info = [dict(num_chs=c, reduction=stride * 2 ** i, module=f'backbone.stages.{i}')
                             for i, c in enumerate(channels)]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.ModuleDict({'fc': self._classifier(num_classes)})

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(fc.weight, std=.02)
        nn.init.zeros_(fc.bias)
        return fc

    # ------------------------------------------------------------------ timm's model interface
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None and global_pool != 'avg':
            raise ValueError(f"global_pool must be 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.head.fc = self._classifier(num_classes)

    def _stage_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        norm = getattr(self.backbone, f'norm{i}', None)
        if norm is None or self.backbone.gap_before_final_norm:
            return x
        return norm(x).contiguous()  # the backbone's dense-prediction output (see PeLK.forward)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """Stage outputs (timm's feature API): normalised maps in dense-prediction form, raw stage maps in the
        classifier (whose norm follows the pooling, so ``norm`` has no map to apply to)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"PeLK's features are NCHW, got output_fmt={output_fmt!r}")
        take, max_index = feature_take_indices(len(self.backbone.stages), indices)
        last = max_index if stop_early or intermediates_only else len(self.backbone.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self.backbone.stages[i](self.backbone.downsample_layers[i](x))
            if i in take:
                intermediates.append(self._stage_output(i, x))
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, _ = feature_take_indices(len(self.backbone.stages), indices)
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.backbone.downsample_layers, self.backbone.stages):
            x = stage(downsample(x))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        last = len(self.backbone.stages) - 1
        x = getattr(self.backbone, f'norm{last}')(x.mean((-2, -1)))
        x = self.head_drop(x)
        return x if pre_logits else self.head.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str) -> None:
        """Load a checkpoint of ``tools/train.py`` (or a bare ``state_dict``) with pelk_mm's safe loader.

        A classification checkpoint fills the backbone and, when the class count matches, the classifier; an mmseg /
        mmdet checkpoint fills the backbone. Norms a dense-prediction model adds may be missing; any other missing
        or mis-shaped backbone weight is one :class:`~pelk_mm.errors.CheckpointLoadError`.
        """
        from pelk_mm.checkpoint import checkpoint_weights, load_checkpoint_file, weights_mismatch
        weights = checkpoint_weights(load_checkpoint_file(path, map_location='cpu'))
        if weights and not any(k.startswith('backbone.') for k in weights):
            weights = {f'backbone.{k}': v for k, v in weights.items()}  # a bare PeLK state_dict
        own = self.state_dict()
        weights = {k: v for k, v in weights.items()
                   if k in own and not (k.startswith('head.') and v.shape != own[k].shape)}
        norms = tuple(f'backbone.norm{i}.' for i in range(len(self.backbone.stages))
                      if not any(k.startswith(f'backbone.norm{i}.') for k in weights))
        problem = weights_mismatch(self, weights, allowed_prefixes=('head.', ) + norms)
        if problem:
            name = getattr(self, 'pretrained_cfg', {}).get('architecture', 'PeLKNet')
            raise CheckpointLoadError(f'checkpoint {path!r} does not fit timm model {name}: {problem}. Fix: use a '
                                      f'checkpoint of the same PeLK arch (and deploy form)')
        self.load_state_dict(weights, strict=False)


def _init_quietly(module: nn.Module) -> None:
    """``module.init_weights()`` (the initialisation of PeLK's ``init_cfg`` that mmengine's Runner runs) without
    mmengine's per-parameter INFO lines, which it prints when its logger has no file to write them to."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        module.init_weights()
    finally:
        logger.setLevel(level)


def _cfg(**kwargs) -> dict:
    return {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
            'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
            'first_conv': 'backbone.downsample_layers.0.0', 'classifier': 'head.fc', 'custom_load': True,
            'license': 'apache-2.0', **kwargs}


# NOTE: timm's register_model reads the pretrained configs from the registering module's `default_cfgs`
default_cfgs = generate_default_cfgs({name: _cfg() for name in TIMM_MODELS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    arch, index_name = TIMM_MODELS[variant]
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
        if not (cfg.file or cfg.state_dict or cfg.url or cfg.hf_hub_id):
            from pelk_mm.model_zoo import get_entry
            entry = get_entry(index_name)
            raise MissingWeightsError(
                f'timm model {variant} has no published weights (pretrained=True; no PeLK weights are released): '
                f'train them with `python tools/train.py {entry.config_rel}`, which writes {entry.checkpoint}, and '
                f"pass pretrained_cfg_overlay=dict(file='{entry.checkpoint}'), or pretrained=False for randomly "
                f'initialised weights')
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
    if overlay.get('file'):
        # NOTE: timm reads a file of its own format unless custom_load is set; ours reads an mmengine checkpoint
        # with pelk_mm's safe loader and keeps the weights that fit (see PeLKNet.load_pretrained)
        overlay.setdefault('custom_load', True)
        kwargs['pretrained_cfg_overlay'] = overlay
    kwargs = dict(dict(arch=arch), **kwargs)  # an `arch=` of the caller wins, as timm's model args do
    if kwargs.get('features_only', False):
        depths = PeLK.resolve_arch(kwargs['arch'])['depths']
        take, _ = feature_take_indices(len(depths), kwargs.get('out_indices', None))
        kwargs['dense_out_indices'] = take
    return build_model_with_cfg(PeLKNet, variant, pretrained, pretrained_filter_fn=_filter_state_dict,
                                feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(4))), **kwargs)


def _filter_state_dict(state_dict: dict, model: nn.Module) -> dict:
    """An mmengine checkpoint dict (``state_dict`` inside) given as ``pretrained_cfg_overlay=dict(state_dict=...)``
    becomes the model's weights."""
    from pelk_mm.checkpoint import checkpoint_weights
    return checkpoint_weights(state_dict)


@register_model
def pelk_t(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-T (kernels 51-49-47-13, 5x5 centre)."""
    return _create('pelk_t', pretrained, **kwargs)


@register_model
def pelk_s(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-S (kernels 51-49-47-13, 5x5 centre)."""
    return _create('pelk_s', pretrained, **kwargs)


@register_model
def pelk_b(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-B (kernels 51-49-47-13, 5x5 centre)."""
    return _create('pelk_b', pretrained, **kwargs)


@register_model
def pelk_b101(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-B-101 (kernels 101-69-67-13, 7x7 centre)."""
    return _create('pelk_b101', pretrained, **kwargs)


@register_model
def pelk_t101(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-T-101 (kernels 101-69-67-13, 7x7 centre)."""
    return _create('pelk_t101', pretrained, **kwargs)


@register_model
def pelk_t151(pretrained: bool = False, **kwargs) -> nn.Module:
    """PeLK-T-151 (kernels 151-89-87-13, 5x5 centre)."""
    return _create('pelk_t151', pretrained, **kwargs)
