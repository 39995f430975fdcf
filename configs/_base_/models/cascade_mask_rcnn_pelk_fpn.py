# Cascade Mask R-CNN + FPN with a PeLK backbone (PeLK-T widths by default), as mmdet's ConvNeXt
# `cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py`: the stock mmdet Cascade Mask R-CNN
# with its ResNet replaced and the three Shared2FC bbox heads replaced by 4conv1fc heads (SyncBN) trained with GIoU.
# The per-size configs (configs/pelk_{t,s,b,b101}_cascade_mask_rcnn_coco.py) set arch, drop path, FPN in_channels and
# the pretrained checkpoint.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'

# registers pelk_mm.PeLK and pelk_mm.LayerDecayOptimWrapperConstructor (the `pelk_mm.` prefix alone would do too)
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)  # reverted to BN by the Runner when not distributed / on CPU

model = dict(
    backbone=dict(
        _delete_=True,
        type='pelk_mm.PeLK',
        arch='tiny',
        out_indices=[0, 1, 2, 3],       # only these stages get an output norm: every parameter reaches the loss
        gap_before_final_norm=False,    # normalised (N, C, H, W) maps for the FPN
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,     # as ConvNeXt's det configs; the pretrained checkpoint overwrites it
        conv_norm_cfg=norm_cfg,         # BN of the large-kernel and small-kernel branches
        with_cp=False),
    neck=dict(in_channels=[124, 249, 499, 998]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=norm_cfg,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        # one head per cascade stage (IoU thresholds 0.5 / 0.6 / 0.7), tighter target stds at each stage
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))
