"""Keep BatchNorm running statistics identical on every rank, so that validation, checkpoints and ``tools/test.py``
see the same model.

PeLK's large-kernel branch has BatchNorms. In distributed training they are plain BN when the config says so
(classification) or when pelk_mm reverts SyncBN on CPU (torch's SyncBatchNorm is CUDA-only), and mmengine wraps the
model with ``broadcast_buffers=False``: every rank then updates its running statistics from its own batches only.
Validation runs on all ranks, each with its own statistics, while the checkpoint holds rank 0's, so the metric logged
during training is not the one ``tools/test.py`` reproduces from the checkpoint (0.5 mIoU apart on the 2-process
segmentation demo). mmengine's ``SyncBuffersHook`` averages the buffers only at the end of an epoch or before
validation, which is after an iteration-based loop has saved its checkpoint and after ``EMAHook`` has copied them.

This hook averages the floating-point running statistics of every non-synchronised BatchNorm in train mode (frozen
ones, e.g. ``norm_eval=True``, stay bit-exact) over the ranks after each training iteration
(``priority='VERY_HIGH'``: before ``EMAHook`` copies buffers and ``CheckpointHook`` saves). The average of the
ranks' running means is the running mean of the global batch (equal batch sizes); the variance average leaves out
the spread of the rank means, the usual approximation of ``SyncBuffersHook``. Training itself is unchanged: BN
normalises with batch statistics in train mode. The cost is one all-reduce of a few kB per iteration; without a
process group, or without such BatchNorms, it does nothing::

    custom_hooks = [..., dict(type='pelk_mm.BNStatsSyncHook')]
"""
from __future__ import annotations

from typing import List

import torch
from mmengine.dist import all_reduce_params, get_world_size, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch.nn.modules.batchnorm import _BatchNorm

from pelk_mm.registry import HOOKS


def unsynced_batchnorms(model: torch.nn.Module) -> List[_BatchNorm]:
    """The BatchNorms of ``model`` that track running statistics and that nothing synchronises (not SyncBN)."""
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm) and m.track_running_stats]


def running_stats(bns: List[_BatchNorm], training_only: bool = False) -> List[torch.Tensor]:
    """Running mean/var of the BatchNorms ``bns`` (only those in train mode with ``training_only``: frozen ones,
    e.g. under ``norm_eval``, do not change and are left bit-exact)."""
    return [b for m in bns if m.training or not training_only
            for b in (m.running_mean, m.running_var) if b is not None and b.is_floating_point()]


@HOOKS.register_module()
class BNStatsSyncHook(Hook):
    """Average the running statistics of non-synchronised BatchNorms over the ranks after every training iteration."""

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._bns: List[_BatchNorm] = []

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._bns = unsynced_batchnorms(model) if is_distributed() and get_world_size() > 1 else []
        if self._bns:
            runner.logger.info(f'pelk_mm.BNStatsSyncHook: averaging the running statistics of {len(self._bns)} '
                               f'BatchNorms over {get_world_size()} ranks after every iteration')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        stats = running_stats(self._bns, training_only=True)  # the same modules and modes on every rank
        if stats:
            with torch.no_grad():
                all_reduce_params(stats, op='mean')
