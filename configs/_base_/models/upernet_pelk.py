# UperNet + auxiliary FCN head on a PeLK backbone (pelk_mm's counterpart of mmseg's _base_/models/upernet_convnext.py).
# SyncBN in the heads and in PeLK's large-kernel branch (conv_norm_cfg); the Runner reverts it to BN for
# single-process runs and pelk_mm.compat on CPU.
norm_cfg = dict(type='SyncBN', requires_grad=True)
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='pelk_mm.PeLK',
        arch='tiny',
        out_indices=[0, 1, 2, 3],
        gap_before_final_norm=False,
        conv_norm_cfg=norm_cfg,
        drop_path_rate=0.4,
        # the per-size configs set init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')
        layer_scale_init_value=1.0),  # overwritten by the ImageNet checkpoint
    decode_head=dict(
        type='UPerHead',
        in_channels=[124, 249, 499, 998],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=499,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
