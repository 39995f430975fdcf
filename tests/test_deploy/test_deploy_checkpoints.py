"""Deploy form from a config (``deploy=True``), converted checkpoints that load strictly, the converter for the three
codebases, mmpretrain's own ``reparameterize_model.py``, and one-line errors for checkpoints of the other form."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from pelk_mm.models import PeLK
from pelk_mm.errors import DeployFormError


ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = {'mmpretrain': 'configs/demo/pelk_demo_in1k.py', 'mmseg': 'configs/demo/pelk_demo_upernet_ade20k.py',
        'mmdet': 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py'}


def outputs(model, x):
    with torch.no_grad():
        return [o.clone() for o in model(x)]


@pytest.mark.parametrize('conv_type, kpe_mode', [('peripheral', 'input'), ('peripheral', 'bias'),
                                                 ('peripheral', 'weight'), ('peripheral', None),
                                                 ('dense', 'input'), ('stripe', None)])
def test_deploy_true_loads_a_converted_checkpoint_strictly(helpers, conv_type, kpe_mode):
    train = helpers.tiny_pelk(0, conv_type=conv_type, kpe_mode=kpe_mode)
    x = torch.randn(2, 3, 40, 48)
    expected = outputs(train, x)
    train.switch_to_deploy()
    built = PeLK(arch=helpers.TINY, conv_type=conv_type, kpe_mode=kpe_mode, out_indices=(0, 1, 2, 3),
                 gap_before_final_norm=False, deploy=True).eval()
    assert built.deploy and list(built.state_dict()) == list(train.state_dict())
    assert all(built.state_dict()[k].shape == v.shape for k, v in train.state_dict().items())
    built.load_state_dict(train.state_dict(), strict=True)
    assert helpers.max_rel_err(outputs(built, x), expected) <= 1e-5


def test_wrong_form_raises_one_line(helpers, tmp_path):
    train = helpers.tiny_pelk(0)
    deployed = helpers.tiny_pelk(0)
    deployed.switch_to_deploy()
    into_deploy = PeLK(arch=helpers.TINY, out_indices=(0, 1, 2, 3), deploy=True)
    with pytest.raises(DeployFormError) as err:
        into_deploy.load_state_dict(train.state_dict())
    msg = str(err.value)
    assert '\n' not in msg and 'train form' in msg and 'deploy form' in msg and 'convert_to_deploy.py' in msg
    assert 'stages.0.0.token_mixer.conv' in msg
    into_train = PeLK(arch=helpers.TINY, out_indices=(0, 1, 2, 3))
    with pytest.raises(DeployFormError) as err:
        into_train.load_state_dict(deployed.state_dict())
    msg = str(err.value)
    assert '\n' not in msg and 'deploy form' in msg and 'train form' in msg and 'deploy=True' in msg
    # mmengine's non-strict loaders (load_from, init_cfg=Pretrained) stop too instead of warning about keys
    from mmengine.runner import load_checkpoint
    path = str(tmp_path / 'deploy.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in deployed.state_dict().items()}}, path)
    with pytest.raises(DeployFormError):
        load_checkpoint(into_train, path, revise_keys=[(r'^backbone\.', '')])
    pretrained = PeLK(arch=helpers.TINY, out_indices=(0, 1, 2, 3),
                      init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(DeployFormError):
        pretrained.init_weights()


def test_cfg_options_build_the_deploy_form():
    from pelk_mm.analysis.builder import build_model, load_cfg
    cfg = load_cfg(osp.join(ROOT, DEMO['mmpretrain']), {'model.backbone.deploy': True})
    model, _ = build_model(cfg)
    conv = model.backbone.stages[0][0].token_mixer.conv
    assert model.backbone.deploy and conv.deployed and conv.reparam_weight.shape[-1] == len(conv.grid)


def _train_checkpoint(codebase, path, helpers):
    """A train-form checkpoint of the demo config's model with random weights and BN statistics."""
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    cfg = load_cfg(osp.join(ROOT, DEMO[codebase]))
    model, _ = build_model(cfg, deploy=False)
    helpers.randomise(model.backbone, 3)
    torch.save({'meta': {'epoch': 1}, 'state_dict': model.state_dict()}, path)
    return cfg, model


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
                          **kw)


CODEBASES = ['mmpretrain', 'mmseg', 'mmdet']


@pytest.fixture(scope='module')
def conversions(helpers, tmp_path_factory, tools_in_one_process):
    """Per codebase: a train-form checkpoint of the demo model, ``convert_to_deploy.py`` on it, and again on the
    converted file (the wrong form); the six tool runs in one process: ``{codebase: (train model, out, first run,
    second run)}``."""
    tmp = tmp_path_factory.mktemp('convert')
    models, argvs = {}, []
    for codebase in CODEBASES:
        src, out = tmp / f'{codebase}_train.pth', tmp / f'{codebase}_deploy.pth'
        _, models[codebase] = _train_checkpoint(codebase, str(src), helpers)
        argvs += [[osp.join(ROOT, 'tools/deploy/convert_to_deploy.py'), DEMO[codebase], src, out, '--check-shape',
                   '64', '64'],
                  [osp.join(ROOT, 'tools/deploy/convert_to_deploy.py'), DEMO[codebase], out, tmp / f'{codebase}.pth']]
    runs = tools_in_one_process(argvs, ROOT, dict(os.environ, OMP_NUM_THREADS='1'))
    return {codebase: (models[codebase], str(tmp / f'{codebase}_deploy.pth'), runs[2 * i], runs[2 * i + 1])
            for i, codebase in enumerate(CODEBASES)}


@pytest.mark.parametrize('codebase', CODEBASES)
def test_convert_to_deploy_tool(helpers, conversions, codebase):
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model, load_weights
    train, out, proc, again = conversions[codebase]
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the answer only: no init-weight report (one record per tensor), loader notices or build-time warnings
    printed = (proc.stdout + proc.stderr).splitlines()
    assert len(printed) == 3 and 'deployed vs train form max rel err' in printed[-1], printed[:6]
    deployed, _ = build_model(load_cfg(osp.join(ROOT, DEMO[codebase]), {'model.backbone.deploy': True}), True)
    ckpt = load_weights(deployed, out)  # strict
    assert set(ckpt) == {'meta', 'state_dict'} and ckpt['meta']['epoch'] == 1
    x = torch.randn(2, 3, 64, 96)
    assert helpers.max_rel_err(outputs(deployed.backbone, x), outputs(train.backbone, x)) <= 1e-5
    # the wrong form: one line on stderr, exit status 2
    lines = [line for line in again.stderr.splitlines() if line.startswith('error:')]
    assert again.returncode == 2 and len(lines) == 1 and 'convert_to_deploy.py' in lines[0], again.stderr[-2000:]


def test_mmpretrain_reparameterize_model_script(helpers, tmp_path):
    """mmpretrain's stock converter writes a checkpoint that the deploy=True config loads strictly; the train-form
    config refuses it with one line instead of predicting with random large-kernel weights."""
    import mmpretrain
    from mmpretrain.apis import init_model

    from pelk_mm.analysis.builder import load_cfg
    script = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'tools', 'model_converters',
                      'reparameterize_model.py')
    src, out = str(tmp_path / 'train.pth'), str(tmp_path / 'deploy.pth')
    _, train = _train_checkpoint('mmpretrain', src, helpers)
    proc = _run([script, DEMO['mmpretrain'], src, out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_cfg(osp.join(ROOT, DEMO['mmpretrain']), {'model.backbone.deploy': True})
    model = init_model(cfg, out, device='cpu')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = model.head(model.extract_feat(x))
        ref = train.head(train.extract_feat(x))
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5
    with pytest.raises(DeployFormError):
        init_model(load_cfg(osp.join(ROOT, DEMO['mmpretrain'])), out, device='cpu')
