# ImageNet pipelines at 384x384 (mmpretrain's swin-384 style: bicubic RandomResizedCrop + RandAugment + random
# erasing for training, plain bicubic resize without crop for testing). Configs use them as
#   _base_ = [..., '<path>/_base_/datasets/imagenet_384_pipelines.py']
#   train_dataloader = dict(dataset=dict(pipeline=_base_.pipelines_384['train'])), likewise 'test'
pipelines_384 = dict(
    train=[
        dict(type='LoadImageFromFile'),
        dict(type='RandomResizedCrop', scale=384, backend='pillow', interpolation='bicubic'),
        dict(type='RandomFlip', prob=0.5, direction='horizontal'),
        dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10, magnitude_level=9,
             magnitude_std=0.5, hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
        dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3,
             fill_color=[103.53, 116.28, 123.675], fill_std=[57.375, 57.12, 58.395]),
        dict(type='PackInputs'),
    ],
    test=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=384, backend='pillow', interpolation='bicubic'),
        dict(type='PackInputs'),
    ],
)
