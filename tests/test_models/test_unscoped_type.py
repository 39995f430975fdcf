"""``type='PeLK'`` without the ``pelk_mm.`` scope (how SLaK / UniRepLKNet configs name their backbones) builds the
backbone in mmpretrain, mmseg and mmdet configs, without shadowing a codebase's own class of that name."""
import importlib
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

import pelk_mm  # noqa: F401
from pelk_mm.models import PeLK

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMOS = {
    'mmpretrain': 'configs/demo/pelk_demo_in1k.py',
    'mmseg': 'configs/demo/pelk_demo_upernet_ade20k.py',
    'mmdet': 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py',
}


def codebase_models(codebase: str):
    importlib.import_module(f'{codebase}.utils').register_all_modules(init_default_scope=False)
    return importlib.import_module(f'{codebase}.registry').MODELS


@pytest.mark.parametrize('codebase', sorted(DEMOS))
def test_demo_model_builds_with_the_bare_name(codebase):
    """The codebase's own builder, under its default scope (as its Runner builds the model), builds the demo
    config's whole model with ``type='PeLK'``: the same model as with ``type='pelk_mm.PeLK'``, and it runs."""
    cfg = Config.fromfile(osp.join(REPO, DEMOS[codebase]))
    cfg.model.backbone.init_cfg = None
    models = {}
    for name in ('PeLK', 'pelk_mm.PeLK'):
        cfg.model.backbone.type = name
        with DefaultScope.overwrite_default_scope(codebase):
            torch.manual_seed(0)
            models[name] = codebase_models(codebase).build(cfg.model)
    bare, scoped = models['PeLK'], models['pelk_mm.PeLK']
    assert type(bare.backbone) is PeLK
    assert {k: v.shape for k, v in bare.state_dict().items()} == {k: v.shape for k, v in scoped.state_dict().items()}
    with torch.no_grad():
        feats = bare.eval().extract_feat(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize('codebase', sorted(DEMOS))
def test_a_codebase_class_named_pelk_wins_in_its_configs(codebase):
    """A class the codebase registers as ``PeLK`` itself is what its configs build; the other codebases still get
    pelk_mm's."""
    registry = codebase_models(codebase)

    class PeLK(torch.nn.Module):  # noqa: F811 - the codebase's own class of that name
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

    registry.register_module(module=PeLK)
    try:
        with DefaultScope.overwrite_default_scope(codebase):
            built = registry.build(dict(type='PeLK', arch='tiny'))
        assert type(built) is PeLK and built.kwargs == dict(arch='tiny')
        other = next(c for c in sorted(DEMOS) if c != codebase)
        with DefaultScope.overwrite_default_scope(other):
            small = dict(type='PeLK', arch=dict(depths=[1, 1], channels=[8, 16], kernel_sizes=[7, 5]))
            assert type(codebase_models(other).build(small)).__module__ == 'pelk_mm.models.backbones.pelk'
    finally:
        registry._module_dict.pop('PeLK')


def test_another_packages_root_entry_is_not_replaced():
    """If another package put its own ``PeLK`` in mmengine's root registry, re-registering pelk_mm's leaves it
    there (its configs keep working; pelk_mm's configs use the scoped name)."""
    from pelk_mm.registry import MODELS

    class PeLK(torch.nn.Module):  # noqa: F811 - another package's class
        pass

    ours = ROOT_MODELS.module_dict['PeLK']
    assert ours is MODELS.module_dict['PeLK']
    ROOT_MODELS.register_module(name='PeLK', module=PeLK, force=True)
    try:
        MODELS.register_module(name='PeLK', module=ours, force=True)
        assert ROOT_MODELS.module_dict['PeLK'] is PeLK
    finally:
        ROOT_MODELS.register_module(name='PeLK', module=ours, force=True)


def test_bare_name_in_a_config_file_with_custom_imports(tmp_path):
    """The user's path, in a fresh interpreter: a config file that names ``type='PeLK'`` and imports pelk_mm through
    ``custom_imports`` is built by mmdet's registry; the script never imports pelk_mm itself."""
    config = tmp_path / 'my_pelk_detector.py'
    config.write_text(textwrap.dedent(f'''
        _base_ = [{osp.join(REPO, DEMOS['mmdet'])!r}]
        custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
        model = dict(backbone=dict(type='PeLK', init_cfg=None))
    '''))
    script = textwrap.dedent(f'''
        from mmengine.config import Config
        cfg = Config.fromfile({str(config)!r})
        from mmdet.utils import register_all_modules
        register_all_modules()
        from mmdet.registry import MODELS
        model = MODELS.build(cfg.model)
        print(type(model.backbone).__module__, type(model.backbone).__name__)
    ''')
    r = subprocess.run([sys.executable, '-c', script], cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == 'pelk_mm.models.backbones.pelk PeLK'
