"""BNStatsSyncHook: after a training iteration every rank holds the same BatchNorm running statistics (the mean over
ranks), so validation on all ranks and the rank-0 checkpoint agree. Two real gloo processes (torchrun)."""
import subprocess
import sys
import textwrap
import types

import torch

from pelk_mm.engine.hooks import BNStatsSyncHook
from pelk_mm.engine.hooks.bn_stats_sync_hook import running_stats, unsynced_batchnorms

MODEL = ('torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.SyncBatchNorm(4), '
         'torch.nn.BatchNorm1d(4, track_running_stats=False))')


def _model():
    torch.manual_seed(0)
    return eval(MODEL)  # noqa: S307 - a fixed expression shared with the worker script


def _runner(model):
    return types.SimpleNamespace(model=model, logger=types.SimpleNamespace(info=lambda msg: None))


WORKER = textwrap.dedent('''
    import os, sys, types
    import torch, torch.distributed as dist
    from pelk_mm.engine.hooks import BNStatsSyncHook
    from pelk_mm.engine.hooks.bn_stats_sync_hook import running_stats, unsynced_batchnorms
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = {model}
    # a norm_eval-style frozen BN, part of the model when the hook collects the BatchNorms: it is in the hook's
    # list, and only its eval mode must keep its (rank-specific) statistics out of the all-reduce
    frozen = torch.nn.BatchNorm2d(4)
    frozen.running_mean.fill_(rank + 0.1)
    model.append(frozen)
    runner = types.SimpleNamespace(model=model, logger=types.SimpleNamespace(info=lambda msg: None))
    hook = BNStatsSyncHook()
    hook.before_train(runner)
    assert any(bn is frozen for bn in hook._bns)
    model.train()
    frozen.eval()
    torch.manual_seed(100 + rank)  # different data per rank -> different local statistics
    model[1](model[0](torch.randn(2, 3, 8, 8) * (rank + 1)))
    local = [t.clone() for t in running_stats(unsynced_batchnorms(model))][:2]
    hook.after_train_iter(runner, 0)
    stats = running_stats(unsynced_batchnorms(model))
    torch.save(dict(local=local, synced=[t.clone() for t in stats[:2]], tracked=len(stats),
                    frozen=frozen.running_mean.clone()), os.path.join(sys.argv[1], f'rank{{rank}}.pt'))
    dist.destroy_process_group()
''')


def test_running_stats_selects_unsynchronised_tracking_batchnorms():
    stats = running_stats(unsynced_batchnorms(_model()))
    assert len(stats) == 2 and stats[0].shape == (4, )  # BatchNorm2d only: not SyncBN, not the non-tracking BN


def test_noop_without_process_group():
    model = _model()
    runner = _runner(model)
    hook = BNStatsSyncHook()
    hook.before_train(runner)
    stats = running_stats(unsynced_batchnorms(model))
    before = [t.clone() for t in stats]
    hook.after_train_iter(runner, 0)
    assert hook._bns == [] and all(torch.equal(a, b) for a, b in zip(before, stats))


def test_two_ranks_end_with_the_mean_statistics(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER.format(model=MODEL))
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in range(2))
    assert r0['tracked'] == r1['tracked'] == 4  # BatchNorm2d + the frozen one; not SyncBN, not the non-tracking BN
    assert torch.all(r0['frozen'] == 0.1) and torch.all(r1['frozen'] == 1.1)  # eval-mode BN left untouched
    for a, b in zip(r0['local'], r1['local']):
        assert not torch.allclose(a, b)  # the ranks saw different data
    for a0, a1, s0, s1 in zip(r0['local'], r1['local'], r0['synced'], r1['synced']):
        assert torch.equal(s0, s1)  # identical on both ranks ...
        torch.testing.assert_close(s0, (a0 + a1) / 2)  # ... and the mean of the ranks' statistics
