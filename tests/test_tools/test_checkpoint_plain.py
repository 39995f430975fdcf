"""Checkpoints the project writes hold tensors and plain Python data only, so stock tools read them.

torch's default ``torch.load(path)`` (``weights_only=True``) refuses mmengine's ``HistoryBuffer`` and numpy objects,
which every Runner checkpoint held (the message hub's log history, the ``eta`` runtime info). Every checkpoint saved
through mmengine in a process that imported pelk_mm is written as plain data (those objects as tagged dicts of
tensors and builtins), and pelk_mm's loader turns them back into the same objects, so ``--resume`` restores exactly
what was saved. mmpretrain's stock ``publish_model.py`` and ``reparameterize_model.py`` (as installed with mmpretrain, under
``mmpretrain/.mim/tools/model_converters``) run on a checkpoint written by ``tools/train.py``; the classification, segmentation
and detection demos' checkpoints name no global beyond torch's own allow-list; older checkpoints with
``HistoryBuffer`` objects still load through the safe loader.
"""
import argparse
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import pelk_mm.compat  # noqa: F401  (mmengine's loaders and save_checkpoint, as every entry point has them)
from pelk_mm.checkpoint import load_checkpoint_file


def _same(a, b) -> bool:
    """Equal values of the same types, recursively (numpy arrays: dtype, shape and bytes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and (a.tobytes() == b.tobytes() if a.dtype.kind != 'O'
                                                               else a.tolist() == b.tolist())
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return a.dtype == b.dtype and torch.equal(a, b)
    if type(a).__name__ == 'HistoryBuffer':
        return (a.max_length == b.max_length and _same(a._log_history, b._log_history)
                and _same(a._count_history, b._count_history)
                and (not len(a._log_history) or a.mean() == b.mean()))
    return a == b


def _samples():
    from mmengine.logging import HistoryBuffer
    hub = HistoryBuffer(max_length=5)
    for value, count in [(1.5, 1), (2.25, 3), (7.0, 2)]:
        hub.update(value, count)
    return OrderedDict(
        history=hub,
        empty_history=HistoryBuffer(),
        arrays=[np.arange(6, dtype=np.float64).reshape(2, 3), np.array([1, -2], dtype=np.int64),
                np.array([0.1, np.nan, np.inf], dtype=np.float32), np.array([True, False]),
                np.array(3.5), np.arange(4, dtype='>i4'), np.array(['a', 'bc']), np.zeros((0, 2), np.uint8),
                np.asfortranarray(np.arange(6.).reshape(2, 3))],
        scalars=(np.float64(0.1), np.float32(1 / 3), np.int64(-7), np.uint8(200), np.bool_(True), np.str_('s'),
                 np.float16(0.5)),
        dtypes=[np.dtype('float32'), np.dtype('>i8')],
        plain={'a': 1, 'b': [1.5, 'x', None, (2, 3)], 't': torch.arange(3)},
    )


def test_to_plain_and_back_is_exact():
    from pelk_mm.checkpoint import from_plain, to_plain
    sample = _samples()
    plain = to_plain(sample)
    # plain: torch's default weights_only unpickler takes it
    buffer = __import__('io').BytesIO()
    torch.save(plain, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer)
    back = from_plain(loaded)
    assert _same(back, sample)
    assert _same(sample, _samples())  # the input is not changed
    # containers without anything to convert are passed through as they are
    state = OrderedDict(w=torch.ones(2))
    state._metadata = {'': {'version': 1}}
    assert to_plain({'state_dict': state})['state_dict'] is state


def test_mmengine_save_writes_plain_data_and_the_loader_restores_it(tmp_path, monkeypatch):
    import pelk_mm.checkpoint as ckpt_mod
    from mmengine.runner.checkpoint import save_checkpoint
    warned = []
    monkeypatch.setattr(ckpt_mod, '_log_warning', warned.append)
    sample = _samples()
    path = tmp_path / 'saved.pth'
    save_checkpoint({'meta': {'eta': np.float64(12.5)}, 'message_hub': {'log_scalars': sample}}, str(path))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    assert isinstance(torch.load(path)['meta']['eta'], dict)  # plain: a tagged dict
    restored = load_checkpoint_file(str(path))
    assert _same(restored['message_hub']['log_scalars'], sample) and type(restored['meta']['eta']) is np.float64
    assert not warned
    # an object that has no plain form is saved as it is, with one warning naming where it is
    save_checkpoint({'meta': {'args': argparse.Namespace(lr=1)}}, str(tmp_path / 'other.pth'))
    assert len(warned) == 1 and "['meta']['args']" in warned[0] and 'Namespace' in warned[0]
    # checkpoints written with HistoryBuffer and numpy objects pickled as they are load as they did
    older = {'history': sample['history']}
    torch.save({'message_hub': {'log_scalars': older}, 'meta': {'eta': np.float64(3.0)}}, tmp_path / 'older.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / 'older.pth'))  # not plain
    assert _same(load_checkpoint_file(str(tmp_path / 'older.pth'))['message_hub']['log_scalars'], older)


# --------------------------------------------------------------------------------------------------- real runs
_CLS_HOOKS = """
_base_ = '{base}'
custom_hooks = [dict(type='EMAHook', momentum=2e-2, priority='ABOVE_NORMAL'),
                dict(type='pelk_mm.ResumeStateHook'), dict(type='pelk_mm.NonFiniteGuardHook'),
                dict(type='pelk_mm.BNStatsSyncHook')]
default_hooks = dict(checkpoint=dict(save_best='auto'))
"""


@pytest.fixture(scope='module')
def cls_run(tmp_path_factory, tools):
    """Two epochs of the tiny classifier with the hooks of the project's configs (EMA, resume state, non-finite
    guard, BN sync) and save_best."""
    cwd = tmp_path_factory.mktemp('ckpt_plain')
    config = cwd / 'tiny_cls_hooks.py'
    config.write_text(_CLS_HOOKS.format(base=tools.TINY_CLS))
    work = cwd / 'work'
    r = tools.run([tools.PY, tools.REPO / 'tools/train.py', config, '--work-dir', work, '--cfg-options',
                   'train_cfg.max_epochs=2', 'train_dataloader.dataset.indices=32',
                   'val_dataloader.dataset.indices=12'], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd, work, config


@pytest.mark.slow
def test_stock_mmpretrain_tools_run_on_a_training_checkpoint(cls_run, tools, tools_in_one_process):
    cwd, work, config = cls_run
    ckpt = work / 'epoch_2.pth'
    best = next(work.glob('best_*.pth'))
    for path in (ckpt, best):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        torch.load(path)  # torch's defaults
    # what the loader gives back is what the Runner saved: HistoryBuffers and the numpy ``eta``, whole objects
    # (mmengine deep-copies them on resume)
    from mmengine.logging import HistoryBuffer
    hub = load_checkpoint_file(str(ckpt))['message_hub']
    scalars = hub['log_scalars']
    assert scalars and all(isinstance(v, HistoryBuffer) for v in scalars.values())
    assert scalars['train/loss']._log_history.dtype == np.float64 and len(scalars['train/loss']._log_history) == 4
    assert type(hub['runtime_info']['eta']) is np.float64
    pickle.dumps(hub)
    import mmpretrain
    stock = Path(mmpretrain.__file__).parent / '.mim' / 'tools' / 'model_converters'
    if not (stock / 'publish_model.py').is_file():
        pytest.skip(f'mmpretrain installed without its tools ({stock})')

    out_dir = cwd / 'published'
    out_dir.mkdir()
    deployed = cwd / 'deployed' / 'tiny_deploy.pth'
    test = [tools.REPO / 'tools/test.py', config]
    options = ['--work-dir', cwd / 'w_test', '--cfg-options', 'test_dataloader.dataset.indices=12', 'custom_hooks=[]']
    # the four tool runs in one process, each as ``python TOOL ARGS`` runs it
    publish, reparameterize, test_deployed, test_ckpt = tools_in_one_process([
        [stock / 'publish_model.py', ckpt, out_dir / 'tiny.pth'],
        [stock / 'reparameterize_model.py', config, ckpt, deployed],
        # the re-parameterised checkpoint evaluates like the original in the deploy-form model (without the EMA
        # hook: the stock tool keeps the train-form ema_state_dict next to the deploy-form weights)
        test + [deployed] + options + ['model.backbone.deploy=True'],
        test + [ckpt] + options], cwd, tools.env())
    assert publish.returncode == 0, publish.stdout[-2000:] + publish.stderr[-3000:]
    published = list(out_dir.glob('tiny_*.pth'))
    assert len(published) == 1 and 'message_hub' not in torch.load(published[0])
    assert reparameterize.returncode == 0, reparameterize.stdout[-2000:] + reparameterize.stderr[-3000:]
    assert 'Done!' in reparameterize.stdout and deployed.is_file()

    def accuracy(r):
        assert r.returncode == 0, r.stderr[-3000:]
        return re.search(r'accuracy/top1: ([0-9.]+)', r.stdout + r.stderr).group(1)

    assert accuracy(test_deployed) == accuracy(test_ckpt)


_SEG = ['train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
        'val_dataloader.dataset.indices=1', 'test_dataloader.dataset.indices=1', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.persistent_workers=False', 'test_dataloader.persistent_workers=False',
        'model.backbone.arch.depths=[1,1,1,1]', 'model.backbone.arch.channels=[8,8,16,16]',
        'model.backbone.arch.kernel_sizes=[7,5,5,3]', 'model.backbone.arch.center_sizes=[3,3,3,3]',
        'model.backbone.small_kernel=3', 'model.decode_head.in_channels=[8,8,16,16]', 'model.decode_head.channels=16',
        'model.auxiliary_head.in_channels=16', 'model.auxiliary_head.channels=8', 'param_scheduler.0.end=1',
        'param_scheduler.1.begin=1', 'param_scheduler.1.end=2']
_DET = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
        'param_scheduler.1.milestones=[1]', 'train_dataloader.dataset.indices=2', 'val_dataloader.dataset.indices=1',
        'test_dataloader.dataset.indices=1']


_DEMOS = {'seg': ('configs/demo/pelk_demo_upernet_ade20k.py', _SEG, 'iter_2.pth'),
          'det': ('configs/demo/pelk_demo_cascade_mask_rcnn_coco.py', _DET, 'epoch_2.pth')}


@pytest.fixture(scope='module')
def demo_runs(tools, tmp_path_factory, tools_in_one_process):
    """Two iterations / epochs of the segmentation and detection demos, in one process: ``{name: (result, path)}``.
    In the checkout, as the other demo tests: the demo data is generated there once (under a lock)."""
    tmp = tmp_path_factory.mktemp('demo_plain')
    argvs = [[tools.REPO / 'tools/train.py', tools.REPO / config, '--work-dir', tmp / name, '--cfg-options', *options]
             for name, (config, options, _) in _DEMOS.items()]
    runs = tools_in_one_process(argvs, tools.REPO, tools.env(), timeout=600)
    return {name: (r, tmp / name / ckpt) for (name, (_, _, ckpt)), r in zip(_DEMOS.items(), runs)}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(_DEMOS))
def test_seg_and_det_demo_checkpoints_are_plain(demo_runs, name):
    from mmengine.logging import HistoryBuffer
    r, path = demo_runs[name]
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    assert isinstance(torch.load(path)['state_dict'], dict)
    scalars = load_checkpoint_file(str(path))['message_hub']['log_scalars']
    assert scalars and all(isinstance(v, HistoryBuffer) for v in scalars.values())
