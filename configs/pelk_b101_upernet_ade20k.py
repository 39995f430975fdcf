# PeLK-B-101 (kernels 101-69-67-13, 7x7 centre) + UperNet, ADE20K 512x512, 160k iterations
# (paper Table 2: 50.6 mIoU single-scale). Same recipe and widths as PeLK-B.
_base_ = './pelk_b_upernet_ade20k.py'
checkpoint_file = 'work_dirs/pelk_b101_in1k/epoch_300.pth'  # ImageNet-1K checkpoint of configs/pelk_b101_in1k.py
model = dict(backbone=dict(arch='base-101', init_cfg=dict(checkpoint=checkpoint_file)))
