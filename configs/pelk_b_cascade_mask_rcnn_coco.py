# PeLK-B + Cascade Mask R-CNN, COCO 3x multi-scale + crop (paper Table 3: 52.9 AP box / 45.9 AP mask).
# Same recipe as PeLK-T; what changes is the row below (drop path and layer decay as mmdet's ConvNeXt-B config).
_base_ = './pelk_t_cascade_mask_rcnn_coco.py'

checkpoint_file = 'work_dirs/pelk_b_in1k/epoch_300.pth'  # ImageNet-1K PeLK-B checkpoint of configs/pelk_b_in1k.py

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.7,
        init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[166, 332, 665, 1331]))

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))
