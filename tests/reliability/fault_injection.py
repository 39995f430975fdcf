"""Test-only fault injection for tests/reliability (never used by the package or its configs).

A hook, registered in mmengine's root ``HOOKS`` as ``FaultInjectionHook`` (so every codebase scope finds it), that
does nothing unless one of these environment variables is set in the training process:

``PELK_FAULT_KILL_AT_ITER=k``
    SIGKILL this process at the end of training iteration ``k`` (1-based, after all other hooks of that
    iteration, i.e. after a checkpoint saved at ``k``). ``PELK_FAULT_RANK=r`` restricts it to rank ``r``
    (default: every rank). With ``PELK_FAULT_ONCE_FILE=<path>`` the kill happens only if that file does not exist
    yet (it is created just before), so a run restarted by ``torchrun --max-restarts`` is not killed again.
``PELK_FAULT_SLOW_RESTART=r:s``
    When this module is imported (config load, before the process group is set up) in rank ``r`` of a worker
    that torchrun's elastic agent has restarted (``TORCHELASTIC_RESTART_COUNT`` >= 1), sleep ``s`` seconds: a
    restarted worker that is slow to come up, which exposes rendezvous keys left over from the previous attempt.
``PELK_FAULT_KILL_IN_SAVE=n``
    On rank 0, during the ``n``-th checkpoint write: once the bytes reach the file (``os.fsync``), cut the file to
    half its size and SIGKILL the process, i.e. a kill in the middle of writing a checkpoint.
``PELK_FAULT_NAN_ITERS=a-b`` (or ``a,b,c``)
    Multiply the loss of those iterations (1-based) by NaN (through the model's ``parse_losses``), as a diverging
    run or a corrupt batch would.

Use it with ``custom_imports=dict(imports=['pelk_mm', 'fault_injection'])`` and ``tests/reliability`` on
``PYTHONPATH`` (the tests' configs do this).
"""
import os
import signal
import time

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def _slow_restart():
    spec = os.environ.get('PELK_FAULT_SLOW_RESTART')
    if not spec or int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')) < 1:
        return
    rank, seconds = spec.split(':')
    if os.environ.get('RANK') == rank:
        print(f'[fault_injection] restarted rank {rank} sleeps {seconds} s before joining', flush=True)
        time.sleep(float(seconds))


_slow_restart()


def _iters(spec):
    out = set()
    for part in filter(None, (spec or '').split(',')):
        if '-' in part:
            a, b = part.split('-')
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class FaultInjectionHook(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.kill_at = int(os.environ.get('PELK_FAULT_KILL_AT_ITER', '0') or 0)
        rank = os.environ.get('PELK_FAULT_RANK', '')
        self.rank = int(rank) if rank else None
        self.kill_in_save = int(os.environ.get('PELK_FAULT_KILL_IN_SAVE', '0') or 0)
        self.nan_iters = _iters(os.environ.get('PELK_FAULT_NAN_ITERS'))
        self.saves = 0

    def _mine(self):
        return self.rank is None or self.rank == get_rank()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.__dict__.pop('parse_losses', None)
        if self.kill_at and runner.iter + 1 == self.kill_at and self._mine():
            once = os.environ.get('PELK_FAULT_ONCE_FILE')
            if once and os.path.exists(once):
                return
            if once:
                open(once, 'w').close()
            print(f'[fault_injection] SIGKILL at iteration {self.kill_at} (rank {get_rank()}) at t={time.time():.3f}',
                  flush=True)
            _kill_self()

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 not in self.nan_iters:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        original = type(model).parse_losses

        def parse_losses(losses):
            loss, log_vars = original(model, losses)
            return loss * torch.tensor(float('nan')), log_vars

        model.parse_losses = parse_losses

    def before_save_checkpoint(self, runner, checkpoint):
        self.saves += 1
        if self.kill_in_save and self.saves == self.kill_in_save:
            real_fsync = os.fsync

            def fsync(fd):
                size = os.fstat(fd).st_size
                os.ftruncate(fd, size // 2)  # half of the bytes made it to disk ...
                real_fsync(fd)
                print(f'[fault_injection] SIGKILL while writing checkpoint #{self.saves} ({size} bytes)', flush=True)
                _kill_self()                 # ... and the process dies before the write completes

            os.fsync = fsync
