# PeLK-B-101 + Cascade Mask R-CNN, COCO 3x multi-scale + crop (paper Table 3: 53.1 AP box / 46.1 AP mask).
# PeLK-B with kernels [101, 69, 67, 13] and 7x7 fine centres; everything else as the PeLK-B config.
_base_ = './pelk_b_cascade_mask_rcnn_coco.py'

checkpoint_file = 'work_dirs/pelk_b101_in1k/epoch_300.pth'  # ImageNet-1K checkpoint of configs/pelk_b101_in1k.py

model = dict(backbone=dict(arch='base-101', init_cfg=dict(checkpoint=checkpoint_file)))
