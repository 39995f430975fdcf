# Tiny PeLK image classifier on the synthetic ImageNet-format demo data (6 classes, 64x64 images).
# Used by tests/test_tools; trains a useful model in about a minute on 2 CPU cores:
#   python tools/train.py tests/data/configs/tiny_pelk_cls_demo.py
default_scope = 'mmpretrain'
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)

# tools/train.py and tools/test.py generate the data on first use (pelk_mm.datasets.ensure_demo_data)
demo_data = dict(kind='imagenet', root='data/demo')
data_root = 'data/demo/imagenet'
classes = ('red disk', 'green square', 'blue triangle', 'yellow ring', 'magenta stripes', 'cyan cross')

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='pelk_mm.PeLK',
        arch=dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 48], kernel_sizes=[9, 7, 5, 3],
                  center_sizes=[3, 3, 3, 3]),
        small_kernel=3,
        # plain F.conv2d with the expanded kernel: no compiled extension needed (fastest at these tiny sizes)
        conv_impl='dense',
        drop_path_rate=0.0),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=len(classes),
        in_channels=48,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )))

data_preprocessor = dict(
    num_classes=len(classes),
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='ImageNet', data_root=data_root, split='train', metainfo=dict(classes=classes),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=24,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageNet', data_root=data_root, split='val', metainfo=dict(classes=classes),
                 pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05))
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=4, eta_min=1e-4)]
train_cfg = dict(by_epoch=True, max_epochs=4, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=16)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=5),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = dict(type='UniversalVisualizer', vis_backends=[dict(type='LocalVisBackend')])
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
