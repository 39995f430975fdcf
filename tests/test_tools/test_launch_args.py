"""Launcher argument handling (pelk_mm.apis.launch): dispatch by scope, resume/amp/auto-scale-lr mapping, test-time
flags per codebase, and the missing-data message."""
import os

import pytest
from mmengine.config import Config

from pelk_mm.apis import (build_runner, check_data_paths, check_launcher, get_codebase,
                          merge_test_args, merge_train_args, parse_test_args, parse_train_args, prepare_data,
                          register_codebase, resolve_amp)
from pelk_mm.errors import LaunchError, MissingDataError


def _cfg(scope='mmpretrain', **kw):
    base = dict(default_scope=scope, model=dict(type='X'),
                optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
                train_dataloader=dict(batch_size=2, num_workers=0, dataset=dict(type='D')),
                val_dataloader=dict(batch_size=1, num_workers=2, dataset=dict(type='D')),
                val_cfg=dict(), val_evaluator=dict(type='M'),
                test_dataloader=dict(batch_size=1, num_workers=0, dataset=dict(type='D', pipeline=[
                    dict(type='LoadImageFromFile'), dict(type='PackInputs')])),
                test_evaluator=dict(type='M'),
                default_hooks=dict(visualization=dict(type='VisualizationHook')),
                visualizer=dict(type='Vis'))
    base.update(kw)
    return Config(base)


# ------------------------------------------------------------------------------------------------ dispatch
@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_dispatch_registers_codebase(scope):
    assert get_codebase(_cfg(scope)) == scope
    register_codebase(scope)
    import importlib
    registry = importlib.import_module(f'{scope}.registry')
    name = dict(mmpretrain='ImageClassifier', mmseg='EncoderDecoder', mmdet='CascadeRCNN')[scope]
    assert registry.MODELS.get(name) is not None


def test_dispatch_errors():
    with pytest.raises(LaunchError, match='has no `default_scope`'):
        get_codebase(Config(dict(model=dict())), 'a.py')
    with pytest.raises(LaunchError, match="default_scope='mmdet3d'.*support"):
        get_codebase(_cfg('mmdet3d'))


def test_runner_type_builds_from_codebase_registry():
    from mmpretrain.registry import RUNNERS

    @RUNNERS.register_module(name='PelkMMTestRunner', force=True)
    class Dummy:
        @classmethod
        def from_cfg(cls, cfg):
            obj = cls()
            obj.cfg = cfg
            return obj

    # an earlier Runner of this process (another test, a notebook) left mmseg's scope current
    from mmengine.registry import DefaultScope
    DefaultScope.get_instance('pelk_mm_test_runner_type_other_scope', scope_name='mmseg')
    cfg = _cfg(runner_type='PelkMMTestRunner', work_dir='w')
    runner = build_runner(cfg, 'mmpretrain')
    assert isinstance(runner, Dummy) and runner.cfg.work_dir == 'w'
    assert '_scope_' not in cfg and '_scope_' not in runner.cfg


# ------------------------------------------------------------------------------------------------ train flags
def test_local_rank_shim(monkeypatch):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    args = parse_train_args(['c.py', '--local-rank', '3'])
    assert args.local_rank == 3 and os.environ['LOCAL_RANK'] == '3'
    monkeypatch.setenv('LOCAL_RANK', '1')  # torchrun's value wins
    parse_train_args(['c.py', '--local_rank', '0'])
    assert os.environ['LOCAL_RANK'] == '1'


def test_resume_flag_mapping(tmp_path):
    assert parse_train_args(['c.py']).resume is None
    args = parse_train_args(['c.py', '--resume'])
    assert args.resume == 'auto'
    cfg = merge_train_args(_cfg(load_from='pretrained.pth'), args)
    assert cfg.resume is True and cfg.load_from is None
    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'x')
    cfg = merge_train_args(_cfg(), parse_train_args(['c.py', '--resume', str(ckpt)]))
    assert cfg.resume is True and cfg.load_from == str(ckpt)
    with pytest.raises(LaunchError, match='no such checkpoint'):
        merge_train_args(_cfg(), parse_train_args(['c.py', '--resume', str(tmp_path / 'missing.pth')]))
    cfg = merge_train_args(_cfg(), parse_train_args(['c.py']))
    assert not cfg.get('resume', False)


def test_work_dir_priority_and_cfg_options_last():
    cfg = merge_train_args(_cfg(), parse_train_args(['configs/foo_bar.py']))
    assert cfg.work_dir == os.path.join('./work_dirs', 'foo_bar')
    cfg = merge_train_args(_cfg(work_dir='from_cfg'), parse_train_args(['c.py']))
    assert cfg.work_dir == 'from_cfg'
    cfg = merge_train_args(_cfg(work_dir='from_cfg'), parse_train_args(['c.py', '--work-dir', 'cli']))
    assert cfg.work_dir == 'cli'
    args = parse_train_args(['c.py', '--work-dir', 'cli', '--cfg-options', 'work_dir=opt', 'launcher=slurm',
                             'train_dataloader.batch_size=7'])
    cfg = merge_train_args(_cfg(), args)
    assert cfg.work_dir == 'opt' and cfg.launcher == 'slurm' and cfg.train_dataloader.batch_size == 7


def test_no_validate_and_auto_scale_lr():
    cfg = merge_train_args(_cfg(auto_scale_lr=dict(base_batch_size=256)),
                           parse_train_args(['c.py', '--no-validate', '--auto-scale-lr']))
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == 256
    with pytest.raises(LaunchError, match='auto_scale_lr = dict\\(base_batch_size'):
        merge_train_args(_cfg(), parse_train_args(['c.py', '--auto-scale-lr']))


def test_mmpretrain_dataloader_defaults_only_for_mmpretrain():
    cfg = merge_train_args(_cfg(), parse_train_args(['c.py']))
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate')
    assert 'persistent_workers' not in cfg.train_dataloader  # num_workers=0: torch would reject it
    assert cfg.val_dataloader.persistent_workers is True
    cfg = merge_train_args(_cfg(), parse_train_args(['c.py', '--no-persistent-workers', '--no-pin-memory']))
    assert 'persistent_workers' not in cfg.val_dataloader and cfg.val_dataloader.pin_memory is False
    cfg = merge_train_args(_cfg('mmseg'), parse_train_args(['c.py']))
    assert 'collate_fn' not in cfg.train_dataloader


# ------------------------------------------------------------------------------------------------ AMP
def test_amp_config_switches_to_fp32_without_cuda():
    cfg = _cfg('mmseg', optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                           optimizer=dict(type='AdamW', lr=1e-4)))
    notes = resolve_amp(cfg, amp=False, amp_available=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert len(notes) == 1 and 'AmpOptimWrapper' in notes[0] and 'fp32' in notes[0]
    # the switched config really builds on this (CPU) machine, the original would assert
    import torch.nn as nn
    from mmengine.optim import build_optim_wrapper
    assert type(build_optim_wrapper(nn.Linear(2, 2), cfg.optim_wrapper)).__name__ == 'OptimWrapper'


def test_amp_flag_falls_back_without_cuda_and_applies_with_it():
    cfg = _cfg()
    notes = resolve_amp(cfg, amp=True, amp_available=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and '--amp' in notes[0] and 'fp32' in notes[0]
    cfg = _cfg()
    assert resolve_amp(cfg, amp=True, amp_available=True) == []
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg = _cfg(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale=512., optimizer=dict(type='SGD', lr=0.1)))
    resolve_amp(cfg, amp=True, amp_available=True)
    assert cfg.optim_wrapper.loss_scale == 512.
    cfg = _cfg(optim_wrapper=dict(type='mmengine.AmpOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    resolve_amp(cfg, amp=False, amp_available=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    cfg = _cfg(optim_wrapper=dict(type='ApexOptimWrapper', optimizer=dict(type='SGD', lr=0.1)))
    with pytest.raises(LaunchError, match="optim_wrapper.type='ApexOptimWrapper'"):
        resolve_amp(cfg, amp=True, amp_available=True)
    assert resolve_amp(_cfg(), amp=False, amp_available=False) == []


# ------------------------------------------------------------------------------------------------ test flags
def _test_args(tmp_path, *extra):
    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'x')
    return parse_test_args(['c.py', str(ckpt), *extra])


def test_test_checkpoint_required(tmp_path):
    cfg = merge_test_args(_cfg(), _test_args(tmp_path))
    assert cfg.load_from == str(tmp_path / 'model.pth')
    with pytest.raises(LaunchError, match='does not exist'):
        merge_test_args(_cfg(), parse_test_args(['c.py', str(tmp_path / 'nope.pth')]))
    with pytest.raises(SystemExit):
        parse_test_args(['c.py', 'x.pth', '--out-item', 'metrics'])


def test_show_dir_wiring_per_codebase(tmp_path):
    cfg = merge_test_args(_cfg('mmpretrain'), _test_args(tmp_path, '--show-dir', 'vis', '--interval', '3'))
    v = cfg.default_hooks.visualization
    assert v.enable is True and v.out_dir == 'vis' and v.interval == 3 and v.show is False
    cfg = merge_test_args(_cfg('mmseg'), _test_args(tmp_path, '--show-dir', 'vis'))
    assert cfg.default_hooks.visualization.draw is True and cfg.visualizer.save_dir == 'vis'
    cfg = merge_test_args(_cfg('mmdet'), _test_args(tmp_path, '--show-dir', 'vis', '--show', '--wait-time', '1'))
    v = cfg.default_hooks.visualization
    assert v.draw is True and v.test_out_dir == 'vis' and v.show is True and v.wait_time == 1
    with pytest.raises(LaunchError, match='visualization hook'):
        merge_test_args(_cfg('mmdet', default_hooks=dict()), _test_args(tmp_path, '--show-dir', 'v'))


def test_out_per_codebase(tmp_path):
    cfg = merge_test_args(_cfg('mmseg'), _test_args(tmp_path, '--out', 'preds'))
    assert cfg.test_evaluator.output_dir == 'preds' and cfg.test_evaluator.keep_results is True
    with pytest.raises(LaunchError, match='.pkl'):
        merge_test_args(_cfg('mmdet'), _test_args(tmp_path, '--out', 'preds.json'))
    merge_test_args(_cfg('mmdet'), _test_args(tmp_path, '--out', 'preds.pkl'))


def test_tta_per_codebase(tmp_path):
    cfg = merge_test_args(_cfg('mmpretrain'), _test_args(tmp_path, '--tta'))
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA' and cfg.model.module.type == 'X'
    assert cfg.test_dataloader.dataset.pipeline[-1].type == 'TestTimeAug'
    cfg = merge_test_args(_cfg('mmdet'), _test_args(tmp_path, '--tta'))
    assert cfg.model.type == 'DetTTAModel'
    assert cfg.test_dataloader.dataset.pipeline[-1].transforms[1][0].type == 'PackDetInputs'
    with pytest.raises(LaunchError, match='tta_model'):
        merge_test_args(_cfg('mmseg'), _test_args(tmp_path, '--tta'))


# ------------------------------------------------------------------------------------------------ data check
@pytest.mark.parametrize('dataset,key,needle', [
    (dict(type='ImageNet', data_root='{r}/imagenet', split='train'), 'train_dataloader.dataset.data_root',
     'image-net.org'),
    (dict(type='ADE20KDataset', data_root='{r}/ade/ADEChallengeData2016',
          data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')),
     'train_dataloader.dataset.data_root', 'ADEChallengeData2016.zip'),
    (dict(type='RepeatDataset', times=2, dataset=dict(
        type='CocoDataset', data_root='{r}/coco', ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'))), 'train_dataloader.dataset.dataset.data_root', 'cocodataset.org'),
])
def test_missing_data_message(tmp_path, dataset, key, needle):
    import json
    dataset = json.loads(json.dumps(dataset).replace('{r}', str(tmp_path / 'nowhere')))
    cfg = _cfg(train_dataloader=dict(batch_size=1, dataset=dataset), val_dataloader=None)
    with pytest.raises(MissingDataError) as info:
        check_data_paths(cfg, 'train', config_name='my_config.py')
    msg = str(info.value)
    assert info.value.key == key and '\n' not in msg
    assert key in msg and str(tmp_path / 'nowhere') in msg and needle in msg and 'my_config.py' in msg
    assert 'make_demo_data.py' in msg and '--cfg-options' in msg


def test_missing_data_resolves_paths_like_basedataset(tmp_path):
    root = tmp_path / 'coco'
    (root / 'train2017').mkdir(parents=True)
    ds = dict(type='CocoDataset', data_root=str(root), ann_file='annotations/instances_train2017.json',
              data_prefix=dict(img='train2017/'))
    cfg = _cfg(train_dataloader=dict(dataset=ds), val_dataloader=None)
    with pytest.raises(MissingDataError) as info:
        check_data_paths(cfg, 'train')
    assert info.value.key == 'train_dataloader.dataset.ann_file'
    assert info.value.path == str(root / 'annotations/instances_train2017.json')
    (root / 'annotations').mkdir()
    (root / 'annotations/instances_train2017.json').write_text('{"images": [], "annotations": [], "categories": []}')
    check_data_paths(cfg, 'train')  # all present
    # test mode checks only the test dataloader
    check_data_paths(_cfg(test_dataloader=dict(dataset=ds)), 'test')
    with pytest.raises(MissingDataError, match='test_dataloader.dataset.data_prefix.img'):
        check_data_paths(_cfg(test_dataloader=dict(dataset=dict(ds, data_prefix=dict(img='val2017/')))), 'test')
    # remote paths are not checked
    check_data_paths(_cfg(test_dataloader=dict(dataset=dict(ds, data_root='s3://bucket/coco'))), 'test')


def test_prepare_data_generates_demo_then_checks(tmp_path):
    from pelk_mm.datasets import demo_data_dir
    root = str(tmp_path / 'demo')
    ds = dict(type='ImageNet', data_root=demo_data_dir('imagenet', root), split='train')
    cfg = _cfg(demo_data=dict(kind='imagenet', root=root), train_dataloader=dict(dataset=ds), val_dataloader=None)
    notes = prepare_data(cfg, 'train')
    assert 'wrote demo imagenet' in notes[0]
    bad = _cfg(demo_data=dict(kind='imagenet', root=root),
               train_dataloader=dict(dataset=dict(ds, data_root=str(tmp_path / 'elsewhere'))), val_dataloader=None)
    with pytest.raises(MissingDataError, match='demo_data generated'):
        prepare_data(bad, 'train')


def test_launcher_environment_errors():
    check_launcher('none', environ={})
    with pytest.raises(LaunchError, match='RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT missing.*dist_train.sh'):
        check_launcher('pytorch', environ={'LOCAL_RANK': '0'})
    check_launcher('pytorch', environ=dict(RANK='0', WORLD_SIZE='2', MASTER_ADDR='h', MASTER_PORT='1'))
    with pytest.raises(LaunchError, match='inside srun'):
        check_launcher('slurm', environ={})
    with pytest.raises(LaunchError, match='needs GPUs'):
        check_launcher('slurm', environ=dict(SLURM_PROCID='0'), cuda_available=False)
    check_launcher('slurm', environ=dict(SLURM_PROCID='0'), cuda_available=True)
    with pytest.raises(LaunchError, match='mpirun'):
        check_launcher('mpi', environ={})


# ------------------------------------------------------------------------------------------------ config loading
@pytest.mark.parametrize('text,expected', [
    ("_base_ = ['{repo}/configs/demo/pelk_demo_cascade_mask_rcnn_coco.py']\n"
     "model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='x.pth')))\n",
     'init_cfg is a dict in the child config but is of type'),
    ("model = dict(type='X'\n", 'SyntaxError'),
    ("_base_ = ['./no_such_base.py']\n", 'no_such_base.py'),
], ids=['inheritance-conflict', 'syntax-error', 'missing-base'])
def test_broken_config_files_fail_in_one_line(tmp_path, capsys, text, expected):
    """tools/train.py and tools/test.py load configs through load_config: whatever mmengine's parser raises comes out
    as one ``error:`` line naming the file (exit status 2), not a traceback from inside mmengine."""
    from pathlib import Path

    from pelk_mm.apis import train_main
    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / 'broken.py'
    path.write_text(text.format(repo=repo))
    assert train_main([str(path), '--work-dir', str(tmp_path / 'w')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot load config '{path}'") and expected in err[0], err
    assert not (tmp_path / 'w').exists()


def test_cfg_options_conflict_fails_in_one_line(tmp_path, capsys):
    from pelk_mm.apis import train_main
    from pelk_mm.config import merge_cfg_options
    cfg = _cfg()
    with pytest.raises(LaunchError, match=r"--cfg-options model.type.depth=3 cannot be merged into the config"):
        merge_cfg_options(cfg, {'model.type.depth': 3})
    path = tmp_path / 'cfg.py'
    path.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='X', backbone=None)\n")
    assert train_main([str(path), '--work-dir', str(tmp_path / 'w'), '--cfg-options', 'model.type.depth=3']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --cfg-options model.type.depth=3'), err
