"""Large-kernel conv forms as registered modules: each form gets only its own arguments, a wrong one is one line
naming the form and the argument, and a user's own form plugs in by registering it."""
from typing import Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pelk_mm.models import PeLK
from pelk_mm.models.layers import (DenseLargeKernelConv2d, LargeKernelConv, PartialPeripheralConv, PeripheralConv2d,
                                   StripeConv2d, build_conv_form, conv_form_args, conv_form_class, conv_forms)
from pelk_mm.registry import MODELS

ARCH = dict(depths=[1, 1], channels=[16, 16], kernel_sizes=[13, 7], center_sizes=[5, 3])


def test_the_three_forms_are_registered_under_both_names():
    assert {'peripheral', 'dense', 'stripe'} <= set(conv_forms())
    for short, cls in (('peripheral', PeripheralConv2d), ('dense', DenseLargeKernelConv2d),
                       ('stripe', StripeConv2d)):
        assert conv_form_class(short) is cls and conv_form_class(cls.__name__) is cls
        assert MODELS.get(short) is cls


def test_each_form_takes_only_its_own_arguments():
    assert {'center_size', 'base', 'half_grid', 'conv_impl'} <= conv_form_args(PeripheralConv2d)
    assert 'conv_impl' in conv_form_args(DenseLargeKernelConv2d)
    assert not {'center_size', 'base', 'half_grid'} & conv_form_args(DenseLargeKernelConv2d)
    assert not {'center_size', 'base', 'half_grid', 'conv_impl'} & conv_form_args(StripeConv2d)
    assert 'stripe_width' in conv_form_args(StripeConv2d)


@pytest.mark.parametrize('conv_type, kwargs, message', [
    ('stripe', dict(center_size=5), r"conv_type='stripe' \(StripeConv2d\) takes no argument 'center_size'"),
    ('stripe', dict(conv_impl='dense'), r"conv_type='stripe' \(StripeConv2d\) takes no argument 'conv_impl'"),
    ('dense', dict(half_grid=[4, 1]), r"conv_type='dense' \(DenseLargeKernelConv2d\) takes no argument 'half_grid'"),
    ('peripheral', dict(stripe_width=5), r"\(PeripheralConv2d\) takes no argument 'stripe_width'"),
    ('Conv2d', dict(), r"conv_type='Conv2d' is not a registered large-kernel conv form"),
])
def test_a_wrong_argument_is_one_line(conv_type, kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        build_conv_form(conv_type, 4, kernel_size=13, **kwargs)
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('kwargs, message', [
    (dict(conv_type='stripe', kpe_mode=None, half_grids=[[4, 2, 1], None]),
     r"conv_type='stripe' \(StripeConv2d\) takes no 'half_grid', but half_grids=.* sets it"),
    (dict(conv_type='stripe', kpe_mode=None, conv_impl='dense'), r"takes no 'conv_impl', but conv_impl='dense'"),
    (dict(conv_type='dense', center_sizes=[1, 1]), r"takes no 'center_size', but center_sizes=\[1, 1\] sets it"),
    (dict(conv_type='dense', base=3), r"\(DenseLargeKernelConv2d\) takes no 'base', but base=3 sets it"),
    (dict(conv_cfg=dict(type='stripe', stripe_width=5, kernel_size=7), kpe_mode=None),
     r'conv_cfg sets kernel_size=7, .* pass kernel_sizes=\.\.\. to PeLK'),
    (dict(conv_type='stripe', kpe_mode=None, conv_cfg=dict(stripe_widht=3)), r"takes no argument 'stripe_widht'"),
    (dict(conv_type='strpe'), r"conv_type='strpe' is not a registered"),
    (dict(conv_cfg='stripe'), r"conv_cfg must be None or a dict .* got conv_cfg='stripe'"),
])
def test_backbone_settings_for_another_form_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PeLK(arch=dict(ARCH), **kwargs)


def test_backbone_builds_each_form_with_its_arguments():
    stripe = PeLK(arch=dict(ARCH), conv_cfg=dict(type='stripe', stripe_width=3), kpe_mode=None)
    conv = stripe.stages[0][0].token_mixer.conv
    assert isinstance(conv, StripeConv2d) and conv.stripe_width == 3 and conv.kernel_size == 13
    dense = PeLK(arch=dict(ARCH), conv_type='dense', conv_impl='dense')
    conv = dense.stages[1][0].token_mixer.conv
    assert isinstance(conv, DenseLargeKernelConv2d) and conv.conv_impl == 'dense' and len(conv.grid) == 7
    peri = PeLK(arch=dict(ARCH), base=3)
    assert [len(s[0].token_mixer.conv.grid) for s in peri.stages] == [
        len(PeripheralConv2d(1, 13, center_size=5, base=3).grid), len(PeripheralConv2d(1, 7, center_size=3).grid)]


class CrossConv2d(LargeKernelConv):
    """A user's form: a K x 1 plus a 1 x K depthwise conv (no small branch, no KPE, no deploy form)."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: Optional[int] = None,
                 kpe_mode: Optional[str] = None, norm_cfg: Optional[dict] = None, deploy: bool = False,
                 scale: float = 1.0, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.channels, self.kernel_size, self.small_kernel, self.kpe_mode, self.deployed = \
            channels, kernel_size, small_kernel, kpe_mode, deploy
        self.scale = scale
        self.h = nn.Parameter(torch.randn(channels, 1, kernel_size, 1))
        self.w = nn.Parameter(torch.randn(channels, 1, 1, kernel_size))

    def forward(self, x, kpe=None):
        p = self.kernel_size // 2
        return self.scale * (F.conv2d(x, self.h, padding=(p, 0), groups=self.channels)
                             + F.conv2d(x, self.w, padding=(0, p), groups=self.channels))


def test_a_users_form_plugs_in_by_registering_it():
    MODELS.register_module(name=['CrossConv2d', 'cross'], module=CrossConv2d, force=True)
    try:
        assert 'cross' in conv_forms()
        m = PeLK(arch=dict(ARCH), conv_cfg=dict(type='cross', scale=0.5), kpe_mode=None, small_kernel=None)
        conv = m.stages[0][0].token_mixer.conv
        assert isinstance(conv, CrossConv2d) and conv.scale == 0.5 and conv.kernel_size == 13
        assert m(torch.randn(1, 3, 32, 32))[0].shape == (1, 16)
        mixer = PartialPeripheralConv(8, conv_ratio=0.5, conv_type='cross', kernel_size=5, small_kernel=None,
                                      kpe_mode=None)
        x = torch.randn(1, 8, 6, 6)
        assert torch.equal(mixer(x)[:, 4:], x[:, 4:])
    finally:
        MODELS.module_dict.pop('CrossConv2d', None)
        MODELS.module_dict.pop('cross', None)
