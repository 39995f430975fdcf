"""A run touches only its own work dir, one run at a time, and refuses what would stall or silently change it.

* A run resumed from another work dir (``--resume A/iter_4.pth --work-dir B``) or in a ``cp -r`` copy of one never
  deletes (nor writes) the other work dir's files, although mmengine restores the other run's best-checkpoint path.
* One run per work dir: a second one is refused in one line naming the holder; a killed holder leaves no stale
  lock; the ranks of one distributed run do not refuse each other.
* A work dir that cannot be written is one line up front.
* An epoch-based distributed run in which a process gets fewer (or no) batches is one line up front, not a hang
  until the collective timeout; the configs set a collective timeout.
* ``--resume`` with a changed recipe (lr, schedule, batch size, model) is refused, listing each change, unless
  ``--resume-with-changes``, which makes the config's values apply.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import pelk_mm.engine  # noqa: F401  (registers the hooks; pelk_mm's patches)
from pelk_mm.apis.validate import (check_resume_recipe, check_train_batches, check_work_dir, lock_work_dir,
                                   resolve_resume)
from pelk_mm.checkpoint import load_checkpoint_file
from pelk_mm.engine.hooks import ResumeChangesHook, ResumeStateHook
from pelk_mm.errors import ConfigValidationError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / 'tests/data/configs/tiny_pelk_cls_demo.py'


# --------------------------------------------------------------------------------------------------- toy runs
class _Regressor(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - labels) ** 2).mean())
        return list(((out - labels) ** 2).mean(dim=1))


class _Data(Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.randn(4, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class _NegMSE(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.extend(data_samples)

    def compute_metrics(self, results):
        return dict(score=-float(torch.stack(results).mean()))


def _loader(n=8, batch=2, **extra):
    return dict(dataset=_Data(n), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=batch,
                num_workers=0, collate_fn=dict(type='default_collate'), **extra)


def _runner(work, name, max_iters=4, lr=0.02, resume=False, load_from=None, hooks=(), scheduler=None, **extra):
    """A toy regression whose validation score improves at every validation (every 2 iterations), so each one
    saves a new best checkpoint and removes the previous best."""
    torch.manual_seed(0)
    return Runner(
        model=_Regressor(), work_dir=str(work), experiment_name=name, train_dataloader=_loader(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.5)), param_scheduler=scheduler,
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2), val_dataloader=_loader(),
        val_evaluator=Evaluator(_NegMSE()), val_cfg=dict(), custom_hooks=list(hooks),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2, save_best='score',
                                           rule='greater')),
        resume=resume, load_from=load_from, randomness=dict(seed=0), log_level='WARNING',
        cfg=dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr, momentum=0.5))), **extra)


def _files(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path(folder).iterdir() if p.is_file()}


@pytest.fixture
def run_a(tmp_path):
    """Work dir A after 4 iterations: iter_2.pth, iter_4.pth, best_score_iter_4.pth, last_checkpoint."""
    a = tmp_path / 'A'
    _runner(a, 'A').train()
    assert (a / 'best_score_iter_4.pth').exists() and not (a / 'best_score_iter_2.pth').exists()
    hub = load_checkpoint_file(str(a / 'iter_4.pth'))['message_hub']['runtime_info']
    assert hub['best_ckpt'] == str(a / 'best_score_iter_4.pth')  # what a resume restores
    return a


# --------------------------------------------------------------------------------------------------- other dirs
def test_resume_into_another_work_dir_leaves_the_original_alone(run_a, tmp_path):
    before = _files(run_a)
    b = tmp_path / 'B'
    _runner(b, 'B', max_iters=8, resume=True, load_from=str(run_a / 'iter_4.pth')).train()
    assert _files(run_a) == before  # before: best_score_iter_4.pth of A was deleted by B's first better score
    assert sorted(p.name for p in b.glob('best_*.pth')) == ['best_score_iter_8.pth']


def test_resume_in_a_copied_work_dir_stays_in_the_copy(run_a, tmp_path):
    copy = tmp_path / 'copy'
    shutil.copytree(run_a, copy)
    assert (copy / 'last_checkpoint').read_text().strip() == str(run_a / 'iter_4.pth')  # absolute, into A
    before = _files(run_a)
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(copy)))
    notes = resolve_resume(cfg)
    assert cfg.load_from == str(copy / 'iter_4.pth') and 'outside' in notes[0] and 'copied work dir' in notes[0]
    _runner(copy, 'copy', max_iters=8, resume=True, load_from=cfg.load_from).train()
    assert _files(run_a) == before
    assert sorted(p.name for p in copy.glob('best_*.pth')) == ['best_score_iter_8.pth']  # the copy's own rotated


def test_mmengine_auto_resume_in_a_copy_deletes_nothing_outside(run_a, tmp_path):
    """Without the launcher's resolve_resume (a Runner built directly, which reads last_checkpoint into A): the
    checkpoint hook still removes nothing outside the copy."""
    copy = tmp_path / 'copy'
    shutil.copytree(run_a, copy)
    before = _files(run_a)
    _runner(copy, 'copy_auto', max_iters=8, resume=True).train()
    assert _files(run_a) == before
    assert sorted(p.name for p in copy.glob('best_*.pth')) == ['best_score_iter_8.pth']


# --------------------------------------------------------------------------------------------------- one run
def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    for k in [k for k in env if k.startswith('PELK_FAULT_') or k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK',
                                                                     'MASTER_PORT')]:
        env.pop(k)
    return env


_HOLD = ("import sys\nfrom mmengine.config import Config\nfrom pelk_mm.apis.validate import lock_work_dir\n"
         "lock, _ = lock_work_dir(Config(dict(work_dir=sys.argv[1])))\nprint('locked', flush=True)\nsys.stdin.read()\n")


def test_one_run_per_work_dir(tmp_path, monkeypatch):
    work = tmp_path / 'work'
    holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(work)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(ConfigValidationError) as err:
            lock_work_dir(Config(dict(work_dir=str(work))))
        msg = str(err.value)
        assert '\n' not in msg and f'{work} is in use by another run (pid {holder.pid} on ' in msg, msg
        assert '--work-dir' in msg
        # the other processes of one distributed run do not take the lock (rank 0 holds it for the run)
        monkeypatch.setenv('RANK', '1')
        assert lock_work_dir(Config(dict(work_dir=str(work), launcher='pytorch'))) == (None, [])
        monkeypatch.delenv('RANK')
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run leaves no stale lock
        holder.wait()
    lock, notes = lock_work_dir(Config(dict(work_dir=str(work))))
    try:
        assert lock is not None and notes == []
        assert f'pid {os.getpid()} on ' in (work / '.pelk_mm.lock').read_text()
    finally:
        lock.release()


@pytest.mark.slow
def test_second_train_in_the_same_work_dir_is_refused(tmp_path, rel):
    """Two tools/train.py runs in one work dir at once: the second stops in one line naming the first; the first
    finishes with its checkpoints intact (before: the second trained into the same folder)."""
    (tmp_path / 'slow_hook.py').write_text(
        'import os, time\nfrom mmengine.hooks import Hook\nfrom mmengine.registry import HOOKS\n\n\n'
        '@HOOKS.register_module(force=True)\nclass SlowHook(Hook):\n'
        '    def before_train(self, runner):\n        open(os.environ["STARTED"], "w").close()\n\n'
        '    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):\n'
        '        while not os.path.exists(os.environ["GO_ON"]):\n            time.sleep(0.2)\n')
    config = tmp_path / 'slow.py'
    config.write_text(f"_base_ = '{TINY}'\ncustom_imports = dict(imports=['pelk_mm', 'slow_hook'])\n"
                      "custom_hooks = [dict(type='SlowHook')]\n")
    work, started, go_on = tmp_path / 'work', tmp_path / 'started', tmp_path / 'go_on'
    opts = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=12']
    env = dict(_env(), PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]), STARTED=str(started),
               GO_ON=str(go_on))
    first = subprocess.Popen([rel.PY, REPO / 'tools/train.py', config, '--work-dir', work, '--cfg-options', *opts],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if started.exists() or first.poll() is not None:
                break
            time.sleep(0.5)
        assert started.exists(), first.communicate()[0][-3000:]
        second = subprocess.run([rel.PY, REPO / 'tools/train.py', config, '--work-dir', work, '--cfg-options',
                                 *opts], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        lines = [ln for ln in second.stderr.splitlines() if ln.startswith('error:')]
        assert second.returncode == 2 and len(lines) == 1 and 'Traceback' not in second.stderr, second.stderr[-3000:]
        assert f'{work} is in use by another run (pid {first.pid} on ' in lines[0]
    finally:
        go_on.write_text('')
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]
    assert load_checkpoint_file(str(work / 'epoch_1.pth'))['meta']['epoch'] == 1


# --------------------------------------------------------------------------------------------------- read-only
_CHECK = ("import sys\nfrom mmengine.config import Config\nfrom pelk_mm.apis.validate import check_work_dir\n"
          "from pelk_mm.errors import ConfigValidationError\ntry:\n"
          "    check_work_dir(Config(dict(work_dir=sys.argv[1])))\n    print('ok')\n"
          "except ConfigValidationError as err:\n    print(err)\n")


def _without_root_override():
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that root, like any
    user, cannot write into a folder of mode 0555 (prctl PR_CAPBSET_DROP; a no-op for other users)."""
    if os.geteuid() != 0:
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_CAPBSET_DROP)')


def _check_in_child(work_dir) -> str:
    r = subprocess.run([sys.executable, '-c', _CHECK, str(work_dir)], capture_output=True, text=True, env=_env(),
                       preexec_fn=_without_root_override, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def test_unwritable_work_dir_is_one_line_up_front(tmp_path):
    ro = tmp_path / 'ro'
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        line = _check_in_child(ro)
        assert f'config key `work_dir`: {ro} cannot be written (PermissionError' in line and 'Fix:' in line, line
        line = _check_in_child(ro / 'new' / 'run')
        assert f'{ro} (where {ro}/new/run would be created) cannot be written' in line, line
        assert _check_in_child(tmp_path / 'rw' / 'new') == 'ok'
    finally:
        os.chmod(ro, 0o755)


# --------------------------------------------------------------------------------------------------- no data
def test_an_epoch_without_batches_is_refused(tmp_path):
    runner = Runner(
        model=_Regressor(), work_dir=str(tmp_path), experiment_name='empty_epoch',
        train_dataloader=_loader(n=3, batch=4, drop_last=True),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)), train_cfg=dict(by_epoch=True, max_epochs=1),
        log_level='WARNING')
    with pytest.raises(ConfigValidationError) as err:
        check_train_batches(runner)
    msg = str(err.value)
    assert 'the train dataset _Data has 3 samples' in msg and '[0] batches per epoch' in msg, msg
    assert 'an epoch would train nothing' in msg and 'batch_size <= 3 or drop_last=False' in msg


def test_every_config_sets_a_collective_timeout():
    dumps = sorted((REPO / 'tests/data/config_dumps').rglob('*.json'))
    assert len(dumps) > 10
    for dump in dumps:
        cfg = json.loads(dump.read_text())
        assert cfg['env_cfg']['dist_cfg'].get('timeout') == cfg['dist_timeout'] == 900, dump


@pytest.mark.slow
def test_distributed_run_with_an_empty_rank_stops_up_front(tmp_path, rel):
    """2 processes (gloo) through tools/dist_train.sh: a run whose second process gets no sample (a 1-image
    dataset, round_up=False) stops in one line within seconds (before: rank 0 waited in the gradient all-reduce
    for the collective timeout); the same data with round_up=True (every process gets the sample) trains."""
    opts = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=1', 'val_dataloader.dataset.indices=2',
            'env_cfg.dist_cfg.timeout=90']
    r = rel.dist_train(TINY, 2, tmp_path / 'ok', tmp_path, opts)  # 2 ranks of one run share the work dir
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = rel.dist_train(TINY, 2, tmp_path / 'bad', tmp_path, opts + ['train_dataloader.sampler.round_up=False'])
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'Traceback' not in r.stderr, out[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error: config key `train_dataloader`')]
    assert lines and 'the train dataset ImageNet' in lines[0] and 'has 1 samples' in lines[0], out[-3000:]
    assert '[1, 0] batches per epoch' in lines[0] and 'round_up=True' in lines[0], lines[0]
    assert r.elapsed < 85, f'took {r.elapsed:.0f} s: waited for the collective timeout'


# --------------------------------------------------------------------------------------------------- recipe
def _saved(tmp_path, cfg, world_size=1):
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1, 'iter': 2, 'cfg': cfg.pretty_text}, 'state_dict': {},
                'resume_state': {'world_size': world_size, 'rng': [{}] * world_size}}, path)
    return path


def test_resume_with_a_changed_recipe_names_each_change(tmp_path):
    cfg = Config.fromfile(str(TINY))
    path = _saved(tmp_path, cfg)
    cfg.resume, cfg.load_from, cfg.work_dir = True, str(path), str(tmp_path)
    assert check_resume_recipe(cfg, world_size=1) == []  # the same recipe
    cfg.train_cfg.max_epochs = 8  # a longer run is no recipe change
    cfg.model.backbone.conv_impl = 'auto'  # nor is the kernel implementation
    cfg.model.backbone.with_cp = True  # nor activation checkpointing
    assert check_resume_recipe(cfg, world_size=1) == []
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.param_scheduler[0].end = 8
    cfg.train_dataloader.batch_size = 8
    cfg.model.backbone.kpe_mode = 'bias'
    with pytest.raises(ConfigValidationError) as err:
        check_resume_recipe(cfg, world_size=1)
    msg = str(err.value)
    assert '\n' not in msg and f'the recipe {path} was trained with' in msg
    for change in ("optim_wrapper.optimizer.lr 0.002 -> 0.001", "param_scheduler.0.end 4 -> 8",
                   "train_dataloader.batch_size 16 -> 8", "model.backbone.kpe_mode (not set) -> 'bias'"):
        assert change in msg, (change, msg)
    assert "keep the checkpoint's optimizer settings and lr schedule" in msg and '--resume-with-changes' in msg
    assert f'load_from={path}' in msg
    notes = check_resume_recipe(cfg, allow_changes=True, world_size=1)
    assert len(notes) == 1 and "the config's values apply: " in notes[0] and 'lr 0.002 -> 0.001' in notes[0]


def test_resume_other_world_size_keeps_the_global_batch(tmp_path):
    """--resume-other-world-size rescales the per-process batch (2 x 16 -> 1 x 32): no change of recipe; another
    global batch is one."""
    cfg = Config.fromfile(str(TINY))
    path = _saved(tmp_path, cfg, world_size=2)
    cfg.resume, cfg.load_from, cfg.work_dir = True, str(path), str(tmp_path)
    cfg.train_dataloader.batch_size = 32
    assert check_resume_recipe(cfg, world_size=1) == []
    cfg.train_dataloader.batch_size = 16
    with pytest.raises(ConfigValidationError, match=r'batch_size 16 x 2 processes -> 16 x 1 processes'):
        check_resume_recipe(cfg, world_size=1)


_SCHEDULE = [dict(type='LinearLR', start_factor=0.25, by_epoch=False, begin=0, end=3),
             dict(type='CosineAnnealingLR', by_epoch=False, begin=3, end=8, eta_min=1e-3)]


class _StopAt(Hook):
    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise KeyboardInterrupt


def _lr(path):
    return load_checkpoint_file(str(path))['optimizer']['param_groups'][0]['lr']


def test_resume_with_changes_applies_the_configs_lr(tmp_path):
    """A run stopped at iteration 4 (lr 0.1, warm-up + cosine) resumed with lr 0.05: with ResumeChangesHook the lr
    at iteration 8 is the one of a run with lr 0.05 from the start; mmengine alone keeps the old lr's schedule."""
    def stopped(work):
        with pytest.raises(KeyboardInterrupt):
            _runner(work, f'stop_{work.name}', max_iters=8, lr=0.1, scheduler=_SCHEDULE, hooks=[_StopAt(4)]).train()
        return work / 'iter_4.pth'

    fresh_05, fresh_10 = tmp_path / 'fresh_05', tmp_path / 'fresh_10'
    _runner(fresh_05, 'fresh_05', max_iters=8, lr=0.05, scheduler=_SCHEDULE).train()
    _runner(fresh_10, 'fresh_10', max_iters=8, lr=0.1, scheduler=_SCHEDULE).train()
    assert _lr(fresh_05 / 'iter_8.pth') != pytest.approx(_lr(fresh_10 / 'iter_8.pth'))

    changed = tmp_path / 'changed'
    ckpt = stopped(changed)
    runner = _runner(changed, 'changed', max_iters=8, lr=0.05, scheduler=_SCHEDULE, resume=True, load_from=str(ckpt),
                     hooks=[ResumeChangesHook()])
    runner.train()
    assert _lr(changed / 'iter_8.pth') == pytest.approx(_lr(fresh_05 / 'iter_8.pth'), rel=1e-9)
    weights = load_checkpoint_file(str(changed / 'iter_8.pth'))['state_dict']
    fresh = load_checkpoint_file(str(fresh_05 / 'iter_8.pth'))['state_dict']
    assert not torch.equal(weights['linear.weight'], fresh['linear.weight'])  # continued, not restarted

    control = tmp_path / 'control'
    ckpt = stopped(control)
    _runner(control, 'control', max_iters=8, lr=0.05, scheduler=_SCHEDULE, resume=True,
            load_from=str(ckpt)).train()
    assert _lr(control / 'iter_8.pth') == pytest.approx(_lr(fresh_10 / 'iter_8.pth'), rel=1e-9)  # mmengine: old lr


@pytest.mark.slow
def test_resume_with_a_changed_lr_end_to_end(tmp_path, rel, tools_in_one_process):
    opts = ['train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=12']
    work = tmp_path / 'work'
    train = [rel.REPO / 'tools/train.py', TINY, '--work-dir', work]
    more = opts + ['train_cfg.max_epochs=2', 'optim_wrapper.optimizer.lr=0.001']
    # the three runs in one process, in this order, each as ``python tools/train.py ...`` runs it
    first, refused, applied = tools_in_one_process([
        train + ['--cfg-options', *opts, 'train_cfg.max_epochs=1'],
        train + ['--resume', '--cfg-options', *more],
        train + ['--resume', '--resume-with-changes', '--cfg-options', *more]], tmp_path, rel.env())
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    lines = [ln for ln in refused.stderr.splitlines() if ln.startswith('error:')]
    assert refused.returncode == 2 and len(lines) == 1, (refused.stdout + refused.stderr)[-3000:]
    assert 'optim_wrapper.optimizer.lr 0.002 -> 0.001' in lines[0] and '--resume-with-changes' in lines[0]
    assert 'Epoch(train)' not in refused.stdout + refused.stderr  # refused before any training
    assert applied.returncode == 0, (applied.stdout + applied.stderr)[-3000:]
    log = rel.log_text(work)
    assert "the config's values apply: optim_wrapper.optimizer.lr 0.002 -> 0.001" in log
    assert re.search(r'lr schedule of the config apply, advanced to epoch 1', log), log[-3000:]
    # cosine from 1e-3 to 1e-4 over 4 epochs, after 2 epochs: the new lr's schedule, not the old one's
    assert _lr(work / 'epoch_2.pth') == pytest.approx(1e-4 + (1e-3 - 1e-4) * 0.5, rel=1e-6)
