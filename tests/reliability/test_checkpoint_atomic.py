"""Checkpoints are atomic, and the rotation never leaves nothing to resume from.

In process (real mmengine Runner + CheckpointHook, toy model): a write interrupted half way (``os.fsync`` raising
a ``BaseException`` after half of the bytes, as a kill would) leaves the previous checkpoint and ``last_checkpoint``
intact with ``pelk_mm.ResumeStateHook``; the control shows that stock mmengine with ``max_keep_ckpts=1`` has deleted
the previous checkpoint by then. End to end: a real SIGKILL inside the second checkpoint write of the
classification demo, then ``--resume``."""
import os

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import pelk_mm.engine  # noqa: F401  (registers the hooks)
from pelk_mm.checkpoint import load_checkpoint_file  # what the project writes loads without opt-in
from pelk_mm.engine.hooks import ResumeStateHook


class _Killed(BaseException):
    pass


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        return dict(loss=((out - labels) ** 2).mean()) if mode == 'loss' else out


class Data(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g), labels=torch.randn(2, generator=g))


class InterruptSave(Hook):
    """Interrupt the n-th checkpoint write after half of its bytes reached the temporary file."""
    priority = 'LOWEST'

    def __init__(self, n, monkeypatch):
        self.n, self.count, self.mp = n, 0, monkeypatch

    def before_save_checkpoint(self, runner, checkpoint):
        self.count += 1
        if self.count == self.n:
            def fsync(fd):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                raise _Killed()
            self.mp.setattr(os, 'fsync', fsync)


def _run(tmp_path, hooks, max_keep=1, max_iters=6):
    runner = Runner(
        model=Toy(), work_dir=str(tmp_path), experiment_name=f'toy_{len(hooks)}',
        train_dataloader=dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=True), batch_size=2,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)), train_cfg=dict(by_epoch=False, max_iters=max_iters),
        custom_hooks=hooks, log_level='WARNING', randomness=dict(seed=0),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2,
                                           max_keep_ckpts=max_keep)))
    return runner


def _readable(path):
    return load_checkpoint_file(str(path), map_location='cpu')['meta']['iter']


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    runner = _run(tmp_path, [ResumeStateHook(), InterruptSave(2, monkeypatch)])
    with pytest.raises(_Killed):
        runner.train()
    monkeypatch.undo()
    assert not (tmp_path / 'iter_4.pth').exists()                 # the target was never written
    assert _readable(tmp_path / 'iter_2.pth') == 2                # the previous one is still there
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'iter_2.pth')
    assert not list(tmp_path.glob('.iter_4.pth.*.tmp'))           # the interrupted temp file was removed


def test_stock_rotation_deletes_before_writing(tmp_path, monkeypatch):
    """Control (mmengine without the hook): with max_keep_ckpts=1 nothing is left to resume from."""
    runner = _run(tmp_path, [InterruptSave(2, monkeypatch)])
    with pytest.raises(_Killed):
        runner.train()
    monkeypatch.undo()
    assert not list(tmp_path.glob('iter_*.pth'))
    assert (tmp_path / 'last_checkpoint').read_text().strip() == str(tmp_path / 'iter_2.pth')  # dangling


@pytest.mark.parametrize('max_keep,expected', [(1, ['iter_6.pth']), (2, ['iter_4.pth', 'iter_6.pth']),
                                               (-1, ['iter_2.pth', 'iter_4.pth', 'iter_6.pth'])])
def test_rotation_still_keeps_max_keep_ckpts(tmp_path, max_keep, expected):
    _run(tmp_path, [ResumeStateHook()], max_keep=max_keep).train()
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == expected
    ckpt = load_checkpoint_file(str(tmp_path / 'iter_6.pth'), map_location='cpu')
    hub = ckpt['message_hub']['runtime_info']
    # mmengine records the ids of the kept checkpoints only when it rotates them (max_keep_ckpts > 0)
    assert hub['keep_ckpt_ids'][-1] == 6 if max_keep > 0 else 'keep_ckpt_ids' not in hub
    assert ckpt['resume_state']['world_size'] == 1 and len(ckpt['resume_state']['rng']) == 1


@pytest.mark.slow
def test_sigkill_inside_checkpoint_write_then_resume(demo_cwd, tmp_path, rel):
    config = rel.write_config(tmp_path / 'cls_atomic.py', 'configs/demo/pelk_demo_in1k.py',
                              "[dict(type='pelk_mm.ResumeStateHook'), dict(type='FaultInjectionHook')]")
    work = tmp_path / 'work'
    opts = rel.CLS_SHRINK + ['default_hooks.checkpoint.save_best=None', 'train_cfg.max_epochs=2']
    r = rel.train(config, work, demo_cwd, opts, PELK_FAULT_KILL_IN_SAVE=2)
    assert r.returncode == -9 and 'SIGKILL while writing checkpoint #2' in r.stdout, (r.stdout + r.stderr)[-3000:]
    leftovers = list(work.glob('.epoch_2.pth.*.tmp'))
    assert leftovers, 'the kill did not happen inside the write'
    assert not (work / 'epoch_2.pth').exists()
    assert rel.load(work / 'epoch_1.pth')['meta']['epoch'] == 1
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'epoch_1.pth')
    r2 = rel.train(config, work, demo_cwd, opts, extra_args=['--resume'])
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-3000:]
    assert 'resumed epoch: 1' in rel.log_text(work)
    assert rel.load(work / 'epoch_2.pth')['meta']['epoch'] == 2
