"""No stale kernel-wise positional-embedding term: after every way weights change in practice, the output equals a
freshly built model holding the same weights (train form in eval mode, and the deploy form)."""
import itertools

import pytest
import torch

FORMS = ['train', 'deploy']
X = torch.randn(2, 3, 40, 48, generator=torch.Generator().manual_seed(7))  # stage maps 10x12 ... 1x1


def build(helpers, seed, form, **kwargs):
    m = helpers.tiny_pelk(seed, **kwargs)
    if form == 'deploy':
        m.switch_to_deploy()
    return m


def run(model, x=X):
    with torch.no_grad():
        return model(x.to(next(model.parameters()).dtype))


def fresh_output(helpers, model, form, x=X, **kwargs):
    """Output of a newly built model (no forward before) that loads ``model``'s current state dict."""
    ref = build(helpers, 123, form, **kwargs).to(next(model.parameters()).dtype)
    ref.load_state_dict(model.state_dict())
    return run(ref, x)


def tensors(model):
    return list(itertools.chain(model.parameters(), model.buffers()))


def assert_fresh(helpers, model, form, before, x=X, **kwargs):
    out = run(model, x)
    ref = fresh_output(helpers, model, form, x, **kwargs)
    assert helpers.max_rel_err(out, ref) <= 1e-5
    if before is not None:  # the weights did change: the check above is not vacuous
        assert helpers.max_rel_err(before, ref) > 1e-2


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('kpe_mode', ['input', 'bias'])
def test_load_state_dict(helpers, form, kpe_mode):
    a, b = build(helpers, 0, form, kpe_mode=kpe_mode), build(helpers, 1, form, kpe_mode=kpe_mode)
    before = run(a)
    a.load_state_dict(b.state_dict())
    assert_fresh(helpers, a, form, before, kpe_mode=kpe_mode)
    assert helpers.max_rel_err(run(a), run(b)) <= 1e-5


@pytest.mark.parametrize('form', FORMS)
def test_data_copy(helpers, form):
    """``p.data.copy_(q)`` does not bump ``p._version``: how mmengine's EMAHook and mmdet's MeanTeacherHook write."""
    a, b = build(helpers, 0, form), build(helpers, 1, form)
    before = run(a)
    for p, q in zip(tensors(a), tensors(b)):
        p.data.copy_(q.data)
    assert_fresh(helpers, a, form, before)


@pytest.mark.parametrize('form', FORMS)
def test_data_assignment(helpers, form):
    a, b = build(helpers, 0, form), build(helpers, 1, form)
    before = run(a)
    for p, q in zip(tensors(a), tensors(b)):
        p.data = q.data.clone()
    assert_fresh(helpers, a, form, before)


@pytest.mark.parametrize('form', FORMS)
def test_copy_under_no_grad(helpers, form):
    a, b = build(helpers, 0, form), build(helpers, 1, form)
    before = run(a)
    with torch.no_grad():
        for p, q in zip(tensors(a), tensors(b)):
            p.copy_(q)
    assert_fresh(helpers, a, form, before)


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('update_buffers', [False, True])
def test_ema_hook_swap(helpers, form, update_buffers):
    """mmengine's EMAHook swaps the EMA weights (and with ``update_buffers`` the buffers) in for validation."""
    from mmengine.hooks import EMAHook
    from mmengine.model import ExponentialMovingAverage
    a, b = build(helpers, 0, form), build(helpers, 1, form)
    before = run(a)
    hook = EMAHook(update_buffers=update_buffers)
    hook.src_model, hook.ema_model = a, ExponentialMovingAverage(b, update_buffers=update_buffers)
    hook._swap_ema_parameters()  # a now holds b's parameters (and buffers)
    assert_fresh(helpers, a, form, before)
    hook._swap_ema_parameters()  # and back
    assert helpers.max_rel_err(run(a), before) <= 1e-5


@pytest.mark.parametrize('form', FORMS)
def test_mean_teacher_momentum_update(helpers, form):
    """mmdet's MeanTeacherHook moves the teacher towards the student through ``.data``."""
    from mmdet.engine.hooks import MeanTeacherHook
    teacher, student = build(helpers, 0, form), build(helpers, 1, form)
    before = run(teacher)
    pair = torch.nn.Module()
    pair.teacher, pair.student = teacher, student
    MeanTeacherHook().momentum_update(pair, momentum=0.5)
    assert_fresh(helpers, teacher, form, before)


@pytest.mark.parametrize('form', FORMS)
def test_to_dtype(helpers, form):
    """A model run in float32, moved to float64 (before or after deploy) computes float64 outputs of its weights."""
    a = helpers.tiny_pelk(0)
    run(a)
    a = a.to(torch.float64)
    if form == 'deploy':
        a.switch_to_deploy()
    assert all(t.dtype == torch.float64 for t in tensors(a) if t.is_floating_point())
    out = run(a)
    assert all(o.dtype == torch.float64 for o in out)
    ref = fresh_output(helpers, a, form)
    assert helpers.max_rel_err(out, ref) <= 1e-10  # float64 end to end: no float32 rounding anywhere


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('form', FORMS)
def test_to_device(helpers, form):
    a = build(helpers, 0, form)
    cpu = run(a)
    a = a.cuda()
    out = run(a, X.cuda())
    assert helpers.max_rel_err([o.cpu() for o in out], cpu) <= 1e-4  # different kernels, float32


@pytest.mark.parametrize('form', FORMS)
def test_new_input_size(helpers, form):
    a = build(helpers, 0, form)
    for hw in [(40, 48), (32, 32), (64, 40), (40, 48)]:
        x = torch.randn(1, 3, *hw)
        assert_fresh(helpers, a, form, None, x)


def test_layer_data_write_against_eq3(reference_eq3):
    """The layer after a ``.data`` write of its weights and of the embedding, against Eq. 3 written out."""
    from pelk_mm.models.layers import PeripheralConv2d
    torch.manual_seed(0)
    m = PeripheralConv2d(3, 9, center_size=3, small_kernel=None, kpe_mode='input', norm_cfg=None).double().eval()
    h = torch.randn(3, 9, 9, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 11, dtype=torch.float64)
    with torch.no_grad():
        m(x, h)
        m.weight.data.normal_()
        h.data.mul_(-2.0)
        y = m(x, h)
    grid_idx = torch.repeat_interleave(torch.arange(len(m.grid)), torch.tensor(m.grid))
    dense = m.weight.detach()[:, 0][:, grid_idx][:, :, grid_idx]
    torch.testing.assert_close(y, reference_eq3(x, dense, h), rtol=1e-10, atol=1e-10)
