# PeLK-T image classifier for ImageNet-1K (mmpretrain ImageClassifier) with SLaK's label smoothing 0.1 and
# Mixup 0.8 / CutMix 1.0. The backbone pools and normalises internally (gap_before_final_norm=True), so there is
# no neck, as in mmpretrain's ConvNeXt.
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='pelk_mm.PeLK',
        arch='tiny',                 # depths 3-3-9-3, widths 124-249-499-998 (1.3x), kernels 51-49-47-13
        conv_ratio=3 / 8,            # partial peripheral conv: 3/8 of the channels are convolved
        kpe_mode='input',            # kernel-wise positional embedding, Eq. 3
        small_kernel=5,              # parallel 5x5 re-param branch
        drop_path_rate=0.1,
        layer_scale_init_value=1e-6),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=998,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
