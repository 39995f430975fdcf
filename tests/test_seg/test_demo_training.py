"""A shortened run of configs/demo/pelk_demo_upernet_ade20k.py with mmengine's Runner on freshly generated demo
data: the loss goes down and the validation mIoU beats the best constant prediction by a wide margin."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

SHORT_ITERS = 60


def constant_prediction_miou(ann_dir):
    """mIoU (%) of predicting the most frequent class everywhere: its IoU is its pixel share, every other class
    present in the ground truth scores 0 (label 0 is ignored, as with reduce_zero_label=True)."""
    counts = np.zeros(256, dtype=np.int64)
    for name in sorted(os.listdir(ann_dir)):
        counts += np.bincount(np.asarray(Image.open(osp.join(ann_dir, name))).ravel(), minlength=256)
    counts = counts[1:]
    return 100.0 * counts.max() / counts.sum() / np.count_nonzero(counts)


@pytest.mark.slow
def test_demo_training_learns(load_seg_config, tmp_path, one_thread):
    from mmengine.runner import Runner

    from pelk_mm.datasets import ensure_demo_data
    data_root = ensure_demo_data('ade20k', root=str(tmp_path / 'demo'))
    cfg = load_seg_config('demo')
    cfg.work_dir = str(tmp_path / 'work')
    cfg.randomness = dict(seed=0)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.optim_wrapper.type = 'OptimWrapper'  # CPU: what tools/train.py does with AmpOptimWrapper
    cfg.optim_wrapper.pop('loss_scale')
    cfg.train_cfg.max_iters = SHORT_ITERS
    cfg.train_cfg.val_interval = SHORT_ITERS + 1  # validate once, below
    cfg.param_scheduler[-1].end = SHORT_ITERS
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=SHORT_ITERS + 1,
                                        save_last=False)

    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = np.asarray(runner.message_hub.get_scalar('train/loss').data[0])
    assert len(losses) == SHORT_ITERS
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses
    metrics = runner.val()
    chance = constant_prediction_miou(osp.join(data_root, 'annotations', 'validation'))
    print(f'demo ({SHORT_ITERS} iters): loss {losses[:10].mean():.3f} -> {losses[-10:].mean():.3f}, '
          f'mIoU {metrics["mIoU"]:.2f} (constant prediction {chance:.2f})')
    assert metrics['mIoU'] > max(2 * chance, 30.0), (metrics, chance)
