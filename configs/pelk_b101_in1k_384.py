# PeLK-B-101 at 384x384 (paper Table 4: 85.8 top-1): kernels 101-69-67-13 with a 7x7 centre, fine-tuned at 384
# from the 224 PeLK-B-101 model like pelk_b_in1k_384.py (train that with --cfg-options model.backbone.arch=base-101).
_base_ = './pelk_b_in1k_384.py'

model = dict(backbone=dict(arch='base-101'),
             init_cfg=dict(checkpoint='work_dirs/pelk_b101_in1k/epoch_300.pth'))
