"""NonFiniteGuardHook with mmengine's real Runner/OptimWrapper on a toy model (in process, seconds), and end to end
through tools/train.py on the classification demo (NaN losses injected by tests/reliability/fault_injection.py)."""
import logging
import math
import re

import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import pelk_mm.engine  # noqa: F401  (registers the hooks)
from pelk_mm.checkpoint import load_checkpoint_file  # what the project writes loads without opt-in
from pelk_mm.engine.hooks import NonFiniteGuardHook
from pelk_mm.errors import NonFiniteTrainingError


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 2)
        self.grad_poison = set()  # iterations (1-based) whose linear.weight gradient is made NaN
        self.iteration = 0
        self._handle = None

    def forward(self, inputs, labels, mode='tensor'):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        out = self.linear(self.bn(inputs))
        if mode == 'loss':
            self.iteration += 1
            if self.iteration in self.grad_poison:
                self._handle = self.linear.weight.register_hook(lambda g: g * float('nan'))
            return dict(loss=((out - labels) ** 2).mean())
        return out


class ToyData(Dataset):
    """Batch ``k`` (1-based, batch size 2) holds NaN inputs when ``k`` is in ``bad``."""

    def __init__(self, n_iters, bad=()):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(2 * n_iters, 4, generator=g)
        self.y = torch.randn(2 * n_iters, 2, generator=g)
        for k in bad:
            self.x[2 * (k - 1):2 * k] = float('nan')

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class Snapshots(Hook):
    """Parameters and BN buffers after every iteration."""
    priority = 'LOWEST'

    def __init__(self):
        self.params, self.buffers = [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        m = runner.model
        self.params.append({k: v.detach().clone() for k, v in m.named_parameters()})
        self.buffers.append({k: v.detach().clone() for k, v in m.named_buffers() if v.is_floating_point()})


def _runner(tmp_path, n_iters, bad=(), grad_poison=(), guard=True, ckpt_interval=100, **guard_kw):
    model = ToyModel()
    model.grad_poison = set(grad_poison)
    snaps = Snapshots()
    hooks = [snaps] + ([NonFiniteGuardHook(**guard_kw)] if guard else [])
    runner = Runner(
        model=model, work_dir=str(tmp_path), experiment_name=f'toy_{tmp_path.name}_{guard}',
        train_dataloader=dict(dataset=ToyData(n_iters, bad), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=2, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=n_iters), custom_hooks=hooks,
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=ckpt_interval),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0), log_level='WARNING')
    return runner, snaps


def _finite(d):
    return all(bool(torch.isfinite(v).all()) for v in d.values())


def test_bad_batches_are_skipped_and_buffers_restored(tmp_path):
    runner, snaps = _runner(tmp_path, 8, bad=(3, 6), max_consecutive=3)
    runner.train()
    # the bad iterations (3 and 6) changed neither the weights nor the BatchNorm statistics
    for k in (3, 6):
        for name, v in snaps.params[k - 1].items():
            assert torch.equal(v, snaps.params[k - 2][name]), (k, name)
        for name, v in snaps.buffers[k - 1].items():
            assert torch.equal(v, snaps.buffers[k - 2][name]), (k, name)
    # the good ones did train
    assert not torch.equal(snaps.params[3]['linear.weight'], snaps.params[2]['linear.weight'])
    assert _finite(snaps.params[-1]) and _finite(snaps.buffers[-1])
    guard = next(h for h in runner.hooks if isinstance(h, NonFiniteGuardHook))
    assert guard.total_skipped == 2 and guard.consecutive == 0
    assert runner.message_hub.get_info('nonfinite_skipped_steps') == 2
    # after_train removed the instance wrappers
    assert 'step' not in runner.optim_wrapper.__dict__


def test_without_guard_the_same_run_is_ruined(tmp_path):
    """Control: the same data without the hook leaves NaN weights (so the test above can fail)."""
    runner, snaps = _runner(tmp_path, 8, bad=(3, 6), guard=False)
    runner.train()
    assert not _finite(snaps.params[-1])


def test_non_finite_gradient_with_finite_loss_is_caught(tmp_path, caplog):
    runner, snaps = _runner(tmp_path, 5, grad_poison=(2, ), max_consecutive=3)
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        runner.train()
    finally:
        logger.removeHandler(handler)
    for name, v in snaps.params[1].items():
        assert torch.equal(v, snaps.params[0][name])
    assert _finite(snaps.params[-1])
    text = '\n'.join(messages)
    assert 'iteration 2: non-finite gradients in linear.weight; optimizer step skipped' in text, text


def test_streak_stops_with_clear_error_and_finite_checkpoints(tmp_path):
    runner, snaps = _runner(tmp_path, 12, bad=range(5, 13), ckpt_interval=2, max_consecutive=3)
    with pytest.raises(NonFiniteTrainingError) as info:
        runner.train()
    msg = str(info.value)
    assert '\n' not in msg
    assert '3 consecutive optimizer steps (iterations 5-7) had non-finite loss (nan)' in msg
    assert 'iter_6.pth' in msg and 'clip_grad' in msg and '--resume' in msg
    saved = sorted(p.name for p in tmp_path.glob('iter_*.pth'))
    assert saved == ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']  # iter 6 was skipped: weights of iter 4
    for name in saved:
        sd = load_checkpoint_file(str(tmp_path / name), map_location='cpu')['state_dict']
        assert _finite(sd), name
    assert len(snaps.params) == 6  # stopped inside iteration 7


def test_refuses_to_save_non_finite_weights(tmp_path):
    runner, _ = _runner(tmp_path, 2, max_consecutive=3)
    runner.train()
    with torch.no_grad():
        runner.model.linear.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteTrainingError, match='refused to save a checkpoint.*linear.weight'):
        runner.save_checkpoint(str(tmp_path), 'bad.pth')
    assert not (tmp_path / 'bad.pth').exists()


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match='max_consecutive must be a positive int'):
        NonFiniteGuardHook(max_consecutive=0)
    with pytest.raises(ValueError, match='nothing would be checked'):
        NonFiniteGuardHook(check_loss=False, check_grads=False)


@pytest.mark.slow
def test_cli_nan_streak_stops_run_with_one_line(demo_cwd, tmp_path, rel):
    config = rel.write_config(
        tmp_path / 'cls_guard.py', 'configs/demo/pelk_demo_in1k.py',
        "[dict(type='EMAHook', momentum=2e-2, priority='ABOVE_NORMAL'), "
        "dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=3), dict(type='FaultInjectionHook')]")
    work = tmp_path / 'work'
    # iteration 2 is an isolated bad batch (skipped, training goes on); 5, 6, 7 are a streak (stop)
    r = rel.train(config, work, demo_cwd, rel.CLS_SHRINK, PELK_FAULT_NAN_ITERS='2,5-99')
    assert r.returncode == 3, (r.stdout + r.stderr)[-3000:]
    err_lines = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert len(err_lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    assert '3 consecutive optimizer steps (iterations 5-7) had non-finite loss' in err_lines[0]
    log = rel.log_text(work)
    assert re.search(r'iteration 2: non-finite loss \(nan\)[^\n]*optimizer step skipped', log), log[-3000:]
    assert not re.search(r'iteration [34]: non-finite', log)  # isolated bad batch: training went on
    # 3 iterations per epoch: epoch_2.pth (iteration 6, inside the streak) holds the weights of iteration 4
    assert sorted(p.name for p in work.glob('epoch_*.pth')) == ['epoch_2.pth']
    assert 'epoch_2.pth' in err_lines[0]  # the message names the last checkpoint
    ckpt = rel.load(work / 'epoch_2.pth')
    for key in ('state_dict', 'ema_state_dict'):
        assert all(bool(torch.isfinite(v).all()) for v in ckpt[key].values() if v.is_floating_point())


@pytest.fixture
def cpu_amp_wrapper(monkeypatch):
    """mmengine's AmpOptimWrapper asserts a GPU; on this CPU machine run it with torch's CPU GradScaler (fp16
    loss scaling works the same way) so that the guard's AMP path is exercised."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp, 'GradScaler', lambda **kw: torch.amp.GradScaler('cpu', **kw))


def _amp_runner(tmp_path, n_iters, bad=(), grad_poison=(), **guard_kw):
    runner, snaps = _runner(tmp_path, n_iters, bad=bad, grad_poison=grad_poison, **guard_kw)
    runner.optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic',
                                optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
    return runner, snaps


def test_amp_scaler_skips_are_left_to_the_scaler_and_counted(tmp_path, cpu_amp_wrapper):
    # inf gradients with a finite loss: the GradScaler skips the step and halves the scale; two in a row stop
    runner, snaps = _amp_runner(tmp_path, 8, grad_poison=(3, 5, 6), max_consecutive=3, max_scaler_skips=2)
    with pytest.raises(NonFiniteTrainingError, match=r'2 consecutive optimizer steps \(iterations 5-6\) had '
                                                     r'inf/NaN gradients skipped by the AMP GradScaler'):
        runner.train()
    assert type(runner.optim_wrapper).__name__ == 'AmpOptimWrapper'
    for k in (3, 5):
        for name, v in snaps.params[k - 1].items():
            assert torch.equal(v, snaps.params[k - 2][name]), (k, name)
    assert runner.optim_wrapper.loss_scaler.get_scale() == 65536.0 / 8  # halved three times


def test_amp_non_finite_loss_skipped_before_the_scaler(tmp_path, cpu_amp_wrapper):
    runner, snaps = _amp_runner(tmp_path, 6, bad=(2, 4), max_consecutive=3)
    runner.train()  # no "No inf checks were recorded" error from GradScaler.update after a skipped step
    for k in (2, 4):
        for name, v in snaps.params[k - 1].items():
            assert torch.equal(v, snaps.params[k - 2][name]), (k, name)
    assert _finite(snaps.params[-1]) and _finite(snaps.buffers[-1])
    assert runner.optim_wrapper.loss_scaler.get_scale() == 65536.0  # the scaler never saw the bad steps
