# 3x COCO schedule of mmdet's ConvNeXt Cascade Mask R-CNN configs, which PeLK follows (paper §5.3): 36 epochs,
# AdamW lr 2e-4 (betas 0.9/0.999, wd 0.05) at 16 images per step (8 GPUs x 2), 1000-iteration linear warm-up,
# x0.1 at epochs 27 and 33, layer-wise lr decay over the backbone, mixed precision.
# The per-size configs set the decay (`decay_rate`, `num_layers`): T 0.7/6, S 0.7/12, B 0.8/12.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# AmpOptimWrapper needs a GPU; tools/train.py swaps it for OptimWrapper (with a warning) on CPU.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    # layer ids as ConvNeXt's (PeLK.get_layer_depth): stem 0, stage 0 -> 1, stage 1 -> 2, stage 2 in groups of
    # 3 blocks, stage 3 last; lr scale decay_rate ** (num_layers + 1 - layer_id); neck and heads at the full lr.
    constructor='pelk_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6),
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))

# 8 GPUs x 2 images; pass --auto-scale-lr to scale lr linearly for another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=16)
