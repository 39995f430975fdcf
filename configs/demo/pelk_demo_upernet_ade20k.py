# A CPU-sized run of configs/pelk_t_upernet_ade20k.py on the synthetic ADE20K-format demo data: same model
# family, heads, optimizer constructor, SyncBN/AMP settings and evaluation; only sizes, lengths and the learning
# rate (training from scratch instead of fine-tuning) are shrunk. The data is generated on first use
# (`demo_data`, by tools/train.py / tools/test.py) at data/demo/ade/ADEChallengeData2016: 40 train / 10 val
# 128x128 images with 5 ADE classes (sky, tree, road, grass, car); num_classes stays 150.
#   python tools/train.py configs/demo/pelk_demo_upernet_ade20k.py
#   python tools/test.py configs/demo/pelk_demo_upernet_ade20k.py work_dirs/pelk_demo_upernet_ade20k/iter_300.pth
# (on a CPU shared with other jobs, OMP_NUM_THREADS=1 is several times faster: the model is tiny)
_base_ = '../pelk_t_upernet_ade20k.py'
demo_data = dict(kind='ade20k', root='data/demo')
data_root = 'data/demo/ade/ADEChallengeData2016'

crop_size = (64, 64)
scale = (128, 128)  # the demo images' size (ADE20K: 2048x512)
max_iters = 300
warmup_iters = 20
channels = [16, 32, 64, 128]

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch=dict(_delete_=True, depths=[1, 1, 2, 1], channels=channels, kernel_sizes=[13, 11, 9, 5],
                  center_sizes=[3, 3, 3, 3]),
        drop_path_rate=0.1,
        init_cfg=None),  # trained from scratch
    decode_head=dict(in_channels=channels, channels=64),
    auxiliary_head=dict(in_channels=channels[2], channels=32),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(43, 43)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=2,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', power=1.0, begin=warmup_iters, end=max_iters, eta_min=0.0, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=100)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=1),
    visualization=dict(interval=1))
randomness = dict(seed=0)  # the demo numbers in the README repeat run to run
