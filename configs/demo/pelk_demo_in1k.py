# Demo: the PeLK-T ImageNet recipe shrunk to run on a CPU in a few minutes. Only the data (generated 6-class
# ImageNet-format shapes at 64x64 in data/demo/imagenet, created on first use), the image size, the model
# width/depth/kernels and the schedule change; everything else comes from ../pelk_t_in1k.py.
#   python tools/train.py configs/demo/pelk_demo_in1k.py
_base_ = '../pelk_t_in1k.py'

demo_data = dict(kind='imagenet', root='data/demo')   # tools/train.py generates it if missing
data_root = 'data/demo/imagenet'
classes = 'data/demo/imagenet/meta/classes.txt'
num_classes = 6
img_size = 64

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, depths=[1, 1, 2, 1], channels=[32, 64, 128, 256],
                  kernel_sizes=[13, 11, 7, 5], center_sizes=[5, 5, 3, 3]),
        drop_path_rate=0.0),
    head=dict(num_classes=num_classes, in_channels=256),
)
data_preprocessor = dict(num_classes=num_classes)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size, crop_ratio_range=(0.5, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=img_size, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=img_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=False,  # fresh workers each epoch: bit-exact --resume
    dataset=dict(data_root=data_root, split='train', classes=classes, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=36, num_workers=2, persistent_workers=True,
    dataset=dict(data_root=data_root, split='val', classes=classes, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# schedule: 24 short epochs (9 iterations each), lr for batch 32, warm-up 1 epoch
max_epochs = 24
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
auto_scale_lr = dict(base_batch_size=32)
# EMA horizon shrunk with the schedule (~50 iterations instead of ~10k), no dynamic sparsity
custom_hooks = [dict(_base_.ema_hook, momentum=2e-2), *_base_.pelk_hooks]
# three log lines per 9-iteration epoch: analyze_logs.py cal_train_time leaves out each epoch's first (it holds the
# data workers' start) and averages the others
default_hooks = dict(logger=dict(interval=3), checkpoint=dict(interval=4, max_keep_ckpts=2))
randomness = dict(seed=0)
