"""One training iteration of the real PeLK-T Cascade Mask R-CNN config (full widths, K=51 kernels, with_cp and
drop path as configured) on two 128x128 images with boxes and masks, through mmcv's compiled RoIAlign / NMS,
then inference on the same images."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch


def _build_t_model(load_det_config):
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm

    cfg = load_det_config('t')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no ImageNet checkpoint here; PeLK's own random init
    # same architecture; fewer RoIs per image so that the 4conv1fc heads (256 ch) stay cheap on a CPU:
    # 512 sampled RoIs x 2 images x 3 stages would cost ~2 TFLOPs per step, 1000 test proposals ~1.4 TFLOPs
    for stage in model_cfg.train_cfg.rcnn:
        stage.sampler.num = 32
    model_cfg.train_cfg.rpn_proposal.max_per_img = 200
    model_cfg.test_cfg.rpn.max_per_img = 50
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(model_cfg))  # SyncBN -> BN, as the Runner does single-process
    model.init_weights()
    return cfg, model


def test_t_config_train_iteration_and_predict(load_det_config):
    from mmcv.ops import RoIAlign
    from mmdet.testing import demo_mm_inputs
    from mmengine.optim import build_optim_wrapper

    importlib.import_module('mmcv._ext')  # the compiled ops, not mmcv-lite
    cfg, model = _build_t_model(load_det_config)
    assert isinstance(model.roi_head.bbox_roi_extractor[0].roi_layers[0], RoIAlign)
    assert all(block.with_cp for stage in model.backbone.stages for block in stage)
    assert model.backbone.stages[2][-1].drop_path.drop_prob > 0

    packed = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128)] * 2, num_items=[3, 2], num_classes=80,
                            with_mask=True)
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    for stage in range(3):
        for key in ('loss_cls', 'loss_bbox', 'loss_mask'):
            assert f's{stage}.{key}' in losses
    assert {'loss_rpn_cls', 'loss_rpn_bbox'} <= set(losses)
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()

    # every trainable parameter reaches the loss: DDP can run with find_unused_parameters=False
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # (a block dropped by drop path gets exact zero gradients this step: used, just zeroed, which DDP is fine with)
    nonzero = [n for n, p in model.backbone.named_parameters() if p.grad.abs().sum() > 0]
    assert len(nonzero) > 0.8 * len(list(model.backbone.parameters()))

    # the config's optimizer (AdamW + layer-wise decay) steps; on CPU the AMP wrapper is replaced, as tools/train.py does
    ow_cfg = copy.deepcopy(cfg.optim_wrapper)
    ow_cfg.type = 'OptimWrapper'
    ow_cfg.pop('loss_scale', None)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
    lr_of = {n: g['lr'] for g in optim_wrapper.optimizer.param_groups for n in g['param_names']}
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    # layer-wise decay 0.7 over num_layers=6: stem id 0, stage 3 id 6, neck/heads id 7 (full lr)
    assert lr_of['backbone.downsample_layers.0.0.weight'] == pytest.approx(2e-4 * 0.7 ** 7)
    assert lr_of['backbone.stages.3.0.pointwise_conv1.weight'] == pytest.approx(2e-4 * 0.7)
    assert lr_of['neck.lateral_convs.0.conv.weight'] == pytest.approx(2e-4)
    assert lr_of['roi_head.bbox_head.2.fc_cls.weight'] == pytest.approx(2e-4)
    before = model.backbone.stages[0][0].token_mixer.conv.weight.detach().clone()
    optim_wrapper.step()
    assert not torch.equal(before, model.backbone.stages[0][0].token_mixer.conv.weight)

    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2
    for result in results:
        pred = result.pred_instances
        assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels) == len(pred.bboxes)
        assert pred.masks.shape[1:] == (128, 128)
