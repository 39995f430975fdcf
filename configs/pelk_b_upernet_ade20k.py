# PeLK-B + UperNet, ADE20K 512x512, 160k iterations (paper Table 2: 50.4 mIoU single-scale). PeLK-T's recipe; what
# changes is the row below.
_base_ = './pelk_t_upernet_ade20k.py'
checkpoint_file = 'work_dirs/pelk_b_in1k/epoch_300.pth'  # ImageNet-1K PeLK-B checkpoint of configs/pelk_b_in1k.py
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4, init_cfg=dict(checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[166, 332, 665, 1331]),
    auxiliary_head=dict(in_channels=665))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
