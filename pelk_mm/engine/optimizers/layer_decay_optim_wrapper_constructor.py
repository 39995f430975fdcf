"""Layer-wise / stage-wise learning-rate decay for PeLK (and any ConvNeXt-style backbone) in mmpretrain, mmseg and
mmdet configs.

The stock constructors cannot be used with PeLK: mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor``
choose the layer ids with ``'ConvNeXt' in module.backbone.__class__.__name__`` and raise ``NotImplementedError``
for any other class, and mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` knows only ``layer_decay_rate``
(no ``stage_wise``) and keeps weight decay on 1-D parameters. This constructor reads both config styles, decides
layer ids from the backbone's structure, not its class name, and leaves everything else (``custom_keys``,
``*_decay_mult``, ``bias_lr_mult``, ``bypass_duplicate``, frozen parameters) to mmengine's
:class:`~mmengine.optim.DefaultOptimWrapperConstructor`.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from numbers import Real
from typing import Callable, List, Optional, Tuple

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from pelk_mm.errors import check_int
from pelk_mm.registry import OPTIM_WRAPPER_CONSTRUCTORS

DECAY_TYPES = ('layer_wise', 'stage_wise')
_DOWNSAMPLE = re.compile(r'^backbone\.downsample_layers\.(\d+)\.')
_STAGE = re.compile(r'^backbone\.stages\.(\d+)\.([^.]+)')


def convnext_stage_id(name: str, num_layers: int) -> Optional[int]:
    """Stage id of ``name`` in ConvNeXt's stage-wise scheme (mmseg ``get_stage_id_for_convnext``).

    ``backbone.downsample_layers.*`` -> 0, ``backbone.stages.{i}.*`` -> ``i + 1``, parameters outside the backbone
    -> ``num_layers + 1``; ``None`` for other backbone parameters (e.g. the output norms).
    """
    if not name.startswith('backbone.'):
        return num_layers + 1
    if _DOWNSAMPLE.match(name):
        return 0
    match = _STAGE.match(name)
    if match:
        return int(match.group(1)) + 1
    return None


class _DropRecords(logging.Filter):
    """Drops mmengine's one-line-per-parameter ``paramwise_options -- ...`` records (we log one table per group)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith('paramwise_options -- ')


@contextmanager
def _quiet_paramwise_log():
    logger = MMLogger.get_current_instance()
    flt = _DropRecords()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Learning-rate decay by depth (layer-wise) or by stage (stage-wise) for ConvNeXt-style backbones.

    Use it from any codebase with ``constructor='pelk_mm.LayerDecayOptimWrapperConstructor'``. ``paramwise_cfg``
    accepts the mmseg/mmdet keys

    - ``decay_rate`` (float in (0, 1]): multiplier per layer (stage) below the top;
    - ``decay_type`` (``'layer_wise'`` or ``'stage_wise'``, default ``'layer_wise'``);
    - ``num_layers`` (int): number of layer ids of the backbone (ConvNeXt/PeLK: 6 when stage 3 has <= 9 blocks,
      else 12). Required for ``stage_wise``; optional for ``layer_wise`` (the count of the backbone's
      ``get_layer_depth`` is used, and a different ``num_layers`` is an error),

    or the mmpretrain key ``layer_decay_rate`` (same as ``decay_rate``; use one of the two), plus every option of
    :class:`~mmengine.optim.DefaultOptimWrapperConstructor` (``custom_keys`` with ``lr_mult``/``decay_mult``,
    ``bias_decay_mult``, ``norm_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult``, ``bias_lr_mult``,
    ``bypass_duplicate``).

    Layer ids. ``layer_wise``: the backbone's own scheme, ``model.backbone.get_layer_depth(name, 'backbone.')``
    (PeLK, mmpretrain's ConvNeXt); a backbone without it needs ``stage_wise``. ``stage_wise``: from the ConvNeXt
    parameter names ``backbone.downsample_layers.{i}`` and ``backbone.stages.{i}`` (:func:`convnext_stage_id`). Parameters outside the backbone (heads, necks) and the backbone's output norms get
    id ``num_layers + 1``. A parameter with id ``i`` gets ``lr = base_lr * lr_mult * decay_rate ** (num_layers + 1
    - i)`` and the group keys ``lr_scale`` and ``layer_id``, as mmseg's constructor does.

    Weight decay. As in mmseg/mmdet, 1-D parameters (norm weights and biases, conv/linear biases, layer scale
    ``gamma``) get no weight decay: ``flat_decay_mult`` defaults to ``0.0`` here. Set ``flat_decay_mult=1.0`` to
    keep it. Multi-dimensional parameters (convs, linears, PeLK's shared peripheral weights, the kernel-wise
    positional embeddings ``stages.{i}.kpe``) keep ``weight_decay`` unless ``custom_keys`` (or
    ``dwconv_decay_mult``) says otherwise.

    Parameters with identical settings are merged into one group named ``layer_{id}_decay`` or
    ``layer_{id}_no_decay`` (``_{k}`` appended when custom settings split a layer), with ``param_names``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        if 'decay_rate' in paramwise_cfg and 'layer_decay_rate' in paramwise_cfg:
            raise ValueError(
                f'paramwise_cfg sets both decay_rate={paramwise_cfg["decay_rate"]!r} (mmseg/mmdet style) and '
                f'layer_decay_rate={paramwise_cfg["layer_decay_rate"]!r} (mmpretrain style); set only one')
        rate_key = 'decay_rate' if 'decay_rate' in paramwise_cfg else 'layer_decay_rate'
        if rate_key not in paramwise_cfg:
            raise ValueError(
                f'LayerDecayOptimWrapperConstructor needs paramwise_cfg.decay_rate (or layer_decay_rate), got '
                f'paramwise_cfg={paramwise_cfg!r}; for no decay use the default constructor')
        decay_rate = paramwise_cfg[rate_key]
        if isinstance(decay_rate, bool) or not isinstance(decay_rate, Real) or not 0 < decay_rate <= 1:
            raise ValueError(f'paramwise_cfg.{rate_key} must be a number in (0, 1], got {decay_rate!r}')
        decay_type = paramwise_cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of {DECAY_TYPES}, got {decay_type!r}')
        num_layers = paramwise_cfg.get('num_layers')
        if num_layers is not None:
            check_int('paramwise_cfg.num_layers', num_layers)
        if decay_type == 'stage_wise' and num_layers is None:
            raise ValueError("paramwise_cfg.num_layers is required with decay_type='stage_wise' (ConvNeXt/PeLK "
                             'recipes: 6 for T, 12 for S/B)')
        self.decay_rate = float(decay_rate)
        self.decay_type = decay_type
        self.num_layers = num_layers
        # the remaining keys are mmengine's; 1-D params get no weight decay unless configured (mmseg/mmdet rule)
        for key in ('decay_rate', 'layer_decay_rate', 'decay_type', 'num_layers'):
            paramwise_cfg.pop(key, None)
        paramwise_cfg.setdefault('flat_decay_mult', 0.0)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if not isinstance(self.base_lr, Real):
            raise ValueError(f'layer-wise lr decay needs optimizer.lr, got optimizer={self.optimizer_cfg!r}')

    # ------------------------------------------------------------------ layer ids
    def _layer_id_fn(self, module: nn.Module) -> Tuple[Callable[[str], int], int]:
        """Returns ``(name -> layer id, num_layers)`` for ``module`` (a model with a ``backbone``)."""
        backbone = getattr(module, 'backbone', None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f'LayerDecayOptimWrapperConstructor needs a model with a `backbone` submodule; '
                             f'{type(module).__name__} has none')
        backbone_cls = type(backbone).__name__
        names = [n for n, p in module.named_parameters() if p.requires_grad and n.startswith('backbone.')]

        if self.decay_type == 'layer_wise':
            if not hasattr(backbone, 'get_layer_depth'):
                raise ValueError(f"{backbone_cls} has no get_layer_depth(), so decay_type='layer_wise' cannot ask "
                                 f"it for layer ids; use decay_type='stage_wise' with paramwise_cfg.num_layers, or "
                                 f'a backbone with get_layer_depth (PeLK, mmpretrain ConvNeXt)')
            max_depths = {backbone.get_layer_depth(n, 'backbone.')[1] for n in names}
            if len(max_depths) > 1:
                raise ValueError(f'{backbone_cls}.get_layer_depth returned different layer counts {max_depths}')
            num_layers = max_depths.pop() - 2 if max_depths else (self.num_layers or 0)
            if self.num_layers is not None and self.num_layers != num_layers:
                raise ValueError(
                    f'paramwise_cfg.num_layers={self.num_layers} but {backbone_cls}.get_layer_depth uses '
                    f'{num_layers} layers for this arch; set num_layers={num_layers} or leave it out')

            def layer_id(name: str) -> int:
                return backbone.get_layer_depth(name, 'backbone.')[0]

            return layer_id, num_layers

        num_layers = self.num_layers
        ids = {n: convnext_stage_id(n, num_layers) for n in names}
        if names and all(i is None for i in ids.values()):
            raise ValueError(
                f"cannot assign stage_wise ids to {backbone_cls}: none of its parameters is under "
                f'`downsample_layers.{{i}}` or `stages.{{i}}` (ConvNeXt-style names)')
        top = max((i for i in ids.values() if i is not None), default=0)
        if top > num_layers:
            worst = next(n for n, i in ids.items() if i == top)
            raise ValueError(f'paramwise_cfg.num_layers={num_layers} is too small for {backbone_cls}: '
                             f'{worst!r} gets stage_wise id {top}; use num_layers >= {top}')

        def layer_id(name: str) -> int:
            i = convnext_stage_id(name, num_layers)
            return num_layers + 1 if i is None else i

        return layer_id, num_layers

    # ------------------------------------------------------------------ groups
    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', is_dcn_module=None) -> None:
        """mmengine's per-parameter groups, then lr scaled by layer id and groups merged by identical settings."""
        if prefix:  # recursion inside DefaultOptimWrapperConstructor.add_params
            return super().add_params(params, module, prefix=prefix, is_dcn_module=is_dcn_module)

        layer_id_of, num_layers = self._layer_id_fn(module)
        names = {id(p): n for n, p in module.named_parameters()}
        single: List[dict] = []
        with _quiet_paramwise_log():
            super().add_params(single, module, prefix='', is_dcn_module=is_dcn_module)

        merged: dict = {}
        for group in single:
            (param,) = group['params']
            name = names[id(param)]
            layer = layer_id_of(name)
            scale = self.decay_rate ** (num_layers + 1 - layer)
            settings = {k: v for k, v in group.items() if k != 'params'}
            settings['lr'] = settings.get('lr', self.base_lr) * scale
            settings['lr_scale'] = scale
            settings['layer_id'] = layer
            if self.base_wd is not None:
                settings.setdefault('weight_decay', self.base_wd)
            key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
            if key not in merged:
                merged[key] = dict(params=[], param_names=[], **settings)
            merged[key]['params'].append(param)
            merged[key]['param_names'].append(name)

        counts: dict = {}
        for group in merged.values():
            base = f'layer_{group["layer_id"]}_' + ('decay' if group.get('weight_decay') else 'no_decay')
            counts[base] = counts.get(base, 0) + 1
            group['group_name'] = base if counts[base] == 1 else f'{base}_{counts[base] - 1}'
        groups = sorted(merged.values(), key=lambda g: (g['layer_id'], g['group_name']))
        params.extend(groups)
        self._log_groups(groups, num_layers)

    def _log_groups(self, groups: List[dict], num_layers: int) -> None:
        if get_dist_info()[0] != 0:
            return
        lines = [f'LayerDecayOptimWrapperConstructor: {self.decay_type}, decay_rate={self.decay_rate}, '
                 f'num_layers={num_layers}, {len(groups)} param groups:']
        for g in groups:
            wd = g.get('weight_decay')
            lines.append(f'  {g["group_name"]}: lr={g["lr"]:.4g} (lr_scale={g["lr_scale"]:.4g}), '
                         f'weight_decay={wd if wd is None else f"{wd:.4g}"}, {len(g["params"])} params '
                         f'[{", ".join(g["param_names"][:3])}{", ..." if len(g["param_names"]) > 3 else ""}]')
        print_log('\n'.join(lines), logger='current')
