"""Shared fixtures of the detection tests: the detection configs and a mmdet default scope."""
from __future__ import annotations

import os.path as osp

import pytest

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
DET_CONFIGS = {
    't': 'configs/pelk_t_cascade_mask_rcnn_coco.py',
    's': 'configs/pelk_s_cascade_mask_rcnn_coco.py',
    'b': 'configs/pelk_b_cascade_mask_rcnn_coco.py',
    'b101': 'configs/pelk_b101_cascade_mask_rcnn_coco.py',
    'demo': 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py',
}


@pytest.fixture(scope='session')
def repo_root() -> str:
    return REPO


@pytest.fixture(scope='session')
def det_config_path():
    """``det_config_path(name)`` -> the repository-relative path of ``DET_CONFIGS[name]``."""
    return DET_CONFIGS.__getitem__


@pytest.fixture(scope='session')
def load_det_config():
    """``load_det_config(name)`` -> the parsed :class:`mmengine.Config` of ``DET_CONFIGS[name]`` (a fresh copy)."""
    import copy

    from mmengine.config import Config
    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = Config.fromfile(osp.join(REPO, DET_CONFIGS[name]))
        return copy.deepcopy(cache[name])

    return load


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build everything as mmdet's Runner does: under the `mmdet` default scope of the configs."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield
