"""Config validation before any heavy work: each bad setting fails through tools/train.py with exit status 2, one
line naming the config key and the fix, no traceback, and before the Runner exists (no log in the work dir).
In-process checks time ``validate_config`` itself."""
import re
import time

import pytest
import torch
from mmengine.config import Config

from pelk_mm.apis.validate import resolve_resume, validate_config
from pelk_mm.errors import ConfigValidationError

CLS = 'configs/demo/pelk_demo_in1k.py'
SEG = 'configs/demo/pelk_demo_upernet_ade20k.py'
DET = 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py'
OTHER_ARCH = dict(depths=[1, 1, 2, 1], channels=[16, 32, 64, 96], kernel_sizes=[13, 11, 7, 5],
                  center_sizes=[5, 5, 3, 3])


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    """A PeLK checkpoint of another arch than the cls demo's, and truncated / garbage files."""
    from pelk_mm.models.backbones.pelk import PeLK
    d = tmp_path_factory.mktemp('ckpts')
    other = PeLK(arch=OTHER_ARCH)
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in other.state_dict().items()}, 'meta': {}},
               d / 'other_arch.pth')
    full = (d / 'other_arch.pth').read_bytes()
    (d / 'truncated.pth').write_bytes(full[:len(full) // 2])
    (d / 'garbage.pth').write_bytes(b'not a checkpoint at all' * 10)
    return d


def _cfg(rel, path, **overrides):
    cfg = Config.fromfile(str(rel.REPO / path))
    cfg.merge_from_dict(overrides)
    return cfg


IN_PROCESS = [
    (CLS, {'model.backbone.arch': 'huge'}, 'model.backbone.arch', "unknown PeLK arch 'huge'"),
    (CLS, {'model.backbone.arch.kernel_sizes': [12, 11, 7, 5]}, 'model.backbone.arch',
     'kernel_sizes[0] must be a positive odd int, got arch kernel_sizes[0]=12'),
    (CLS, {'model.backbone.arch.kernel_sizes': [13, 11, 7, 1]}, 'model.backbone.arch',
     'center_sizes[3]=3 is larger than kernel_sizes[3]=1'),
    (CLS, {'model.backbone.out_indices': [4]}, 'model.backbone.out_indices', 'out of range for 4 stages'),
    (CLS, {'model.head.in_channels': 128}, 'model.head.in_channels', 'set model.head.in_channels=256'),
    (SEG, {'model.decode_head.in_channels': [16, 32, 64, 64]}, 'model.decode_head.in_channels',
     'set model.decode_head.in_channels=[16, 32, 64, 128]'),
    (SEG, {'model.auxiliary_head.in_channels': 128}, 'model.auxiliary_head.in_channels',
     'set model.auxiliary_head.in_channels=64'),
    (DET, {'model.neck.in_channels': [32, 64, 128, 128]}, 'model.neck.in_channels',
     'set model.neck.in_channels=[32, 64, 128, 256]'),
]


@pytest.mark.parametrize('config,overrides,key,text', IN_PROCESS, ids=[c[2] + ':' + str(i)
                                                                          for i, c in enumerate(IN_PROCESS)])
def test_validate_config_in_process(config, overrides, key, text, rel):
    cfg = _cfg(rel, config, **overrides)
    t0 = time.time()
    with pytest.raises(ConfigValidationError) as info:
        validate_config(cfg, 'train', check_data=False)
    assert time.time() - t0 < 10
    assert info.value.key == key and f'config key `{key}`' in str(info.value) and text in str(info.value)
    assert 'Fix:' in str(info.value) and '\n' not in str(info.value)


@pytest.mark.parametrize('config', [CLS, SEG, DET, 'configs/pelk_t_in1k.py', 'configs/pelk_b_in1k.py'])
def test_valid_configs_pass(config, rel):
    t0 = time.time()
    assert validate_config(_cfg(rel, config), 'train', check_data=False) == []
    assert time.time() - t0 < 10


def test_pretrained_mismatch_names_the_arch(ckpts, rel):
    cfg = _cfg(rel, CLS, **{'model.backbone.init_cfg': dict(type='Pretrained', checkpoint=str(ckpts / 'other_arch.pth'),
                                                              prefix='backbone.')})
    with pytest.raises(ConfigValidationError) as info:
        validate_config(cfg, 'train', check_data=False)
    msg = str(info.value)
    assert info.value.key == 'model.backbone.init_cfg.checkpoint' and 'does not match model.backbone' in msg
    assert 'in the checkpoint vs' in msg and 'depths=[1, 1, 2, 1], stem width 16' in msg
    # the matching arch passes
    cfg.model.backbone.arch = OTHER_ARCH
    cfg.model.head.in_channels = OTHER_ARCH['channels'][-1]
    validate_config(cfg, 'train', check_data=False)


def _torch_file(path, step):
    torch.save({'meta': {'iter': step}, 'state_dict': {}}, path)


def test_resume_falls_back_past_a_broken_last_checkpoint(tmp_path):
    _torch_file(tmp_path / 'iter_2.pth', 2)
    _torch_file(tmp_path / 'iter_4.pth', 4)
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[:len(data) // 3])   # killed while writing (no atomic write)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    notes = resolve_resume(cfg)
    assert cfg.load_from == str(tmp_path / 'iter_2.pth')
    assert 'truncated or corrupt' in notes[0] and 'iter_2.pth' in notes[0]
    for content in ('', str(tmp_path / 'iter_9.pth')):               # empty marker, marker to a deleted file
        (tmp_path / 'last_checkpoint').write_text(content)
        cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
        assert resolve_resume(cfg) and cfg.load_from == str(tmp_path / 'iter_2.pth')
    (tmp_path / 'iter_2.pth').unlink()
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(tmp_path)))
    with pytest.raises(ConfigValidationError, match='holds no intact epoch_'):
        resolve_resume(cfg)


# ------------------------------------------------------------------------------------------------ CLI
def _cli_cases(ckpts):
    trunc, garbage, other = ckpts / 'truncated.pth', ckpts / 'garbage.pth', ckpts / 'other_arch.pth'
    pre = 'model.backbone.init_cfg'
    return {
        'arch': (CLS, ['model.backbone.arch=huge'], [], "config key `model.backbone.arch`: unknown PeLK arch 'huge'"),
        'even_kernel': (CLS, ['model.backbone.arch.kernel_sizes=[12,11,7,5]'], [],
                        'kernel_sizes[0] must be a positive odd int, got arch kernel_sizes[0]=12'),
        'kernel_lt_center': (CLS, ['model.backbone.arch.kernel_sizes=[13,11,7,1]'], [],
                             'center_sizes[3]=3 is larger than kernel_sizes[3]=1'),
        'out_indices': (CLS, ['model.backbone.out_indices=[4]'], [], 'config key `model.backbone.out_indices`'),
        'cls_head': (CLS, ['model.head.in_channels=128'], [], 'set model.head.in_channels=256'),
        'seg_heads': (SEG, ['model.decode_head.in_channels=[16,32,64,64]'], [],
                      'set model.decode_head.in_channels=[16, 32, 64, 128]'),
        'seg_aux': (SEG, ['model.auxiliary_head.in_channels=128'], [], 'set model.auxiliary_head.in_channels=64'),
        'det_neck': (DET, ['model.neck.in_channels=[32,64,128,128]'], [],
                     'set model.neck.in_channels=[32, 64, 128, 256]'),
        'data_dir': (CLS, ['train_dataloader.dataset.data_root=data/nowhere'], [],
                     'key `train_dataloader.dataset.data_root` points to'),
        'ann_file': (DET, ['train_dataloader.dataset.ann_file=annotations/missing.json'], [],
                     'key `train_dataloader.dataset.ann_file` points to'),
        'pretrained_mismatch': (CLS, [f'{pre}.type=Pretrained', f'{pre}.checkpoint={other}', f'{pre}.prefix=backbone.'],
                                [], 'does not match model.backbone'),
        'pretrained_truncated': (CLS, [f'{pre}.type=Pretrained', f'{pre}.checkpoint={trunc}',
                                       f'{pre}.prefix=backbone.'],
                                 [], f"config key `{pre}.checkpoint`: checkpoint '{trunc}'"),
        'load_from_garbage': (CLS, [f'load_from={garbage}'], [], 'config key `load_from`: checkpoint'),
        'resume_truncated': (CLS, [], ['--resume', str(trunc)], 'is truncated or not a PyTorch checkpoint'),
        'misspelt_top_key': (CLS, ['trian_cfg.max_epochs=1'], [], "no key 'trian_cfg' (did you mean 'train_cfg'?)"),
        'max_epochs_0': (CLS, ['train_cfg.max_epochs=0'], [], 'config key `train_cfg.max_epochs`: max_epochs must be'),
        'lr_text': (CLS, ['optim_wrapper.optimizer.lr=fast'], [], "learning rate must be a number >= 0, got 'fast'"),
        'drop_path': (SEG, ['model.backbone.drop_path_rate=1.5'], [], 'must be in [0, 1), got 1.5'),
    }


@pytest.fixture(scope='module')
def cli_results(ckpts, demo_cwd, tmp_path_factory, rel, tools_in_one_process):
    """Each case through ``tools/train.py``, all in one process (each as ``python tools/train.py ...`` runs)."""
    out = tmp_path_factory.mktemp('validate_cli')
    cases = _cli_cases(ckpts)
    argvs = [[rel.REPO / 'tools/train.py', rel.REPO / config, '--work-dir', out / name, *args, '--cfg-options',
              *(opts or ['randomness.seed=0'])] for name, (config, opts, args, _) in cases.items()]
    runs = tools_in_one_process(argvs, demo_cwd, rel.env(), timeout=600)
    return cases, {name: (r, out / name) for name, r in zip(cases, runs)}


@pytest.mark.slow
@pytest.mark.parametrize('name', list(_cli_cases(__import__('pathlib').Path('/x'))))
def test_cli_fails_fast_with_one_line(name, cli_results):
    cases, results = cli_results
    expected = cases[name][3]
    r, work = results[name]
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and expected in errors[0], r.stderr[-2000:]
    assert 'Fix:' in errors[0] or 'Dataset not found' in errors[0]
    assert not list(work.glob('*/*.log')), 'the Runner was built before the error'
    # NOTE: the cases share one process, so this is the check itself (and a codebase's first import): seconds
    assert r.elapsed < 60, f'{r.elapsed:.0f} s'


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    """A checkpoint with an intact zip directory whose pickle cannot be read stops the config check (before the
    Runner is built) and the loader with one line naming the file (status 2)."""
    import zipfile

    from pelk_mm.apis.cli import run_cli
    from pelk_mm.checkpoint import load_checkpoint_file
    path = tmp_path / 'bad_pickle.pth'
    with zipfile.ZipFile(path, 'w') as zf:
        zf.writestr('archive/data.pkl', b'\x80\x02garbage')
    with pytest.raises(ConfigValidationError, match=re.escape(f"cannot read checkpoint '{path}'")):
        validate_config(Config(dict(load_from=str(path), resume=False)), 'train', check_data=False)
    assert run_cli(lambda args: load_checkpoint_file(str(path)), None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read checkpoint '{path}'"), err


def test_non_user_errors_keep_their_traceback():
    from pelk_mm.apis.cli import run_cli

    def bug(args):
        raise ZeroDivisionError('a bug')

    with pytest.raises(ZeroDivisionError):
        run_cli(bug, None)
