# SLaK's ImageNet-1K schedule, which PeLK follows (paper §5.1): 300 epochs, AdamW lr 4e-3 at a global batch of
# 4096, wd 0.05 (no decay on norms and biases), 20 linear warm-up epochs then cosine to 1e-6, no gradient
# clipping. With another global batch pass --auto-scale-lr (scales lr from base_batch_size=4096).
_base_ = 'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py'

optim_wrapper = dict(optimizer=dict(lr=4e-3), clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=4096)
