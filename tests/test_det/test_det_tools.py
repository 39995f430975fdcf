"""The detection configs through pelk_mm's launchers (tools/train.py, tools/test.py): a missing COCO folder is
reported by path before anything is built, and the CPU demo trains, evaluates COCO bbox/segm and draws predictions."""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest


def test_missing_coco_is_named(tmp_path, capsys, repo_root, det_config_path):
    from pelk_mm.apis import train_main

    missing = osp.join(str(tmp_path), 'nowhere', 'coco') + '/'
    rc = train_main([
        osp.join(repo_root, det_config_path('t')), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
        f'train_dataloader.dataset.data_root={missing}', f'val_dataloader.dataset.data_root={missing}'
    ])
    err = capsys.readouterr().err
    assert rc != 0
    assert missing in err and 'train_dataloader.dataset.data_root' in err
    assert 'COCO 2017' in err and 'instances_{train,val}2017.json' in err
    assert 'Traceback' not in err
    assert not osp.exists(tmp_path / 'work' / 'vis_data')  # stopped before the Runner was built


def _run(args, cwd, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_train_test_show_dir(tmp_path, repo_root, det_config_path):
    """Four epochs (60 iterations) of the CPU demo (demo data generated on first use), then tools/test.py on the
    checkpoint: COCO bbox and segm metrics are printed, the detector has learnt (mAP well above 0: ~0.18 here; it
    was ~0.00 while mmcv's RoIAlign read channels-last features) and --show-dir writes one painted image per val
    image."""
    config = det_config_path('demo')
    work = str(tmp_path / 'work')
    _run(['tools/train.py', config, '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=4',
          'param_scheduler.1.milestones=[2,3]', 'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4'],
         cwd=repo_root)
    ckpt = osp.join(work, 'epoch_4.pth')
    assert osp.isfile(ckpt)
    out = _run(['tools/test.py', config, ckpt, '--work-dir', str(tmp_path / 'test'), '--show-dir', 'vis'], cwd=repo_root)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in out
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        value = float(re.search(re.escape(key) + r': ([0-9.]+)', out).group(1))
        assert value > 0.05, f'{key} = {value} after 60 iterations: the detector does not learn'
    with open(osp.join(repo_root, 'data/demo/coco/annotations/instances_val2017.json')) as f:
        num_val = len(json.load(f)['images'])
    pngs = glob.glob(osp.join(str(tmp_path / 'test'), '*', 'vis', '*.jpg')) + \
        glob.glob(osp.join(str(tmp_path / 'test'), '*', 'vis', '*.png'))
    assert len(pngs) == num_val, pngs
