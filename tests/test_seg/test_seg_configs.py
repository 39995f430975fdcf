"""Every segmentation config parses, carries the paper's recipe (paper §5.2: UperNet, 512x512, 160k,
AdamW 1e-4 / 0.05, stage-wise decay 0.9, warm-up 1500 + poly, slide 512/341, SyncBN, AMP) and builds its model."""
import contextlib
import gc
from unittest import mock

import pytest
import torch
from mmengine.model import revert_sync_batchnorm

from pelk_mm.models.backbones.pelk import PeLK

T_WIDTHS = [124, 249, 499, 998]
B_WIDTHS = [166, 332, 665, 1331]
# name: (arch, drop_path_rate, decode in_channels, num_layers, kernel sizes, centre)
TABLE = {
    't': ('tiny', 0.4, T_WIDTHS, 6, [51, 49, 47, 13], 5),
    's': ('small', 0.3, T_WIDTHS, 12, [51, 49, 47, 13], 5),
    'b': ('base', 0.4, B_WIDTHS, 12, [51, 49, 47, 13], 5),
    'b101': ('base-101', 0.4, B_WIDTHS, 12, [101, 69, 67, 13], 7),
}


@pytest.mark.parametrize('name', sorted(TABLE))
def test_recipe(load_seg_config, name):
    arch, dpr, widths, num_layers, _, _ = TABLE[name]
    cfg = load_seg_config(name)
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['pelk_mm'], allow_failed_imports=False)
    bb = cfg.model.backbone
    assert bb.type == 'pelk_mm.PeLK' and bb.arch == arch and bb.drop_path_rate == dpr
    assert bb.out_indices == [0, 1, 2, 3] and bb.gap_before_final_norm is False
    assert bb.conv_norm_cfg.type == 'SyncBN'
    assert bb.init_cfg.type == 'Pretrained' and bb.init_cfg.prefix == 'backbone.'
    assert bb.init_cfg.checkpoint == f'work_dirs/pelk_{name}_in1k/epoch_300.pth'
    assert cfg.model.decode_head.type == 'UPerHead' and cfg.model.decode_head.in_channels == widths
    assert cfg.model.decode_head.num_classes == 150 and cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.model.auxiliary_head.type == 'FCNHead' and cfg.model.auxiliary_head.in_channels == widths[2]
    assert cfg.model.auxiliary_head.in_index == 2 and cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.model.test_cfg == dict(mode='slide', crop_size=(512, 512), stride=(341, 341))
    assert cfg.crop_size == (512, 512)

    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper' and ow.loss_scale == 'dynamic'
    assert ow.constructor == 'pelk_mm.LayerDecayOptimWrapperConstructor'
    assert ow.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert ow.paramwise_cfg == dict(decay_rate=0.9, decay_type='stage_wise', num_layers=num_layers)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.begin, warmup.end, warmup.by_epoch) == \
        ('LinearLR', 1e-6, 0, 1500, False)
    assert (poly.type, poly.power, poly.begin, poly.end, poly.eta_min, poly.by_epoch) == \
        ('PolyLR', 1.0, 1500, 160000, 0.0, False)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 160000

    train = cfg.train_dataloader
    assert train.batch_size == 2 and cfg.val_dataloader.batch_size == 1
    assert train.dataset.type == 'ADE20KDataset' and train.dataset.data_root == 'data/ade/ADEChallengeData2016'
    crop = [t for t in train.dataset.pipeline if t.type == 'RandomCrop'][0]
    assert crop.crop_size == (512, 512)
    assert cfg.val_evaluator.type == 'IoUMetric'


@contextlib.contextmanager
def no_weight_init():
    """Skip torch's default Linear/Conv initialisation while building (big models build in seconds)."""
    with mock.patch.object(torch.nn.Linear, 'reset_parameters', lambda self: None), \
            mock.patch.object(torch.nn.modules.conv._ConvNd, 'reset_parameters', lambda self: None):
        yield


# paper Table 2 "Params (M)" of the whole UperNet model: non-zeros, i.e. SLaK's 40 % sparsity on the backbone's
# 2-D/4-D weights (as SLaK sparsifies them), heads dense; the auxiliary FCN head is dropped at inference
PAPER_PARAMS_M = {'t': 62, 's': 84, 'b': 126, 'b101': 126}


@pytest.mark.parametrize('name', sorted(TABLE))
def test_builds(load_seg_config, name):
    from mmseg.registry import MODELS
    arch, _, widths, _, kernels, centre = TABLE[name]
    cfg = load_seg_config(name)
    cfg.model.backbone.init_cfg = None  # no checkpoint needed
    with no_weight_init():
        model = revert_sync_batchnorm(MODELS.build(cfg.model))
    bb = model.backbone
    assert isinstance(bb, PeLK)
    assert bb.channels == widths and bb.kernel_sizes == kernels and bb.center_sizes == [centre] * 4
    assert bb.depths == ([3, 3, 9, 3] if name == 't' else [3, 3, 27, 3])
    assert [hasattr(bb, f'norm{i}') for i in range(4)] == [True] * 4
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert model.decode_head.conv_seg.out_channels == 150 and model.auxiliary_head.conv_seg.out_channels == 150
    assert model.test_cfg.mode == 'slide'

    sparse = sum(p.numel() for p in bb.parameters() if p.ndim in (2, 4))
    dense = sum(p.numel() for p in bb.parameters()) - sparse
    heads = sum(p.numel() for n, p in model.named_parameters() if n.startswith('decode_head.'))
    nonzeros_m = (0.6 * sparse + dense + heads) / 1e6
    assert nonzeros_m == pytest.approx(PAPER_PARAMS_M[name], rel=0.02)
    del model, bb
    gc.collect()


def test_demo_config_only_shrinks(load_seg_config):
    """The demo keeps the T recipe's structure (model types, heads, optimizer constructor, SyncBN, AMP, schedule
    shape, evaluation) and changes sizes, lengths, data and the from-scratch learning rate."""
    t, demo = load_seg_config('t'), load_seg_config('demo')
    assert demo.demo_data == dict(kind='ade20k', root='data/demo')
    assert demo.train_dataloader.dataset.data_root == 'data/demo/ade/ADEChallengeData2016'
    assert demo.val_dataloader.dataset.data_root == 'data/demo/ade/ADEChallengeData2016'
    assert demo.test_dataloader.dataset.data_root == 'data/demo/ade/ADEChallengeData2016'
    for key in ('type', 'data_preprocessor.type', 'backbone.type', 'backbone.out_indices', 'backbone.conv_norm_cfg',
                'decode_head.type', 'decode_head.num_classes', 'decode_head.pool_scales', 'auxiliary_head.type',
                'auxiliary_head.num_classes', 'auxiliary_head.loss_decode', 'test_cfg.mode'):
        a, b = t.model, demo.model
        for part in key.split('.'):
            a, b = a[part], b[part]
        assert a == b, key
    assert demo.model.backbone.init_cfg is None
    for key in ('type', 'constructor', 'paramwise_cfg', 'loss_scale'):
        assert demo.optim_wrapper[key] == t.optim_wrapper[key], key
    assert [s.type for s in demo.param_scheduler] == [s.type for s in t.param_scheduler]
    assert demo.param_scheduler[-1].end == demo.train_cfg.max_iters <= 500
    assert demo.val_evaluator == t.val_evaluator
