"""Checkpoints cannot run code and cannot be silently corrupt.

A malicious checkpoint (its unpickling calls ``open(marker, 'w')``) is refused through every loading path the
project offers -- the loader, mmengine's ``load_checkpoint`` and ``init_cfg=Pretrained`` of the three codebases, URLs,
``tools/test.py``, ``tools/dist_test.sh``, ``--resume CKPT``, ``--resume`` via ``last_checkpoint``, ``load_from`` and
the analysis tools -- without creating the marker, with a non-zero exit and one line naming the file and the global.
A bit flip inside a tensor record is refused; trusted legacy pickles load only when the trust names them (more in
``test_checkpoint_trust.py``); and ``import pelk_mm`` leaves torch's own safety and mmengine's launcher as they are.
The work a file makes is bounded by the bytes it stores (a zero-stride tensor, a zip whose directory repeats a
record); formats without checksums (torch's legacy pickle, safetensors) say that they cannot be verified; a
``.safetensors`` file loads as a state dict; ``--resume`` never picks a symlink to another run's checkpoint.
"""
import argparse
import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import zipfile

import pytest
import torch

from pelk_mm.checkpoint import (TRUST_ENV, CorruptCheckpointError, UnsafeCheckpointError, load_checkpoint_file,
                                refused_globals)


class _OpensMarker:
    """Unpickling this object calls ``open(path, 'w')``: the file appears iff the payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def _tiny_state():
    from pelk_mm.models import PeLK
    torch.manual_seed(0)
    model = PeLK(arch=dict(depths=[1, 1, 1, 1], channels=[8, 8, 16, 16], kernel_sizes=[7, 5, 5, 3],
                           center_sizes=[3, 3, 3, 3]), small_kernel=3, conv_impl='dense')
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _evil(tmp_path, state=None, name='evil.pth'):
    marker = tmp_path / f'{name}.PWNED'
    path = tmp_path / name
    torch.save({'state_dict': state if state is not None else {'w': torch.ones(3)}, 'meta': _OpensMarker(marker)},
               path)
    return path, marker


def _flip_bytes_in_record(path, record_suffix, count=64):
    """Invert ``count`` bytes in the middle of the zip record ending with ``record_suffix`` (its CRC stays)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(record_suffix))
    with open(path, 'r+b') as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), 'little') for _ in range(2))
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - count // 2
        f.seek(start)
        data = bytes(b ^ 0xFF for b in f.read(count))
        f.seek(start)
        f.write(data)
    return info.filename


# --------------------------------------------------------------------------------------------------- the loader
def test_bit_flipped_tensor_record_is_refused(tmp_path):
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'w': torch.arange(4096, dtype=torch.float32)}}, path)
    record = _flip_bytes_in_record(path, 'data/0')
    # torch itself reads the damaged data without complaint: the check below is what stops it
    assert not torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.arange(4096.))
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint_file(str(path))
    msg = str(err.value)
    assert str(path) in msg and record in msg and 'CRC' in msg and '\n' not in msg

    from pelk_mm.apis.validate import check_checkpoint_file
    from pelk_mm.errors import ConfigValidationError
    with pytest.raises(ConfigValidationError, match=re.escape(record)):
        check_checkpoint_file(str(path), 'load_from')


def test_malicious_checkpoint_refused_by_the_loader_and_mmengine(tmp_path):
    from mmengine.runner import CheckpointLoader, load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint_with_prefix
    model, state = _tiny_state()
    path, marker = _evil(tmp_path, state)
    assert any('open' in g for g in refused_globals(str(path)))
    calls = [lambda: load_checkpoint_file(str(path)),
             lambda: CheckpointLoader.load_checkpoint(str(path)),
             lambda: load_checkpoint(model, str(path), map_location='cpu'),
             lambda: _load_checkpoint_with_prefix('backbone.', str(path))]
    for call in calls:
        with pytest.raises(UnsafeCheckpointError) as err:
            call()
        msg = str(err.value)
        assert str(path) in msg and 'open' in msg and '--trust-checkpoint' in msg and TRUST_ENV in msg
        assert '\n' not in msg
    assert not marker.exists()


def test_mmengine_names_the_safe_loaders_scheme(tmp_path, monkeypatch):
    """mmengine logs ``Loads checkpoint by <scheme> backend``, the scheme read from the loader function's name."""
    import mmengine.runner.checkpoint as mm_ckpt
    from mmengine.runner import CheckpointLoader
    _, state = _tiny_state()
    path = tmp_path / 'genuine.pth'
    torch.save(state, path)
    logged = []
    monkeypatch.setattr(mm_ckpt, 'print_log', lambda msg, *a, **k: logged.append(msg))
    CheckpointLoader.load_checkpoint(str(path))
    assert logged == [f'Loads checkpoint by local backend from path: {path}']


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_pretrained_init_refuses_malicious_and_loads_genuine(tmp_path, scope, prefix):
    import importlib

    from mmengine.registry import DefaultScope
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    _, state = _tiny_state()
    if prefix:
        state = {prefix + k: v for k, v in state.items()}
    evil, marker = _evil(tmp_path, state)
    genuine = tmp_path / 'genuine.pth'
    torch.save({'state_dict': state, 'meta': {'epoch': 3}}, genuine)

    def build(ckpt):
        cfg = dict(type='pelk_mm.PeLK', arch=dict(depths=[1, 1, 1, 1], channels=[8, 8, 16, 16],
                                                  kernel_sizes=[7, 5, 5, 3], center_sizes=[3, 3, 3, 3]),
                   small_kernel=3, conv_impl='dense',
                   init_cfg=dict(type='Pretrained', checkpoint=str(ckpt), **({'prefix': prefix} if prefix else {})))
        with DefaultScope.overwrite_default_scope(scope):
            model = registry.build(cfg)
        model.init_weights()
        return model

    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(evil))):
        build(evil)
    assert not marker.exists()
    loaded = build(genuine).state_dict()
    _, expected = _tiny_state()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """A loopback HTTP server over ``tmp_path/www``; torch hub downloads go to ``tmp_path/hub``."""
    www = tmp_path / 'www'
    www.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_url_checkpoints_are_loaded_safely(tmp_path, http_dir):
    from mmengine.runner import CheckpointLoader
    www, base = http_dir
    _, marker = _evil(www, name='evil.pth')
    torch.save({'state_dict': {'w': torch.arange(5.)}}, www / 'genuine.pth')
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f'{base}/evil.pth')):
        CheckpointLoader.load_checkpoint(f'{base}/evil.pth')
    assert not marker.exists() and not list((tmp_path / 'hub').rglob('*.PWNED'))
    ckpt = CheckpointLoader.load_checkpoint(f'{base}/genuine.pth')
    assert torch.equal(ckpt['state_dict']['w'], torch.arange(5.))


def test_trusted_legacy_pickle_needs_the_opt_in(tmp_path, monkeypatch):
    import pelk_mm.checkpoint as ckpt_mod
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.arange(3.)}, 'meta': {'args': argparse.Namespace(lr=0.1)}}, path,
               _use_new_zipfile_serialization=False)
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UnsafeCheckpointError, match='Namespace'):
        load_checkpoint_file(str(path))
    warned = []
    monkeypatch.setattr(ckpt_mod, '_log_warning', warned.append)
    monkeypatch.setenv(TRUST_ENV, str(path))
    loaded = load_checkpoint_file(str(path))
    assert loaded['meta']['args'].lr == 0.1 and torch.equal(loaded['state_dict']['w'], torch.arange(3.))
    trusted = [w for w in warned if 'weights_only=False' in w]
    assert len(trusted) == 1 and str(path) in trusted[0]


def test_plain_state_dict_of_another_model_loads(tmp_path):
    """A bare ``state_dict`` of an mmpretrain ConvNeXt (no Runner metadata) loads under the allow-list."""
    from mmpretrain.models import ConvNeXt
    model = ConvNeXt(arch='atto')
    path = tmp_path / 'convnext_atto.pth'
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint_file(str(path))
    assert loaded.keys() == model.state_dict().keys()


def test_import_leaves_torch_load_and_the_launcher_untouched(tmp_path):
    path, marker = _evil(tmp_path)
    code = f'''
import warnings, pickle, torch
import mmengine.dist.utils as du
from mmengine.runner import Runner
from mmengine.model.wrappers import MMDistributedDataParallel as DDP
before = (du._init_dist_pytorch, Runner.wrap_model, DDP.__init__, list(warnings.filters),
          list(torch.serialization.get_safe_globals()))
import pelk_mm
after = (du._init_dist_pytorch, Runner.wrap_model, DDP.__init__, list(warnings.filters),
         list(torch.serialization.get_safe_globals()))
assert before == after, [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
try:
    torch.load({str(path)!r})
except pickle.UnpicklingError:
    pass
else:
    raise SystemExit('torch.load accepted the malicious file')
from pelk_mm.compat import apply_launcher_patches
apply_launcher_patches()
assert du._init_dist_pytorch is not before[0] and Runner.wrap_model is not before[1]
print('ok')
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]
    assert not marker.exists()


def test_patches_check_their_versions(monkeypatch):
    import pelk_mm.compat as compat
    warned = []
    monkeypatch.setattr(compat, '_warn', warned.append)
    monkeypatch.setattr(compat, '_APPLIED', {})
    assert compat.version_matches('mmcv', 'RoIAlign contiguous input')  # the version the patch was written for
    monkeypatch.setattr(compat, '_version', lambda package: '9.9.9')
    assert not compat.version_matches('mmcv', 'RoIAlign contiguous input')
    assert not compat.version_matches('mmcv', 'RoIAlign contiguous input')
    assert len(warned) == 1 and '9.9.9' in warned[0] and '\n' not in warned[0]
    # the probe that decides on other versions: mmcv 2.1's CPU RoIAlign still misreads channels-last maps
    assert compat._roi_align_misreads_channels_last()


# --------------------------------------------------------------------------------------------------- the tools
@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, tools):
    """A real 2-epoch run of the tiny classifier (checkpoints epoch_1 and epoch_2, last_checkpoint)."""
    cwd = tmp_path_factory.mktemp('ckpt_safety')
    work = cwd / 'work'
    r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.TINY_CLS, '--work-dir', work, '--cfg-options',
                   'train_cfg.max_epochs=2', 'train_dataloader.dataset.indices=32', 'val_dataloader.dataset.indices=12',
                   'default_hooks.checkpoint.max_keep_ckpts=2'], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert refused_globals(str(work / 'epoch_2.pth')) == []  # what the project writes needs no opt-in
    return cwd, work


def _evil_run_checkpoint(run_dir, name='evil.pth'):
    cwd, work = run_dir
    genuine = load_checkpoint_file(str(work / 'epoch_2.pth'))
    marker = cwd / f'{name}.PWNED'
    genuine['meta']['payload'] = _OpensMarker(marker)
    path = cwd / name
    torch.save(genuine, path)
    return path, marker


def _assert_refused(r, path, marker):
    assert r.returncode != 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not marker.exists(), 'the payload ran'
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert lines, r.stderr[-3000:]
    assert str(path) in lines[0] and 'open' in lines[0] and '--trust-checkpoint' in lines[0]
    assert 'Traceback' not in r.stderr


def _tool_paths(tools, cwd, work, path):
    cls, py, repo = tools.TINY_CLS, tools.PY, tools.REPO
    train = [py, repo / 'tools/train.py', cls]
    return {
        'test.py': [py, repo / 'tools/test.py', cls, path],
        'train --resume CKPT': train + ['--work-dir', cwd / 'w_resume', '--resume', path],
        'train load_from': train + ['--work-dir', cwd / 'w_load', '--cfg-options', f'load_from={path}'],
        'train init_cfg=Pretrained': train + ['--work-dir', cwd / 'w_pre', '--cfg-options',
                                              'model.backbone.init_cfg.type=Pretrained',
                                              f'model.backbone.init_cfg.checkpoint={path}',
                                              'model.backbone.init_cfg.prefix=backbone.'],
        'get_flops': [py, repo / 'tools/analysis/get_flops.py', cls, '--checkpoint', path],
        'visualize_erf': [py, repo / 'tools/analysis/visualize_erf.py', cls, '--checkpoint', path,
                          '--num-images', '1', '--input-size', '64', '--out-dir', cwd / 'erf'],
        'visualize_kernels': [py, repo / 'tools/analysis/visualize_kernels.py', cls, '--checkpoint', path,
                              '--no-param-curve', '--out-dir', cwd / 'kernels'],
        'benchmark_throughput': [py, repo / 'tools/analysis/benchmark_throughput.py', cls, '--checkpoint', path,
                                 '--batch-size', '1', '--shape', '64', '--warmup', '1', '--iters', '1'],
    }


TOOL_PATHS = ['test.py', 'train --resume CKPT', 'train load_from', 'train init_cfg=Pretrained', 'get_flops',
              'visualize_erf', 'visualize_kernels', 'benchmark_throughput']


@pytest.fixture(scope='module')
def malicious_runs(run_dir, tools, tools_in_one_process):
    """Each tool of :data:`TOOL_PATHS` on its own malicious copy of the run's checkpoint, all in one process (as
    ``python TOOL ARGS`` runs each): ``{name: (result, checkpoint, marker)}``."""
    cwd, work = run_dir
    cases = {}
    for name in TOOL_PATHS:
        path, marker = _evil_run_checkpoint(run_dir, f'evil_{re.sub(r"[^a-z]", "_", name)}.pth')
        cases[name] = (_tool_paths(tools, cwd, work, path)[name][1:], path, marker)
    runs = tools_in_one_process([argv for argv, _, _ in cases.values()], cwd, tools.env(), timeout=600)
    return {name: (r, path, marker) for (name, (_, path, marker)), r in zip(cases.items(), runs)}


@pytest.mark.slow
@pytest.mark.parametrize('name', TOOL_PATHS)
def test_tools_refuse_a_malicious_checkpoint(malicious_runs, name):
    r, path, marker = malicious_runs[name]
    _assert_refused(r, path, marker)


@pytest.mark.slow
def test_dist_test_refuses_a_malicious_checkpoint(run_dir, tools):
    cwd, _ = run_dir
    path, marker = _evil_run_checkpoint(run_dir, 'evil_dist.pth')
    r = tools.run(['bash', tools.REPO / 'tools/dist_test.sh', tools.TINY_CLS, path, 2], cwd=cwd,
                  PORT=str(tools.free_port()), timeout=180)
    _assert_refused(r, path, marker)


@pytest.mark.slow
def test_resume_via_last_checkpoint_refuses_a_malicious_checkpoint(run_dir, tools):
    cwd, work = run_dir
    wd = cwd / 'w_auto'
    wd.mkdir()
    path, marker = _evil_run_checkpoint(run_dir, 'evil_auto.pth')
    target = wd / 'epoch_2.pth'
    os.replace(path, target)
    (wd / 'last_checkpoint').write_text(str(target))
    r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.TINY_CLS, '--work-dir', wd, '--resume'], cwd=cwd)
    _assert_refused(r, target, marker)


@pytest.mark.slow
def test_trust_checkpoint_flag_loads_a_trusted_legacy_checkpoint(run_dir, tools):
    cwd, work = run_dir
    genuine = load_checkpoint_file(str(work / 'epoch_2.pth'))
    genuine['meta']['args'] = argparse.Namespace(note='written by an older tool')
    path = cwd / 'legacy_trusted.pth'
    torch.save(genuine, path, _use_new_zipfile_serialization=False)
    cmd = [tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, path, '--work-dir', cwd / 'w_trust']
    refused = tools.run(cmd, cwd=cwd)
    assert refused.returncode == 2 and 'Namespace' in refused.stderr and 'Traceback' not in refused.stderr
    r = tools.run(cmd + ['--trust-checkpoint'], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert re.search(r'accuracy/top1: [0-9.]+', out) and 'weights_only=False' in out


@pytest.fixture(scope='module')
def unverified_runs(run_dir, tools, tools_in_one_process):
    """The tool runs on checkpoints that are damaged or cannot be verified, in one process (as ``python TOOL ARGS``
    runs each): ``tools/test.py`` and ``--resume`` in a work dir whose newest checkpoint has a flipped tensor record,
    ``tools/test.py`` on a legacy (non-zip) checkpoint and on a ``.safetensors`` state dict."""
    cwd, work = run_dir
    wd = cwd / 'w_damaged'
    wd.mkdir()
    for name in ('epoch_1.pth', 'epoch_2.pth'):
        (wd / name).write_bytes((work / name).read_bytes())
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_2.pth'))
    with zipfile.ZipFile(wd / 'epoch_2.pth') as zf:
        largest = max((i for i in zf.infolist() if '/data/' in i.filename), key=lambda i: i.file_size).filename
    record = _flip_bytes_in_record(wd / 'epoch_2.pth', largest)
    genuine = load_checkpoint_file(str(work / 'epoch_2.pth'))
    legacy = cwd / 'legacy_overwritten.pth'
    torch.save(genuine, legacy, _use_new_zipfile_serialization=False)
    test, train = tools.REPO / 'tools/test.py', tools.REPO / 'tools/train.py'
    runs = {'damaged test.py': [test, tools.TINY_CLS, wd / 'epoch_2.pth'],
            'damaged --resume': [train, tools.TINY_CLS, '--work-dir', wd, '--resume', '--cfg-options',
                                 'train_cfg.max_epochs=2', 'train_dataloader.dataset.indices=32',
                                 'val_dataloader.dataset.indices=12'],
            'legacy test.py': [test, tools.TINY_CLS, legacy, '--work-dir', cwd / 'w_legacy']}
    paths = dict(damaged=wd / 'epoch_2.pth', fallback=wd / 'epoch_1.pth', record=record, legacy=legacy)
    try:
        import safetensors.torch as safetensors_torch
    except ImportError:
        safetensors_torch = None
    else:
        path = paths['safetensors'] = cwd / 'tiny.safetensors'
        safetensors_torch.save_file({k: v.contiguous() for k, v in genuine['state_dict'].items()}, str(path))
        runs['safetensors test.py'] = [test, tools.TINY_CLS, path, '--work-dir', cwd / 'w_st']
    results = tools_in_one_process(list(runs.values()), cwd, tools.env(), timeout=600)
    return dict(zip(runs, results)), paths


@pytest.mark.slow
def test_damaged_checkpoint_refused_and_resume_falls_back(unverified_runs):
    runs, paths = unverified_runs
    r = runs['damaged test.py']
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith('error:'))
    assert str(paths['damaged']) in line and paths['record'] in line

    r = runs['damaged --resume']
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert 'resuming from the newest intact checkpoint' in out and str(paths['fallback']) in out


def test_trust_variable_naming_another_file_trusts_nothing_else(tmp_path, monkeypatch):
    from pelk_mm.checkpoint import trusted_entries
    path, marker = _evil(tmp_path)
    for value in ('maybe', str(tmp_path / 'other.pth'), 'off', ''):
        monkeypatch.setenv(TRUST_ENV, value)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
            load_checkpoint_file(str(path))
    assert not marker.exists()
    monkeypatch.setenv(TRUST_ENV, 'off')
    assert trusted_entries() == ()


# --------------------------------------------------------------------------------------------------- bounded work
def test_nonfinite_check_reads_each_storage_once(tmp_path):
    """A zero-stride tensor of 10^11 elements stores one value: checking it costs one value, and the flags are the
    tensors' own (a contiguous view of a storage with NaN elsewhere is finite)."""
    code = '''
import time, torch
from pelk_mm.checkpoint import nonfinite_weights
base = torch.tensor([float('nan'), 1., 2., 3.])
weights = {'big': torch.zeros(1).expand(400000, 250000), 'bad': torch.full((1,), float('inf')).expand(400000, 250000),
           'view': base[1:], 'whole': base, 'col': torch.tensor([[1., float('nan')], [2., 3.]])[:, 0],
           'ok': torch.ones(3), 'ints': torch.zeros(1, dtype=torch.int64).expand(400000, 250000)}
start = time.monotonic()
flagged = nonfinite_weights(weights)
assert time.monotonic() - start < 5, time.monotonic() - start
print(sorted(flagged))
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # 'view' and 'col' share a storage with a NaN outside their own elements
    assert r.stdout.strip().splitlines()[-1] == "['bad', 'whole']"


def _repeat_last_central_record(path, times):
    """Repeat the last central-directory entry of the zip at ``path`` ``times`` more times (same local record)."""
    import struct
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b'PK\x05\x06')
    on_disk, total, cd_size, cd_offset = struct.unpack('<HHII', data[eocd + 8:eocd + 20])
    cd = bytes(data[cd_offset:cd_offset + cd_size])
    entry = cd[cd.rfind(b'PK\x01\x02'):]
    tail = data[eocd:]
    tail[8:20] = struct.pack('<HHII', on_disk + times, total + times, cd_size + len(entry) * times, cd_offset)
    path.write_bytes(bytes(data[:cd_offset]) + cd + entry * times + bytes(tail))


def _with_deflated_zeros(src, dst, size):
    """``src`` (a torch zip checkpoint) plus one deflated record of ``size`` zero bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        prefix = zin.infolist()[0].filename.split('/')[0]
        zout.writestr(f'{prefix}/padding', bytes(size), compress_type=zipfile.ZIP_DEFLATED)


@pytest.mark.parametrize('repeats', [40, 0])
def test_zip_whose_records_inflate_far_beyond_the_file_is_refused(tmp_path, repeats):
    from pelk_mm.checkpoint import verify_checkpoint
    genuine = tmp_path / 'genuine.pth'
    torch.save({'state_dict': {'w': torch.arange(8.)}}, genuine)
    path = tmp_path / 'bomb.pth'
    _with_deflated_zeros(genuine, path, 32 << 20)
    if repeats:
        _repeat_last_central_record(path, repeats)
        assert len(zipfile.ZipFile(path).infolist()) > repeats  # zipfile itself reads it
    with pytest.raises(CorruptCheckpointError) as err:
        verify_checkpoint(str(path))
    msg = str(err.value)
    assert str(path) in msg and '\n' not in msg
    assert ('repeats' in msg or 'overlap' in msg) if repeats else 'uncompressed' in msg
    verify_checkpoint(str(genuine))


def test_legacy_checkpoint_says_it_cannot_be_verified(tmp_path, monkeypatch):
    import pelk_mm.checkpoint as ckpt_mod
    path = tmp_path / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.arange(1024.)}}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    data[-2000:-1000] = b'\x3f' * 1000  # overwritten tensor data (finite values)
    path.write_bytes(bytes(data))
    warned = []
    monkeypatch.setattr(ckpt_mod, '_log_warning', warned.append)
    loaded = load_checkpoint_file(str(path))
    assert not torch.equal(loaded['state_dict']['w'], torch.arange(1024.))  # no checksum could catch it
    assert len(warned) == 1 and str(path) in warned[0] and 'cannot be verified' in warned[0]
    load_checkpoint_file(str(path))
    assert len(warned) == 1  # once per file


def test_safetensors_file_loads_as_a_state_dict(tmp_path, monkeypatch):
    import pelk_mm.checkpoint as ckpt_mod
    from pelk_mm.errors import CheckpointLoadError
    safetensors_torch = pytest.importorskip('safetensors.torch')
    path = tmp_path / 'model.safetensors'
    safetensors_torch.save_file({'w': torch.arange(4.), 'b': torch.ones(2, dtype=torch.float16)}, str(path))
    warned = []
    monkeypatch.setattr(ckpt_mod, '_log_warning', warned.append)
    loaded = load_checkpoint_file(str(path))
    assert torch.equal(loaded['w'], torch.arange(4.)) and loaded['b'].dtype == torch.float16
    assert len(warned) == 1 and 'safetensors' in warned[0] and 'cannot be verified' in warned[0]
    monkeypatch.setitem(sys.modules, 'safetensors', None)
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)
    with pytest.raises(CheckpointLoadError) as err:
        load_checkpoint_file(str(path))
    msg = str(err.value)
    assert 'safetensors' in msg and 'pip install safetensors' in msg and 'truncated' not in msg and '\n' not in msg


def test_resume_skips_a_symlink_to_another_runs_checkpoint(tmp_path):
    from mmengine.config import Config

    from pelk_mm.apis.validate import resolve_resume
    other, work = tmp_path / 'other_task', tmp_path / 'work'
    other.mkdir()
    work.mkdir()
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'meta': {'epoch': 9}}, other / 'epoch_9.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'epoch': 2}}, work / 'epoch_2.pth')
    (work / 'epoch_5.pth').symlink_to(other / 'epoch_9.pth')
    (work / 'epoch_1.pth').symlink_to(work / 'epoch_2.pth')  # a link inside the work dir is its own file
    cfg = Config(dict(resume=True, load_from=None, work_dir=str(work)))
    resolve_resume(cfg)
    assert cfg.load_from == str(work / 'epoch_2.pth')


# --------------------------------------------------------------------------------------------------- the tools
_GUARD = """
_base_ = '{base}'
custom_hooks = [dict(type='pelk_mm.NonFiniteGuardHook')]
"""


ZERO_STRIDE_ROUTES = ['test.py', 'load_from', '--resume']


@pytest.fixture(scope='module')
def zero_stride_runs(run_dir, tools, tools_in_one_process):
    """``tools/test.py``, ``load_from`` and ``--resume`` of a 4 MB checkpoint holding a zero-stride
    400000 x 250000 tensor (10^11 elements, one stored value), all in one process: ``{route: result}``."""
    cwd, work = run_dir
    genuine = load_checkpoint_file(str(work / 'epoch_2.pth'))
    genuine['state_dict']['backbone.expanded'] = torch.zeros(1).expand(400000, 250000)
    config = cwd / 'tiny_guard.py'
    config.write_text(_GUARD.format(base=tools.TINY_CLS))
    argvs = []
    for how in ZERO_STRIDE_ROUTES:
        path = cwd / f'expanded_{how.strip("-").replace(".", "_")}.pth'
        torch.save(genuine, path)
        assert path.stat().st_size < 4 << 20
        train = [tools.REPO / 'tools/train.py', config, '--work-dir', cwd / f'w_{path.stem}',
                 '--cfg-options', 'train_cfg.max_epochs=3', 'train_dataloader.dataset.indices=16',
                 'val_dataloader.dataset.indices=6']
        argvs.append({'test.py': [tools.REPO / 'tools/test.py', config, path, '--work-dir', cwd / 'w_expanded_test'],
                      'load_from': train + [f'load_from={path}'],
                      '--resume': train + ['--resume', path]}[how])
    return dict(zip(ZERO_STRIDE_ROUTES, tools_in_one_process(argvs, cwd, tools.env(), timeout=600)))


@pytest.mark.slow
@pytest.mark.parametrize('how', ZERO_STRIDE_ROUTES)
def test_zero_stride_tensor_does_not_stall_the_tools(zero_stride_runs, how):
    r = zero_stride_runs[how]
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.elapsed < 90, f'{how} took {r.elapsed:.0f} s'


@pytest.mark.slow
def test_tools_on_legacy_and_safetensors_checkpoints(unverified_runs):
    runs, paths = unverified_runs
    r = runs['legacy test.py']
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'cannot be verified' in r.stdout + r.stderr and str(paths['legacy']) in r.stdout + r.stderr

    pytest.importorskip('safetensors.torch')
    r = runs['safetensors test.py']
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r'accuracy/top1: [0-9.]+', r.stdout + r.stderr)
