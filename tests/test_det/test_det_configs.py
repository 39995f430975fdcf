"""The COCO Cascade Mask R-CNN configs: they parse, carry the recipe of paper §5.3 / mmdet's ConvNeXt 3x configs,
and build (with ``init_cfg=None``) into models whose backbone widths match the FPN."""
from __future__ import annotations

import copy

import pytest
import torch

# size -> (arch, drop_path_rate, FPN in_channels, layer decay rate, num_layers); paper §5.3 / Table 3 and mmdet's
# ConvNeXt Cascade Mask R-CNN 3x configs (T 0.4 / 0.7 / 6, S 0.6 / 0.7 / 12, B 0.7 / 0.8 / 12).
ROWS = {
    't': ('tiny', 0.4, [124, 249, 499, 998], 0.7, 6),
    's': ('small', 0.6, [124, 249, 499, 998], 0.7, 12),
    'b': ('base', 0.7, [166, 332, 665, 1331], 0.8, 12),
    'b101': ('base-101', 0.7, [166, 332, 665, 1331], 0.8, 12),
}


def _without_init(model_cfg):
    cfg = copy.deepcopy(model_cfg)
    cfg.backbone.init_cfg = None
    return cfg


@pytest.mark.parametrize('size', sorted(ROWS))
def test_config_recipe(load_det_config, size):
    from pelk_mm.models.backbones.pelk import PeLK

    cfg = load_det_config(size)
    arch, dpr, in_channels, decay_rate, num_layers = ROWS[size]
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(imports=['pelk_mm'], allow_failed_imports=False)

    backbone = cfg.model.backbone
    assert backbone.type == 'pelk_mm.PeLK'
    assert backbone.arch == arch
    assert backbone.drop_path_rate == dpr
    assert backbone.out_indices == [0, 1, 2, 3]
    assert backbone.gap_before_final_norm is False
    assert backbone.conv_norm_cfg == dict(type='SyncBN', requires_grad=True)
    assert backbone.with_cp is True
    assert backbone.init_cfg.type == 'Pretrained' and backbone.init_cfg.prefix == 'backbone.'
    assert backbone.init_cfg.checkpoint == cfg.checkpoint_file
    # nothing of mmdet's ResNet backbone survives the _delete_
    assert not {'depth', 'num_stages', 'style', 'norm_eval'} & set(backbone)
    assert cfg.model.neck.in_channels == in_channels == PeLK.arch_settings[arch]['channels']

    heads = cfg.model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [
        [0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    for head in heads:
        assert (head.type, head.num_shared_convs, head.num_shared_fcs) == ('ConvFCBBoxHead', 4, 1)
        assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0) and head.reg_decoded_bbox
        assert head.norm_cfg == dict(type='SyncBN', requires_grad=True)
        assert head.num_classes == 80

    # 3x schedule, AdamW 2e-4 / wd 0.05, layer-wise decay, AMP
    assert cfg.train_cfg.max_epochs == 36
    steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR']
    assert len(steps) == 1 and steps[0].milestones == [27, 33] and steps[0].end == 36
    ow = cfg.optim_wrapper
    assert ow.type == 'AmpOptimWrapper'
    assert ow.constructor == 'pelk_mm.LayerDecayOptimWrapperConstructor'
    assert ow.paramwise_cfg == dict(decay_rate=decay_rate, decay_type='layer_wise', num_layers=num_layers)
    assert ow.optimizer == dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16

    # data: COCO at data/coco/, multi-scale 480..800 (step 32) or resize-crop-resize
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == 'data/coco/'
    assert cfg.val_evaluator.ann_file == 'data/coco/annotations/instances_val2017.json'
    assert cfg.val_evaluator.metric == ['bbox', 'segm']
    choice = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice')
    ms, crop = choice.transforms
    assert [s[0] for s in ms[0].scales] == list(range(480, 801, 32))
    assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert crop[1].crop_size == (384, 600)


def test_num_layers_matches_backbone(load_det_config):
    """The paramwise num_layers of each config is the layer count PeLK.get_layer_depth uses for its arch."""
    from pelk_mm.models.backbones.pelk import PeLK

    for size, (arch, *_, num_layers) in ROWS.items():
        depths = PeLK.arch_settings[arch]['depths']
        max_layer_id = 12 if depths[-2] > 9 else 6
        assert num_layers == max_layer_id, size


# paper §4: kernel sizes per stage (7x7 fine centres for PeLK-101, 5x5 otherwise)
KERNELS = {'t': [51, 49, 47, 13], 's': [51, 49, 47, 13], 'b': [51, 49, 47, 13], 'b101': [101, 69, 67, 13]}


@pytest.mark.parametrize('size', sorted(ROWS))
def test_config_builds(load_det_config, size):
    """Every config builds (random init) with the paper's kernels, and the FPN takes the backbone's output widths
    (checked on the built modules; test_det_train_step runs the T model end to end)."""
    from mmdet.registry import MODELS
    from pelk_mm.models.layers.peripheral_conv import PeripheralConv2d

    cfg = load_det_config(size)
    model = MODELS.build(_without_init(cfg.model))
    assert type(model).__name__ == 'CascadeRCNN'
    assert type(model.backbone).__name__ == 'PeLK'
    convs = [m for m in model.backbone.modules() if isinstance(m, PeripheralConv2d)]
    assert len(convs) == sum(model.backbone.depths)
    assert sorted({m.kernel_size for m in convs}) == sorted(KERNELS[size])
    assert {m.center_size for m in convs} == ({7} if size == 'b101' else {5})
    assert {type(m.norm).__name__ for m in convs} == {'SyncBatchNorm'}  # reverted to BN off-GPU by the Runner
    assert all(b.with_cp for stage in model.backbone.stages for b in stage)
    out_widths = [getattr(model.backbone, f'norm{i}').weight.shape[0] for i in range(4)]
    assert not hasattr(model.backbone, 'norm4')
    assert [conv.conv.in_channels for conv in model.neck.lateral_convs] == out_widths == ROWS[size][2]
    assert [len(h.shared_convs) for h in model.roi_head.bbox_head] == [4, 4, 4]


def test_demo_config_only_shrinks_t(load_det_config):
    """The CPU demo inherits the T recipe and only shrinks it (data, widths, scales, schedule)."""
    from pelk_mm.datasets import COCO_DEMO_CLASSES

    demo, t = load_det_config('demo'), load_det_config('t')
    assert demo.demo_data == dict(kind='coco', root='data/demo')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert demo[loader].dataset.data_root == 'data/demo/coco/'
        assert tuple(demo[loader].dataset.metainfo.classes) == COCO_DEMO_CLASSES
    assert demo.val_evaluator.ann_file == 'data/demo/coco/annotations/instances_val2017.json'
    heads = demo.model.roi_head.bbox_head
    assert [h.num_classes for h in heads] + [demo.model.roi_head.mask_head.num_classes] == [4] * 4
    for head, t_head in zip(heads, t.model.roi_head.bbox_head):
        for key in ('type', 'num_shared_convs', 'num_shared_fcs', 'loss_bbox', 'bbox_coder', 'reg_decoded_bbox'):
            assert head[key] == t_head[key]
    assert demo.model.backbone.type == t.model.backbone.type and demo.model.backbone.init_cfg is None
    assert demo.model.backbone.with_cp is True  # exercised under DDP by tools/dist_train.sh
    assert demo.optim_wrapper.constructor == t.optim_wrapper.constructor
    assert demo.optim_wrapper.paramwise_cfg == t.optim_wrapper.paramwise_cfg
    assert [len(s.sampler) for s in demo.model.train_cfg.rcnn] == [len(s.sampler) for s in t.model.train_cfg.rcnn]
    assert [s.assigner.pos_iou_thr for s in demo.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
    choice = next(p for p in demo.train_dataloader.dataset.pipeline if p.type == 'RandomChoice')
    assert len(choice.transforms) == 2  # multi-scale | resize-crop-resize, as the full config


def test_demo_model_trains_and_every_param_gets_a_gradient(load_det_config):
    """One step of the demo model (what tools/dist_train.sh runs under DDP): finite loss, no parameter without a
    gradient, so DistributedDataParallel needs no find_unused_parameters."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.model import revert_sync_batchnorm

    cfg = load_det_config('demo')
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    model.train()
    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 160, 160)] * 2, num_items=[2, 3], num_classes=4,
                            with_mask=True)
    loss, _ = model.parse_losses(model(**model.data_preprocessor(packed, True), mode='loss'))
    assert torch.isfinite(loss)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
