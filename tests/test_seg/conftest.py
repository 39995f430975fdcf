"""Shared fixtures of the segmentation tests: the segmentation configs and a mmseg default scope."""
from __future__ import annotations

import copy
import os.path as osp

import pytest

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
SEG_CONFIGS = {
    't': 'configs/pelk_t_upernet_ade20k.py',
    's': 'configs/pelk_s_upernet_ade20k.py',
    'b': 'configs/pelk_b_upernet_ade20k.py',
    'b101': 'configs/pelk_b101_upernet_ade20k.py',
    'demo': 'configs/demo/pelk_demo_upernet_ade20k.py',
}


@pytest.fixture(scope='session')
def load_seg_config():
    """``load_seg_config(name)`` -> a fresh copy of the parsed :class:`mmengine.Config` of ``SEG_CONFIGS[name]``
    (each file is parsed once per session)."""
    from mmengine.config import Config
    parsed = {}

    def load(name: str):
        if name not in parsed:
            parsed[name] = Config.fromfile(osp.join(REPO, SEG_CONFIGS[name]))
        return copy.deepcopy(parsed[name])

    return load


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Build everything as mmseg's Runner does: under the `mmseg` default scope of the configs."""
    from mmengine.registry import DefaultScope
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


@pytest.fixture
def one_thread():
    """One intra-op thread for the models run here: as fast on small inputs, and far faster than two OpenMP
    threads spinning on a shared, oversubscribed CPU (CI machines run several suites at once)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
