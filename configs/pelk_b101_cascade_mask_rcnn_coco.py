# PeLK-B-101 + Cascade Mask R-CNN, COCO 3x multi-scale + crop (paper Table 3: 53.1 AP box / 46.1 AP mask).
# PeLK-B with kernels [101, 69, 67, 13] and 7x7 fine centres; everything else as the PeLK-B config.
_base_ = './pelk_b_cascade_mask_rcnn_coco.py'

checkpoint_file = 'checkpoints/pelk_b101_in1k.pth'  # ImageNet-1K PeLK-B-101 checkpoint: set this path

model = dict(
    backbone=dict(
        arch='base-101',
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')))
