# The ConvNeXt/SLaK ADE20K schedule that PeLK follows (paper §5.2; mmseg's
# mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py): 160k iterations, AdamW lr 1e-4
# (betas 0.9/0.999, wd 0.05) at 16 images per step, 1500 linear warm-up iterations then poly decay, stage-wise lr
# decay 0.9 over the backbone, mixed precision. The per-size configs set `num_layers` (6 for T, 12 for S/B).
_base_ = 'mmseg::_base_/schedules/schedule_160k.py'

# AmpOptimWrapper needs a GPU; tools/train.py swaps it for OptimWrapper (with a warning) on CPU.
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
