# PeLK + UperNet on ADE20K, 512x512 crops, 160k iterations: the ConvNeXt/SLaK recipe that PeLK follows
# (pelk_paper.md §5.2; mmseg's convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py). The per-size configs
# (configs/pelk_{t,s,b,b101}_upernet_ade20k.py) only set the arch, drop path, widths, num_layers and checkpoint.
#
# Data: ADE20K (ADEChallengeData2016) must be at data/ade/ADEChallengeData2016 relative to the working directory,
# i.e. data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}; see mmseg's dataset_prepare.md.
# Batch: 2 images per GPU x 8 GPUs = 16 (ConvNeXt; SLaK used 4 x 4).
_base_ = [
    './models/upernet_pelk.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        # ImageNet-1k PeLK checkpoint saved by our mmpretrain training (backbone.* keys); the per-size configs
        # set `checkpoint`. The per-output norms norm0..norm3 are new (reported as missing) and the
        # classifier head is dropped by the prefix.
        init_cfg=dict(type='Pretrained', checkpoint=None, prefix='backbone.')),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# AdamW 1e-4, wd 0.05, stage-wise lr decay 0.9 (num_layers: 6 for T, 12 for S/B), fp16 as the stock ConvNeXt
# config (tools/train.py switches AmpOptimWrapper to OptimWrapper on CPU-only machines).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='pelk_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6),
    loss_scale='dynamic')
warmup_iters = 1500
max_iters = 160000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, begin=warmup_iters, end=max_iters, eta_min=0.0, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters)
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
custom_hooks = [
    dict(type='pelk_mm.ResumeStateHook'),                          # bit-exact --resume (RNG states, safe rotation)
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),    # skip NaN/inf steps, stop after 5 in a row
    dict(type='pelk_mm.BNStatsSyncHook'),
]
