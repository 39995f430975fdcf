"""One training iteration of the real PeLK-T UperNet (K = 51-49-47-13, SyncBN reverted) on 64x64 inputs through the
config's optimizer wrapper: loss, backward, stage-wise decayed AdamW step."""
import copy

import pytest
import torch
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData


def seg_batch(n=2, size=64, num_classes=150, seed=0):
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        label = torch.randint(0, num_classes, (1, size, size), generator=g)
        label[:, : size // 8] = 255  # some ignored pixels
        sample = SegDataSample(gt_sem_seg=PixelData(data=label))
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_t_config_one_iteration(load_seg_config, one_thread):
    from mmseg.registry import MODELS
    cfg = load_seg_config('t')
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = (64, 64)
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))  # torch's default init: enough for one step
    model.train()
    assert model.backbone.kernel_sizes == [51, 49, 47, 13]

    ow_cfg = copy.deepcopy(cfg.optim_wrapper)
    ow_cfg.type = 'OptimWrapper'  # AmpOptimWrapper needs a GPU
    ow_cfg.pop('loss_scale')
    ow = build_optim_wrapper(model, ow_cfg)
    groups = {g['group_name']: g for g in ow.optimizer.param_groups}
    assert len(groups) == 12
    # stage-wise, num_layers=6: downsampling 0.9^7, stage i 0.9^(6-i), heads and output norms 1
    assert groups['layer_0_decay']['lr'] == pytest.approx(1e-4 * 0.9 ** 7)
    assert groups['layer_3_decay']['lr'] == pytest.approx(1e-4 * 0.9 ** 4)
    assert groups['layer_7_decay']['lr'] == pytest.approx(1e-4)
    assert 'backbone.stages.2.kpe' in groups['layer_3_decay']['param_names']
    assert 'backbone.stages.2.8.gamma' in groups['layer_3_no_decay']['param_names']

    stem = model.backbone.downsample_layers[0][0].weight
    seg = model.decode_head.conv_seg.weight
    before = stem.detach().clone(), seg.detach().clone()
    log_vars = model.train_step(seg_batch(), ow)
    assert set(log_vars) >= {'loss', 'decode.loss_ce', 'aux.loss_ce', 'decode.acc_seg'}
    assert torch.isfinite(log_vars['loss']) and log_vars['loss'].item() > 0
    # AdamW's first step: |delta| ~ lr of the parameter's group (plus the tiny decoupled weight decay)
    assert (stem.detach() - before[0]).abs().max().item() == pytest.approx(1e-4 * 0.9 ** 7, rel=0.05)
    assert (seg.detach() - before[1]).abs().max().item() == pytest.approx(1e-4, rel=0.05)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
