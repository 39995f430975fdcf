"""Training settings checked before anything is built (``pelk_mm.apis.check_settings``): each bad value is one
ConfigValidationError naming the key, the value and the fix; misspelt keys get the closest valid name; every
shipped config passes."""
import copy
import glob
import os.path as osp

import pytest
from mmengine.config import Config

from pelk_mm.apis.check_settings import check_settings
from pelk_mm.config import check_option_keys, register_codebase
from pelk_mm.errors import ConfigValidationError

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
CLS = osp.join(REPO, 'configs/demo/pelk_demo_in1k.py')
SEG = osp.join(REPO, 'configs/demo/pelk_demo_upernet_ade20k.py')
DET = osp.join(REPO, 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py')
TINY = osp.join(REPO, 'tests/data/configs/tiny_pelk_cls_demo.py')
_PARSED = {}


def _cfg(path):
    """A fresh copy of the parsed config (each file is parsed once)."""
    if path not in _PARSED:
        _PARSED[path] = Config.fromfile(path)
    cfg = Config(copy.deepcopy(_PARSED[path].to_dict()))
    register_codebase(cfg.default_scope)
    return cfg


CASES = {
    'max_epochs_0': (CLS, {'train_cfg.max_epochs': 0}, 'train_cfg.max_epochs', 'max_epochs must be an integer >= 1'),
    'max_iters_0': (SEG, {'train_cfg.max_iters': 0}, 'train_cfg.max_iters', 'got 0'),
    'val_interval_0': (CLS, {'train_cfg.val_interval': 0}, 'train_cfg.val_interval', 'val_interval must be'),
    'max_epoch': (CLS, {'train_cfg.max_epoch': 1}, 'train_cfg.max_epoch', "(did you mean 'max_epochs'?)"),
    'optimiser': (CLS, {'optim_wrapper.optimiser': {'type': 'SGD', 'lr': 0.1}}, 'optim_wrapper.optimiser',
                  "(did you mean 'optimizer'?)"),
    'lrr': (CLS, {'optim_wrapper.optimizer.lrr': 0.1}, 'optim_wrapper.optimizer.lrr', "(did you mean 'lr'?)"),
    'lr_text': (CLS, {'optim_wrapper.optimizer.lr': 'fast'}, 'optim_wrapper.optimizer.lr', "got 'fast'"),
    'lr_negative': (CLS, {'optim_wrapper.optimizer.lr': -0.002}, 'optim_wrapper.optimizer.lr', 'got -0.002'),
    'batch_size_0': (CLS, {'train_dataloader.batch_size': 0}, 'train_dataloader.batch_size', 'got 0'),
    'drop_path_negative': (CLS, {'model.backbone.drop_path_rate': -0.5}, 'model.backbone.drop_path_rate',
                           'must be in [0, 1), got -0.5'),
    'drop_path_one_and_a_half': (DET, {'model.backbone.drop_path_rate': 1.5}, 'model.backbone.drop_path_rate',
                                 'got 1.5'),
    'num_classes_cls': (TINY, {'model.head.num_classes': 7}, 'model.head.num_classes',
                        '7 classes, but train_dataloader.dataset has 6'),
    'num_classes_seg': (SEG, {'model.decode_head.num_classes': 19}, 'model.decode_head.num_classes',
                        '19 classes, but train_dataloader.dataset has'),
    'num_classes_det': (DET, {'model.roi_head.bbox_head.0.num_classes': 3}, 'model.roi_head.bbox_head[0].num_classes',
                        '3 classes, but train_dataloader.dataset has'),
    # the det demo's MultiStepLR milestones [9, 11] in a 4-epoch run: the lr never decays
    'milestones_beyond_max_epochs': (DET, {'train_cfg.max_epochs': 4}, 'param_scheduler.1.milestones',
                                     'milestones 9, 11 (epochs) are not before the end of training '
                                     '(train_cfg.max_epochs=4)'),
    'milestone_after_begin': (DET, {'param_scheduler.1.begin': 4}, 'param_scheduler.1.milestones',
                              'milestones 9, 11 (begin=4 + epochs)'),
    'eta_min_negative': (CLS, {'param_scheduler.1.eta_min': -4e-3}, 'param_scheduler.1.eta_min',
                         'CosineAnnealingLR would anneal the value to -0.004, below 0'),
    'optimizer_unknown': (CLS, {'optim_wrapper.optimizer.type': 'AdamWW'}, 'optim_wrapper.optimizer.type',
                          "no optimizer 'AdamWW' is registered (did you mean 'AdamW'?)"),
    'random_resized_crop_scale_0': (CLS, {'train_dataloader.dataset.pipeline.1.scale': 0},
                                    'train_dataloader.dataset.pipeline.1.scale',
                                    'RandomResizedCrop scale=0 would give an empty image'),
    'resize_scale_0_0': (DET, {'val_dataloader.dataset.pipeline.1.scale': (0, 0)},
                         'val_dataloader.dataset.pipeline.1.scale', 'Resize scale=(0, 0) would give an empty image'),
    'nested_resize_scale_0': (DET, {}, 'train_dataloader.dataset.pipeline.3.transforms.1.0.scales',
                              'RandomChoiceResize scales='),
}


@pytest.mark.parametrize('name', list(CASES))
def test_bad_setting_is_one_line(name):
    path, options, key, expected = CASES[name]
    cfg = _cfg(path)
    if name == 'num_classes_det':
        cfg.model.roi_head.bbox_head[0].num_classes = 3
    elif name == 'nested_resize_scale_0':  # inside RandomChoice's second branch
        cfg.train_dataloader.dataset.pipeline[3].transforms[1][0].scales = [(0, 320), (128, 320)]
    else:
        cfg.merge_from_dict(options)
    with pytest.raises(ConfigValidationError) as err:
        check_settings(cfg, 'train')
    msg = str(err.value)
    assert err.value.key == key and f'config key `{key}`' in msg and expected in msg and 'Fix:' in msg, msg
    assert '\n' not in msg


def test_misspelt_option_key_names_the_closest():
    cfg = _cfg(CLS)
    with pytest.raises(ConfigValidationError, match=r"no key 'trian_cfg' \(did you mean 'train_cfg'\?\)"):
        check_option_keys(cfg, {'trian_cfg.max_epochs': 1})
    check_option_keys(cfg, {'train_cfg.max_epochs': 1, 'load_from': 'x.pth', 'randomness.seed': 3})


@pytest.mark.parametrize('path', sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                                        if '/_base_/' not in p))
def test_every_shipped_config_passes(path):
    cfg = _cfg(path)
    for mode in ('train', 'val', 'test'):
        check_settings(cfg, mode)


@pytest.mark.parametrize('options, key, fix', [
    ({'model.backbone.out_indices': [4]}, 'model.backbone.out_indices', 'list stage indices from 0'),
    ({'model.backbone.kpe_mode': 'sideways'}, 'model.backbone.kpe_mode', "use one of ['input', 'bias', 'weight'] or None"),
    ({'model.backbone.conv_type': 'sparse'}, 'model.backbone.conv_type', "use one of ['dense', 'peripheral', 'stripe']"),
    ({'model.backbone.arch': 'huge'}, 'model.backbone.arch', "use one of ['b', 'b-101', 'base'"),
])
def test_backbone_errors_have_a_fix_for_their_key(options, key, fix):
    from pelk_mm.apis.validate import build_backbone_meta
    cfg = _cfg(CLS)
    cfg.merge_from_dict(options)
    with pytest.raises(ConfigValidationError) as err:
        build_backbone_meta(cfg.model.backbone)
    assert err.value.key == key and f'Fix: {fix}' in str(err.value), str(err.value)


def test_schedule_and_size_checks_refuse_only_what_cannot_work():
    cfg = _cfg(DET)
    cfg.merge_from_dict({'train_cfg.max_epochs': 12, 'param_scheduler.1.milestones': [8, 11]})
    check_settings(cfg, 'train')  # both decays happen
    cfg.merge_from_dict({'param_scheduler.1.milestones': [8, 12]})
    with pytest.raises(ConfigValidationError, match='milestone 12 .epochs. is not before the end of training'):
        check_settings(cfg, 'train')  # the decay at 12 would follow the last epoch
    cfg = _cfg(CLS)
    cfg.merge_from_dict({'param_scheduler.1.eta_min': 0.0})
    check_settings(cfg, 'train')
    # the keep-the-aspect-ratio marker -1 of mmpretrain's Resize is a valid size; -2 is not
    cfg.test_dataloader.dataset.pipeline[1] = dict(type='Resize', scale=(64, -1))
    check_settings(cfg, 'test')
    cfg.test_dataloader.dataset.pipeline[1] = dict(type='Resize', scale=(64, -2))
    with pytest.raises(ConfigValidationError, match=r'Resize scale=\(64, -2\) would give an empty image'):
        check_settings(cfg, 'test')


@pytest.mark.parametrize('options, message', [
    ({'out_indices': [3, 3]}, 'out_indices=[3, 3] lists stage 3 twice'),
    ({'out_indices': [-1, 3]}, 'out_indices=[-1, 3] lists stage 3 twice'),
    ({'layer_scale_init_value': -1e-6}, 'layer_scale_init_value must be a number >= 0'),
])
def test_backbone_refuses_repeated_stages_and_negative_layer_scale(options, message):
    from pelk_mm.apis.validate import build_backbone_meta
    from pelk_mm.models import PeLK
    key = 'model.backbone.' + next(iter(options))
    with pytest.raises(ConfigValidationError) as err:
        PeLK(arch=dict(depths=[1, 1, 1, 1], channels=[8, 8, 8, 8], kernel_sizes=[7, 5, 5, 3],
                       center_sizes=[3, 3, 3, 3]), **options)
    assert message in str(err.value) and err.value.key == key and '\n' not in str(err.value)
    cfg = _cfg(CLS)
    cfg.model.backbone.update(options)
    with pytest.raises(ConfigValidationError) as err:  # the pre-flight check names the key
        build_backbone_meta(cfg.model.backbone)
    assert message in str(err.value) and str(err.value).startswith('config key `model.backbone')


def test_load_from_mismatch_value_is_checked():
    cfg = _cfg(CLS)
    for good in ('head.', ['head.', 'backbone.norm3']):
        cfg.load_from_mismatch = good
        check_settings(cfg, 'train')
    for bad in (3, ['head.', 7], ['']):
        cfg.load_from_mismatch = bad
        with pytest.raises(ConfigValidationError, match='load_from_mismatch.*list of weight-name prefixes'):
            check_settings(cfg, 'train')
