"""Exact resume: the random-number-generator state that mmengine does not checkpoint, as an mmengine hook.

mmengine's ``--resume`` restores the model, optimizer, parameter schedulers, message hub (iteration counter, EMA
via ``EMAHook``, sparsity masks via ``DynamicSparsityHook``) and the sampler position (epoch-based loops restart the
epoch after the checkpoint, whose sampler order is ``seed + epoch``; iteration-based loops replay ``iter`` batches
of the dataloader). What it does not restore is the state of the global random generators that the training step
draws from after the checkpoint: drop path, Mixup/CutMix, random masks, python/numpy randomness in the main
process. The resumed run therefore diverges from an uninterrupted one. This hook closes that gap::

    custom_hooks = [..., dict(type='pelk_mm.ResumeStateHook')]

What it does (all ranks; ``priority='VERY_HIGH'`` so its restore runs before other hooks draw random numbers):

* **Saves** the python ``random``, numpy, torch CPU (and CUDA) generator states of *every rank* into the checkpoint
  under ``checkpoint['resume_state']`` (gathered with ``all_gather_object`` when ``CheckpointHook`` saves; mmengine
  calls ``before_save_checkpoint`` on rank 0 only).
* **Restores** them on ``--resume`` at the point where the uninterrupted run continues: ``before_train_epoch`` of the
  first epoch for epoch-based loops, ``before_train_iter`` of the first iteration (after mmengine replayed the
  dataloader) for iteration-based loops. ``load_from`` without resume (fine-tuning) restores nothing.
* **Isolates validation**: the generator states are snapshotted at ``before_val`` and put back before training
  continues, so validating (or not) never shifts the training random stream; a run killed between a checkpoint
  and the next validation resumes bit-identically.
* Gives the train dataloader its own ``torch.Generator`` (seeded from ``randomness.seed``) when it has none, so
  creating a dataloader iterator (which draws the workers' base seed) does not consume the global torch generator.
  Worker processes are re-seeded by mmengine's ``worker_init_fn`` from the seed, so their augmentations do not depend
  on this generator.
* Re-runs, after a resume, the validation due at the checkpointed epoch/iteration (mmengine saves the checkpoint
  just before it, so a run stopped in between never had it), so ``save_best`` ends with the same best file and
  score as the uninterrupted run.
* Makes ``CheckpointHook``'s rotation safe: with ``max_keep_ckpts=N`` mmengine deletes the oldest checkpoint
  *before* writing the new one, so a kill during the save with ``N=1`` leaves nothing to resume from. The hook's
  checkpoint hooks delete the oldest only after the new checkpoint and ``last_checkpoint`` are written.

Exactness conditions (``tests/reliability`` checks them; the hook logs a warning when one is violated):

* ``randomness=dict(seed=..., deterministic=True)`` and the same number of processes on resume;
* epoch-based loops: checkpoints at epoch boundaries (``CheckpointHook(by_epoch=True)``, the default) and
  ``train_dataloader.persistent_workers=False`` (persistent workers keep their random state in the worker processes,
  which no checkpoint can capture; new workers start from the seed);
* iteration-based loops: ``train_dataloader.num_workers >= 1`` (with 0 workers the data pipeline draws from the
  main-process generators, and mmengine's dataloader replay on resume happens before the first hook can restore
  them).

The state is small (about 10 KB per rank).
"""
from __future__ import annotations

import os.path as osp
import random
from collections import deque
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_distributed, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner.loops import EpochBasedTrainLoop

from pelk_mm.checkpoint import atomic_write
from pelk_mm.errors import DiskFullError
from pelk_mm.registry import HOOKS

__all__ = ['ResumeStateHook', 'capture_rng_state', 'restore_rng_state', 'STATE_KEY']

#: key of the hook's entry in a checkpoint dict
STATE_KEY = 'resume_state'
_VERSION = 1


def _numpy_state() -> dict:
    # NOTE: as a tensor and plain values, not numpy's tuple with an ndarray, so that the checkpoint loads with
    # torch.load(weights_only=True) without allowing any numpy global
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                has_gauss=int(has_gauss), cached_gaussian=float(cached_gaussian))


def _set_numpy_state(state) -> None:
    if isinstance(state, dict):
        keys = state['keys'].cpu().numpy().astype(np.uint32)
        state = (state['kind'], keys, state['pos'], state['has_gauss'], state['cached_gaussian'])
    np.random.set_state(state)  # a tuple: checkpoints written by earlier versions of the hook


def capture_rng_state(generator: Optional[torch.Generator] = None) -> dict:
    """The python, numpy, torch CPU (and initialised CUDA) generator states of this process, as tensors and plain
    Python values."""
    state = dict(python=random.getstate(), numpy=_numpy_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state['loader_generator'] = generator.get_state()
    return state


def restore_rng_state(state: dict, generator: Optional[torch.Generator] = None) -> None:
    """Inverse of :func:`capture_rng_state` (tensors may have been mapped to another device by the loader)."""
    random.setstate(state['python'])
    _set_numpy_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state['cuda']]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if generator is not None and 'loader_generator' in state:
        generator.set_state(state['loader_generator'].cpu())

@HOOKS.register_module()
class ResumeStateHook(Hook):
    """Checkpoint and restore the random generator states of every rank so that ``--resume`` is bit-exact.

    Args:
        isolate_val (bool): Snapshot the generator states at ``before_val`` and put them back before training
            continues, so validation does not consume the training random stream. Needed for exact resume when a
            validation runs between a checkpoint and the next training iteration. Defaults to True.
        loader_generator (bool): Give the train dataloader a dedicated ``torch.Generator`` (if it has none) so
            that creating its iterator does not draw from the global torch generator. Defaults to True.
        safe_rotation (bool): Delete old checkpoints (``CheckpointHook.max_keep_ckpts``) only after the new one and
            ``last_checkpoint`` are written, and rewrite ``last_checkpoint`` atomically. Defaults to True.
        revalidate (bool): After a resume, first run the validation that was due at the checkpointed
            epoch/iteration (mmengine saves the checkpoint before it), so the best-checkpoint bookkeeping equals an
            uninterrupted run's. Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, isolate_val: bool = True, loader_generator: bool = True, safe_rotation: bool = True,
                 revalidate: bool = True):
        self.isolate_val = bool(isolate_val)
        self.loader_generator = bool(loader_generator)
        self.safe_rotation = bool(safe_rotation)
        self.revalidate = bool(revalidate)
        self._revalidate_pending = False
        self._pending: Optional[dict] = None       # states to restore at the next restore point
        self._val_snapshot: Optional[dict] = None  # states at before_val (training stream)
        self._gathered: Optional[List[dict]] = None
        self._generator: Optional[torch.Generator] = None
        self._epoch_based = True
        self._resumed_from: Optional[dict] = None

    # ------------------------------------------------------------------ helpers
    def _capture(self) -> dict:
        return capture_rng_state(self._generator)

    def _restore(self, runner, state: dict, what: str) -> None:
        restore_rng_state(state, self._generator)
        if what == 'checkpoint':
            runner.logger.info('[resume] random generator states restored from the checkpoint (python, numpy, '
                               'torch' + (', cuda' if 'cuda' in state else '') + f') on rank {get_rank()}')

    def _install_generator(self, runner) -> None:
        loader = runner.train_dataloader
        if not self.loader_generator or not hasattr(loader, 'generator'):
            return
        if loader.generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(runner.seed or 0) + get_rank())
            loader.generator = generator
        self._generator = loader.generator

    def _warn_inexact(self, runner) -> None:
        loader = runner.train_dataloader
        workers = getattr(loader, 'num_workers', 0)
        if self._epoch_based and workers > 0 and getattr(loader, 'persistent_workers', False):
            runner.logger.warning(
                '[resume] train_dataloader.persistent_workers=True: the workers\' random state lives in the worker '
                'processes and cannot be checkpointed, so a resumed run augments differently from an uninterrupted '
                'one. Set train_dataloader.persistent_workers=False for bit-exact resume')
        if not self._epoch_based and workers == 0:
            runner.logger.warning(
                '[resume] train_dataloader.num_workers=0 in an iteration-based loop: the data pipeline draws from '
                'the main-process generators while mmengine replays the dataloader on resume, so the first batch '
                'after a resume is augmented differently. Use num_workers>=1 for bit-exact resume')
        if not runner._randomness_cfg.get('deterministic', False):
            runner.logger.info('[resume] randomness.deterministic is False: resumed runs can differ from '
                               'uninterrupted ones by non-deterministic kernels (set randomness.deterministic=True '
                               'for bit-exact resume)')

    # ------------------------------------------------------------------ checkpoint rotation
    def _wrap_checkpoint_hook(self, hook: CheckpointHook) -> None:
        if getattr(hook, '_pelk_resume_state_wrapped', False):
            return
        original = hook._save_checkpoint_with_step

        def save_checkpoint_with_step(runner, step, meta):
            # all ranks reach here (runner.save_checkpoint itself runs on rank 0 only)
            state = self._val_snapshot if self._val_snapshot is not None else self._capture()
            self._gathered = all_gather_object(state) if is_distributed() else [state]
            keep = hook.max_keep_ckpts
            rotate = self.safe_rotation and keep > 0 and hasattr(hook, 'keep_ckpt_ids')
            try:
                if rotate:
                    # mmengine deletes the oldest before saving: keep one more meanwhile (its deque has
                    # maxlen=max_keep_ckpts, which would forget the oldest id without deleting the file)
                    hook.max_keep_ckpts = keep + 1
                    hook.keep_ckpt_ids = deque(hook.keep_ckpt_ids)
                try:
                    original(runner, step, meta)
                except DiskFullError:
                    if not (rotate and is_main_process() and len(hook.keep_ckpt_ids) > keep):
                        raise
                    # NOTE: keeping the oldest checkpoint until the new one is written needs room for one more;
                    # when the disk has none, fall back to mmengine's order (delete, then write) rather than fail
                    freed = []
                    while len(hook.keep_ckpt_ids) > keep:
                        old = hook.keep_ckpt_ids.popleft()
                        path = hook.file_backend.join_path(hook.out_dir, hook.filename_tmpl.format(old))
                        if hook.file_backend.isfile(path):
                            hook.file_backend.remove(path)
                            freed.append(osp.basename(path))
                    runner.logger.warning(
                        f'[checkpoint] no room on the disk for the new checkpoint next to the old one: deleted '
                        f'{", ".join(freed) or "nothing"} first and wrote it again (a kill during this write would '
                        f'leave no complete checkpoint of the last {keep} save(s); free space to keep the safe order)')
                    original(runner, step, meta)
            finally:
                hook.max_keep_ckpts = keep
                self._gathered = None
            if not self.safe_rotation:
                return
            if is_main_process() and hook.last_ckpt is not None:
                # mmengine wrote it with open('w'): make the final content durable and atomically replaced
                atomic_write(str(hook.last_ckpt), osp.join(runner.work_dir, 'last_checkpoint'))
            if rotate:
                while len(hook.keep_ckpt_ids) > keep:
                    old = hook.keep_ckpt_ids.popleft()
                    if is_main_process():
                        path = hook.file_backend.join_path(hook.out_dir, hook.filename_tmpl.format(old))
                        if hook.file_backend.isfile(path):
                            hook.file_backend.remove(path)
                        elif hook.file_backend.isdir(path):
                            hook.file_backend.rmtree(path)
                hook.keep_ckpt_ids = deque(hook.keep_ckpt_ids, keep)
                runner.message_hub.update_info('keep_ckpt_ids', list(hook.keep_ckpt_ids))

        hook._save_checkpoint_with_step = save_checkpoint_with_step
        hook._pelk_resume_state_wrapped = True

    # ------------------------------------------------------------------ hook API
    def before_train(self, runner) -> None:
        self._epoch_based = isinstance(runner.train_loop, EpochBasedTrainLoop)
        self._install_generator(runner)
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook):
                self._wrap_checkpoint_hook(hook)
        self._warn_inexact(runner)
        self._revalidate_pending = self._resumed_from is not None and self._validation_due_at_checkpoint(runner)
        if self._resumed_from is not None and self._epoch_based:
            loader_len = len(runner.train_dataloader)
            if loader_len and runner.iter % loader_len != 0:
                runner.logger.warning(
                    f'[resume] the checkpoint was saved at iteration {runner.iter}, inside epoch {runner.epoch + 1} '
                    f'({loader_len} iterations per epoch): mmengine\'s epoch-based loop restarts that epoch from its '
                    f'first batch, so the resumed run is not identical to an uninterrupted one. Save checkpoints at '
                    f'epoch boundaries (CheckpointHook by_epoch=True) or use an iteration-based loop')

    def _validation_due_at_checkpoint(self, runner) -> bool:
        loop, val_loop = runner.train_loop, runner.val_loop
        if val_loop is None or not self.revalidate:
            return False
        step = runner.epoch if self._epoch_based else runner.iter
        end = loop.max_epochs if self._epoch_based else loop.max_iters
        return step > 0 and step >= loop.val_begin and (step % loop.val_interval == 0 or step == end)

    def _revalidate(self, runner) -> None:
        # NOTE: mmengine saves a checkpoint before the validation of the same epoch/iteration, so a run stopped in
        # between never had that validation, and the resumed run would skip it: the best-checkpoint bookkeeping
        # (CheckpointHook save_best) would then differ from the uninterrupted run. It is run once here, with the
        # checkpoint's generator states, inside the usual validation isolation, so training continues unchanged.
        self._revalidate_pending = False
        state, self._pending = self._pending, None
        if state is not None:
            self._restore(runner, state, state.pop('_source', 'val'))
        runner.logger.info(f'[resume] validating the checkpointed {"epoch" if self._epoch_based else "iteration"} '
                           f'{runner.epoch if self._epoch_based else runner.iter} first (its validation ran after '
                           f'the checkpoint was saved), so save_best sees the same scores as an uninterrupted run')
        runner.val_loop.run()

    def before_train_epoch(self, runner) -> None:
        if self._revalidate_pending:
            self._revalidate(runner)
        if self._epoch_based and self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(runner, state, state.pop('_source', 'val'))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(runner, state, state.pop('_source', 'val'))

    def before_val(self, runner) -> None:
        if self.isolate_val:
            self._val_snapshot = self._capture()

    def after_val(self, runner) -> None:
        if self._val_snapshot is not None:
            self._pending, self._val_snapshot = self._val_snapshot, None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        states = self._gathered
        if states is None:  # saved outside CheckpointHook (e.g. a direct runner.save_checkpoint call): this rank's
            states = [self._val_snapshot if self._val_snapshot is not None else self._capture()]
        checkpoint[STATE_KEY] = dict(version=_VERSION, world_size=get_world_size(), rng=states)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return  # load_from for fine-tuning / testing: keep the fresh generator states
        state = checkpoint.get(STATE_KEY)
        if state is None:
            runner.logger.warning('[resume] the checkpoint has no `resume_state` (it was saved without '
                                  'pelk_mm.ResumeStateHook): random generator states are not restored, so the '
                                  'resumed run is not bit-identical to an uninterrupted one')
            return
        if state.get('version', _VERSION) > _VERSION:
            runner.logger.warning(f'[resume] the checkpoint\'s `resume_state` has format version {state["version"]}, '
                                  f'newer than this pelk_mm reads ({_VERSION}): random generator states are not '
                                  f'restored; update pelk_mm for a bit-identical resume')
            return
        world_size, rank = get_world_size(), get_rank()
        if state.get('world_size') != world_size or rank >= len(state['rng']):
            runner.logger.warning(
                f'[resume] the checkpoint holds random generator states of {state.get("world_size")} process(es) '
                f'but this run has {world_size}: states not restored (training continues, not bit-identical)')
            return
        rank_state = dict(state['rng'][rank])
        rank_state['_source'] = 'checkpoint'
        self._pending = rank_state
        self._resumed_from = state
