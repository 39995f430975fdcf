# ImageNet-1K at 224x224 with mmpretrain's Swin/ConvNeXt augmentation (bicubic RandomResizedCrop, RandAugment
# m9-mstd0.5, random erasing 0.25; test: resize 256 + centre crop 224), 128 images per GPU.
# Data: data/imagenet/{train,val}/ + meta/{train,val}.txt (README "Datasets").
_base_ = 'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py'

# persistent workers keep their random state across epochs, where no checkpoint can reach it; fresh workers per
# epoch (seeded from randomness.seed) make --resume bit-exact
train_dataloader = dict(batch_size=128, persistent_workers=False)
