# PeLK-T on ImageNet-1K, 224x224, 300 epochs. The paper defers to SLaK's recipe (paper §5.1):
# AdamW lr 4e-3 at batch 4096, wd 0.05, cosine with 20 warm-up epochs, RandAugment m9-mstd0.5, Mixup 0.8,
# CutMix 1.0, label smoothing 0.1, random erasing 0.25, EMA 0.9999, drop path 0.1 (T) / 0.4 (S) / 0.5 (B),
# 40 % dynamic sparsity.
# Data: ImageNet at data/imagenet ({train,val}/ + meta/{train,val}.txt), see README "Datasets".
# 32 GPUs x 128 images = 4096; with fewer GPUs pass --auto-scale-lr (scales lr from base_batch_size=4096).
_base_ = [
    './_base_/models/image_classifier_pelk.py',
    './_base_/datasets/imagenet_bs128_224.py',
    './_base_/schedules/imagenet_bs4096_adamw_300e.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/default_runtime.py',
]

env_cfg = dict(dist_cfg=dict(timeout=_base_.dist_timeout))  # a stalled collective fails the run

custom_hooks = [_base_.ema_hook, *_base_.pelk_hooks, _base_.sparsity_hook]
# spelt whole (_delete_): the `mmpretrain::` base tags its visualizer with `_scope_`, which mmpretrain's
# tools/visualization/browse_dataset.py passes to UniversalVisualizer(...) as an argument
visualizer = dict(_delete_=True, type='UniversalVisualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'))
