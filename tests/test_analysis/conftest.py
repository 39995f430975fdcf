"""Shared fixtures of the analysis-tool tests: a tiny PeLK classifier config, a checkpoint of it, a few images."""
import importlib.util
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TINY_CFG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
data_preprocessor = dict(num_classes=4, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='pelk_mm.PeLK', arch=dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 40],
                  kernel_sizes=[13, 11, 9, 7]){extra}),
    head=dict(type='LinearClsHead', num_classes=4, in_channels=40, loss=dict(type='CrossEntropyLoss')))
"""


def _load_tool(name):
    """Import ``tools/analysis/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', osp.join(REPO, 'tools', 'analysis', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def load_tool():
    """``load_tool(name)`` imports ``tools/analysis/<name>.py`` (tools are scripts, not a package)."""
    return _load_tool


def write_config(path, extra=''):
    path.write_text(TINY_CFG.replace('{extra}', extra))
    return str(path)


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path / 'tiny_pelk.py')


@pytest.fixture
def config_factory(tmp_path):
    """``config_factory(name, extra)``: the tiny config with ``extra`` backbone kwargs (e.g. ``", conv_type=..."``)."""
    return lambda name, extra='': write_config(tmp_path / f'{name}.py', extra)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_config):
    """A checkpoint whose stage-0 kernel has its outermost shared cells zeroed (so loading it is visible)."""
    from pelk_mm.analysis.builder import build_model, load_cfg
    torch.manual_seed(0)
    model, _ = build_model(load_cfg(tiny_config))
    with torch.no_grad():
        conv = model.backbone.stages[0][0].token_mixer.conv
        conv.weight[:, :, 0, :] = 0  # first row of cells: grid[0] rows of the dense kernel
    path = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), str(path))
    return str(path)


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / 'images' / 'sub'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f'img{i}.png')
    return str(tmp_path / 'images')
