# Paper Table 7: PeLK (51-49-47-13) at 384x384; reported top-1 82.7.
# PeLK-T widths/depths (the table does not name the size; PeLK-T assumed), KPE on, 120 epochs, 40 % sparsity.
# 384 input from scratch for 120 epochs (pipelines as mmpretrain swin-384: bicubic resize, no crop).
_base_ = ['../_base_/pelk_t_in1k_120e.py', '../../_base_/datasets/imagenet_384_pipelines.py']

model = dict(backbone=dict(arch='tiny'))

train_dataloader = dict(dataset=dict(pipeline=_base_.pipelines_384['train']))
val_dataloader = dict(dataset=dict(pipeline=_base_.pipelines_384['test']))
test_dataloader = val_dataloader
