"""One training iteration of the real PeLK-T Cascade Mask R-CNN config (full widths, K=51 kernels, with_cp and
drop path as configured) on two 128x128 images with boxes and masks, through mmcv's compiled RoIAlign / NMS,
then inference on the same images."""
from __future__ import annotations

import copy
import importlib

import torch


def _build_t_model(load_det_config):
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm

    cfg = load_det_config('t')
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no ImageNet checkpoint here; PeLK's own random init
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
    assert model.backbone.with_cp and model.backbone.stages[2][-1].drop_path.drop_prob > 0

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
    backbone_grads = {n: p.grad for n, p in model.backbone.named_parameters()}
    assert all(torch.isfinite(g).all() for g in backbone_grads.values())
    zero = [n for n, g in backbone_grads.items() if not g.abs().sum() > 0]
    assert zero == []

    # the config's optimizer (AdamW + layer-wise decay) steps; on CPU the AMP wrapper is replaced, as tools/train.py does
    ow_cfg = copy.deepcopy(cfg.optim_wrapper)
    ow_cfg.type = 'OptimWrapper'
    ow_cfg.pop('loss_scale', None)
    optim_wrapper = build_optim_wrapper(model, ow_cfg)
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
