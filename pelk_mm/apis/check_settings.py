"""Checks of a config's training settings before anything is built: the schedule (``train_cfg``), the optimizer and
its wrapper (``optim_wrapper``), the dataloaders, the backbone's drop path rate, the heads' ``num_classes``
against the dataset's classes and mmengine's ``compile`` switch (``torch.compile`` of the training step).

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


# --------------------------------------------------------------------------------------------------- schedulers
def _scheduler_items(cfg):
    """``(config key, scheduler cfg)`` of ``param_scheduler``: a list, one dict, or a dict of lists per optimizer."""
    schedulers = cfg.get('param_scheduler', None)
    if hasattr(schedulers, 'get') and 'type' not in schedulers:  # OptimWrapperDict: one list per optimizer
        groups = [(f'param_scheduler.{name}', value) for name, value in schedulers.items()]
    else:
        groups = [('param_scheduler', schedulers)]
    for prefix, group in groups:
        if isinstance(group, (list, tuple)):
            for i, item in enumerate(group):
                if hasattr(item, 'get'):
                    yield f'{prefix}.{i}', item
        elif hasattr(group, 'get'):
            yield prefix, group


def _training_length(cfg):
    """``(unit, length)`` of the train loop: ``('max_epochs', n)`` or ``('max_iters', n)``; None if unknown."""
    train_cfg = cfg.get('train_cfg', None)
    if not hasattr(train_cfg, 'get'):
        return None
    loop = str(train_cfg.get('type', '') or '').split('.')[-1]
    by_epoch = loop == 'EpochBasedTrainLoop' or (not loop and train_cfg.get('by_epoch', True))
    unit = 'max_epochs' if by_epoch else 'max_iters'
    if loop not in ('', 'EpochBasedTrainLoop', 'IterBasedTrainLoop'):
        return None
    length = train_cfg.get(unit, None)
    return (unit, length) if isinstance(length, numbers.Integral) and not isinstance(length, bool) else None


def _check_schedulers(cfg) -> None:
    length = _training_length(cfg)
    for key, sched in _scheduler_items(cfg):
        name = str(sched.get('type', '')).split('.')[-1]
        for arg in ('eta_min', 'eta_min_ratio'):
            value = sched.get(arg, None)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and value < 0:
                _fail(f'{key}.{arg}', f'{name} would anneal the value to {value!r}, below 0 (a negative learning '
                      f'rate trains uphill)', f'give {arg} >= 0, e.g. --cfg-options {key}.{arg}=0')
        milestones = sched.get('milestones', None)
        if length is None or not name.startswith('MultiStep') or not isinstance(milestones, (list, tuple)):
            continue
        unit, total = length
        # NOTE: a by_epoch scheduler counts epochs, an iteration one iterations: compare like with like only
        if bool(sched.get('by_epoch', True)) != (unit == 'max_epochs'):
            continue
        begin = sched.get('begin', 0) or 0
        # mmengine counts a milestone from the scheduler's begin; the decay of milestone m applies from step
        # begin + m on, so m >= total - begin never changes the value
        late = [m for m in milestones if isinstance(m, numbers.Real) and begin + m >= total]
        if late:
            shown = f'begin={begin} + ' if begin else ''
            _fail(f'{key}.milestones', f'{name} milestone{"s" if len(late) > 1 else ""} '
                  f'{", ".join(str(m) for m in late)} ({shown}{"epochs" if unit == "max_epochs" else "iterations"}) '
                  f'{"are" if len(late) > 1 else "is"} not before the end of training (train_cfg.{unit}={total}), '
                  f'so that decay never happens',
                  f'give milestones below {total - begin} (e.g. --cfg-options {key}.milestones='
                  f'"[{max(1, (total - begin) * 2 // 3)},{max(1, (total - begin) * 11 // 12)}]"), or train longer')


# --------------------------------------------------------------------------------------------------- optimizer
def _optimizers_registry(scope: Optional[str]):
    """The ``OPTIMIZERS`` registry the Runner builds from: the codebase's (which falls back to mmengine's)."""
    import importlib
    if scope:
        try:
            return importlib.import_module(f'{scope}.registry').OPTIMIZERS
        except (ImportError, AttributeError):
            pass
    from mmengine.registry import OPTIMIZERS
    return OPTIMIZERS


def _optimizer_class(opt_type, scope: Optional[str] = None):
    if not isinstance(opt_type, str):
        return opt_type if inspect.isclass(opt_type) else None
    try:
        return _optimizers_registry(scope).get(opt_type)
    except Exception:  # noqa: BLE001 - a malformed scoped name ('x.y.z') is reported as unknown
        return None


def _optimizer_names(scope: Optional[str]) -> Set[str]:
    names: Set[str] = set()
    registry = _optimizers_registry(scope)
    while registry is not None:
        names |= set(registry.module_dict)
        registry = registry.parent
    return names


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
    opt_type = optimizer.get('type', None)
    scope = cfg.get('default_scope', None)
    cls = _optimizer_class(opt_type, scope)
    if cls is None and not (isinstance(opt_type, str) or inspect.isclass(opt_type)):
        _fail('optim_wrapper.optimizer.type', f'the optimizer needs a type, got {opt_type!r}',
              "name a registered optimizer, e.g. optim_wrapper.optimizer.type='AdamW'")
    if cls is None and isinstance(opt_type, str):
        # NOTE: mmengine's optimizer constructor looks the name up, gets None and fails in inspect with "None is
        # not a callable object", naming neither the key nor the value
        names = _optimizer_names(scope)
        _fail('optim_wrapper.optimizer.type', f'no optimizer {opt_type!r} is registered'
              f'{closest_name(opt_type, names)}',
              'use a torch.optim optimizer (SGD, AdamW, ...) or one the codebase registers; a custom one needs '
              'its module in custom_imports')
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


#: pipeline transform arguments that are image sizes (or scale factors): each number must be > 0; -1 is mmpretrain's
#: "keep the aspect ratio" marker
_SIZE_ARGS = ('scale', 'scales', 'img_scale', 'crop_size', 'size', 'scale_factor', 'ratio_range')


def _numbers(value):
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)


def _walk_transforms(value, key: str):
    """``(config key, transform cfg)`` of every transform in a pipeline, including those nested in wrappers
    (``RandomChoice``, ``TestTimeAug``, ``RandomApply`` ...)."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk_transforms(item, f'{key}.{i}')
    elif hasattr(value, 'get'):
        if 'type' in value:
            yield key, value
        for name, item in value.items():
            if isinstance(item, (list, tuple)) or (hasattr(item, 'get') and 'type' in item):
                yield from _walk_transforms(item, f'{key}.{name}')


def _dataset_cfgs(dataset, key: str):
    if not hasattr(dataset, 'get'):
        return
    yield key, dataset
    yield from _dataset_cfgs(dataset.get('dataset', None), f'{key}.dataset')
    inners = dataset.get('datasets', None)
    if isinstance(inners, (list, tuple)):
        for i, inner in enumerate(inners):
            yield from _dataset_cfgs(inner, f'{key}.datasets.{i}')


def _check_pipelines(cfg, mode: str) -> None:
    loaders = ('train_dataloader', 'val_dataloader') if mode == 'train' else (f'{mode}_dataloader', )
    for name in loaders:
        loader = cfg.get(name, None)
        if not hasattr(loader, 'get'):
            continue
        for ds_key, dataset in _dataset_cfgs(loader.get('dataset', None), f'{name}.dataset'):
            pipeline = dataset.get('pipeline', None)
            for key, transform in _walk_transforms(pipeline, f'{ds_key}.pipeline'):
                for arg in _SIZE_ARGS:
                    value = transform.get(arg, None)
                    bad = [v for v in _numbers(value) if v <= 0 and v != -1]
                    if bad:
                        _fail(f'{key}.{arg}', f'{transform.get("type")} {arg}={value!r} would give an empty image '
                              f'(sizes and factors must be > 0)',
                              f'give a positive {arg}, e.g. --cfg-options {key}.{arg}=224 (or a (width, height) '
                              f'pair where the transform takes one)')


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


# --------------------------------------------------------------------------------------------------- compile
_COMPILE_EXAMPLE = "compile=True (torch.compile's defaults: inductor) or e.g. compile=dict(backend='inductor', " \
                   "mode='max-autotune')"


def _check_compile(cfg) -> None:
    """``compile``: mmengine's Runner hands ``True`` (torch.compile's defaults) or a dict of ``torch.compile``
    arguments to ``torch.compile`` of the model's ``train_step``; anything else fails there once everything is
    built (an assertion for a non-dict, a TypeError for a misspelt argument, a backend or mode torch does not
    know)."""
    value = cfg.get('compile', None)
    if value is None or isinstance(value, bool):
        return
    if not hasattr(value, 'items'):
        _fail('compile', f'must be True, False or a dict of torch.compile arguments, got {value!r}',
              f'set {_COMPILE_EXAMPLE}')
    import torch
    valid = {p.name for p in inspect.signature(torch.compile).parameters.values()
             if p.name != 'model' and p.kind is inspect.Parameter.KEYWORD_ONLY}
    _check_keys(value, 'compile', valid, 'torch.compile')
    backend = value.get('backend', None)
    if isinstance(backend, str):
        # NOTE: imported only here: torch._dynamo costs about a second, and configs without compile never need it
        import torch._dynamo
        backends = set(torch._dynamo.list_backends(exclude_tags=()))
        if backend not in backends:
            _fail('compile.backend', f'torch.compile has no backend {backend!r}{closest_name(backend, backends)}',
                  'use \'inductor\' (the default), \'aot_eager\' or \'eager\' (no code generation), or a backend '
                  'that a module in custom_imports registers')
    mode = value.get('mode', None)
    if mode is not None:
        import torch._inductor
        modes = set(torch._inductor.list_mode_options())
        if mode not in modes:
            _fail('compile.mode', f'torch.compile has no mode {mode!r}{closest_name(str(mode), modes)}',
                  f'use one of {", ".join(sorted(modes))}, or leave mode out')


# --------------------------------------------------------------------------------------------------- options
def check_settings(cfg, mode: str = 'train') -> List[str]:
    """Every check of this module for ``mode`` ('train', 'val', 'test'); returns notes (none so far)."""
    if mode == 'train':
        _check_load_from_mismatch(cfg)
        _check_schedule(cfg)
        _check_schedulers(cfg)
        _check_optimizer(cfg)
        _check_drop_path(cfg)
        _check_compile(cfg)
    _check_loaders(cfg)
    _check_pipelines(cfg, mode)
    _check_num_classes(cfg, mode)
    return []
