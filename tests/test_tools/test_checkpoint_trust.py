"""Trust names what it trusts.

``--trust-checkpoint`` / ``PELK_MM_TRUST_CHECKPOINTS`` let a checkpoint that the safe loader refuses be unpickled. The
trust names one file (its path, or its sha256) or one exact URL, and applies to that alone: another checkpoint the
same run loads (an ``init_cfg=Pretrained`` file or URL slipped in with ``--cfg-options``) is still refused without its
payload running. The old all-or-nothing value ``1`` is a one-line error that says to name the file.
"""
import argparse
import functools
import hashlib
import http.server
import os
import re
import threading

import pytest
import torch

import pelk_mm.compat  # noqa: F401  (mmengine's loaders and save_checkpoint, as every entry point has them)
from pelk_mm.checkpoint import TRUST_ENV, UnsafeCheckpointError, load_checkpoint_file, trusted_entries
from pelk_mm.errors import CheckpointLoadError


class _OpensMarker:
    """Unpickling this object calls ``open(path, 'w')``: the file appears iff the payload ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def _evil(folder, name):
    marker = folder / f'{name}.PWNED'
    path = folder / name
    torch.save({'state_dict': {'w': torch.ones(3)}, 'meta': _OpensMarker(marker)}, path)
    return path, marker


def _legacy(folder, name='legacy.pth', lr=0.1):
    """A genuine file that needs trust: a legacy pickle holding an ``argparse.Namespace``."""
    path = folder / name
    torch.save({'state_dict': {'w': torch.arange(3.)}, 'meta': {'args': argparse.Namespace(lr=lr)}}, path,
               _use_new_zipfile_serialization=False)
    return path


@pytest.fixture
def warned(monkeypatch):
    """The warnings of trusted loads (the legacy files here also get one saying they cannot be verified)."""
    import pelk_mm.checkpoint as ckpt_mod
    messages = []
    monkeypatch.setattr(ckpt_mod, '_log_warning', lambda m: messages.append(m) if 'weights_only=False' in m else None)
    return messages


# --------------------------------------------------------------------------------------------------- the loader
def test_trust_by_path_applies_to_that_file_alone(tmp_path, monkeypatch, warned):
    own = _legacy(tmp_path)
    evil, marker = _evil(tmp_path, 'evil.pth')
    other = _legacy(tmp_path, 'other_legacy.pth')
    monkeypatch.setenv(TRUST_ENV, str(own))
    assert load_checkpoint_file(str(own))['meta']['args'].lr == 0.1
    assert len(warned) == 1 and str(own) in warned[0] and 'weights_only=False' in warned[0]
    for path in (evil, other):
        with pytest.raises(UnsafeCheckpointError, match=re.escape(str(path))):
            load_checkpoint_file(str(path))
    assert not marker.exists()
    # the same file by another name (relative, through a symlink) is the file that was named
    link = tmp_path / 'link.pth'
    link.symlink_to(own)
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint_file('link.pth')['meta']['args'].lr == 0.1
    monkeypatch.setenv(TRUST_ENV, 'legacy.pth')
    assert load_checkpoint_file(str(own))['meta']['args'].lr == 0.1


def test_trust_by_sha256_and_several_entries(tmp_path, monkeypatch, warned):
    own = _legacy(tmp_path)
    second = _legacy(tmp_path, 'second.pth', lr=0.2)
    changed = _legacy(tmp_path, 'changed.pth', lr=0.3)
    digest = hashlib.sha256(own.read_bytes()).hexdigest()
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([f'sha256:{digest}', str(second)]))
    copy = tmp_path / 'copy_of_own.pth'
    copy.write_bytes(own.read_bytes())
    assert load_checkpoint_file(str(copy))['meta']['args'].lr == 0.1  # the named content, wherever it lies
    assert load_checkpoint_file(str(second))['meta']['args'].lr == 0.2
    with pytest.raises(UnsafeCheckpointError, match=re.escape(str(changed))):
        load_checkpoint_file(str(changed))
    assert len(warned) == 2


@pytest.mark.parametrize('value', ['1', 'true', 'yes', 'on'])
def test_trust_everything_is_an_error_naming_the_fix(tmp_path, monkeypatch, value):
    evil, marker = _evil(tmp_path, 'evil.pth')
    monkeypatch.setenv(TRUST_ENV, value)
    with pytest.raises(CheckpointLoadError) as err:
        load_checkpoint_file(str(evil))
    msg = str(err.value)
    assert f'{TRUST_ENV}={value!r}' in msg and 'name the file' in msg and '\n' not in msg
    assert not marker.exists()


@pytest.fixture
def www(tmp_path, monkeypatch):
    """A loopback HTTP server over ``tmp_path/www``; downloads go to ``tmp_path/hub``."""
    root = tmp_path / 'www'
    root.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_a_url_is_trusted_only_when_that_url_is_named(tmp_path, monkeypatch, www, warned):
    from mmengine.runner import CheckpointLoader
    root, base = www
    (root / 'a').mkdir()
    _legacy(root / 'a', 'w.pth')
    evil, marker = _evil(root, 'evil.pth')
    local = _legacy(tmp_path, 'evil.pth')  # a trusted local file of the same name as the URL's
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([str(local), f'{base}/a/w.pth']))
    assert CheckpointLoader.load_checkpoint(f'{base}/a/w.pth')['meta']['args'].lr == 0.1
    assert len(warned) == 1 and f'{base}/a/w.pth' in warned[0]
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f'{base}/evil.pth')):
        CheckpointLoader.load_checkpoint(f'{base}/evil.pth')
    assert not marker.exists() and not list(tmp_path.rglob('*.PWNED'))
    # a sha256 names content on this machine; a URL is trusted by naming the URL
    monkeypatch.setenv(TRUST_ENV, 'sha256:' + hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(f'{base}/evil.pth')
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------- the flag
def _parse(argv, positional_checkpoint=True):
    from pelk_mm.apis.launch import add_trust_checkpoint_arg, apply_trust_checkpoint
    parser = argparse.ArgumentParser()
    if positional_checkpoint:
        parser.add_argument('checkpoint')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    apply_trust_checkpoint(args)
    return args


def test_flag_names_files_and_a_bare_flag_names_the_tools_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    own = _legacy(tmp_path)
    second = _legacy(tmp_path, 'second.pth')
    monkeypatch.chdir(tmp_path)
    _parse(['legacy.pth', '--trust-checkpoint'])
    assert trusted_entries() == (os.path.realpath(own), )
    digest = hashlib.sha256(b'x').hexdigest()
    _parse(['legacy.pth', '--trust-checkpoint', 'second.pth', '--trust-checkpoint', digest])
    assert set(trusted_entries()) == {os.path.realpath(own), os.path.realpath(second), f'sha256:{digest}'}
    # a name that is no file, and a bare flag where the tool has no checkpoint argument: one line each, exit 2
    for argv, positional, expected in ([['legacy.pth', '--trust-checkpoint', 'missing.pth'], True, 'missing.pth'],
                                       [['--trust-checkpoint'], False, 'name the file']):
        monkeypatch.delenv(TRUST_ENV, raising=False)
        with pytest.raises(SystemExit) as exit_:
            _parse(argv, positional)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith('error:') and expected in err and '\n' not in err


# --------------------------------------------------------------------------------------------------- the tools
@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, tools):
    """A real 1-epoch run of the tiny classifier."""
    cwd = tmp_path_factory.mktemp('ckpt_trust')
    work = cwd / 'work'
    r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.TINY_CLS, '--work-dir', work, '--cfg-options',
                   'train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=16',
                   'val_dataloader.dataset.indices=6'], cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd, work


def _own_legacy(run_dir):
    """The user's own legacy checkpoint: genuine weights, an ``argparse.Namespace`` in its meta."""
    cwd, work = run_dir
    genuine = load_checkpoint_file(str(work / 'epoch_1.pth'))
    genuine['meta']['args'] = argparse.Namespace(note='written by an older tool')
    path = cwd / 'own_legacy.pth'
    torch.save(genuine, path, _use_new_zipfile_serialization=False)
    return path


def _evil_pretrained(run_dir, name):
    cwd, work = run_dir
    genuine = load_checkpoint_file(str(work / 'epoch_1.pth'))
    marker = cwd / f'{name}.PWNED'
    genuine['meta']['payload'] = _OpensMarker(marker)
    path = cwd / name
    torch.save(genuine, path)
    return path, marker


def _assert_refused(r, path, marker):
    assert not marker.exists(), 'the payload of the checkpoint that was not named ran'
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    line = next((ln for ln in r.stderr.splitlines() if ln.startswith('error:')), '')
    assert str(path) in line and '--trust-checkpoint' in line, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr


@pytest.mark.slow
def test_test_py_trusts_its_checkpoint_not_a_pretrained_file(run_dir, tools):
    cwd, _ = run_dir
    own = _own_legacy(run_dir)
    evil, marker = _evil_pretrained(run_dir, 'evil_pretrained.pth')
    r = tools.run([tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, own, '--trust-checkpoint',
                   '--work-dir', cwd / 'w_test', '--cfg-options', 'model.backbone.init_cfg.type=Pretrained',
                   f'model.backbone.init_cfg.checkpoint={evil}', 'model.backbone.init_cfg.prefix=backbone.'],
                  cwd=cwd)
    _assert_refused(r, evil, marker)


@pytest.mark.slow
def test_train_py_trusts_the_resumed_file_not_a_pretrained_url(run_dir, tools, tmp_path):
    cwd, _ = run_dir
    own = _own_legacy(run_dir)
    evil, marker = _evil_pretrained(run_dir, 'evil_url.pth')
    root = tmp_path / 'www'
    root.mkdir()
    os.replace(evil, root / 'evil_url.pth')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}/evil_url.pth'
    try:
        r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.TINY_CLS, '--work-dir', cwd / 'w_url',
                       '--resume', own, '--trust-checkpoint', '--cfg-options', 'train_cfg.max_epochs=2',
                       'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=6',
                       'model.backbone.init_cfg.type=Pretrained', f'model.backbone.init_cfg.checkpoint={url}',
                       'model.backbone.init_cfg.prefix=backbone.'], cwd=cwd, TORCH_HOME=str(tmp_path / 'hub'))
    finally:
        server.shutdown()
        server.server_close()
    _assert_refused(r, url, marker)
    assert not list(tmp_path.rglob('*.PWNED'))


@pytest.mark.slow
def test_trust_everything_value_is_one_line_at_start(run_dir, tools):
    cwd, _ = run_dir
    own = _own_legacy(run_dir)
    r = tools.run([tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, own, '--work-dir', cwd / 'w_env'],
                  cwd=cwd, **{TRUST_ENV: '1'})
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith('error:'))
    assert TRUST_ENV in line and 'name the file' in line
    r = tools.run([tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, own, '--work-dir', cwd / 'w_env'],
                  cwd=cwd, **{TRUST_ENV: str(own)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert re.search(r'accuracy/top1: [0-9.]+', out) and 'weights_only=False' in out


@pytest.mark.slow
def test_dist_test_workers_trust_the_named_checkpoint(run_dir, tools):
    cwd, _ = run_dir
    own = _own_legacy(run_dir)
    evil, marker = _evil_pretrained(run_dir, 'evil_dist.pth')
    cmd = ['bash', tools.REPO / 'tools/dist_test.sh', tools.TINY_CLS, own, 2, '--trust-checkpoint', '--work-dir',
           cwd / 'w_dist']
    r = tools.run(cmd, cwd=cwd, PORT=str(tools.free_port()), timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r'accuracy/top1: [0-9.]+', r.stdout + r.stderr)
    r = tools.run(cmd + ['--cfg-options', 'model.backbone.init_cfg.type=Pretrained',
                         f'model.backbone.init_cfg.checkpoint={evil}', 'model.backbone.init_cfg.prefix=backbone.'],
                  cwd=cwd, PORT=str(tools.free_port()), timeout=240)
    assert r.returncode != 0 and not marker.exists(), r.stderr[-3000:]
