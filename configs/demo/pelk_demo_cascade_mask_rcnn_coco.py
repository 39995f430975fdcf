# CPU demo of the PeLK-T Cascade Mask R-CNN config: the same pipeline (PeLK -> FPN -> RPN -> 3-stage cascade with
# 4conv1fc GIoU bbox heads and mask heads, multi-scale + crop augmentation, AdamW with layer-wise lr decay, COCO
# bbox/segm evaluation), shrunk to train from scratch in a few minutes on a laptop CPU on the synthetic COCO-format
# dataset of pelk_mm.datasets.demo_data (4 COCO classes, 60 train / 16 val images of 128x128, generated into
# data/demo/coco/ on first use by tools/train.py and tools/test.py).
#
#   python tools/train.py configs/demo/pelk_demo_cascade_mask_rcnn_coco.py
#   python tools/test.py configs/demo/pelk_demo_cascade_mask_rcnn_coco.py \
#       work_dirs/pelk_demo_cascade_mask_rcnn_coco/epoch_12.pth --show-dir vis
#   bash tools/dist_train.sh configs/demo/pelk_demo_cascade_mask_rcnn_coco.py 2     # 2 CPU processes (gloo)
# On a busy machine export OMP_NUM_THREADS=1 first (oversubscribed OpenMP threads make a step several times slower).
# Expected (2-core CPU, idle, seed 0): 180 iterations in ~1.7 min; val/test at epoch 12: bbox mAP 0.624 (AP50 0.887),
# segm mAP 0.710 (AP50 0.915); tools/test.py on epoch_12.pth reproduces these exactly.
_base_ = '../pelk_t_cascade_mask_rcnn_coco.py'

demo_data = dict(kind='coco', root='data/demo')
data_root = 'data/demo/coco/'
demo_classes = ('stop sign', 'sports ball', 'kite', 'tv')  # = pelk_mm.datasets.COCO_DEMO_CLASSES
num_classes = len(demo_classes)
width = 32  # FPN / RoI head width (256 in the full config)

# ------------------------------------------------------------------------------------------------ model
model = dict(
    backbone=dict(
        arch=dict(_delete_=True, depths=[1, 1, 2, 1], channels=[32, 64, 128, 256], kernel_sizes=[13, 11, 9, 5],
                  center_sizes=[3, 3, 3, 3]),
        drop_path_rate=0.1,  # 5 blocks instead of 18
        init_cfg=None),      # trained from scratch
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=[
            dict(head, in_channels=width, conv_out_channels=width, fc_out_channels=4 * width,
                 num_classes=num_classes)
            for head in _base_.model.roi_head.bbox_head
        ],
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=128)),
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=64)) for stage in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))

# ------------------------------------------------------------------------------------------------ data
# the multi-scale + crop augmentation of the full config, at 1/4-1/5 of its scales
ms_scales = [(short, 320) for short in range(128, 193, 32)]  # 128, 160, 192
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(112, 320), (128, 320), (144, 320)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(96, 128), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 160), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
metainfo = dict(classes=demo_classes)
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# ------------------------------------------------------------------------------------------------ schedule
max_epochs = 12  # 15 iterations each
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # from scratch at batch 4 (2e-4 fine-tunes a pretrained net)
auto_scale_lr = dict(base_batch_size=4)

default_hooks = dict(
    logger=dict(interval=5),
    checkpoint=dict(interval=4, max_keep_ckpts=1))
randomness = dict(seed=0)  # the demo numbers in the README repeat run to run
