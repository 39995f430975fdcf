# PeLK-T + Cascade Mask R-CNN (FPN, 4conv1fc GIoU heads) on COCO 2017, 3x schedule with multi-scale + crop training
# (paper Table 3: 51.4 AP box / 44.6 AP mask), following mmdet's
# convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py.
# Data: COCO 2017 at data/coco/ (layout in configs/_base_/datasets/coco_instance_ms_crop.py).
# 8 GPUs x 2 images:  bash tools/dist_train.sh configs/pelk_t_cascade_mask_rcnn_coco.py 8
_base_ = [
    './_base_/models/cascade_mask_rcnn_pelk_fpn.py',
    './_base_/datasets/coco_instance_ms_crop.py',
    './_base_/schedules/coco_adamw_layer_decay_3x.py',
    'mmdet::_base_/default_runtime.py',
    './_base_/default_runtime.py',
]

env_cfg = dict(dist_cfg=dict(timeout=_base_.dist_timeout))  # a stalled collective fails the run

# ImageNet-1K PeLK-T checkpoint saved by training configs/pelk_t_in1k.py (or any state dict whose backbone keys
# start with `backbone.`); elsewhere: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/pelk_t_in1k.pth
checkpoint_file = 'work_dirs/pelk_t_in1k/epoch_300.pth'

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        # activation checkpointing: ~2-3x less backbone activation memory at 1333x800 for ~25% more backbone
        # compute (see README "Memory: with_cp"); turn off when memory allows
        with_cp=True,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    neck=dict(in_channels=[124, 249, 499, 998]))

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
