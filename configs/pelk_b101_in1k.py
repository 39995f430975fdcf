# PeLK-B-101 on ImageNet-1K, 224x224: PeLK-B's recipe with kernels 101-69-67-13 and 7x7 fine centres, the
# ImageNet-1K model that the B-101 ADE20K, COCO and 384 configs start from.
_base_ = './pelk_b_in1k.py'

model = dict(backbone=dict(arch='base-101'))
