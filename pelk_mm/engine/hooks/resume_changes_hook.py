"""``--resume`` with another recipe than the checkpoint's: what changed, and the hook that makes the config's values
apply.

mmengine's resume restores the optimizer's parameter groups (lr, weight decay, momentum / betas) and every
parameter scheduler's state (its base values, ``begin``/``end``, ``T_max``, ...) from the checkpoint, so an lr or
schedule changed in the config is silently ignored, while the batch size and the model are taken from the config.
:func:`recipe_changes` compares the recipe keys of the config a checkpoint was trained with (mmengine stores its
text in ``meta['cfg']``) with the new one; the launcher refuses a resume with changes unless
``--resume-with-changes`` is given, and then adds :class:`ResumeChangesHook`, which continues from the checkpoint
(weights, optimizer moments, counters) with the config's optimizer settings and lr schedule, as if the run had
used them from the start.

The saved config text is read with :mod:`ast` (literals and ``dict(...)`` calls only); nothing in it is run.
"""
from __future__ import annotations

import ast
from typing import Any, Dict, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.runner.loops import EpochBasedTrainLoop

from pelk_mm.checkpoint import checkpoint_weights, weights_mismatch
from pelk_mm.errors import CheckpointLoadError
from pelk_mm.registry import HOOKS

__all__ = ['ResumeChangesHook', 'recipe_changes', 'read_config_text', 'RECIPE_KEYS']

#: the config sections that make a training recipe (``train_dataloader.batch_size`` is compared on its own)
RECIPE_KEYS = ('model', 'optim_wrapper', 'param_scheduler', 'auto_scale_lr')
#: keys inside them that do not change what is trained: where the initial weights came from (a resume loads the
#: checkpoint's), which kernel implementation computes the same convolution, activation checkpointing (memory for
#: compute) and how the model is evaluated (``model.test_cfg``)
_NOT_RECIPE = frozenset({'init_cfg', 'pretrained', 'conv_impl', 'with_cp', 'test_cfg'})
#: the sections whose change makes :class:`ResumeChangesHook` re-apply the optimizer settings and lr schedule
_SCHEDULE_KEYS = ('optim_wrapper', 'param_scheduler', 'auto_scale_lr', 'train_dataloader.batch_size')


class _Source(str):
    """A config value that the safe reader does not evaluate (e.g. a class), compared by its source text."""

    def __repr__(self) -> str:
        return str(self)


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):  # tuples as lists: a tuple -> list is no change of recipe
        return [_value(e) for e in node.elts]
    if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
        return {k.value: _value(v) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' and not node.args
            and all(kw.arg is not None for kw in node.keywords)):
        return {kw.arg: _value(kw.value) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and \
            isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    return _Source(ast.unparse(node))


def read_config_text(text: str) -> Optional[Dict[str, Any]]:
    """The top-level ``name = value`` assignments of a config's ``pretty_text`` as plain values (None when the
    text does not parse). Only literals and ``dict(...)`` are evaluated; any other expression is kept as its
    source text."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    out: Dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            out[stmt.targets[0].id] = _value(stmt.value)
    return out


def _leaves(obj, prefix: str):
    if isinstance(obj, dict):
        for k in obj:
            if k in _NOT_RECIPE:
                continue
            yield from _leaves(obj[k], f'{prefix}.{k}')
    elif isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        for i, v in enumerate(obj):
            yield from _leaves(v, f'{prefix}.{i}')
    else:
        yield prefix, obj


_ABSENT = _Source('(not set)')


def _batch(cfg: dict) -> Any:
    loader = cfg.get('train_dataloader', None)
    return loader.get('batch_size', None) if isinstance(loader, dict) else None


def recipe_changes(saved: Dict[str, Any], current: Dict[str, Any], saved_world_size: Optional[int] = None,
                   world_size: Optional[int] = None) -> List[Tuple[str, Any, Any]]:
    """``(key, checkpoint's value, config's value)`` for every recipe leaf that differs between two configs read by
    :func:`read_config_text`. The batch size is compared as the global batch when both process counts are known
    (``--resume-other-world-size`` keeps it while changing the per-process batch)."""
    changes = []
    for section in RECIPE_KEYS:
        old = dict(_leaves(saved.get(section, None), section)) if section in saved else {}
        new = dict(_leaves(current.get(section, None), section)) if section in current else {}
        for key in list(old) + [k for k in new if k not in old]:
            a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
            if a != b:
                changes.append((key, a, b))
    old_batch, new_batch = _batch(saved), _batch(current)
    if saved_world_size and world_size and saved_world_size != world_size and \
            isinstance(old_batch, int) and isinstance(new_batch, int):
        if old_batch * saved_world_size != new_batch * world_size:
            changes.append(('train_dataloader.batch_size', _Source(f'{old_batch} x {saved_world_size} processes'),
                            _Source(f'{new_batch} x {world_size} processes')))
    elif old_batch != new_batch:
        changes.append(('train_dataloader.batch_size', old_batch, new_batch))
    return changes


def format_changes(changes: List[Tuple[str, Any, Any]]) -> str:
    """``key old -> new; ...`` on one line."""
    return '; '.join(f'{key} {old!r} -> {new!r}' for key, old, new in changes)


def _wrappers(optim_wrapper) -> Dict[str, Any]:
    """``{name: OptimWrapper}``: one entry (name '') for a single wrapper, each one of an ``OptimWrapperDict``."""
    inner = getattr(optim_wrapper, 'optim_wrappers', None)
    return dict(inner) if isinstance(inner, dict) else {'': optim_wrapper}


def _schedulers(runner) -> List[Any]:
    schedulers = runner.param_schedulers
    if schedulers is None:
        return []
    if isinstance(schedulers, dict):
        return [s for group in schedulers.values() for s in group]
    return list(schedulers)


@HOOKS.register_module()
class ResumeChangesHook(Hook):
    """Continue a resumed run with the config's recipe where it differs from the checkpoint's (the launcher adds
    this hook for ``--resume-with-changes``; it does nothing when the recipes agree).

    * The weights, optimizer moments (momentum buffers, Adam's averages), counters and message hub come from the
      checkpoint; a model that the checkpoint's weights do not fit (missing or re-shaped weights) is refused.
    * When the optimizer settings, the lr schedule, ``auto_scale_lr`` or the batch size changed: every parameter
      group's hyper-parameters (lr, weight decay, momentum / betas, ...) are the config's, and the parameter
      schedulers are the config's, advanced to the resumed epoch/iteration (as if the run had had them from the
      start), instead of the checkpoint's.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._groups: Dict[str, List[Tuple[int, dict]]] = {}
        self._fast_forward = False
        self._changes: List[Tuple[str, Any, Any]] = []

    def before_run(self, runner) -> None:
        # NOTE: the optimizer and its schedulers are built by now (the schedulers set the step-0 values), and the
        # checkpoint is not loaded yet: these are the config's hyper-parameters at step 0
        self._groups = {name: [(len(group['params']), {k: v for k, v in group.items() if k != 'params'})
                               for group in wrapper.optimizer.param_groups]
                        for name, wrapper in _wrappers(runner.optim_wrapper).items()}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return
        saved = read_config_text((checkpoint.get('meta', None) or {}).get('cfg', '') or '')
        current = read_config_text(runner.cfg.pretty_text)
        if not saved or current is None:
            return
        state = checkpoint.get('resume_state', None) or {}
        self._changes = recipe_changes(saved, current, state.get('world_size', None), runner.world_size)
        if not self._changes:
            return
        if any(key.startswith('model.') for key, _, _ in self._changes):
            model = runner.model.module if hasattr(runner.model, 'module') else runner.model
            problem = weights_mismatch(model, checkpoint_weights(checkpoint))
            if problem:
                raise CheckpointLoadError(
                    f'--resume-with-changes: the checkpoint does not fit the changed model ({problem}). Fix: resume '
                    f'with the checkpoint\'s model settings, or start a new run from its weights with load_from and '
                    f'load_from_mismatch')
        if any(key.startswith(_SCHEDULE_KEYS) for key, _, _ in self._changes):
            self._take_config_hyper_parameters(checkpoint)
            checkpoint.pop('param_schedulers', None)  # the config's schedulers stay, advanced in before_train
            self._fast_forward = runner.param_schedulers is not None

    def _take_config_hyper_parameters(self, checkpoint: dict) -> None:
        states = checkpoint.get('optimizer', None)
        if states is None:
            return
        for name, groups in self._groups.items():
            state = states[name] if name else states
            saved_groups = state.get('param_groups', [])
            sizes = [len(g['params']) for g in saved_groups]
            if sizes != [n for n, _ in groups]:
                raise CheckpointLoadError(
                    f'--resume-with-changes: the checkpoint\'s optimizer{" " + name if name else ""} has parameter '
                    f'groups of {sizes} parameters and the config builds {[n for n, _ in groups]} (a changed '
                    f'paramwise_cfg or optimizer constructor): its state cannot be continued. Fix: resume with the '
                    f'checkpoint\'s optimizer settings, or start a new run from its weights with load_from')
            for saved_group, (_, group) in zip(saved_groups, groups):
                params = saved_group['params']
                saved_group.clear()
                saved_group.update(group, params=params)

    def before_train(self, runner) -> None:
        if self._changes:
            runner.logger.warning(f'[resume] --resume-with-changes: the config\'s values apply: '
                                  f'{format_changes(self._changes)}')
        if not self._fast_forward:
            return
        self._fast_forward = False
        schedulers = _schedulers(runner)
        by_iter = [s for s in schedulers if not s.by_epoch]
        by_epoch = [s for s in schedulers if s.by_epoch]
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            # NOTE: the resumed epoch-based loop restarts at an epoch boundary; iteration-based schedulers (e.g.
            # convert_to_iter_based warm-up) advance by the epochs done times the iterations per epoch of this run
            for _ in range(runner.epoch):
                _advance(by_iter, len(runner.train_dataloader))
                _advance(by_epoch, 1)
        else:
            _advance(by_iter, runner.iter)
        lrs = sorted({round(float(g['lr']), 12) for w in _wrappers(runner.optim_wrapper).values()
                      for g in w.optimizer.param_groups if 'lr' in g})
        runner.logger.warning(
            f'[resume] --resume-with-changes: the optimizer settings and lr schedule of the config apply, advanced to '
            f'epoch {runner.epoch}, iteration {runner.iter} (lr now {", ".join(f"{x:.6g}" for x in lrs[:4])}'
            f'{" ..." if len(lrs) > 4 else ""}); weights, optimizer moments and counters come from the checkpoint')


def _advance(schedulers: List[Any], steps: int) -> None:
    """``steps`` calls of each scheduler's ``step()``, in the order ParamSchedulerHook makes them."""
    import warnings
    with warnings.catch_warnings():
        # NOTE: mmengine warns about scheduler steps before the first optimizer step, which is what advancing is
        warnings.simplefilter('ignore', UserWarning)
        for _ in range(steps):
            for s in schedulers:
                s.step()
