"""PeLK backbone: arch zoo, output shapes, training-state options, deploy, pretrained loading, layer depths."""
import copy

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.registry import DefaultScope
from torch.nn.modules.batchnorm import _BatchNorm

from pelk_mm.models import PeLK, PeripheralConv2d

TINY = dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 48], kernel_sizes=[13, 11, 9, 5], center_sizes=[5, 5, 3, 3])


def small_pelk(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault('arch', copy.deepcopy(TINY))
    return PeLK(**kwargs)


@pytest.mark.parametrize('arch, depths, channels, kernels, center', [
    ('tiny', [3, 3, 9, 3], [124, 249, 499, 998], [51, 49, 47, 13], 5),
    ('small', [3, 3, 27, 3], [124, 249, 499, 998], [51, 49, 47, 13], 5),
    ('base', [3, 3, 27, 3], [166, 332, 665, 1331], [51, 49, 47, 13], 5),
    ('base-101', [3, 3, 27, 3], [166, 332, 665, 1331], [101, 69, 67, 13], 7),
    ('tiny-101', [3, 3, 9, 3], [124, 249, 499, 998], [101, 69, 67, 13], 7),
])
def test_arch_zoo_matches_paper(arch, depths, channels, kernels, center):
    m = PeLK(arch=arch, out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    assert [len(s) for s in m.stages] == depths
    assert m.channels == channels and m.kernel_sizes == kernels
    for i, stage in enumerate(m.stages):
        conv = stage[0].token_mixer.conv
        assert conv.kernel_size == kernels[i] and conv.center_size == center
        assert conv.channels == int(3 / 8 * channels[i])
        assert stage.kpe.shape == (conv.channels, kernels[i], kernels[i])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = m(x)
    assert [tuple(o.shape) for o in outs] == [(1, c, 16 // 2 ** i, 16 // 2 ** i) for i, c in enumerate(channels)]


def test_pelk_t_at_224_pooled_and_dense():
    m = PeLK(arch='t', out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pooled = m(x)
        m.gap_before_final_norm = False
        maps = m(x)
    assert [tuple(o.shape) for o in pooled] == [(1, 124), (1, 249), (1, 499), (1, 998)]
    assert [tuple(o.shape) for o in maps] == [(1, 124, 56, 56), (1, 249, 28, 28), (1, 499, 14, 14), (1, 998, 7, 7)]


@pytest.mark.parametrize('out_indices, expected', [(-1, [3]), ((0, 2), [0, 2]), ([1, -1], [1, 3])])
def test_out_indices_and_norms(out_indices, expected):
    m = small_pelk(out_indices=out_indices)
    assert m.out_indices == expected
    for i in range(4):
        assert hasattr(m, f'norm{i}') == (i in expected)
    outs = m(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in outs] == [(2, TINY['channels'][i]) for i in expected]


def test_feature_maps_are_nchw_contiguous():
    """Dense outputs are plain NCHW-contiguous (as mmpretrain's ConvNeXt's), so the FPN's maps are too."""
    m = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    outs = m(torch.randn(2, 3, 64, 48))
    assert all(o.is_contiguous() for o in outs)
    assert torch.nn.Conv2d(outs[0].shape[1], 8, 1)(outs[0]).is_contiguous()


def test_roi_align_reads_channels_last_maps_correctly():
    """mmcv 2.1's RoIAlign kernel indexes its input as NCHW-contiguous: on a channels-last-strided map (convs keep
    that format) it silently returns wrong RoI features, which broke the detection demo. pelk_mm.compat makes the
    input contiguous first; the raw kernel call below pins the mmcv behaviour that makes this necessary."""
    from mmcv.ops import RoIAlign
    from mmcv.ops.roi_align import ext_module
    torch.manual_seed(0)
    x = torch.randn(2, 8, 20, 24)
    channels_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(channels_last, x) and not channels_last.is_contiguous()
    rois = torch.tensor([[0, 1., 2., 11., 9.], [1, 0., 0., 12., 16.]])

    def raw(inp):
        out = inp.new_zeros(2, 8, 7, 7)
        ext_module.roi_align_forward(inp, rois, out, inp.new_zeros(0), inp.new_zeros(0), aligned_height=7,
                                     aligned_width=7, spatial_scale=1.0, sampling_ratio=0, pool_mode=1, aligned=True)
        return out

    assert not torch.allclose(raw(channels_last), raw(x), atol=1e-3)  # the mmcv kernel on its own
    roi_align = RoIAlign((7, 7), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    torch.testing.assert_close(roi_align(channels_last, rois), raw(x), rtol=0, atol=0)  # through pelk_mm
    a = channels_last.clone().requires_grad_()
    b = x.clone().requires_grad_()
    g = torch.randn(2, 8, 7, 7)
    roi_align(a, rois).backward(g)
    roi_align(b, rois).backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_every_parameter_gets_a_gradient_in_dense_mode():
    m = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    sum(o.mean() for o in m(torch.randn(2, 3, 32, 32))).backward()
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='huge'), 'unknown PeLK arch'),
    (dict(arch=dict(depths=[1, 1], channels=[8, 8])), 'kernel_sizes'),
    (dict(arch=dict(depths=[1, 1], channels=[8], kernel_sizes=[5, 5])), 'channels'),
    (dict(arch=dict(depths=[1], channels=[8], kernel_sizes=[6])), 'kernel_sizes'),
    (dict(arch=dict(depths=[1], channels=[8], kernel_sizes=[5], center_sizes=[7])), 'center_sizes'),
    (dict(out_indices=4), 'out_indices'),
    (dict(out_indices=(0, -5)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(kpe_mode='pos'), 'kpe_mode'),
    (dict(half_grids=[None]), 'half_grids'),
])
def test_invalid_arguments(kwargs, message):
    kwargs.setdefault('arch', copy.deepcopy(TINY))
    with pytest.raises(ValueError, match=message):
        PeLK(**kwargs)


def test_frozen_stages():
    m = small_pelk(frozen_stages=2)
    m.train()
    for i in range(4):
        frozen = i < 2
        for mod in (m.downsample_layers[i], m.stages[i]):
            assert mod.training != frozen
            assert all(p.requires_grad != frozen for p in mod.parameters())


def test_norm_eval_keeps_bn_in_eval_mode():
    m = small_pelk(norm_eval=True)
    m.train()
    bns = [mod for mod in m.modules() if isinstance(mod, _BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert m.stages[0][0].pointwise_conv1.training
    m = small_pelk(norm_eval=False).train()
    assert all(bn.training for bn in m.modules() if isinstance(bn, _BatchNorm))


def test_with_cp_same_outputs_and_gradients():
    ref = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False, drop_path_rate=0.)
    cp = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False, drop_path_rate=0., with_cp=True)
    cp.load_state_dict(ref.state_dict())
    ref.train(), cp.train()
    x = torch.randn(2, 3, 32, 32)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_cp = ref(x1), cp(x2)
    for a, b in zip(out_ref, out_cp):
        torch.testing.assert_close(a, b)
    sum(o.square().mean() for o in out_ref).backward()
    sum(o.square().mean() for o in out_cp).backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for (name, p1), (_, p2) in zip(ref.named_parameters(), cp.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


def test_switch_to_deploy_backbone():
    m = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    m.train()
    for _ in range(2):
        m(torch.randn(4, 3, 32, 32))
    m.eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        before = m(x)
        m.switch_to_deploy()
        after = m(x)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # kpe_mode='input': the border-aware term depends on the map size, so the stages keep their embedding
    assert m.deploy and all(stage.kpe is not None for stage in m.stages)


def test_get_layer_depth():
    m = PeLK(arch='tiny')
    assert m.get_layer_depth('backbone.downsample_layers.0.0.weight', 'backbone.') == (0, 8)
    assert m.get_layer_depth('backbone.stages.0.1.norm.weight', 'backbone.') == (1, 8)
    assert m.get_layer_depth('backbone.stages.1.kpe', 'backbone.') == (2, 8)
    assert m.get_layer_depth('backbone.stages.2.7.gamma', 'backbone.') == (5, 8)
    assert m.get_layer_depth('backbone.stages.3.0.gamma', 'backbone.') == (6, 8)
    assert m.get_layer_depth('backbone.norm3.weight', 'backbone.') == (7, 8)
    assert m.get_layer_depth('head.fc.weight', 'backbone.') == (7, 8)
    s = PeLK(arch='small')
    assert s.get_layer_depth('backbone.stages.2.26.gamma', 'backbone.') == (11, 14)
    assert s.get_layer_depth('backbone.downsample_layers.3.1.weight', 'backbone.') == (12, 14)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_registry_build_from_each_codebase_scope(scope):
    import importlib

    importlib.import_module(f'{scope}.registry')
    from mmengine.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        registry = importlib.import_module(f'{scope}.registry').MODELS
        m = registry.build(dict(type='pelk_mm.PeLK', arch=copy.deepcopy(TINY)))
    assert isinstance(m, PeLK)
    assert MODELS.get('pelk_mm.PeLK') is PeLK


def test_pretrained_init_cfg_loads_runner_checkpoint(tmp_path):
    """An mmengine Runner checkpoint of a classifier (message_hub etc.) loads with prefix='backbone.'."""
    from mmengine.runner import save_checkpoint

    src = small_pelk()
    state = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    state['head.fc.weight'] = torch.randn(10, 48)
    hub = HistoryBuffer()
    hub.update(1.0)
    ckpt = dict(meta=dict(epoch=3), state_dict=state, message_hub=dict(log_scalars={'train/loss': hub}))
    path = tmp_path / 'epoch_3.pth'
    save_checkpoint(ckpt, str(path))
    dst = small_pelk(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    torch.manual_seed(123)
    dst.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_peripheral_conv_parameter_reduction_in_backbone():
    m = PeLK(arch='tiny')
    convs = [mod for mod in m.modules() if isinstance(mod, PeripheralConv2d)]
    assert len(convs) == 18
    shared = sum(c.weight.numel() for c in convs)
    dense = sum(c.channels * c.kernel_size ** 2 for c in convs)
    assert shared / dense < 0.12


def test_kernel_and_center_size_overrides():
    m = PeLK(arch='tiny', kernel_sizes=[13, 11, 9, 5], center_sizes=[1, 3, 3, 5], out_indices=(0, 1, 2, 3))
    assert m.kernel_sizes == [13, 11, 9, 5] and m.center_sizes == [1, 3, 3, 5]
    assert m.depths == [3, 3, 9, 3] and m.channels == [124, 249, 499, 998]
    convs = [stage[0].token_mixer.conv for stage in m.stages]
    assert [c.kernel_size for c in convs] == [13, 11, 9, 5]
    assert [c.center_size for c in convs] == [1, 3, 3, 5]
    assert PeLK.resolve_arch('tiny-101', center_sizes=[5] * 4) == dict(
        PeLK.arch_settings['tiny-101'], center_sizes=[5] * 4)
    # an override is checked like an arch entry
    with pytest.raises(ValueError, match=r"kernel_sizes'\]=\[51, 49\] has 2 entries"):
        PeLK(kernel_sizes=[51, 49])
    with pytest.raises(ValueError, match='center_sizes must be a list'):
        PeLK(center_sizes=5)
