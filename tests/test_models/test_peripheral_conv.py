"""PeripheralConv2d / PartialPeripheralConv against an independent dense reference (Eq. 1-6)."""
import pytest
import torch
import torch.nn.functional as F

from pelk_mm.models.layers import PartialPeripheralConv, PeripheralConv2d
from pelk_mm.ops import peripheral_grid


def reference_dense_kernel(weight, grid):
    """Dense (C, 1, K, K) kernel built cell by cell with Python loops (independent of pelk_mm.ops)."""
    c, _, k, _ = weight.shape
    size = sum(grid)
    out = weight.new_zeros(c, 1, size, size)
    starts = [sum(grid[:i]) for i in range(len(grid))]
    for a in range(k):
        for b in range(k):
            out[:, :, starts[a]:starts[a] + grid[a], starts[b]:starts[b] + grid[b]] = weight[:, :, a:a + 1, b:b + 1]
    return out


def build(channels, k, center=5, small=None, kpe_mode=None, norm=None, **kw):
    torch.manual_seed(0)
    return PeripheralConv2d(channels, k, center_size=center, small_kernel=small, kpe_mode=kpe_mode,
                            norm_cfg=norm, **kw).double()


@pytest.mark.parametrize('k, center, hw', [(51, 5, (13, 16)), (13, 5, (9, 9)), (101, 7, (20, 7)), (3, 1, (4, 5))])
def test_forward_and_grads_match_dense_reference(k, center, hw):
    m = build(6, k, center, conv_impl='dense')
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(2, 6, *hw, dtype=torch.float64, requires_grad=True)
    y = m(x)
    w_ref = m.weight.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.conv2d(x_ref, reference_dense_kernel(w_ref, m.grid), padding=k // 2, groups=6)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.weight.grad, w_ref.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('hw', [(11, 11), (6, 9), (30, 30)])
def test_kpe_input_mode_is_eq3(hw, reference_eq3):
    k = 13
    m = build(4, k, kpe_mode='input')
    kpe = torch.nn.Parameter(torch.randn(4, k, k, dtype=torch.float64))
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(3, 4, *hw, dtype=torch.float64)
    expected = reference_eq3(x, reference_dense_kernel(m.weight.detach(), m.grid).squeeze(1), kpe.detach())
    torch.testing.assert_close(m(x, kpe), expected, rtol=1e-10, atol=1e-10)
    # gradients reach the shared embedding
    m(x, kpe).sum().backward()
    assert kpe.grad is not None and kpe.grad.abs().sum() > 0


def test_kpe_bias_and_weight_modes():
    k = 9
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    h = torch.randn(3, k, k, dtype=torch.float64)
    m = build(3, k, kpe_mode='bias')
    dense = reference_dense_kernel(m.weight.detach(), m.grid)
    plain = F.conv2d(x, dense, padding=k // 2, groups=3)
    const = (dense.squeeze(1) * h).sum((-2, -1)).reshape(1, 3, 1, 1)
    torch.testing.assert_close(m(x, h), plain + const)
    m = build(3, k, kpe_mode='weight')
    torch.testing.assert_close(m(x, h), F.conv2d(x, dense + h.unsqueeze(1), padding=k // 2, groups=3))


def test_kpe_required_when_enabled():
    m = build(3, 9, kpe_mode='input')
    with pytest.raises(ValueError, match='kpe'):
        m(torch.randn(1, 3, 5, 5, dtype=torch.float64))


def test_kpe_term_follows_weight_updates_in_inference(reference_eq3):
    m = build(3, 9, kpe_mode='input').eval()
    h = torch.randn(3, 9, 9, dtype=torch.float64)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y1 = m(x, h)
        m.weight.add_(1.0)  # an optimizer step
        y2 = m(x, h)
    expected = reference_eq3(x, reference_dense_kernel(m.weight, m.grid).squeeze(1), h)
    torch.testing.assert_close(y2, expected)
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize('kpe_mode', [None, 'input', 'bias', 'weight'])
@pytest.mark.parametrize('small', [None, 5])
def test_switch_to_deploy_is_exact(kpe_mode, small):
    torch.manual_seed(1)
    m = PeripheralConv2d(5, 15, center_size=5, small_kernel=small, kpe_mode=kpe_mode)
    h = torch.randn(5, 15, 15) * 0.1
    m.train()
    for _ in range(3):  # give BN non-trivial running statistics
        m(torch.randn(4, 5, 12, 12), h)
    with torch.no_grad():
        for bn in [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    m.eval()
    x = torch.randn(2, 5, 12, 10)
    with torch.no_grad():
        before = m(x, h)
        m.switch_to_deploy(h)
        after = m(x, h if kpe_mode == 'input' else None)
    k = 15 if kpe_mode == 'weight' else len(m.grid)  # 'weight' breaks the sharing: dense deploy kernel
    assert m.deployed and m.reparam_weight.shape == (5, 1, k, k)
    assert not hasattr(m, 'weight') and not hasattr(m, 'small_conv') and not hasattr(m, 'small_reparam')
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert 'deployed' in m.extra_repr()


def test_extra_repr_reports_grid_and_reduction():
    m = PeripheralConv2d(4, 51, center_size=5)
    text = m.extra_repr()
    assert 'grid=[9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9]' in text
    assert '13x13=169' in text and '93.5% fewer' in text
    assert m.weight.shape == (4, 1, 13, 13)


@pytest.mark.parametrize('kwargs, name', [
    (dict(kernel_size=50), 'kernel_size'),
    (dict(kernel_size=5, center_size=7), 'center_size'),
    (dict(kernel_size=51, base=1), 'base'),
    (dict(kernel_size=51, small_kernel=4), 'small_kernel'),
    (dict(kernel_size=51, kpe_mode='pos'), 'kpe_mode'),
])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PeripheralConv2d(8, **kwargs)


@pytest.mark.parametrize('ratio', [0, -0.5, 1.5, 'half', True])
def test_invalid_conv_ratio(ratio):
    with pytest.raises(ValueError, match='conv_ratio'):
        PartialPeripheralConv(16, conv_ratio=ratio, kernel_size=7)


def test_partial_conv_keeps_identity_channels():
    torch.manual_seed(0)
    m = PartialPeripheralConv(16, conv_ratio=3 / 8, kernel_size=9, center_size=3, kpe_mode=None, small_kernel=None,
                              norm_cfg=None)
    assert m.conv_channels == 6 and m.conv.channels == 6
    x = torch.randn(2, 16, 10, 10)
    y = m(x)
    assert y.shape == x.shape
    assert torch.equal(y[:, 6:], x[:, 6:])
    expected = F.conv2d(x[:, :6], reference_dense_kernel(m.conv.weight.detach(), m.conv.grid), padding=4, groups=6)
    torch.testing.assert_close(y[:, :6], expected, rtol=1e-5, atol=1e-6)
    full = PartialPeripheralConv(16, conv_ratio=1.0, kernel_size=9, kpe_mode=None)
    assert full.conv_channels == 16


def test_grid_is_eq2_by_default_and_overridable():
    m = PeripheralConv2d(2, 51)
    assert m.grid == peripheral_grid(51, 5)
    m = PeripheralConv2d(2, 33, half_grid=[4, 4, 4, 2, 1, 1, 1])  # Table 5 row 4
    assert m.grid == (4, 4, 4, 2, 1, 1, 1, 1, 1, 2, 4, 4, 4)
