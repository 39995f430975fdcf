# PeLK-S + Cascade Mask R-CNN, COCO 3x multi-scale + crop (paper Table 3: 52.2 AP box / 45.3 AP mask).
# Same recipe as PeLK-T; what changes is the row below (drop path and layer decay as mmdet's ConvNeXt-S config).
_base_ = './pelk_t_cascade_mask_rcnn_coco.py'

checkpoint_file = 'work_dirs/pelk_s_in1k/epoch_300.pth'  # ImageNet-1K PeLK-S checkpoint of configs/pelk_s_in1k.py

model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[124, 249, 499, 998]))

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=12))
