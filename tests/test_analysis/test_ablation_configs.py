"""configs/ablations: every file loads, builds (shallow copy of its backbone), encodes the paper row it claims,
and is listed in the folder's README."""
import copy
import functools
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config

from pelk_mm.models import PeLK
from pelk_mm.models.layers import StripeConv2d

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
ABL = osp.join(REPO, 'configs', 'ablations')
CONFIGS = sorted(p for p in glob.glob(osp.join(ABL, '**', '*.py'), recursive=True) if '_base_' not in p)


def rel(path):
    return osp.relpath(path, ABL)


@functools.lru_cache(maxsize=None)
def load(path):
    return Config.fromfile(path)


def shallow_backbone(cfg):
    """The config's backbone with one block per stage and narrow stages (the kwargs are what is tested, not the
    size; the kernel sizes, grids and conv forms are kept)."""
    bb = copy.deepcopy(cfg.model.backbone.to_dict())
    bb.pop('type')
    arch = bb.get('arch', 'tiny')
    if isinstance(arch, str):
        arch = copy.deepcopy(PeLK.arch_settings[PeLK.arch_aliases.get(arch, arch)])
    arch['depths'] = [1] * len(arch['depths'])
    arch['channels'] = [16 * (i + 1) for i in range(len(arch['depths']))]
    bb['arch'] = arch
    bb['drop_path_rate'] = 0.
    return PeLK(**bb)


def sparsity_hooks(cfg):
    return [h for h in cfg.custom_hooks if 'DynamicSparsityHook' in h['type']]


def test_every_family_present():
    families = {rel(p).split(osp.sep)[0] for p in CONFIGS}
    assert families == {'table5_sharing_grid', 'table6_center', 'table7_kernel_size', 'table1_conv_form', 'kpe',
                        'partial_conv'}
    assert len(CONFIGS) == 6 + 4 + 5 + 16 + 4 + 4


def test_readme_lists_every_config():
    readme = open(osp.join(ABL, 'README.md')).read()
    listed = set(re.findall(r'`([\w/{},-]+\.py)`', readme))
    expanded = set()
    for item in listed:  # brace patterns: {a,b} alternatives
        parts = [item]
        while any('{' in p for p in parts):
            nxt = []
            for p in parts:
                m = re.search(r'\{([^}]*)\}', p)
                if not m:
                    nxt.append(p)
                    continue
                nxt += [p[:m.start()] + alt + p[m.end():] for alt in m.group(1).split(',')]
            parts = nxt
        expanded.update(parts)
    assert {rel(p) for p in CONFIGS} <= expanded


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_config_loads_and_builds(path):
    cfg = load(path)
    assert cfg.train_cfg.max_epochs == 120
    model = shallow_backbone(cfg)
    family = rel(path).split(osp.sep)[0]
    hooks = sparsity_hooks(cfg)
    types = [h['type'] for h in cfg.custom_hooks]
    assert types[:3] == ['EMAHook', 'pelk_mm.ResumeStateHook', 'pelk_mm.NonFiniteGuardHook']
    if family == 'table5_sharing_grid' or 'nosparse' in path:
        assert hooks == []
    else:
        assert len(hooks) == 1 and hooks[0]['sparsity'] == 0.4
    convs = [stage[0].token_mixer.conv for stage in model.stages]
    if family == 'table1_conv_form':
        form = 'stripe' if 'stripe' in path else 'dense'
        assert cfg.model.backbone.conv_ratio == 1.0 and cfg.model.backbone.kpe_mode is None
        assert all(isinstance(c, StripeConv2d) == (form == 'stripe') for c in convs)
        k = int(re.search(r'_k(\d+)_', path).group(1))
        assert convs[0].kernel_size == k


@pytest.mark.parametrize('row, ratio', [(1, 1.00), (2, 0.27), (3, 0.33), (4, 0.16), (5, 0.11), (6, 0.11)])
def test_table5_parameter_ratios(row, ratio):
    cfg = load(osp.join(ABL, 'table5_sharing_grid', f'pelk_t_grid{row}_k33_in1k_120e.py'))
    model = shallow_backbone(cfg)
    conv = model.stages[0][0].token_mixer.conv
    assert conv.kernel_size == 33 and model.stages[0].kpe is None
    assert round(len(conv.grid) ** 2 / 33 ** 2, 2) == ratio


@pytest.mark.parametrize('centre, half_grid', [(1, [11, 8, 4, 2, 1]), (3, [10, 8, 4, 2, 1, 1]),
                                               (5, [9, 8, 4, 2, 1, 1, 1]), (7, [8, 8, 4, 2, 1, 1, 1, 1])])
def test_table6_grids(centre, half_grid):
    cfg = load(osp.join(ABL, 'table6_center', f'pelk_t_center{centre}_k51_in1k_120e.py'))
    conv = shallow_backbone(cfg).stages[0][0].token_mixer.conv
    assert list(conv.grid[:len(half_grid)]) == half_grid and conv.kernel_size == 51
    assert conv.kpe_mode == 'input'


@pytest.mark.parametrize('name, kernels, size', [('k51_224', [51, 49, 47, 13], 224),
                                                 ('k101_224', [101, 69, 67, 13], 224),
                                                 ('k151_224', [151, 89, 87, 13], 224),
                                                 ('k51_384', [51, 49, 47, 13], 384),
                                                 ('k101_384', [101, 69, 67, 13], 384)])
def test_table7_kernels_and_resolution(name, kernels, size):
    cfg = load(osp.join(ABL, 'table7_kernel_size', f'pelk_t_{name}_in1k_120e.py'))
    assert [s[0].token_mixer.conv.kernel_size for s in shallow_backbone(cfg).stages] == kernels
    crop = [t for t in cfg.train_dataloader.dataset.pipeline if t['type'] == 'RandomResizedCrop'][0]
    assert crop['scale'] == size
