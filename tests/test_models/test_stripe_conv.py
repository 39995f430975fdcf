"""StripeConv2d (SLaK's K x s + s x K decomposition): shapes, exactness, deploy merge, parameter growth (Fig. 2)."""
import pytest
import torch
import torch.nn.functional as F

from pelk_mm.models import PeLK
from pelk_mm.models.layers import PartialPeripheralConv, StripeConv2d, conv_form_class


def randomise_bn(module):
    """Give every BN non-trivial statistics and affine parameters so that folding them is actually tested."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)


def test_registered_as_conv_type():
    assert conv_form_class('stripe') is StripeConv2d and conv_form_class('StripeConv2d') is StripeConv2d
    m = PartialPeripheralConv(16, conv_ratio=0.5, conv_type='stripe', kernel_size=13, small_kernel=5, kpe_mode=None,
                              norm_cfg=dict(type='BN'))
    assert isinstance(m.conv, StripeConv2d) and m.conv.channels == 8
    assert m(torch.randn(2, 16, 9, 11)).shape == (2, 16, 9, 11)


@pytest.mark.parametrize('k, s, small, hw', [(13, 5, 5, (9, 11)), (7, 5, None, (6, 6)), (51, 5, 5, (14, 14)),
                                             (9, 3, 3, (20, 5))])
def test_matches_explicit_branch_sum(k, s, small, hw):
    torch.manual_seed(0)
    m = StripeConv2d(6, k, stripe_width=s, small_kernel=small, norm_cfg=None).double()
    x = torch.randn(2, 6, *hw, dtype=torch.float64)
    y = m(x)
    ref = F.conv2d(x, m.conv_h.weight, padding=(k // 2, s // 2), groups=6) \
        + F.conv2d(x, m.conv_w.weight, padding=(s // 2, k // 2), groups=6)
    if small:
        ref = ref + F.conv2d(x, m.small_conv.weight, padding=small // 2, groups=6)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref)
    # the cross-shaped dense kernel computes the two stripes
    dense = m.dense_weight()
    assert dense.shape == (6, 1, k, k)
    torch.testing.assert_close(F.conv2d(x, dense, padding=k // 2, groups=6),
                               ref - (F.conv2d(x, m.small_conv.weight, padding=small // 2, groups=6) if small else 0))
    off_cross = torch.ones(k, k, dtype=torch.bool)
    off_cross[:, k // 2 - s // 2:k // 2 + s // 2 + 1] = False
    off_cross[k // 2 - s // 2:k // 2 + s // 2 + 1, :] = False
    assert (dense[:, :, off_cross] == 0).all()


@pytest.mark.parametrize('small', [5, None])
def test_deploy_equivalence_with_bn(small):
    torch.manual_seed(0)
    m = StripeConv2d(8, 15, small_kernel=small).double()
    randomise_bn(m)
    m.eval()
    x = torch.randn(2, 8, 12, 10, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        m.switch_to_deploy()
        y_dep = m(x)
    assert m.deployed and not hasattr(m, 'conv_h') and not hasattr(m, 'small_conv')
    assert m.conv_h_reparam.weight.shape == (8, 1, 15, 5) and m.conv_w_reparam.weight.shape == (8, 1, 5, 15)
    torch.testing.assert_close(y_dep, y, rtol=1e-10, atol=1e-10)


def test_backbone_with_stripe_and_deploy():
    torch.manual_seed(0)
    arch = dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 40], kernel_sizes=[13, 11, 9, 7])
    m = PeLK(arch=arch, conv_type='stripe', kpe_mode=None, conv_ratio=1.0, out_indices=(0, 1, 2, 3),
             gap_before_final_norm=False)
    randomise_bn(m)
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = m(x)
        m.switch_to_deploy()
        outs_dep = m(x)
    assert [o.shape[1] for o in outs] == arch['channels']
    for a, b in zip(outs, outs_dep):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def large_kernel_params_per_channel(conv):
    """Parameters of the large-kernel branch only (small branch and BN excluded)."""
    if isinstance(conv, StripeConv2d):
        n = conv.conv_h.weight.numel() + conv.conv_w.weight.numel()
    else:
        n = conv.weight.numel()
    return n / conv.channels


def test_parameter_growth_7_to_51_matches_fig2():
    """Paper Fig. 2: 7 -> 51 multiplies the conv parameters by 7.3 (stripe, s=5) and 53.1 (dense)."""
    ratios = {}
    for conv_type in ('stripe', 'dense'):
        small, large = (conv_form_class(conv_type)(4, k, small_kernel=5, kpe_mode=None) for k in (7, 51))
        ratios[conv_type] = large_kernel_params_per_channel(large) / large_kernel_params_per_channel(small)
    assert round(ratios['stripe'], 1) == 7.3
    assert round(ratios['dense'], 1) == 53.1
    assert StripeConv2d(4, 51).num_params_per_channel == 2 * 51 * 5


@pytest.mark.parametrize('kwargs, message', [
    (dict(kpe_mode='input'), 'kpe_mode=None'),
    (dict(stripe_width=15), 'stripe_width=15 must not exceed kernel_size=13'),
    (dict(stripe_width=4), 'stripe_width must be a positive odd int'),
    (dict(small_kernel=6), 'small_kernel'),
])
def test_contradictory_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StripeConv2d(4, 13, **kwargs)


def test_kpe_forward_error():
    m = StripeConv2d(4, 13)
    with pytest.raises(ValueError, match='kpe_mode=None'):
        m(torch.randn(1, 4, 8, 8), torch.zeros(4, 13, 13))
    with pytest.raises(ValueError, match='kpe_mode'):
        PeLK(arch=dict(depths=[1], channels=[8], kernel_sizes=[7]), conv_type='stripe')  # default kpe_mode='input'
