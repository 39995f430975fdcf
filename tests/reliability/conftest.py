"""Shared helpers for tests/reliability (a fixture, since test modules cannot import each other under
--import-mode=importlib). Every run is a real ``tools/train.py`` / ``tools/dist_train.sh`` subprocess on the demo
configs, shrunk with ``--cfg-options``."""
import glob
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable

# the classification demo (epoch-based, Mixup/CutMix, EMA) at a few seconds per epoch
CLS_SHRINK = [
    'train_cfg.max_epochs=3', 'train_cfg.val_interval=1',
    'train_dataloader.dataset.indices=48', 'val_dataloader.dataset.indices=12', 'test_dataloader.dataset.indices=12',
    'train_dataloader.batch_size=16', 'val_dataloader.batch_size=12',
    'train_dataloader.num_workers=1', 'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
    'model.backbone.arch.depths=[1,1,1,1]', 'model.backbone.arch.channels=[8,16,16,32]',
    'model.backbone.arch.kernel_sizes=[7,5,5,3]', 'model.backbone.arch.center_sizes=[3,3,3,3]',
    'model.backbone.small_kernel=3', 'model.backbone.drop_path_rate=0.2', 'model.head.in_channels=32',
    'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=1',
    'default_hooks.logger.interval=1', 'randomness.seed=0', 'randomness.deterministic=True',
]
# the segmentation demo (iteration-based, InfiniteSampler, SyncBN -> BN) at ~1 s per iteration
SEG_SHRINK = [
    'train_cfg.max_iters=8', 'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
    'default_hooks.checkpoint.max_keep_ckpts=1', 'default_hooks.logger.interval=1',
    'val_dataloader.dataset.indices=2', 'test_dataloader.dataset.indices=2',
    'train_dataloader.batch_size=2', 'train_dataloader.num_workers=1', 'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False', 'test_dataloader.persistent_workers=False',
    'model.backbone.arch.depths=[1,1,1,1]', 'model.backbone.arch.channels=[8,8,16,16]',
    'model.backbone.arch.kernel_sizes=[7,5,5,3]', 'model.backbone.arch.center_sizes=[3,3,3,3]',
    'model.backbone.small_kernel=3', 'model.decode_head.in_channels=[8,8,16,16]', 'model.decode_head.channels=16',
    'model.auxiliary_head.in_channels=16', 'model.auxiliary_head.channels=8',
    'param_scheduler.0.end=2', 'param_scheduler.1.begin=2', 'param_scheduler.1.end=8',
    'randomness.seed=0', 'randomness.deterministic=True',
]

HOOKS_IMPORTS = "custom_imports = dict(imports=['pelk_mm', 'fault_injection'], allow_failed_imports=False)\n"


def write_config(path: Path, base: str, hooks: str) -> Path:
    """A config = the demo ``base`` + ``custom_hooks`` (python source of the list)."""
    path.write_text(f"_base_ = '{REPO / base}'\n{HOOKS_IMPORTS}custom_hooks = {hooks}\n")
    return path


def env(**extra):
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
             PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), e.get('PYTHONPATH', '')]))
    for k in list(e):
        if k.startswith('PELK_FAULT_') or k in ('LOCAL_RANK', 'RANK', 'WORLD_SIZE', 'MASTER_PORT'):
            e.pop(k)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(args, cwd, timeout=300, **extra):
    t0 = time.time()
    r = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env(**extra), capture_output=True, text=True,
                       timeout=timeout)
    r.elapsed = time.time() - t0
    return r


def train(config, work_dir, cwd, options=(), extra_args=(), timeout=300, **fault_env):
    return run([PY, REPO / 'tools/train.py', config, '--work-dir', work_dir, *extra_args, '--cfg-options',
                *options], cwd=cwd, timeout=timeout, **fault_env)


def dist_train(config, nproc, work_dir, cwd, options=(), extra_args=(), timeout=300, **fault_env):
    return run(['bash', REPO / 'tools/dist_train.sh', config, nproc, '--work-dir', work_dir, *extra_args,
                '--cfg-options', *options], cwd=cwd, timeout=timeout, PORT=free_port(), **fault_env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def log_text(work_dir) -> str:
    logs = sorted(glob.glob(os.path.join(str(work_dir), '*', '*.log')))
    return open(logs[-1]).read() if logs else ''


def load(path):
    """A checkpoint the runs wrote, through the project's safe loader (so it must need no opt-in)."""
    from pelk_mm.checkpoint import load_checkpoint_file
    return load_checkpoint_file(str(path), map_location='cpu')


def _flatten(obj, prefix=''):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f'{prefix}{k}.')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f'{prefix}{i}.')
    else:
        yield prefix[:-1], obj


def diff_states(a, b):
    """Keys whose values differ between two (nested) state dicts; tensors compared exactly."""
    fa, fb = dict(_flatten(a)), dict(_flatten(b))
    bad = sorted(set(fa) ^ set(fb))
    for k in set(fa) & set(fb):
        x, y = fa[k], fb[k]
        if torch.is_tensor(x) or torch.is_tensor(y):
            same = torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and torch.equal(x, y)
        else:
            try:
                same = bool(x == y)
            except Exception:  # noqa: BLE001 - numpy arrays etc.
                import numpy as np
                same = np.array_equal(np.asarray(x), np.asarray(y))
        if not same:
            bad.append(k)
    return bad


def max_abs_diff(sd_a, sd_b) -> float:
    return max(float((sd_a[k].float() - sd_b[k].float()).abs().max()) for k in sd_a
               if torch.is_tensor(sd_a[k]) and sd_a[k].is_floating_point())


class Rel:
    REPO, HERE, PY = REPO, HERE, PY
    CLS_SHRINK, SEG_SHRINK = CLS_SHRINK, SEG_SHRINK
    write_config = staticmethod(write_config)
    env = staticmethod(env)
    run = staticmethod(run)
    train = staticmethod(train)
    dist_train = staticmethod(dist_train)
    log_text = staticmethod(log_text)
    load = staticmethod(load)
    diff_states = staticmethod(diff_states)
    max_abs_diff = staticmethod(max_abs_diff)


@pytest.fixture(scope='session')
def rel():
    return Rel


@pytest.fixture(scope='session')
def demo_cwd(tmp_path_factory):
    """A working directory whose data/demo holds the ImageNet, ADE20K and COCO demo datasets (generated once)."""
    from pelk_mm.datasets import make_demo_data
    cwd = tmp_path_factory.mktemp('reliability')
    for kind in ('imagenet', 'ade20k', 'coco'):
        make_demo_data(kind, str(cwd / 'data' / 'demo'))
    return cwd
