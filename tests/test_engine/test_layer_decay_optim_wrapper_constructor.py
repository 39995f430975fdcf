"""pelk_mm.LayerDecayOptimWrapperConstructor: exact per-parameter lr scale / weight decay on a tiny PeLK (as mmseg's
tests/test_engine/test_layer_decay_optimizer_constructor.py does for ConvNeXt), equality with the stock mmseg
constructor where that one works, registry resolution from the three codebases, and the error messages."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from pelk_mm.engine import LayerDecayOptimWrapperConstructor
from pelk_mm.models.backbones.pelk import PeLK

BASE_LR = 1.0
BASE_WD = 0.05
RATE = 0.5  # powers of two: the expected scales are exact


class ToySegmentor(nn.Module):
    """Just ``backbone`` + a head, the attributes the constructor looks at in mmseg/mmdet/mmpretrain models."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Conv2d(8, 3, 1)


def tiny_pelk(depths=(1, 1, 2, 1), **kwargs):
    kwargs.setdefault('kpe_mode', 'input')
    return PeLK(arch=dict(depths=list(depths), channels=[8, 8, 16, 16], kernel_sizes=[7, 7, 5, 5],
                          center_sizes=[3, 3, 3, 3]),
                out_indices=[0, 1, 2, 3], gap_before_final_norm=False, **kwargs)


def build(model, **paramwise_cfg):
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
               constructor='pelk_mm.LayerDecayOptimWrapperConstructor', paramwise_cfg=paramwise_cfg)
    return build_optim_wrapper(model, cfg)


def per_param(optim_wrapper):
    """name -> (lr, lr_scale, weight_decay, group_name) from the built optimizer."""
    out = {}
    for group in optim_wrapper.optimizer.param_groups:
        assert len(group['params']) == len(group['param_names'])
        for name in group['param_names']:
            assert name not in out, f'{name} in two groups'
            out[name] = (group['lr'], group['lr_scale'], group['weight_decay'], group['group_name'])
    return out


def decayed_names(depths, kpe=True, head=('decode_head.weight',)):
    """Hand list of the parameters that keep weight decay: every >= 2-D weight (stem/downsampling convs, the
    shared peripheral weight, the small-kernel conv, the two MLP linears, the stage KPE) and the head's conv."""
    names = {'backbone.downsample_layers.0.0.weight'}
    names |= {f'backbone.downsample_layers.{i}.1.weight' for i in range(1, 4)}
    for i, depth in enumerate(depths):
        if kpe:
            names.add(f'backbone.stages.{i}.kpe')
        for j in range(depth):
            block = f'backbone.stages.{i}.{j}'
            names |= {f'{block}.token_mixer.conv.weight', f'{block}.token_mixer.conv.small_conv.weight',
                      f'{block}.pointwise_conv1.weight', f'{block}.pointwise_conv2.weight'}
    return names | set(head)


def check(model, optim_wrapper, expected_id, num_layers, decayed):
    got = per_param(optim_wrapper)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(got) == sorted(names)
    assert decayed <= set(names)
    for name in names:
        lr, lr_scale, wd, group_name = got[name]
        layer = expected_id(name)
        scale = RATE ** (num_layers + 1 - layer)
        assert lr_scale == scale, (name, lr_scale, scale)
        assert lr == BASE_LR * scale, name
        assert wd == (BASE_WD if name in decayed else 0.0), (name, wd)
        assert group_name == f'layer_{layer}_' + ('decay' if name in decayed else 'no_decay'), name


def stage_wise_id(name):
    """Hand table, stage-wise, num_layers=6: downsampling 0, stage i -> i + 1, output norms and head 7."""
    if name.startswith('backbone.downsample_layers.'):
        return 0
    for i in range(4):
        if name.startswith(f'backbone.stages.{i}.'):
            return i + 1
    assert name.startswith(('backbone.norm', 'decode_head.')), name
    return 7


def test_stage_wise_groups_exact():
    depths = (1, 1, 2, 1)
    model = ToySegmentor(tiny_pelk(depths))
    ow = build(model, decay_rate=RATE, decay_type='stage_wise', num_layers=6)
    check(model, ow, stage_wise_id, 6, decayed_names(depths))
    groups = {g['group_name']: g for g in ow.optimizer.param_groups}
    # 5 depths (stem/downsampling, 4 stages) + the top, each with decay / no_decay
    assert sorted(groups) == sorted(f'layer_{i}_{d}' for i in (0, 1, 2, 3, 4, 7) for d in ('decay', 'no_decay'))
    assert groups['layer_0_decay']['lr_scale'] == 1 / 128
    assert groups['layer_4_no_decay']['lr_scale'] == 1 / 8
    assert groups['layer_7_decay']['param_names'] == ['decode_head.weight']
    assert groups['layer_7_no_decay']['lr_scale'] == 1.0
    assert 'backbone.stages.2.1.gamma' in groups['layer_3_no_decay']['param_names']
    assert 'backbone.stages.2.kpe' in groups['layer_3_decay']['param_names']


def layer_wise_id(name):
    """Hand table, ConvNeXt layer-wise, 6 layers: stem 0, stage0 1, ds1+stage1 2, ds2 3, stage2 block j 3 + j//3
    (its KPE with block 0), ds3+stage3 6, output norms and head 7."""
    table = {'backbone.downsample_layers.0.': 0, 'backbone.stages.0.': 1, 'backbone.downsample_layers.1.': 2,
             'backbone.stages.1.': 2, 'backbone.downsample_layers.2.': 3, 'backbone.stages.2.kpe': 3,
             'backbone.stages.2.0.': 3, 'backbone.stages.2.1.': 3, 'backbone.stages.2.2.': 3,
             'backbone.stages.2.3.': 4, 'backbone.downsample_layers.3.': 6, 'backbone.stages.3.': 6}
    for prefix, layer in table.items():
        if name.startswith(prefix):
            return layer
    assert name.startswith(('backbone.norm', 'decode_head.')), name
    return 7


@pytest.mark.parametrize('style', ['mmseg', 'mmpretrain'])
def test_layer_wise_groups_exact(style):
    depths = (1, 1, 4, 1)
    model = ToySegmentor(tiny_pelk(depths))
    # mmseg/mmdet style (num_layers given, must match the backbone) or mmpretrain style (taken from the backbone)
    cfg = dict(decay_rate=RATE, decay_type='layer_wise', num_layers=6) if style == 'mmseg' \
        else dict(layer_decay_rate=RATE)
    ow = build(model, **cfg)
    check(model, ow, layer_wise_id, 6, decayed_names(depths))
    assert {g['layer_id'] for g in ow.optimizer.param_groups} == {0, 1, 2, 3, 4, 6, 7}


def test_layer_wise_12_layers_from_get_layer_depth():
    depths = (1, 1, 10, 1)  # stage 3 deeper than 9 blocks -> ConvNeXt's 12-layer scheme
    model = ToySegmentor(tiny_pelk(depths))
    ow = build(model, layer_decay_rate=RATE)
    got = per_param(ow)
    assert got['backbone.stages.2.9.gamma'][1] == RATE ** (13 - (3 + 9 // 3))
    assert got['backbone.stages.3.0.gamma'][1] == RATE ** (13 - 12)
    assert got['backbone.downsample_layers.0.0.weight'][1] == RATE ** 13
    assert got['decode_head.weight'][1] == 1.0
    with pytest.raises(ValueError, match=r'num_layers=6 but PeLK.get_layer_depth uses 12'):
        build(model, decay_rate=RATE, decay_type='layer_wise', num_layers=6)


def test_custom_keys_and_decay_options_compose():
    depths = (1, 1, 2, 1)
    model = ToySegmentor(tiny_pelk(depths))
    ow = build(model, decay_rate=RATE, decay_type='stage_wise', num_layers=6, flat_decay_mult=1.0,
               custom_keys={'.kpe': dict(decay_mult=0.0), 'decode_head': dict(lr_mult=10.0)})
    got = per_param(ow)
    assert got['backbone.stages.1.kpe'][1:3] == (1 / 32, 0.0)  # configured: KPE without decay
    assert got['backbone.stages.1.0.gamma'][1:3] == (1 / 32, BASE_WD)  # flat_decay_mult=1 keeps 1-D decay
    assert got['backbone.stages.1.0.token_mixer.conv.weight'][2] == BASE_WD
    assert got['decode_head.weight'][0] == BASE_LR * 10.0 and got['decode_head.weight'][1] == 1.0
    assert got['backbone.stages.3.0.pointwise_conv1.weight'][0] == BASE_LR / 8


def test_frozen_params_skipped():
    model = ToySegmentor(tiny_pelk(frozen_stages=1))
    got = per_param(build(model, decay_rate=RATE, decay_type='stage_wise', num_layers=6))
    assert not any(n.startswith(('backbone.stages.0.', 'backbone.downsample_layers.0.')) for n in got)
    assert 'backbone.stages.1.kpe' in got


class ToyConvNeXt(nn.Module):
    """ConvNeXt-style names, no get_layer_depth; the class name makes mmseg's stock constructor accept it."""

    def __init__(self, pelk: PeLK):
        super().__init__()
        self.downsample_layers = pelk.downsample_layers
        self.stages = pelk.stages
        self.norm3 = pelk.norm3


@pytest.mark.parametrize('decay_type,num_layers', [('stage_wise', 6), ('stage_wise', 12)])
def test_stage_wise_names_match_stock_mmseg(decay_type, num_layers):
    import mmseg.engine  # noqa: F401  registers LearningRateDecayOptimizerConstructor
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_CONSTRUCTORS

    depths = (1, 1, 10, 1) if num_layers == 12 else (1, 1, 4, 1)
    model = ToySegmentor(ToyConvNeXt(tiny_pelk(depths, kpe_mode=None)))  # mmseg's layer_wise cannot parse `kpe`
    paramwise_cfg = dict(decay_rate=RATE, decay_type=decay_type, num_layers=num_layers)
    ours = per_param(build(model, **paramwise_cfg))
    stock_cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))
    stock = MMSEG_CONSTRUCTORS.get('LearningRateDecayOptimizerConstructor')(stock_cfg, paramwise_cfg)(model)
    stock_pp = {}
    for g in stock.optimizer.param_groups:
        for n in g['param_names']:
            stock_pp[n] = (g['lr'], g['lr_scale'], g['weight_decay'])
    assert sorted(ours) == sorted(stock_pp)
    for name, (lr, lr_scale, wd) in stock_pp.items():
        assert ours[name][:3] == pytest.approx((lr, lr_scale, wd)), name


def test_convnext_get_layer_depth_matches_stock_mmseg():
    """mmpretrain's ConvNeXt goes through its get_layer_depth and agrees with mmseg's name-based ids."""
    import mmseg.engine  # noqa: F401
    from mmpretrain.models.backbones import ConvNeXt
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_CONSTRUCTORS

    model = ToySegmentor(ConvNeXt(arch=dict(depths=[1, 1, 4, 1], channels=[8, 8, 16, 16]), out_indices=[0, 1, 2, 3],
                                  gap_before_final_norm=False))
    paramwise_cfg = dict(decay_rate=RATE, decay_type='layer_wise', num_layers=6)
    ours = per_param(build(model, **paramwise_cfg))
    stock_cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD))
    stock = MMSEG_CONSTRUCTORS.get('LearningRateDecayOptimizerConstructor')(stock_cfg, paramwise_cfg)(model)
    n = 0
    for g in stock.optimizer.param_groups:
        for name in g['param_names']:
            assert ours[name][:3] == pytest.approx((g['lr'], g['lr_scale'], g['weight_decay'])), name
            n += 1
    assert n == len(ours)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_scoped_name_resolves_from_every_codebase(scope):
    model = ToySegmentor(tiny_pelk())
    with DefaultScope.overwrite_default_scope(scope):
        ow = build(model, decay_rate=RATE, decay_type='stage_wise', num_layers=6)
    assert isinstance(ow.optimizer, torch.optim.AdamW)
    assert per_param(ow)['backbone.stages.0.0.pointwise_conv1.weight'][1] == 1 / 64


def test_one_optimizer_step_uses_group_lrs():
    model = ToySegmentor(tiny_pelk())
    ow = build(model, decay_rate=RATE, decay_type='stage_wise', num_layers=6)
    stem = model.backbone.downsample_layers[0][0].weight
    head = model.decode_head.weight
    before = stem.detach().clone(), head.detach().clone()
    torch.manual_seed(0)
    out = model.backbone(torch.randn(2, 3, 32, 32)) + (model.decode_head(torch.randn(1, 8, 2, 2)), )
    loss = sum((o * torch.randn_like(o)).sum() for o in out)  # (not o.mean(): LN outputs have zero mean)
    ow.update_params(loss)
    # AdamW's first step moves each weight by about lr (times sign), plus the decoupled weight decay
    step_stem = (stem.detach() - before[0] * (1 - BASE_LR / 128 * BASE_WD)).abs().max().item()
    step_head = (head.detach() - before[1] * (1 - BASE_LR * BASE_WD)).abs().max().item()
    assert step_stem == pytest.approx(BASE_LR / 128, rel=1e-3)
    assert step_head == pytest.approx(BASE_LR, rel=1e-3)


@pytest.mark.parametrize('paramwise_cfg,match', [
    (dict(decay_rate=0.9, decay_type='block_wise', num_layers=6), r"decay_type must be one of .*'block_wise'"),
    (dict(decay_rate=0.9, decay_type='stage_wise'), r'num_layers is required'),
    (dict(decay_rate=0.9, decay_type='stage_wise', num_layers=0), r'num_layers must be a positive int, got paramwise_cfg.num_layers=0'),
    (dict(decay_rate=0.9, decay_type='stage_wise', num_layers='6'), r"num_layers must be a positive int, got paramwise_cfg.num_layers='6'"),
    (dict(decay_rate=1.5, num_layers=6), r'decay_rate must be a number in \(0, 1\], got 1.5'),
    (dict(decay_rate=0.9, layer_decay_rate=0.9), r'both decay_rate=0.9 .* and layer_decay_rate=0.9'),
    (dict(num_layers=6), r'needs paramwise_cfg.decay_rate'),
])
def test_bad_config_raises(paramwise_cfg, match):
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05))
    with pytest.raises(ValueError, match=match):
        LayerDecayOptimWrapperConstructor(cfg, paramwise_cfg)


def test_bad_model_raises():
    with pytest.raises(ValueError, match='needs a model with a `backbone`'):
        build(nn.Conv2d(3, 3, 1), decay_rate=RATE, decay_type='stage_wise', num_layers=6)
    resnet_like = ToySegmentor(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match=r"cannot assign stage_wise ids to Sequential: .*`downsample_layers"):
        build(resnet_like, decay_rate=RATE, decay_type='stage_wise', num_layers=6)
    with pytest.raises(ValueError, match=r"Sequential has no get_layer_depth\(\), .*use decay_type='stage_wise'"):
        build(resnet_like, layer_decay_rate=RATE)
    no_depths = ToySegmentor(ToyConvNeXt(tiny_pelk(kpe_mode=None)))
    with pytest.raises(ValueError, match=r"ToyConvNeXt has no get_layer_depth\(\), so decay_type='layer_wise'"):
        build(no_depths, decay_rate=RATE, decay_type='layer_wise', num_layers=6)
    with pytest.raises(ValueError, match=r'num_layers=3 is too small .* stage_wise id 4'):
        build(ToySegmentor(tiny_pelk()), decay_rate=RATE, decay_type='stage_wise', num_layers=3)


def test_mmpretrain_image_classifier_fine_tune_style():
    """An mmpretrain fine-tuning config: ImageClassifier + `layer_decay_rate`, mmpretrain default scope."""
    from mmpretrain.registry import MODELS as CLS_MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = CLS_MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='pelk_mm.PeLK', arch=dict(depths=[1, 1, 4, 1], channels=[8, 8, 16, 16],
                                                         kernel_sizes=[7, 7, 5, 5], center_sizes=[3, 3, 3, 3])),
            head=dict(type='LinearClsHead', num_classes=4, in_channels=16)))
        ow = build(model, layer_decay_rate=RATE)
    got = per_param(ow)
    assert got['head.fc.weight'][1:3] == (1.0, BASE_WD) and got['head.fc.bias'][1:3] == (1.0, 0.0)
    assert got['backbone.norm3.weight'][1:3] == (1.0, 0.0)  # the classification output norm: top layer
    assert got['backbone.downsample_layers.0.0.weight'][1:3] == (RATE ** 7, BASE_WD)
    assert got['backbone.stages.2.3.pointwise_conv1.weight'][1] == RATE ** (7 - 4)
    assert got['backbone.stages.0.kpe'][1:3] == (RATE ** 6, BASE_WD)


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base', 'tiny-101', 'base-101'])
def test_layer_ids_of_the_real_archs_are_convnexts(arch):
    """Every parameter of the real PeLK archs gets ConvNeXt's layer id: mmpretrain's ConvNeXt.get_layer_depth on the
    same names (an independent copy of the scheme), the stage embedding with the stage's first block."""
    from types import SimpleNamespace

    from mmpretrain.models.backbones import ConvNeXt
    from pelk_mm.apis.validate import _params_on_meta
    with _params_on_meta():  # names and shapes only: no memory, no initialisation
        model = ToySegmentor(PeLK(arch=arch, out_indices=[0, 1, 2, 3], gap_before_final_norm=False))
    reference = SimpleNamespace(depths=model.backbone.depths)
    got = per_param(build(model, layer_decay_rate=RATE))
    num_layers = 12 if model.backbone.depths[2] > 9 else 6
    for name in got:
        ref_name = name.replace('.kpe', '.0.kpe')  # ConvNeXt's scheme reads a block index after the stage
        layer_id, total = ConvNeXt.get_layer_depth(reference, ref_name, 'backbone.')
        assert total == num_layers + 2
        assert got[name][1] == RATE ** (num_layers + 1 - layer_id), name
    assert len(got) == len([p for p in model.parameters() if p.requires_grad])
