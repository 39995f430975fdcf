"""Test helper (tests/test_tools/test_dist_train.py): a hook that records, per rank, what the run looked like.

Registered in mmengine's root HOOKS, so any codebase scope finds ``type='RankProbeHook'``. After training each rank
writes ``<work_dir>/rank_probe_<rank>.json`` with its rank, world size, process-group backend, whether the model is
wrapped in DDP, the number of iterations it ran, and a checksum of the model parameters (identical across ranks only
if DDP synchronised the gradients, since every rank sees a different data shard).
"""
import json
import os.path as osp

import torch
from mmengine.dist import get_dist_info, is_distributed
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankProbeHook(Hook):
    priority = 'VERY_LOW'

    def __init__(self):
        self.iters = 0
        self.samples = 0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iters += 1
        if data_batch is not None:
            self.samples += len(data_batch['inputs'])

    def after_train(self, runner):
        rank, world_size = get_dist_info()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        with torch.no_grad():
            checksum = float(sum(p.double().sum() for p in model.parameters()))
        info = dict(rank=rank, world_size=world_size, distributed=is_distributed(),
                    backend=torch.distributed.get_backend() if is_distributed() else None,
                    wrapper=type(runner.model).__name__, iters=self.iters, samples=self.samples,
                    param_checksum=checksum)
        with open(osp.join(runner.work_dir, f'rank_probe_{rank}.json'), 'w') as f:
            json.dump(info, f)
