"""Every config file in configs/ loads and builds its model (the real ones without downloading weights)."""
import importlib
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)


def _drop_pretrained(cfg_model):
    backbone = cfg_model.get('backbone', {})
    init = backbone.get('init_cfg')
    if isinstance(init, dict) and init.get('type') == 'Pretrained':
        backbone['init_cfg'] = None


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {'pelk_t_in1k.py', 'pelk_s_in1k.py', 'pelk_b_in1k.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=[str(p.relative_to(ROOT / 'configs')) for p in CONFIGS])
def test_config_loads_and_builds(path):
    cfg = Config.fromfile(str(path))
    scope = cfg.get('default_scope')
    assert scope in ('mmpretrain', 'mmseg', 'mmdet'), f'{path.name}: default_scope={scope!r}'
    assert cfg.model.backbone.type == 'pelk_mm.PeLK', f'{path.name} does not use the PeLK backbone'
    _drop_pretrained(cfg.model)
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    model = registry.MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.backbone.parameters()) > 0
