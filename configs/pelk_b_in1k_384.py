# PeLK-B at 384x384 (paper Table 4: 85.6 top-1). The paper does not say how; like ConvNeXt's 384 results (which
# PeLK's recipe follows), this fine-tunes the 224 model for 30 epochs: AdamW lr 5e-5 at batch 512, wd 1e-8,
# layer-wise lr decay 0.7, drop path 0.8, no Mixup/CutMix, no warm-up (ConvNeXt's published 384 fine-tuning).
# It starts from configs/pelk_b_in1k.py's checkpoint; elsewhere: --cfg-options model.init_cfg.checkpoint=...
_base_ = ['./pelk_b_in1k.py', './_base_/datasets/imagenet_384_pipelines.py']

checkpoint_file = 'work_dirs/pelk_b_in1k/epoch_300.pth'
model = dict(
    backbone=dict(drop_path_rate=0.8),
    train_cfg=dict(_delete_=True),
    init_cfg=dict(_delete_=True, type='Pretrained', checkpoint=checkpoint_file))

train_dataloader = dict(batch_size=16, dataset=dict(pipeline=_base_.pipelines_384['train']))   # 32 GPUs x 16 = 512
val_dataloader = dict(batch_size=16, dataset=dict(pipeline=_base_.pipelines_384['test']))
test_dataloader = val_dataloader

max_epochs = 30
optim_wrapper = dict(
    constructor='pelk_mm.LayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=5e-5, weight_decay=1e-8),
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.7, norm_decay_mult=0.0, bias_decay_mult=0.0,
                       flat_decay_mult=0.0))
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=0,
                        end=max_epochs)]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=512)
# fine-tuning keeps the sparse pretrained model's mask fixed (SLaK's downstream practice)
custom_hooks = [_base_.ema_hook, *_base_.pelk_hooks,
                dict(type='pelk_mm.DynamicSparsityHook', fixed_mask=True, include=['backbone.'])]
