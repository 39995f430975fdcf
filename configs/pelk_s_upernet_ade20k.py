# PeLK-S + UperNet, ADE20K 512x512, 160k iterations (paper Table 2: 49.7 mIoU single-scale). PeLK-T's recipe; what
# changes is the row below.
_base_ = './pelk_t_upernet_ade20k.py'
checkpoint_file = 'work_dirs/pelk_s_in1k/epoch_300.pth'  # ImageNet-1K PeLK-S checkpoint of configs/pelk_s_in1k.py
model = dict(backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint_file)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
