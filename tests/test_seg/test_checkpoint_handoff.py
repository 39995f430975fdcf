"""A classification checkpoint written the way our mmpretrain training writes it (mmengine Runner layout:
``state_dict`` with ``backbone.*``/``head.*``, ``meta``, ``message_hub`` with HistoryBuffers, ``optimizer``) loads
into the segmentation backbone through ``init_cfg=dict(type='Pretrained', prefix='backbone.')``; the tensors arrive
unchanged and mmengine logs the keys that did not match (the new per-output norms)."""
import logging
import re

import numpy as np
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

ARCH = dict(depths=[1, 1, 2, 1], channels=[16, 32, 64, 128], kernel_sizes=[13, 11, 9, 5], center_sizes=[3, 3, 3, 3])


def save_classification_checkpoint(path):
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as CLS_MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # as our mmpretrain training builds it
        cls_model = CLS_MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='pelk_mm.PeLK', arch=ARCH, drop_path_rate=0.1),
            head=dict(type='LinearClsHead', num_classes=6, in_channels=128)))
    cls_model.init_weights()
    with torch.no_grad():  # make every tensor, BN statistics included, distinguishable from a fresh init
        for p in cls_model.parameters():
            p.add_(torch.randn_like(p))
        for name, b in cls_model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand_like(b) + 0.5)
    hub = MessageHub.get_instance('pelk_handoff_train')
    hub.update_scalar('train/loss', 1.25)
    hub.update_info('iter', 30)
    checkpoint = dict(
        meta=dict(epoch=3, iter=30, seed=0, mmpretrain_version='1.2.0', dataset_meta=dict(classes=list('abcdef'))),
        state_dict=weights_to_cpu(cls_model.state_dict()),
        message_hub=hub.state_dict(),
        optimizer=dict(state={}, param_groups=[dict(lr=np.float64(4e-3))]))
    save_checkpoint(checkpoint, path)
    return checkpoint['state_dict']


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))


def test_classification_checkpoint_to_seg_backbone(load_seg_config, tmp_path):
    from mmseg.registry import MODELS
    ckpt = str(tmp_path / 'epoch_3.pth')
    cls_state = save_classification_checkpoint(ckpt)
    assert any(k.startswith('head.') for k in cls_state)

    cfg = load_seg_config('demo')
    cfg.model.backbone.arch = ARCH
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=ckpt, prefix='backbone.')
    model = revert_sync_batchnorm(MODELS.build(cfg.model))

    logger = MMLogger.get_instance(f'pelk_handoff_{tmp_path.name}')  # now the "current" logger, as a Runner's
    records = _Records()
    logger.addHandler(records)
    try:
        model.init_weights()
    finally:
        logger.removeHandler(records)

    seg_state = model.backbone.state_dict()
    loaded = {k[len('backbone.'):]: v for k, v in cls_state.items() if k.startswith('backbone.')}
    assert loaded and set(loaded) <= set(seg_state)
    for key, value in loaded.items():
        assert torch.equal(seg_state[key], value), key

    warnings = [m for lvl, m in records.messages if lvl >= logging.WARNING and 'do not match' in m]
    assert len(warnings) == 1, records.messages
    missing = re.search(r'missing keys in source state_dict: (.*)', warnings[0]).group(1).split(', ')
    assert sorted(missing) == sorted(f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias'))
    assert 'unexpected key' not in warnings[0]  # head.* never reaches the backbone: the prefix drops it
    assert any(f'load backbone. in model from: {ckpt}' in m for _, m in records.messages)
