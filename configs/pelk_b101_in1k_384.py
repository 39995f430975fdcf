# PeLK-B-101 at 384x384 (paper Table 4: 85.8 top-1): kernels 101-69-67-13 with a 7x7 centre, fine-tuned at 384
# from the 224 PeLK-B-101 model of configs/pelk_b101_in1k.py like pelk_b_in1k_384.py.
_base_ = './pelk_b_in1k_384.py'

checkpoint_file = 'work_dirs/pelk_b101_in1k/epoch_300.pth'
model = dict(backbone=dict(arch='base-101'), init_cfg=dict(checkpoint=checkpoint_file))
