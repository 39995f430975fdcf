"""``switch_to_deploy`` keeps the block-shared structure and computes what the eval-mode train form computes, for
every KPE mode, conv type, small-kernel size and maps smaller than the kernel (against the train form and against
the formulas written out here)."""
import pytest
import torch
import torch.nn.functional as F

from pelk_mm.models.layers import DenseLargeKernelConv2d, PeripheralConv2d, StripeConv2d
from pelk_mm.models.layers import peripheral_conv as peripheral_conv_module


def randomise_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return module


def dense_of(weight, grid):
    """Dense ``(C, K, K)`` kernel from block weights ``(C, 1, k', k')``, cell by cell."""
    starts = [sum(grid[:i]) for i in range(len(grid))]
    out = weight.new_zeros(weight.shape[0], sum(grid), sum(grid))
    for a, (sa, wa) in enumerate(zip(starts, grid)):
        for b, (sb, wb) in enumerate(zip(starts, grid)):
            out[:, sa:sa + wa, sb:sb + wb] = weight[:, 0, a, b, None, None]
    return out


def bn(y, m):
    """Eval-mode BatchNorm written out, in float64."""
    mean, var, gamma, beta = (t.detach().double().reshape(1, -1, 1, 1)
                              for t in (m.running_mean, m.running_var, m.weight, m.bias))
    return (y - mean) / (var + m.eps).sqrt() * gamma + beta


def reference(m, x, h):
    """The train form's eval output in float64 from its raw tensors: Eq. 3 / bias / weight KPE, BNs, small conv."""
    x = x.double()
    c, k = m.channels, m.kernel_size
    dense = dense_of(m.weight.detach().double(), m.grid)
    h = None if h is None else h.double()
    if m.kpe_mode == 'weight':
        dense = dense + h
    y = F.conv2d(x, dense.unsqueeze(1), padding=k // 2, groups=c)
    if m.kpe_mode == 'bias':
        y = y + (dense * h).sum((-2, -1)).reshape(1, -1, 1, 1)
    elif m.kpe_mode == 'input':
        inside = F.conv2d(torch.ones_like(x[:1]), (dense * h).unsqueeze(1), padding=k // 2, groups=c)
        y = y + inside
    y = bn(y, m.norm)
    if m.small_kernel is not None:
        s = F.conv2d(x, m.small_conv.weight.detach().double(), padding=m.small_kernel // 2, groups=c)
        y = y + bn(s, m.small_norm)
    return y


CASES = [  # (kernel, centre, small kernel, map): small <= centre folds; 7 > 5 keeps its branch; maps < kernel
    (13, 5, 5, (12, 10)), (13, 5, 3, (12, 10)), (13, 5, 7, (12, 10)), (13, 5, None, (12, 10)),
    (51, 5, 5, (14, 14)), (51, 5, 5, (7, 9)), (9, 3, 5, (5, 3)), (47, 5, 5, (1, 1)), (101, 7, 5, (20, 17)),
]


@pytest.mark.parametrize('kpe_mode', [None, 'input', 'bias', 'weight'])
@pytest.mark.parametrize('k, centre, small, hw', CASES)
def test_peripheral_deploy_matches_train_form(kpe_mode, k, centre, small, hw, monkeypatch):
    torch.manual_seed(0)
    m = randomise_bn(PeripheralConv2d(6, k, center_size=centre, small_kernel=small, kpe_mode=kpe_mode)).eval()
    h = torch.randn(6, k, k) * 0.1 if kpe_mode else None
    x = torch.randn(2, 6, *hw)
    with torch.no_grad():
        ref = reference(m, x, h)
        before = m(x, h)
        m.switch_to_deploy(h)
        calls = []
        real = peripheral_conv_module.peripheral_conv2d
        monkeypatch.setattr(peripheral_conv_module, 'peripheral_conv2d',
                            lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
        after = m(x, h if kpe_mode == 'input' else None)
    scale = ref.abs().max()
    assert (after.double() - ref).abs().max() / scale <= 1e-5
    assert (after - before).abs().max() / scale <= 1e-5
    # the structure is kept: k' x k' shared weights through peripheral_conv2d ('weight' breaks the sharing)
    kk = k if kpe_mode == 'weight' else len(m.grid)
    assert m.reparam_weight.shape == (6, 1, kk, kk) and m.reparam_bias.shape == (6, )
    assert calls == ([] if kpe_mode == 'weight' else [tuple(m.grid)])
    folds = small is not None and (small <= centre or kpe_mode == 'weight')  # 'weight': dense deploy grid
    assert m.small_folded == folds and hasattr(m, 'small_reparam') == (small is not None and not folds)
    assert not any(hasattr(m, n) for n in ('weight', 'norm', 'small_conv', 'small_norm'))


@pytest.mark.parametrize('small', [None, 3, 5, 7])
def test_dense_conv_type_deploy(small):
    torch.manual_seed(0)
    m = randomise_bn(DenseLargeKernelConv2d(4, 11, small_kernel=small, kpe_mode='input')).eval()
    h = torch.randn(4, 11, 11) * 0.1
    x = torch.randn(2, 4, 9, 6)
    with torch.no_grad():
        ref = reference(m, x, h)
        m.switch_to_deploy(h)
        after = m(x, h)
    assert (after.double() - ref).abs().max() / ref.abs().max() <= 1e-5
    assert m.reparam_weight.shape == (4, 1, 11, 11) and m.small_folded == (small is not None)


@pytest.mark.parametrize('small', [None, 3, 5, 7])
@pytest.mark.parametrize('hw', [(12, 10), (4, 3)])
def test_stripe_deploy_keeps_two_stripes(small, hw):
    torch.manual_seed(0)
    m = randomise_bn(StripeConv2d(4, 13, stripe_width=5, small_kernel=small, kpe_mode=None)).eval()
    x = torch.randn(2, 4, *hw)
    with torch.no_grad():
        xd = x.double()
        ref = bn(F.conv2d(xd, m.conv_h.weight.double(), padding=(6, 2), groups=4), m.norm_h) \
            + bn(F.conv2d(xd, m.conv_w.weight.double(), padding=(2, 6), groups=4), m.norm_w)
        if small:
            ref = ref + bn(F.conv2d(xd, m.small_conv.weight.double(), padding=small // 2, groups=4),
                           m.small_norm)
        m.float()
        m.switch_to_deploy()
        after = m(x)
    assert (after.double() - ref).abs().max() / ref.abs().max() <= 1e-5
    assert m.conv_h_reparam.weight.shape == (4, 1, 13, 5) and m.conv_w_reparam.weight.shape == (4, 1, 5, 13)
    assert hasattr(m, 'small_reparam') == (small == 7)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_deploy_keeps_dtype(dtype):
    torch.manual_seed(0)
    m = randomise_bn(PeripheralConv2d(4, 13, small_kernel=5, kpe_mode='input')).eval()
    h = torch.randn(4, 13, 13) * 0.1
    x = torch.randn(2, 4, 10, 9)
    with torch.no_grad():
        ref = reference(m, x, h)
        m.to(dtype).switch_to_deploy(h.to(dtype))
        out = m(x.to(dtype), h.to(dtype))
    assert all(p.dtype == dtype for p in m.parameters()) and out.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 3e-2
    assert (out.double() - ref).abs().max() / ref.abs().max() <= tol


@pytest.mark.parametrize('conv_type, kpe_mode', [('peripheral', 'input'), ('peripheral', 'bias'),
                                                 ('peripheral', 'weight'), ('peripheral', None),
                                                 ('dense', 'input'), ('stripe', None)])
def test_backbone_deploy_matches_train_form(helpers, conv_type, kpe_mode):
    m = helpers.tiny_pelk(0, conv_type=conv_type, kpe_mode=kpe_mode)
    x = torch.randn(2, 3, 40, 48)  # stage maps 10x12 ... 1x1: all smaller than or close to their kernels
    with torch.no_grad():
        before = m(x)
        m.switch_to_deploy()
        after = m(x)
    assert helpers.max_rel_err(after, before) <= 1e-5
    params = dict(m.named_parameters())
    assert not any('.norm.' in n or 'small_conv' in n for n in params if 'token_mixer' in n)
    assert all((n in params) == (kpe_mode == 'input') for n in ('stages.0.kpe', 'stages.3.kpe'))
    # the deployed convs keep their structure: no K x K kernel unless kpe_mode='weight' made it dense
    for i, stage in enumerate(m.stages[:3]):  # (stage 3: K=5 with a 3x3 centre is all-unshared anyway)
        k = helpers.TINY['kernel_sizes'][i]
        for block in stage:
            conv = block.token_mixer.conv
            shapes = [tuple(p.shape[-2:]) for p in conv.parameters()]
            assert ((k, k) in shapes) == (kpe_mode == 'weight' or conv_type == 'dense')
            if conv_type == 'stripe':
                assert (k, 5) in shapes and (5, k) in shapes
            else:
                # (conv_type='dense': its grid has K cells)
                assert conv.reparam_weight.shape[-1] == (k if kpe_mode == 'weight' else len(conv.grid))


def test_kpe_term_after_inference_mode_trains():
    """The term's shape-only constants made under ``torch.inference_mode`` serve a later training step (gradients
    of the weights and of the embedding against the formulas written out)."""
    torch.manual_seed(0)
    m = PeripheralConv2d(4, 13, small_kernel=None, kpe_mode='input', norm_cfg=None).double()
    h = (torch.randn(4, 13, 13, dtype=torch.float64) * 0.1).requires_grad_()
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    with torch.inference_mode():
        m.eval()(x, h)
    y = m.train()(x, h)
    y.square().sum().backward()
    w = m.weight.detach().clone().requires_grad_()
    h2 = h.detach().clone().requires_grad_()
    dense = dense_of(w, m.grid)
    ref = F.conv2d(x, dense.unsqueeze(1), padding=6, groups=4) \
        + F.conv2d(torch.ones_like(x[:1]), (dense * h2).unsqueeze(1), padding=6, groups=4)
    ref.square().sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.weight.grad, w.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-10, atol=1e-10)
