"""Nothing lost, nothing silently wrong: ``--resume`` never starts over an earlier run, non-finite EMA weights are
caught, a checkpoint that does not fit the model is refused (``tools/test.py``, analysis tools) or, for
``load_from``, accepted only where the config says the mismatch is intended, interrupted saves leave nothing
behind, and checkpoints get the umask's mode."""
import os
import re
import stat

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.hooks import EMAHook, Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import pelk_mm.engine  # noqa: F401  (registers the hooks)
from pelk_mm.apis.validate import resolve_resume
from pelk_mm.checkpoint import atomic_write, load_checkpoint_file, remove_stale_writes
from pelk_mm.engine.hooks import NonFiniteGuardHook
from pelk_mm.errors import ConfigValidationError, NonFiniteTrainingError


# --------------------------------------------------------------------------------------------------- --resume
def _ckpt(path, epoch):
    torch.save({'meta': {'epoch': epoch}, 'state_dict': {'w': torch.full((4, ), float(epoch))}}, path)


def test_resume_without_last_checkpoint_continues_the_newest_intact(tmp_path):
    for e in (1, 2, 3):
        _ckpt(tmp_path / f'epoch_{e}.pth', e)
    (tmp_path / 'epoch_3.pth').write_bytes((tmp_path / 'epoch_3.pth').read_bytes()[:-200])  # truncated
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    notes = resolve_resume(cfg)
    assert cfg.load_from == str(tmp_path / 'epoch_2.pth')
    assert len(notes) == 1 and 'last_checkpoint does not exist' in notes[0] and 'epoch_2.pth' in notes[0]


def test_resume_in_an_empty_work_dir_starts_fresh_and_says_so(tmp_path):
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path / 'new')))
    notes = resolve_resume(cfg)
    assert cfg.load_from is None and len(notes) == 1 and 'starting a new run' in notes[0]


def test_resume_with_only_damaged_checkpoints_stops(tmp_path):
    (tmp_path / 'epoch_1.pth').write_bytes(b'PK\x03\x04 not a whole file')
    (tmp_path / 'best_accuracy_epoch_1.pth').write_bytes(b'')
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    with pytest.raises(ConfigValidationError) as err:
        resolve_resume(cfg)
    msg = str(err.value)
    assert str(tmp_path) in msg and 'last_checkpoint' in msg and 'epoch_*.pth' in msg and '\n' not in msg


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(tmp_path):
    from pelk_mm.apis.validate import check_earlier_run
    _ckpt(tmp_path / 'epoch_2.pth', 2)
    with pytest.raises(ConfigValidationError) as err:
        check_earlier_run(Config(dict(resume=False, work_dir=str(tmp_path))))
    assert 'epoch_2.pth' in str(err.value) and '--resume' in str(err.value) and '--work-dir' in str(err.value)
    check_earlier_run(Config(dict(resume=True, work_dir=str(tmp_path))))  # continuing it is fine
    check_earlier_run(Config(dict(resume=False, work_dir=str(tmp_path / 'fresh'))))


def test_resume_with_inexact_loader_settings_is_an_error():
    from pelk_mm.apis.validate import check_resume_exact
    cfg = Config.fromfile(os.path.join(os.path.dirname(__file__), '..', '..', 'configs/demo/pelk_demo_in1k.py'))
    cfg.resume = True
    check_resume_exact(cfg)  # as shipped: exact
    cfg.train_dataloader.persistent_workers = True
    with pytest.raises(ConfigValidationError, match='train_dataloader.persistent_workers'):
        check_resume_exact(cfg)
    cfg.resume = False
    check_resume_exact(cfg)  # a new run: ResumeStateHook only warns


@pytest.mark.slow
def test_resume_without_last_checkpoint_end_to_end(tmp_path, rel):
    """tools/train.py --resume in a work dir whose last_checkpoint is gone continues the run (before: started
    from scratch, rotated away epoch_2.pth and overwrote epoch_3.pth)."""
    config = rel.REPO / 'tests/data/configs/tiny_pelk_cls_demo.py'
    opts = ['train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=12',
            'default_hooks.checkpoint.max_keep_ckpts=2']
    work = tmp_path / 'work'
    r = rel.train(config, work, tmp_path, opts + ['train_cfg.max_epochs=2'])
    assert r.returncode == 0, r.stderr[-3000:]
    first = load_checkpoint_file(str(work / 'epoch_2.pth'))['state_dict']
    os.unlink(work / 'last_checkpoint')
    r = rel.train(config, work, tmp_path, opts + ['train_cfg.max_epochs=3'], extra_args=['--resume'])
    assert r.returncode == 0, r.stderr[-3000:]
    log = rel.log_text(work)
    assert 'resuming from the newest intact checkpoint' in log and 'Epoch(train) [1]' not in log.split('resum')[-1]
    assert re.search(r'Epoch\(train\)\s+\[3\]', log)
    assert sorted(p.name for p in work.glob('epoch_*.pth')) == ['epoch_2.pth', 'epoch_3.pth']
    again = load_checkpoint_file(str(work / 'epoch_2.pth'))['state_dict']
    assert all(torch.equal(first[k], again[k]) for k in first)  # the earlier run's file is untouched


# --------------------------------------------------------------------------------------------------- NaN in EMA
class _Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        return dict(loss=((out - labels) ** 2).mean()) if mode == 'loss' else out


class _Data(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


def _toy_loader():
    return dict(dataset=_Data(8), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2, num_workers=0,
                collate_fn=dict(type='default_collate'))


def _toy_runner(work, name, hooks, max_iters, model=_Toy, lr=0.1, checkpoint=None, train_cfg=None, **extra):
    """A Runner of a toy model on 8 fixed samples (batch 2, iteration-based), checkpoints every 2 iterations."""
    torch.manual_seed(0)  # the same initial weights in every run
    return Runner(
        model=model(), work_dir=str(work), experiment_name=f'{name}_{work.name}', train_dataloader=_toy_loader(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=lr)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, **(train_cfg or {})), custom_hooks=list(hooks),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2, **(checkpoint or {}))),
        randomness=dict(seed=0), log_level='WARNING', **extra)


class _PoisonEMA(Hook):
    """After iteration ``at`` the EMA copy's weights become NaN (what a NaN average or a bad swap leaves)."""
    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            ema = next(h for h in runner.hooks if isinstance(h, EMAHook))
            with torch.no_grad():
                for p in ema.ema_model.parameters():
                    p.fill_(float('nan'))


def test_nan_ema_weights_are_not_saved(tmp_path):
    poison = _PoisonEMA(3)
    runner = _toy_runner(tmp_path, 'ema', [NonFiniteGuardHook(), EMAHook(momentum=0.5), poison], 4)
    with pytest.raises(NonFiniteTrainingError, match='EMA weight tensors hold NaN'):
        runner.train()
    # iteration 2's checkpoint (before the poison) is kept; iteration 4's, with NaN EMA weights, was never written
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_2.pth']
    saved = load_checkpoint_file(str(tmp_path / 'iter_2.pth'))
    assert all(bool(torch.isfinite(v).all()) for key in ('state_dict', 'ema_state_dict')
               for v in saved[key].values() if v.is_floating_point())


def test_resume_from_a_nan_checkpoint_is_refused():
    hook = NonFiniteGuardHook()
    ckpt = {'state_dict': {'w': torch.ones(3)}, 'ema_state_dict': {'module.w': torch.tensor([1., float('nan')])}}
    with pytest.raises(NonFiniteTrainingError, match='ema_state_dict holds NaN/inf in 1 tensors'):
        hook.after_load_checkpoint(None, ckpt)
    hook.after_load_checkpoint(None, {'state_dict': {'w': torch.ones(3)}})  # finite: fine


# --------------------------------------------------------------------------------------------------- fit
def _run_cls(tmp_path, rel):
    config = rel.REPO / 'tests/data/configs/tiny_pelk_cls_demo.py'
    work = tmp_path / 'work'
    r = rel.train(config, work, tmp_path, ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=32',
                                           'val_dataloader.dataset.indices=12'])
    assert r.returncode == 0, r.stderr[-3000:]
    return config, work / 'epoch_1.pth'


@pytest.fixture(scope='module')
def cls_run(tmp_path_factory, rel):
    tmp = tmp_path_factory.mktemp('fit')
    config, ckpt = _run_cls(tmp, rel)
    return tmp, config, ckpt


def _error_line(r):
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.stdout + r.stderr)[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope='module')
def fit_runs(cls_run, rel, tools_in_one_process):
    """The tool runs of the tests below on files derived from the run's checkpoint, in one process (as ``python
    TOOL ARGS`` runs each, in this order): ``{name: result}``."""
    tmp, config, ckpt = cls_run
    state = load_checkpoint_file(str(ckpt))
    other = tmp / 'other_arch.pth'  # a checkpoint of another model: stage 3 missing, a narrower head
    torch.save(dict(state, state_dict={k: (v[:, :v.shape[1] // 2] if k == 'head.fc.weight' else v)
                                       for k, v in state['state_dict'].items()
                                       if not k.startswith('backbone.stages.3')}), other)
    nan = tmp / 'nan.pth'
    torch.save(dict(state, state_dict={k: v * float('nan') if v.is_floating_point() else v
                                       for k, v in state['state_dict'].items()}), nan)
    no_head = tmp / 'no_head.pth'
    torch.save(dict(state, state_dict={k: v for k, v in state['state_dict'].items() if not k.startswith('head.')}),
               no_head)
    deployed = tmp / 'deployed.pth'
    test, train = rel.REPO / 'tools/test.py', rel.REPO / 'tools/train.py'
    fine_tune = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=12',
                 f'load_from={no_head}']
    runs = {
        'test other': [test, config, other],
        'get_flops other': [rel.REPO / 'tools/analysis/get_flops.py', config, '--checkpoint', other],
        'convert': [rel.REPO / 'tools/deploy/convert_to_deploy.py', config, ckpt, deployed, '--check-shape', '64',
                    '64'],
        'test deployed': [test, config, deployed],
        'test deployed deploy=True': [test, config, deployed, '--cfg-options', 'model.backbone.deploy=True'],
        'test nan': [test, config, nan],
        'fine-tune refused': [train, config, '--work-dir', tmp / 'ft_refused', '--cfg-options', *fine_tune],
        'fine-tune allowed': [train, config, '--work-dir', tmp / 'ft_allowed', '--cfg-options', *fine_tune,
                              "load_from_mismatch=['head.']"],
    }
    results = tools_in_one_process(list(runs.values()), tmp, rel.env(), timeout=600)
    return dict(zip(runs, results), other=other, nan=nan, tmp=tmp)


@pytest.mark.slow
def test_test_tool_refuses_a_checkpoint_of_another_model(fit_runs):
    line = _error_line(fit_runs['test other'])
    assert str(fit_runs['other']) in line and 'weights are missing (e.g. backbone.stages.3' in line
    assert "head.fc.weight: (6, 24) in the checkpoint, (6, 48) in the model" in line
    assert 'weights are missing' in _error_line(fit_runs['get_flops other'])


@pytest.mark.slow
def test_test_tool_names_the_deploy_form_of_a_converted_checkpoint(fit_runs):
    """A checkpoint written by tools/deploy/convert_to_deploy.py, given to the train-form config, is named as the
    other form (with the option that builds the deploy form), not as a pile of missing weights."""
    r = fit_runs['convert']
    assert r.returncode == 0, r.stderr[-3000:]
    line = _error_line(fit_runs['test deployed'])
    assert 'deploy form' in line and 'model.backbone.deploy=True' in line and 'missing' not in line
    r = fit_runs['test deployed deploy=True']
    assert r.returncode == 0 and re.search(r'accuracy/top1: [0-9.]+', r.stdout + r.stderr), r.stderr[-3000:]


@pytest.mark.slow
def test_test_tool_refuses_nan_weights(fit_runs):
    line = _error_line(fit_runs['test nan'])
    assert str(fit_runs['nan']) in line and 'NaN/inf' in line


@pytest.mark.slow
def test_load_from_mismatch_needs_the_config_to_allow_it(fit_runs, rel):
    line = _error_line(fit_runs['fine-tune refused'])
    assert 'load_from' in line and 'head.fc' in line and "load_from_mismatch = ['head.']" in line
    r = fit_runs['fine-tune allowed']
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"2 of the model's [0-9]+ weights are missing \(e.g. head.fc.weight, head.fc.bias\); allowed by "
                     r"load_from_mismatch",
                     rel.log_text(fit_runs['tmp'] / 'ft_allowed'))


# --------------------------------------------------------------------------------------------------- files
def test_checkpoints_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(b'x', tmp_path / 'a.pth', 'wb')
        os.umask(0o027)
        atomic_write('y', tmp_path / 'b.txt')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'a.pth').st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / 'b.txt').st_mode) == 0o640


def test_stale_temporary_files_are_removed(tmp_path):
    """Only the atomic writer's own temporary files of checkpoints / last_checkpoint are removed; a user's files
    named like temporary files (``*.tmp``, hidden, random suffix) are kept."""
    stale = [tmp_path / '.epoch_3.pth.pelk_mm-4711-k2j4x9q1.tmp', tmp_path / '.last_checkpoint.pelk_mm-1-a8Zk_0qp.tmp',
             tmp_path / '.best_accuracy_top1_epoch_2.pth.pelk_mm-99-zz_9yq01.tmp']
    keep = [tmp_path / 'epoch_2.pth', tmp_path / 'notes.tmp', tmp_path / '.hidden', tmp_path / '.notes.k2j4x9q1.tmp',
            tmp_path / '.results.pkl.a8Zk_0qp.tmp', tmp_path / '.my_data.csv.pelk_mm-12-abcdef12.tmp',
            tmp_path / '.epoch_3.pth.pelk_mm-x-k2j4x9q1.tmp', tmp_path / '.epoch_3.pth.pelk_mm-12-k2j4x9q1.tmp.bak']
    for p in stale + keep:
        p.write_bytes(b'x')
    (tmp_path / '.epoch_4.pth.pelk_mm-5-folder0.tmp').mkdir()  # not a file: kept
    assert sorted(remove_stale_writes(str(tmp_path))) == sorted(map(str, stale))
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert (tmp_path / '.epoch_4.pth.pelk_mm-5-folder0.tmp').is_dir()


def test_an_interrupted_write_leaves_an_unmistakable_name(tmp_path, monkeypatch):
    """What a kill inside atomic_write leaves behind is named ``.<target>.pelk_mm-<pid>-<random>.tmp``, which
    remove_stale_writes recognises (and nothing else)."""
    leftover = {}

    def killed(fd):
        leftover['names'] = sorted(p.name for p in tmp_path.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(os, 'fsync', killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(b'x' * 64, tmp_path / 'epoch_1.pth', 'wb')
    (name, ) = leftover['names']
    assert re.fullmatch(rf'\.epoch_1\.pth\.pelk_mm-{os.getpid()}-\w+\.tmp', name), name
    (tmp_path / name).write_bytes(b'half a checkpoint')  # as if the kill had left it
    assert remove_stale_writes(str(tmp_path)) == [str(tmp_path / name)]


@pytest.mark.slow
def test_train_removes_stale_temporary_files_at_start(cls_run, rel):
    tmp, config, _ = cls_run
    work = tmp / 'stale'
    work.mkdir()
    junk = work / f'.epoch_1.pth.pelk_mm-{os.getpid()}-q8s7d6f5.tmp'
    junk.write_bytes(b'\0' * 1024)
    users = work / '.epoch_1.pth.q8s7d6f5.tmp'  # a user's file of the old, ambiguous form: not the project's
    users.write_bytes(b'mine')
    r = rel.train(config, work, tmp, ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=16',
                                      'val_dataloader.dataset.indices=12'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not junk.exists() and 'removed 1 temporary file(s) of an interrupted checkpoint save' in rel.log_text(work)
    assert users.read_bytes() == b'mine'


# --------------------------------------------------------------------------------------------------- save_best
class _NegMSE(BaseMetric):
    """``score`` = -MSE of the model on the validation data: a real function of the weights."""

    def process(self, data_batch, data_samples):
        self.results.extend(data_samples)

    def compute_metrics(self, results):
        return dict(score=-float(torch.stack(results).mean()))


class _Regressor(_Toy):
    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out - labels) ** 2).mean())
        return list(((out - labels) ** 2).mean(dim=1))


class _StopAfterSave(Hook):
    """Stops the run at the end of iteration ``at``, after its checkpoint and before its validation."""
    priority = 'LOWEST'

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise KeyboardInterrupt(f'stopped at iteration {self.at}')


def _best_runner(work, resume=False, stop_at=None):
    from pelk_mm.engine.hooks import ResumeStateHook
    hooks = [ResumeStateHook()] + ([_StopAfterSave(stop_at)] if stop_at else [])
    # lr 1.5 on this regression diverges: every validation scores worse than the first, which is the best
    return _toy_runner(work, f'best_{resume}_{stop_at}', hooks, 6, model=_Regressor, lr=1.5,
                       checkpoint=dict(save_best='score', rule='greater'), train_cfg=dict(val_interval=2),
                       val_dataloader=_toy_loader(), val_evaluator=Evaluator(_NegMSE()), val_cfg=dict(),
                       resume=resume)


def test_best_checkpoint_after_a_resume_equals_the_uninterrupted_run(tmp_path):
    ref = tmp_path / 'ref'
    _best_runner(ref).train()
    work = tmp_path / 'work'
    with pytest.raises(KeyboardInterrupt):
        _best_runner(work, stop_at=2).train()
    assert (work / 'iter_2.pth').exists() and not list(work.glob('best_*.pth'))  # stopped before validating
    _best_runner(work, resume=True).train()
    best = sorted(p.name for p in ref.glob('best_*.pth'))
    assert best == ['best_score_iter_2.pth'], best  # the first validation is the best
    assert sorted(p.name for p in work.glob('best_*.pth')) == best
    hub_ref = load_checkpoint_file(str(ref / 'iter_6.pth'))['message_hub']['runtime_info']
    hub = load_checkpoint_file(str(work / 'iter_6.pth'))['message_hub']['runtime_info']
    assert hub['best_score'] == hub_ref['best_score']
    assert os.path.basename(hub['best_ckpt']) == os.path.basename(hub_ref['best_ckpt'])
    a = load_checkpoint_file(str(ref / 'iter_6.pth'))['state_dict']
    b = load_checkpoint_file(str(work / 'iter_6.pth'))['state_dict']
    assert all(torch.equal(a[k], b[k]) for k in a)  # the extra validation changed nothing in training


# --------------------------------------------------------------------------------------------------- inputs
def test_resume_with_another_world_size_is_refused(tmp_path):
    from pelk_mm.apis.validate import check_resume_world_size
    path = tmp_path / 'epoch_2.pth'
    torch.save({'state_dict': {'w': torch.ones(2)}, 'resume_state': {'world_size': 2, 'rng': [{}, {}]}}, path)
    cfg = Config(dict(resume=True, load_from=str(path), work_dir=str(tmp_path)))
    with pytest.raises(ConfigValidationError) as err:
        check_resume_world_size(cfg, world_size=1)
    msg = str(err.value)
    assert 'written by a run of 2 process(es), this run has 1' in msg and 'dist_train.sh CONFIG 2 --resume' in msg
    assert check_resume_world_size(cfg, world_size=2) == []  # the same count: fine
    assert check_resume_world_size(Config(dict(resume=False, load_from=str(path))), world_size=1) == []  # load_from
    # the explicit opt-in keeps the global batch: 2 x 16 -> 1 x 32, and says so
    cfg = Config(dict(resume=True, load_from=str(path), work_dir=str(tmp_path), train_dataloader=dict(batch_size=16)))
    notes = check_resume_world_size(cfg, world_size=1, rescale=True)
    assert cfg.train_dataloader.batch_size == 32 and 'batch_size is 32 per process' in notes[0]
    cfg.train_dataloader.batch_size = 5
    with pytest.raises(ConfigValidationError, match='cannot be split evenly over 3'):
        check_resume_world_size(cfg, world_size=3, rescale=True)


def test_work_dir_that_is_a_file_is_refused(tmp_path):
    from pelk_mm.apis.validate import check_work_dir
    (tmp_path / 'out').write_text('x')
    with pytest.raises(ConfigValidationError, match="is a file, not a folder"):
        check_work_dir(Config(dict(work_dir=str(tmp_path / 'out'))))
    check_work_dir(Config(dict(work_dir=str(tmp_path / 'new'))))


def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from pelk_mm.errors import USER_ERRORS, DiskFullError, format_user_error
    target = tmp_path / 'epoch_1.pth'
    target.write_bytes(b'old checkpoint')

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(DiskFullError) as err:
        atomic_write(b'x' * 4096, target, 'wb')
    line = format_user_error(err.value)
    assert isinstance(err.value, USER_ERRORS) and '\n' not in line
    assert f'while writing {target}' in line and 'MB free' in line and '--resume' in line
    assert target.read_bytes() == b'old checkpoint' and sorted(p.name for p in tmp_path.iterdir()) == ['epoch_1.pth']


def test_max_keep_one_fits_on_a_nearly_full_disk(tmp_path, monkeypatch):
    """With max_keep_ckpts=1 and room for one checkpoint and a half, every save still lands (the old file is
    deleted first when the safe order does not fit), and the run ends with the newest checkpoint only."""
    import errno

    import pelk_mm.compat as compat
    from pelk_mm.engine.hooks import ResumeStateHook
    from pelk_mm.errors import DiskFullError
    write = compat.atomic_write
    quota = {}

    def on_small_disk(data, filepath, mode='w', encoding=None):
        used = sum(p.stat().st_size for p in tmp_path.glob('*.pth'))
        if str(filepath).endswith('.pth'):
            quota.setdefault('bytes', int(len(data) * 1.6))
            if used + len(data) > quota['bytes']:
                raise DiskFullError(errno.ENOSPC, f'simulated full disk writing {filepath}')
        return write(data, filepath, mode, encoding)

    monkeypatch.setattr(compat, 'atomic_write', on_small_disk)
    runner = _toy_runner(tmp_path, 'full', [ResumeStateHook()], 6, checkpoint=dict(max_keep_ckpts=1))
    runner.train()
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['iter_6.pth']
    assert load_checkpoint_file(str(tmp_path / 'iter_6.pth'))['meta']['iter'] == 6


@pytest.mark.slow
def test_resume_with_another_world_size_end_to_end(tmp_path, rel):
    """A 2-process run resumed on 1 process: refused in one line, and with --resume-other-world-size continued with
    the same global batch (1 x 32 instead of 2 x 16: one iteration per epoch either way)."""
    config = tmp_path / 'tiny_resume_state.py'
    config.write_text(f"_base_ = '{rel.REPO / 'tests/data/configs/tiny_pelk_cls_demo.py'}'\n"
                      "custom_hooks = [dict(type='pelk_mm.ResumeStateHook')]\n")
    opts = ['train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=12']
    work = tmp_path / 'work'
    r = rel.dist_train(config, 2, work, tmp_path, opts + ['train_cfg.max_epochs=1'])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    more = opts + ['train_cfg.max_epochs=2']
    line = _error_line(rel.train(config, work, tmp_path, more, extra_args=['--resume']))
    assert 'written by a run of 2 process(es), this run has 1' in line and '--resume-other-world-size' in line
    r = rel.train(config, work, tmp_path, more, extra_args=['--resume', '--resume-other-world-size'])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    log = rel.log_text(work)
    assert 'train_dataloader.batch_size is 32 per process' in log and re.search(r'Epoch\(train\)\s+\[2\]\[1/1\]', log)
