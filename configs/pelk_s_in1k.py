# PeLK-S on ImageNet-1K: PeLK-T's recipe with depths 3-3-27-3 and drop path 0.4.
_base_ = './pelk_t_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4))
