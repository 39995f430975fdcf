# PeLK-T + UperNet, ADE20K 512x512, 160k iterations (paper Table 2: 48.1 mIoU single-scale): the ConvNeXt/SLaK
# recipe that PeLK follows (paper §5.2), fine-tuning the ImageNet-1K PeLK-T model. The S/B/B-101 configs inherit
# this one and set the arch, drop path, head widths, num_layers and checkpoint.
# Data: ADE20K at data/ade/ADEChallengeData2016 (layout in configs/_base_/datasets/ade20k_bs2_512x512.py).
# 8 GPUs x 2 images:  bash tools/dist_train.sh configs/pelk_t_upernet_ade20k.py 8
_base_ = [
    './_base_/models/upernet_pelk.py',
    './_base_/datasets/ade20k_bs2_512x512.py',
    './_base_/schedules/ade20k_adamw_layer_decay_160k.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/default_runtime.py',
]

env_cfg = dict(dist_cfg=dict(timeout=_base_.dist_timeout))  # a stalled collective fails the run

# ImageNet-1K PeLK-T checkpoint saved by training configs/pelk_t_in1k.py (backbone.* keys). The per-output norms
# norm0..norm3 are new (reported as missing) and the classifier head is dropped by the prefix; elsewhere:
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/pelk_t_in1k.pth
checkpoint_file = 'work_dirs/pelk_t_in1k/epoch_300.pth'

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
    decode_head=dict(in_channels=[124, 249, 499, 998]),
    auxiliary_head=dict(in_channels=499),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=6))
