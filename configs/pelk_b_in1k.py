# PeLK-B on ImageNet-1K: PeLK-S's recipe (incl. SLaK's S/B sparsity schedule) with widths 166-332-665-1331 and
# drop path 0.5.
_base_ = './pelk_s_in1k.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1331))
