# PeLK-S + UperNet, ADE20K 512x512, 160k iterations (paper Table 2: 49.7 mIoU single-scale).
_base_ = './_base_/upernet_pelk_ade20k_512x512_160k.py'
checkpoint = 'work_dirs/pelk_s_in1k/epoch_300.pth'  # set to your ImageNet-1k PeLK-S checkpoint
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3, init_cfg=dict(checkpoint=checkpoint)),
    decode_head=dict(in_channels=[124, 249, 499, 998]),
    auxiliary_head=dict(in_channels=499))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
