# PeLK-T on ImageNet-1K, 224x224, 300 epochs. The paper defers to SLaK's recipe (pelk_paper.md §5.1):
# AdamW lr 4e-3 at batch 4096, wd 0.05, cosine with 20 warm-up epochs, RandAugment m9-mstd0.5, Mixup 0.8,
# CutMix 1.0, label smoothing 0.1, random erasing 0.25, EMA 0.9999, drop path 0.1 (T) / 0.4 (S) / 0.5 (B).
# Data: ImageNet at data/imagenet ({train,val}/ + meta/{train,val}.txt), see README "Datasets".
# 32 GPUs x 128 images = 4096; with fewer GPUs pass --auto-scale-lr (scales lr from base_batch_size=4096).
_base_ = [
    './_base_/models/pelk_t_in1k.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

# NOTE: persistent workers keep their random state across epochs, where no checkpoint can reach it; fresh
# workers per epoch (seeded from randomness.seed) make --resume bit-exact
train_dataloader = dict(batch_size=128, persistent_workers=False)

optim_wrapper = dict(optimizer=dict(lr=4e-3), clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)

custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
    dict(type='pelk_mm.ResumeStateHook'),                          # bit-exact --resume (RNG states, safe rotation)
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),    # skip NaN/inf steps, stop after 5 in a row
    dict(type='pelk_mm.BNStatsSyncHook'),                          # same BN statistics on every rank (val = test)
    # SLaK's dynamic sparsity, which PeLK keeps: 40 % of the 2-D/4-D weights, SNIP init, magnitude prune + random
    # regrowth every 2000 iterations with a cosine-decayed prune rate (T; S/B use 100 / 0.3 as in SLaK's README)
    dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip', update_interval=2000, prune_rate=0.5,
         growth='random'),
]
visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'))

auto_scale_lr = dict(base_batch_size=4096)
