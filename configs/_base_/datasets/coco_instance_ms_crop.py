# COCO 2017 instance segmentation with the DETR-style multi-scale + crop augmentation of mmdet's ConvNeXt/Swin
# 3x configs (short side 480-800 step 32, long side <= 1333; or resize to 400/500/600, random crop 384-600, resize
# again). Test: single scale 1333x800. Evaluation: COCO bbox and segm mAP on val2017.
#
# Expected layout (the standard COCO 2017 download, https://cocodataset.org/#download):
#   data/coco/
#     annotations/instances_train2017.json
#     annotations/instances_val2017.json
#     train2017/*.jpg
#     val2017/*.jpg
# Elsewhere: symlink it to data/coco, or pass
#   --cfg-options train_dataloader.dataset.data_root=/path/ val_dataloader.dataset.data_root=/path/ \
#     test_dataloader.dataset.data_root=/path/ val_evaluator.ann_file=/path/annotations/instances_val2017.json \
#     test_evaluator.ann_file=/path/annotations/instances_val2017.json
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

data_root = 'data/coco/'

ms_scales = [(short, 1333) for short in range(480, 801, 32)]  # 480, 512, ..., 800
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
