"""Checks of a config's training settings before anything is built: the schedule (``train_cfg``), the optimizer and
its wrapper (``optim_wrapper``), the dataloaders, the backbone's drop path rate and the heads' ``num_classes``
against the dataset's classes.

mmengine accepts most of these silently (``max_epochs=0`` trains nothing and exits 0, ``drop_path_rate=1.5`` trains
normally) or fails deep inside the Runner (``optimizer.lrr``, ``train_cfg.max_epoch``, ``batch_size=0``). Each
bad value here is one :class:`~pelk_mm.errors.ConfigValidationError` naming the key, the value and the fix;
a misspelt key gets the closest valid name.
"""
from __future__ import annotations

import inspect
import numbers
from typing import List, Optional, Set

from pelk_mm.config import closest_name
from pelk_mm.errors import ConfigValidationError

__all__ = ['check_settings']

def _fail(key: str, problem: str, fix: str):
    raise ConfigValidationError(f'config key `{key}`: {problem}. Fix: {fix}', key)


def _init_keys(cls, skip=('self', 'runner', 'dataloader', 'params'), open_ok: bool = False) -> Optional[Set[str]]:
    """The keyword arguments ``cls`` accepts, or None when it takes ``**kwargs`` (anything goes) -- unless
    ``open_ok``, for a class that forwards its ``**kwargs`` to a base class the caller checks too."""
    params = inspect.signature(cls.__init__).parameters.values()
    if not open_ok and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name not in skip and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                                         inspect.Parameter.KEYWORD_ONLY)}


def _check_keys(section: dict, prefix: str, valid: Set[str], what: str) -> None:
    for key in section:
        if key not in valid:
            _fail(f'{prefix}.{key}', f'{what} has no setting {key!r}{closest_name(key, valid)}',
                  f'use one of {", ".join(sorted(valid))}')


def _positive_int(value, key: str, what: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        _fail(key, f'{what} must be an integer >= {minimum}, got {value!r}',
              f'set {key} to {minimum} or more' + (' (the run would do nothing)' if minimum == 1 else ''))


# --------------------------------------------------------------------------------------------------- schedule
def _check_schedule(cfg) -> None:
    train_cfg = cfg.get('train_cfg', None)
    if not hasattr(train_cfg, 'get'):
        return
    from mmengine.runner.loops import EpochBasedTrainLoop, IterBasedTrainLoop
    loop_type = train_cfg.get('type', None)
    if loop_type is None:
        loop = EpochBasedTrainLoop if train_cfg.get('by_epoch', True) else IterBasedTrainLoop
    elif str(loop_type).split('.')[-1] in ('EpochBasedTrainLoop', 'IterBasedTrainLoop'):
        loop = EpochBasedTrainLoop if str(loop_type).endswith('EpochBasedTrainLoop') else IterBasedTrainLoop
    else:
        return  # a custom loop: its own arguments
    valid = (_init_keys(loop) or set()) | {'type', 'by_epoch', '_scope_'}
    _check_keys(train_cfg, 'train_cfg', valid, loop.__name__)
    length = 'max_epochs' if loop is EpochBasedTrainLoop else 'max_iters'
    if length in train_cfg:
        _positive_int(train_cfg[length], f'train_cfg.{length}', length)
    for key in ('val_interval', 'val_begin'):
        if key in train_cfg:
            _positive_int(train_cfg[key], f'train_cfg.{key}', key)


# --------------------------------------------------------------------------------------------------- optimizer
def _optimizer_class(opt_type):
    if not isinstance(opt_type, str):
        return opt_type if inspect.isclass(opt_type) else None
    from mmengine.registry import OPTIMIZERS
    try:
        return OPTIMIZERS.get(opt_type)
    except Exception:  # noqa: BLE001 - an unknown name is reported by the registry itself
        return None


def _check_optimizer(cfg) -> None:
    wrapper = cfg.get('optim_wrapper', None)
    if not hasattr(wrapper, 'get'):
        return
    wrapper_type = str(wrapper.get('type', 'OptimWrapper')).split('.')[-1]
    if wrapper_type not in ('OptimWrapper', 'AmpOptimWrapper'):
        return  # OptimWrapperDict or a custom wrapper
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    valid = _init_keys(OptimWrapper) | {'type', 'constructor', 'paramwise_cfg', '_scope_'}
    if wrapper_type == 'AmpOptimWrapper':  # forwards its **kwargs to OptimWrapper
        valid |= _init_keys(AmpOptimWrapper, open_ok=True)
    _check_keys(wrapper, 'optim_wrapper', valid, wrapper_type)
    optimizer = wrapper.get('optimizer', None)
    if not hasattr(optimizer, 'get'):
        _fail('optim_wrapper.optimizer', f'missing (got {optimizer!r})',
              "give the optimizer, e.g. optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3))")
    cls = _optimizer_class(optimizer.get('type', None))
    if cls is not None:
        keys = _init_keys(cls)
        if keys is not None:
            _check_keys(optimizer, 'optim_wrapper.optimizer', keys | {'type', '_scope_'}, cls.__name__)
    if 'lr' in optimizer:
        lr = optimizer['lr']
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or lr < 0:
            _fail('optim_wrapper.optimizer.lr', f'the learning rate must be a number >= 0, got {lr!r}',
                  'give a number, e.g. --cfg-options optim_wrapper.optimizer.lr=0.002')


# --------------------------------------------------------------------------------------------------- loaders
def _check_loaders(cfg) -> None:
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name, None)
        if not hasattr(loader, 'get'):
            continue
        if 'batch_size' in loader:
            _positive_int(loader['batch_size'], f'{name}.batch_size', 'batch_size')
        if 'num_workers' in loader:
            _positive_int(loader['num_workers'], f'{name}.num_workers', 'num_workers', minimum=0)


def _check_drop_path(cfg) -> None:
    model = cfg.get('model', None)
    backbone = model.get('backbone', None) if hasattr(model, 'get') else None
    rate = backbone.get('drop_path_rate', None) if hasattr(backbone, 'get') else None
    if rate is None:
        return
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        _fail('model.backbone.drop_path_rate', f'the stochastic depth rate must be in [0, 1), got {rate!r}',
              'use e.g. 0.1 (PeLK-T), 0.4 (S), 0.5 (B) for ImageNet, or 0 to disable it')


# --------------------------------------------------------------------------------------------------- classes
def _head_num_classes(model, scope: str):
    """``(config key, num_classes)`` of the heads that classify into the dataset's classes."""
    out = []
    if not hasattr(model, 'get'):
        return out
    if scope == 'mmpretrain':
        head = model.get('head', None)
        if hasattr(head, 'get') and 'num_classes' in head:
            out.append(('model.head.num_classes', head['num_classes']))
    elif scope == 'mmseg':
        for name in ('decode_head', 'auxiliary_head'):
            for i, head in enumerate(model.get(name, None) if isinstance(model.get(name, None), (list, tuple))
                                     else [model.get(name, None)]):
                if hasattr(head, 'get') and 'num_classes' in head:
                    suffix = f'[{i}]' if isinstance(model.get(name), (list, tuple)) else ''
                    out.append((f'model.{name}{suffix}.num_classes', head['num_classes']))
    elif scope == 'mmdet':
        roi = model.get('roi_head', None)
        for name in ('bbox_head', 'mask_head'):
            heads = roi.get(name, None) if hasattr(roi, 'get') else None
            for i, head in enumerate(heads if isinstance(heads, (list, tuple)) else [heads]):
                if hasattr(head, 'get') and 'num_classes' in head:
                    suffix = f'[{i}]' if isinstance(heads, (list, tuple)) else ''
                    out.append((f'model.roi_head.{name}{suffix}.num_classes', head['num_classes']))
    return out


def _check_num_classes(cfg, mode: str) -> None:
    scope = cfg.get('default_scope', None)
    loader = cfg.get('train_dataloader' if mode == 'train' else f'{mode}_dataloader', None)
    if scope not in ('mmpretrain', 'mmseg', 'mmdet') or not hasattr(loader, 'get'):
        return
    from .check_data import dataset_num_classes
    classes = dataset_num_classes(loader.get('dataset', None), scope)
    if classes is None:
        return
    loader_name = 'train_dataloader' if mode == 'train' else f'{mode}_dataloader'
    for key, num in _head_num_classes(cfg.get('model', None), scope):
        if isinstance(num, numbers.Integral) and num != classes:
            _fail(key, f'{num} classes, but {loader_name}.dataset has {classes}',
                  f'set {key}={classes} (and every other head\'s num_classes), or give the dataset the classes the '
                  f'model predicts')


def _check_load_from_mismatch(cfg) -> None:
    value = cfg.get('load_from_mismatch', None)
    if value is None or isinstance(value, str) and value:
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        _fail('load_from_mismatch', f'must be a list of weight-name prefixes, got {value!r}',
              "list the prefixes of the weights load_from may lack, e.g. load_from_mismatch = ['head.']")


# --------------------------------------------------------------------------------------------------- options
def check_settings(cfg, mode: str = 'train') -> List[str]:
    """Every check of this module for ``mode`` ('train', 'val', 'test'); returns notes (none so far)."""
    if mode == 'train':
        _check_load_from_mismatch(cfg)
        _check_schedule(cfg)
        _check_optimizer(cfg)
        _check_drop_path(cfg)
    _check_loaders(cfg)
    _check_num_classes(cfg, mode)
    return []
