"""Kill a real training process with SIGKILL at an arbitrary iteration, restart it with ``--resume`` and check that
the final checkpoint equals the one of an uninterrupted run bit for bit (weights, EMA, optimizer, schedulers and the
random generator states), for the classification demo (epoch-based loop, Mixup/CutMix, drop path, EMA, dynamic
sparsity), the segmentation demo (iteration-based loop, InfiniteSampler) and a 2-process ``tools/dist_train.sh`` run.
A control run resumed without ``pelk_mm.ResumeStateHook`` shows that the comparison does detect a divergence."""
import pytest

CLS_DEMO = 'configs/demo/pelk_demo_in1k.py'
SEG_DEMO = 'configs/demo/pelk_demo_upernet_ade20k.py'
CLS_HOOKS = ("[dict(type='EMAHook', momentum=2e-2, priority='ABOVE_NORMAL'), "
             "dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='erk', update_interval=2, "
             "prune_rate=0.3), dict(type='pelk_mm.ResumeStateHook'), dict(type='FaultInjectionHook')]")
CLS_HOOKS_NO_RESUME_STATE = CLS_HOOKS.replace("dict(type='pelk_mm.ResumeStateHook'), ", '')
SEG_HOOKS = "[dict(type='pelk_mm.ResumeStateHook'), dict(type='FaultInjectionHook')]"


def _assert_same(rel, ckpt_a, ckpt_b, keys=('state_dict', 'ema_state_dict', 'optimizer', 'param_schedulers',
                                            'sparsity', 'resume_state')):
    a, b = rel.load(ckpt_a), rel.load(ckpt_b)
    assert a['meta']['iter'] == b['meta']['iter'] and a['meta']['epoch'] == b['meta']['epoch']
    for key in keys:
        if key not in a and key not in b:
            continue
        assert key in a and key in b, key
        bad = rel.diff_states(a[key], b[key])
        assert not bad, f'{key} differs between the uninterrupted and the resumed run: {bad[:8]}'
    return a, b


def _kill_then_resume(rel, config, work, cwd, options, kill_at, launcher='single', nproc=2, **kill_env):
    fn = rel.train if launcher == 'single' else (lambda *a, **k: rel.dist_train(a[0], nproc, *a[1:], **k))
    r = fn(config, work, cwd, options, PELK_FAULT_KILL_AT_ITER=kill_at, **kill_env)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f'SIGKILL at iteration {kill_at}' in out, out[-3000:]
    r2 = fn(config, work, cwd, options, extra_args=['--resume'])
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-4000:]
    return r, r2


@pytest.fixture(scope='module')
def cls_config(tmp_path_factory, rel):
    d = tmp_path_factory.mktemp('cls_cfg')
    return (rel.write_config(d / 'cls_resume.py', CLS_DEMO, CLS_HOOKS),
            rel.write_config(d / 'cls_no_resume_state.py', CLS_DEMO, CLS_HOOKS_NO_RESUME_STATE))


@pytest.fixture(scope='module')
def cls_reference(cls_config, demo_cwd, rel):
    work = demo_cwd / 'cls_reference'
    r = rel.train(cls_config[0], work, demo_cwd, rel.CLS_SHRINK)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return work


@pytest.mark.slow
def test_cls_kill_resume_exact(cls_config, cls_reference, demo_cwd, rel):
    work = demo_cwd / 'cls_killed'
    # 3 iterations per epoch, checkpoint every epoch: killed in the middle of epoch 2, resumes from epoch_1.pth
    _, r2 = _kill_then_resume(rel, cls_config[0], work, demo_cwd, rel.CLS_SHRINK, kill_at=5)
    log = rel.log_text(work)
    assert 'resumed epoch: 1, iter: 3' in log and 'random generator states restored from the checkpoint' in log
    a, b = _assert_same(rel, cls_reference / 'epoch_3.pth', work / 'epoch_3.pth')
    assert a['sparsity']['masks'] and 'ema_state_dict' in a and a['resume_state']['world_size'] == 1


@pytest.mark.slow
def test_cls_resume_without_hook_diverges(cls_config, cls_reference, demo_cwd, rel):
    """Control: the same kill + resume without ResumeStateHook is not exact, so the equality above is meaningful."""
    work = demo_cwd / 'cls_killed_control'
    _kill_then_resume(rel, cls_config[1], work, demo_cwd, rel.CLS_SHRINK, kill_at=5)
    a, b = rel.load(cls_reference / 'epoch_3.pth'), rel.load(work / 'epoch_3.pth')
    assert rel.diff_states(a['state_dict'], b['state_dict']), 'resume without the RNG states matched exactly'


@pytest.mark.slow
def test_seg_kill_resume_exact(demo_cwd, tmp_path, rel):
    config = rel.write_config(tmp_path / 'seg_resume.py', SEG_DEMO, SEG_HOOKS)
    ref = demo_cwd / 'seg_reference'
    r = rel.train(config, ref, demo_cwd, rel.SEG_SHRINK)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    work = demo_cwd / 'seg_killed'
    _kill_then_resume(rel, config, work, demo_cwd, rel.SEG_SHRINK, kill_at=6)  # checkpoint at 4, killed at 6
    log = rel.log_text(work)
    assert 'resumed epoch: 0, iter: 4' in log and 'Advance dataloader 4 steps' in log
    _assert_same(rel, ref / 'iter_8.pth', work / 'iter_8.pth')


@pytest.mark.slow
def test_dist_kill_resume_exact(cls_config, demo_cwd, rel):
    """tools/dist_train.sh with 2 processes (gloo): rank 1 is killed; torchrun tears the group down; --resume
    with 2 processes continues bit-exactly (per-rank RNG states)."""
    opts = rel.CLS_SHRINK + ['train_cfg.max_epochs=2', 'train_dataloader.batch_size=8',
                             'env_cfg.dist_cfg.timeout=60']
    ref = demo_cwd / 'dist_reference'
    r = rel.dist_train(cls_config[0], 2, ref, demo_cwd, opts)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    work = demo_cwd / 'dist_killed'
    r1, _ = _kill_then_resume(rel, cls_config[0], work, demo_cwd, opts, kill_at=5, launcher='dist',
                              PELK_FAULT_RANK=1)
    a, _ = _assert_same(rel, ref / 'epoch_2.pth', work / 'epoch_2.pth')
    assert a['resume_state']['world_size'] == 2 and len(a['resume_state']['rng']) == 2
