"""Skip optimizer steps with a non-finite loss or gradients, and stop a run that keeps producing them.

Without a guard, one NaN/inf loss turns every weight into NaN at the next optimizer step; the run keeps going,
logs ``loss: nan`` and writes NaN weights into every later checkpoint (and into the EMA model and BatchNorm
statistics). ``NonFiniteGuardHook`` checks each optimizer step *before* it is applied::

    custom_hooks = [..., dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5)]

How it hooks in (documented, no loop rewrite): at ``before_train`` it wraps two methods of the runner's optimizer
wrapper *instance* (``OptimWrapper``, ``AmpOptimWrapper`` or each member of an ``OptimWrapperDict``):
``update_params`` (to see the loss that ``train_step`` passes in) and ``step`` (called by ``update_params`` after
``backward`` and after DDP has all-reduced the gradients, before gradient clipping and ``optimizer.step``). On a bad
step the wrapped ``step`` returns without updating; ``update_params`` then zeroes the gradients as usual, and the
model's floating-point buffers (BatchNorm running statistics, which the bad forward pass already updated) are put
back to their values from the start of the iteration. ``after_train`` restores the original methods.

* A step is **bad** when the loss is non-finite (``check_loss``) or any gradient is (``check_grads``; max-abs
  norm per tensor, one fused reduction). Under DDP the gradients are identical on every rank after the all-reduce;
  the loss flag is all-reduced (one scalar) so every rank skips the same steps and the processes stay in sync.
* With ``AmpOptimWrapper`` the ``GradScaler`` already skips steps with inf/NaN (scaled) gradients and lowers the
  loss scale; the guard leaves that to it (no gradient check), still skips non-finite losses, and counts the
  scaler's skips separately: ``max_scaler_skips`` consecutive ones (the scale collapsing) also stop the run.
* After ``max_consecutive`` bad steps in a row the run stops with :class:`NonFiniteTrainingError`, a one-line
  message naming the iterations, what was non-finite and the usual fixes (``tools/train.py`` prints it without a
  traceback and exits with status 3). Earlier checkpoints are untouched and hold finite weights.
* ``check_checkpoint``: ``before_save_checkpoint`` refuses to write a checkpoint whose ``state_dict`` holds
  non-finite values (e.g. from a custom hook that bypasses the optimizer wrapper).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper

from pelk_mm.checkpoint import nonfinite_tensors, nonfinite_weights
from pelk_mm.errors import NonFiniteTrainingError, check_int
from pelk_mm.registry import HOOKS

__all__ = ['NonFiniteGuardHook']


def _fmt_iters(first: int, last: int) -> str:
    return f'iteration {last}' if first == last else f'iterations {first}-{last}'


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Skip optimizer steps whose loss or gradients are NaN/inf; stop after ``max_consecutive`` in a row.

    Args:
        max_consecutive (int): Stop the run after this many consecutive bad steps. Defaults to 5.
        check_loss (bool): Treat a non-finite loss as bad. Defaults to True.
        check_grads (bool): Treat non-finite gradients as bad (not for ``AmpOptimWrapper``, whose ``GradScaler``
            handles them). Defaults to True.
        restore_buffers (bool): Put the model's floating-point buffers (BatchNorm statistics) back after a bad
            step. Costs one copy of the buffers per iteration. Defaults to True.
        max_scaler_skips (int): With ``AmpOptimWrapper``, stop after this many consecutive steps skipped by the
            ``GradScaler``. Defaults to 50.
        check_checkpoint (bool): Refuse to save a checkpoint with non-finite weights. Defaults to True.
        max_names (int): How many offending parameter names a warning lists. Defaults to 3.
    """

    priority = 'VERY_HIGH'

    def __init__(self,
                 max_consecutive: int = 5,
                 check_loss: bool = True,
                 check_grads: bool = True,
                 restore_buffers: bool = True,
                 max_scaler_skips: int = 50,
                 check_checkpoint: bool = True,
                 max_names: int = 3):
        for name, value in (('max_consecutive', max_consecutive), ('max_scaler_skips', max_scaler_skips)):
            check_int(name, value, why='a NonFiniteGuardHook setting')
        if not (check_loss or check_grads):
            raise ValueError('NonFiniteGuardHook: check_loss and check_grads are both False, so nothing would be '
                             'checked; enable at least one')
        self.max_consecutive = max_consecutive
        self.check_loss = bool(check_loss)
        self.check_grads = bool(check_grads)
        self.restore_buffers = bool(restore_buffers)
        self.max_scaler_skips = max_scaler_skips
        self.check_checkpoint = bool(check_checkpoint)
        self.max_names = int(max_names)

        self.consecutive = 0        # consecutive bad steps (skipped by this hook)
        self.scaler_skips = 0       # consecutive steps skipped by an AMP GradScaler
        self.total_skipped = 0
        self._first_bad_iter: Optional[int] = None
        self._loss: Optional[torch.Tensor] = None
        self._names: Dict[int, str] = {}
        self._buffers: List[torch.Tensor] = []
        self._buffer_copies: List[torch.Tensor] = []
        self._wrapped: List = []

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    @staticmethod
    def _wrappers(runner):
        wrapper = runner.optim_wrapper
        if hasattr(wrapper, 'optimizer'):
            return [wrapper]
        return list(wrapper.values())  # OptimWrapperDict

    def _grads(self, wrapper):
        return [p.grad for group in wrapper.optimizer.param_groups for p in group['params'] if p.grad is not None]

    def _bad_grad_names(self, wrapper) -> List[str]:
        names = []
        for group in wrapper.optimizer.param_groups:
            for p in group['params']:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    names.append(self._names.get(id(p), f'<param {tuple(p.shape)}>'))
        return names

    def _check(self, wrapper, is_amp: bool) -> Optional[str]:
        """A description of what is non-finite in this step, or None if the step is fine (same on all ranks)."""
        bad_loss = bool(self.check_loss and self._loss is not None and not bool(torch.isfinite(self._loss).all()))
        if self.check_loss and is_distributed():
            flag = torch.tensor([1.0 if bad_loss else 0.0],
                                device=self._loss.device if self._loss is not None else 'cpu')
            all_reduce(flag, op='sum')
            any_rank_bad_loss = bool(flag.item() > 0)
        else:
            any_rank_bad_loss = bad_loss
        bad_grads = False
        if self.check_grads and not is_amp:
            grads = self._grads(wrapper)
            bad_grads = bool(grads) and bool(nonfinite_tensors(grads).any())
        if not (any_rank_bad_loss or bad_grads):
            return None
        parts = []
        if any_rank_bad_loss:
            value = self._loss.float().mean().item() if bad_loss else None
            parts.append(f'non-finite loss ({value})' if value is not None else 'non-finite loss on another rank')
        if bad_grads:
            names = self._bad_grad_names(wrapper)
            shown = ', '.join(names[:self.max_names]) + (f', ... ({len(names)} in all)'
                                                         if len(names) > self.max_names else '')
            parts.append(f'non-finite gradients in {shown}')
        return ' and '.join(parts)

    @torch.no_grad()
    def _snapshot_buffers(self, runner) -> None:
        if not self.restore_buffers:
            return
        if not self._buffers:
            self._buffers = [b for b in self._model(runner).buffers() if b.is_floating_point()]
            self._buffer_copies = [b.detach().clone() for b in self._buffers]
        elif self._buffers:
            torch._foreach_copy_(self._buffer_copies, self._buffers)

    @torch.no_grad()
    def _restore_buffers(self) -> bool:
        if not (self.restore_buffers and self._buffers):
            return False
        torch._foreach_copy_(self._buffers, self._buffer_copies)
        return True

    def _stop_message(self, runner, what: str, count: int, limit_name: str) -> str:
        last_ckpt = runner.message_hub.get_info('last_ckpt', None)
        return (f'training stopped by pelk_mm.NonFiniteGuardHook: {count} consecutive optimizer steps '
                f'({_fmt_iters(self._first_bad_iter, runner.iter + 1)}) had {what}; none of them was applied, so '
                f'the weights and checkpoints hold no NaN/inf (last checkpoint: {last_ckpt or "none saved yet"}). '
                f'Fix: lower optim_wrapper.optimizer.lr or lengthen the warm-up, enable gradient clipping '
                f'(optim_wrapper.clip_grad=dict(max_norm=5.0)), use bf16 instead of fp16 '
                f'(optim_wrapper.dtype=\'bfloat16\'), or check the data; then continue with --resume. '
                f'To tolerate longer streaks raise NonFiniteGuardHook {limit_name}')

    def _on_bad(self, runner, reason: str) -> None:
        self.consecutive += 1
        self.total_skipped += 1
        if self.consecutive == 1:
            self._first_bad_iter = runner.iter + 1
        restored = self._restore_buffers()
        runner.message_hub.update_info('nonfinite_skipped_steps', self.total_skipped)
        runner.logger.warning(
            f'[NonFiniteGuard] iteration {runner.iter + 1}: {reason}; optimizer step skipped'
            f'{", model buffers restored" if restored else ""} ({self.consecutive}/{self.max_consecutive} '
            f'consecutive, {self.total_skipped} skipped in all)')
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                self._stop_message(runner, reason, self.consecutive, f'max_consecutive={self.max_consecutive}'))

    def _wrap(self, runner, wrapper) -> None:
        if getattr(wrapper, '_pelk_nonfinite_guard', None) is self:
            return
        orig_update, orig_step = wrapper.update_params, wrapper.step
        is_amp = hasattr(wrapper, 'loss_scaler')

        def update_params(loss, *args, **kwargs):
            self._loss = loss.detach() if torch.is_tensor(loss) else None
            return orig_update(loss, *args, **kwargs)

        def step(*args, **kwargs):
            reason = self._check(wrapper, is_amp)
            if reason is not None:
                self._on_bad(runner, reason)
                return None
            scale_before = wrapper.loss_scaler.get_scale() if is_amp else None
            out = orig_step(*args, **kwargs)
            if is_amp and wrapper.loss_scaler.get_scale() < scale_before:
                # the GradScaler found inf/NaN gradients, skipped optimizer.step and lowered the scale
                self.scaler_skips += 1
                self._restore_buffers()
                if self.scaler_skips == 1:
                    self._first_bad_iter = runner.iter + 1
                if self.scaler_skips >= self.max_scaler_skips:
                    raise NonFiniteTrainingError(self._stop_message(
                        runner, f'inf/NaN gradients skipped by the AMP GradScaler (loss scale now '
                                f'{wrapper.loss_scaler.get_scale():g})', self.scaler_skips,
                        f'max_scaler_skips={self.max_scaler_skips}'))
            else:
                self.scaler_skips = 0
            self.consecutive = 0
            return out

        # NOTE: mmengine's param schedulers wrap ``wrapper.step`` with a call counter (``_with_counter``) and warn
        # that the step "has been overridden" when that mark is gone; this step calls the counted one, so it carries
        # the mark on.
        functools.update_wrapper(step, orig_step)
        wrapper.update_params = update_params
        wrapper.step = step
        wrapper._pelk_nonfinite_guard = self
        self._wrapped.append(wrapper)

    # ------------------------------------------------------------------ hook API
    def before_train(self, runner) -> None:
        self._names = {id(p): n for n, p in self._model(runner).named_parameters()}
        for wrapper in self._wrappers(runner):
            self._wrap(runner, wrapper)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._snapshot_buffers(runner)

    def after_train(self, runner) -> None:
        for wrapper in self._wrapped:
            for name in ('update_params', 'step', '_pelk_nonfinite_guard'):
                wrapper.__dict__.pop(name, None)
        self._wrapped = []

    @staticmethod
    def _ema_states(runner) -> List[dict]:
        # NOTE: the EMA weights are checked on the EMA model itself: EMAHook swaps them into the checkpoint after
        # this hook (VERY_HIGH) has run, and into the model for validation after it too
        return [hook.ema_model.state_dict() for hook in runner.hooks
                if isinstance(hook, EMAHook) and getattr(hook, 'ema_model', None) is not None]

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.check_checkpoint:
            return
        for what, state in [('weight', checkpoint.get('state_dict', {}))] + \
                [('EMA weight', s) for s in self._ema_states(runner)]:
            bad = nonfinite_weights(state)
            if bad:
                raise NonFiniteTrainingError(
                    f'pelk_mm.NonFiniteGuardHook refused to save a checkpoint at iteration {runner.iter + 1}: '
                    f'{len(bad)} {what} tensors hold NaN/inf (e.g. {", ".join(bad[:self.max_names])}); something '
                    f'updated the weights outside the optimizer wrapper (or the run was resumed from such a '
                    f'checkpoint). The previous checkpoints are intact; fix the cause and continue with --resume')

    def before_val_epoch(self, runner) -> None:
        if not self.check_checkpoint:
            return
        for state in self._ema_states(runner):
            bad = nonfinite_weights(state)
            if bad:
                raise NonFiniteTrainingError(
                    f'pelk_mm.NonFiniteGuardHook stopped before validating at iteration {runner.iter}: {len(bad)} '
                    f'EMA weight tensors hold NaN/inf (e.g. {", ".join(bad[:self.max_names])}), so the scores '
                    f'would be meaningless. Resume from an earlier checkpoint')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ('state_dict', 'ema_state_dict'):
            bad = nonfinite_weights(checkpoint.get(key, None) or {})
            if bad:
                raise NonFiniteTrainingError(
                    f'pelk_mm.NonFiniteGuardHook: the checkpoint\'s {key} holds NaN/inf in {len(bad)} tensors '
                    f'(e.g. {", ".join(bad[:self.max_names])}); training from it would only spread them. Resume '
                    f'from an earlier checkpoint (--resume PATH)')
