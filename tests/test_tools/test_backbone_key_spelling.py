"""A misspelt key or name of the PeLK backbone in a config is one line naming the closest valid one (did you mean
...?), before any model is built, in every codebase and with the backbone named ``PeLK`` or ``pelk_mm.PeLK``."""
import pytest
from mmengine.config import Config

from pelk_mm.apis.backbone_keys import check_backbone_keys, pelk_arguments
from pelk_mm.apis.validate import validate_config
from pelk_mm.errors import ConfigValidationError

DEMOS = ['configs/demo/pelk_demo_in1k.py', 'configs/demo/pelk_demo_upernet_ade20k.py',
         'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py']
TINY = dict(depths=[1, 1], channels=[8, 16], kernel_sizes=[7, 5])


@pytest.mark.parametrize('config', DEMOS)
@pytest.mark.parametrize('type_name', ['PeLK', 'pelk_mm.PeLK'])
def test_misspelt_constructor_argument_names_the_closest(tools, config, type_name):
    cfg = Config.fromfile(str(tools.REPO / config))
    cfg.model.backbone.type = type_name
    cfg.model.backbone.drop_path_rat = 0.1
    with pytest.raises(ConfigValidationError) as err:
        validate_config(cfg, check_data=False, check_checkpoints=False)
    assert err.value.key == 'model.backbone.drop_path_rat'
    assert "did you mean 'drop_path_rate'?" in str(err.value) and '\n' not in str(err.value)


@pytest.mark.parametrize('backbone, key, closest', [
    (dict(arch='tinny'), 'model.backbone.arch', 'tiny'),
    (dict(arch='base101'), 'model.backbone.arch', 'base-101'),
    (dict(arch=dict(TINY, kernel_size=[7, 5])), 'model.backbone.arch.kernel_size', 'kernel_sizes'),
    (dict(arch=TINY, conv_type='peripherl'), 'model.backbone.conv_type', 'peripheral'),
    (dict(arch=TINY, conv_cfg=dict(type='strip')), 'model.backbone.conv_cfg.type', 'stripe'),
    (dict(arch=TINY, conv_type='stripe', conv_cfg=dict(stripe_widht=3)), 'model.backbone.conv_cfg.stripe_widht',
     'stripe_width'),
    (dict(arch=TINY, kpe_mode='inputs'), 'model.backbone.kpe_mode', 'input'),
    (dict(arch=TINY, out_indice=[0, 1]), 'model.backbone.out_indice', 'out_indices'),
    (dict(arch=TINY, layer_scale_init=1e-6), 'model.backbone.layer_scale_init', 'layer_scale_init_value'),
])
def test_misspelt_keys_and_names(backbone, key, closest):
    with pytest.raises(ConfigValidationError) as err:
        check_backbone_keys(dict(type='PeLK', **backbone))
    assert err.value.key == key
    assert f"(did you mean '{closest}'?)" in str(err.value)


def test_unknown_key_without_a_close_one_lists_the_arguments():
    with pytest.raises(ConfigValidationError, match=r"PeLK takes no argument 'zzz'\. Fix: use the arguments of PeLK"):
        check_backbone_keys(dict(type='PeLK', arch=TINY, zzz=1))


def test_valid_spellings_pass():
    """Every constructor argument, arch name and alias (any case), registered conv form (short and class name) and
    KPE mode is accepted."""
    from pelk_mm.models import PeLK
    from pelk_mm.models.layers import KPE_MODES
    from pelk_mm.models.layers.conv_form import conv_forms
    assert 'drop_path_rate' in pelk_arguments() and 'init_cfg' in pelk_arguments()
    for arch in [*PeLK.arch_settings, *PeLK.arch_aliases, 'T', 'Base-101']:
        check_backbone_keys(dict(type='pelk_mm.PeLK', arch=arch))
    for form in [*conv_forms(), 'PeripheralConv2d', 'StripeConv2d']:
        check_backbone_keys(dict(type='PeLK', arch=TINY, conv_type=form))
    check_backbone_keys(dict(type='PeLK', arch=TINY, conv_type='stripe', conv_cfg=dict(stripe_width=7)))
    for mode in [*KPE_MODES, None]:
        check_backbone_keys(dict(type='PeLK', arch=dict(TINY, center_sizes=[3, 3]), kpe_mode=mode,
                                 **{name: None for name in ('init_cfg', 'half_grids')}))


def test_train_tool_prints_one_line(tools, tmp_path):
    """``tools/train.py ... --cfg-options model.backbone.drop_path_rat=0.1`` exits 2 with one line naming the
    argument and its closest spelling, before any model is built."""
    r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.REPO / DEMOS[1], '--work-dir', tmp_path / 'w',
                   '--cfg-options', 'model.backbone.type=PeLK', 'model.backbone.drop_path_rat=0.1'], tools.REPO)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        "error: config key `model.backbone.drop_path_rat`: PeLK takes no argument 'drop_path_rat' (did you mean "
        "'drop_path_rate'?). Fix: rename it to drop_path_rate"]
