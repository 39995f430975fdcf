# ADE20K (150 classes) with mmseg's 512x512 pipeline (random resize of 2048x512 by 0.5-2.0, crop 512x512 with
# cat_max_ratio 0.75, flip, photometric distortion; test: resize to 2048x512), 2 images per GPU (8 GPUs x 2 = 16,
# as ConvNeXt; SLaK used 4 x 4). Evaluation: mIoU on the validation set.
#
# Data: ADEChallengeData2016 at data/ade/ADEChallengeData2016 relative to the working directory, i.e.
# data/ade/ADEChallengeData2016/{images,annotations}/{training,validation} (README "Datasets").
_base_ = 'mmseg::_base_/datasets/ade20k.py'

train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
