"""``http(s)://`` checkpoints: bounded waits, a cache keyed on the whole URL, and URLs wherever a path is taken.

All servers here listen on 127.0.0.1 only and stop with the test. A server that accepts the connection and never
answers fails the download after ``PELK_MM_DOWNLOAD_TIMEOUT`` seconds with one line and no partial file left behind;
``…/b/w.pth`` then ``…/a/w.pth`` are two files; ``tools/test.py CFG URL`` and ``load_from=URL`` download and load
the checkpoint the README points them at.
"""
import functools
import http.server
import re
import socket
import threading
import time

import pytest
import torch

import pelk_mm.compat  # noqa: F401  (mmengine's loaders and save_checkpoint, as every entry point has them)
from pelk_mm.checkpoint import DOWNLOAD_TIMEOUT_ENV, load_checkpoint_file
from pelk_mm.errors import CheckpointLoadError


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


@pytest.fixture
def silent_url():
    """A server on 127.0.0.1 that accepts connections and never sends a byte (held until the test ends)."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{listener.getsockname()[1]}/silent/w.pth'
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_cache_is_keyed_on_the_whole_url(www):
    from mmengine.runner import CheckpointLoader
    root, base = www
    for name, value in (('a', 1.), ('b', 2.)):
        (root / name).mkdir()
        torch.save({'state_dict': {'w': torch.full((2,), value)}}, root / name / 'w.pth')
    for name, value in (('b', 2.), ('a', 1.), ('b', 2.)):
        ckpt = CheckpointLoader.load_checkpoint(f'{base}/{name}/w.pth')
        assert torch.equal(ckpt['state_dict']['w'], torch.full((2,), value)), name
    # the loader takes URLs too, as everything that takes a checkpoint path does
    assert torch.equal(load_checkpoint_file(f'{base}/a/w.pth')['state_dict']['w'], torch.full((2,), 1.))


def test_a_damaged_cached_copy_is_downloaded_again(www, tmp_path):
    from pelk_mm.checkpoint import CorruptCheckpointError, cached_download_path
    root, base = www
    torch.save({'state_dict': {'w': torch.arange(4096.)}}, root / 'w.pth')
    url = f'{base}/w.pth'
    load_checkpoint_file(url)
    cached = cached_download_path(url)
    data = bytearray(open(cached, 'rb').read())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # inside the tensor record
    with open(cached, 'wb') as f:
        f.write(data)
    with pytest.raises(CorruptCheckpointError, match='downloads it again'):
        load_checkpoint_file(url)
    assert torch.equal(load_checkpoint_file(url)['state_dict']['w'], torch.arange(4096.))


def test_http_errors_are_one_line(www, tmp_path):
    _, base = www
    with pytest.raises(CheckpointLoadError) as err:
        load_checkpoint_file(f'{base}/missing/w.pth')
    msg = str(err.value)
    assert f'{base}/missing/w.pth' in msg and '404' in msg and '\n' not in msg
    assert not [p for p in (tmp_path / 'hub').rglob('*') if p.is_file()]


def test_silent_server_times_out_without_a_partial_file(silent_url, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'hub'))
    monkeypatch.setenv(DOWNLOAD_TIMEOUT_ENV, '1')
    from mmengine.runner import CheckpointLoader
    result = {}

    def load():
        try:
            CheckpointLoader.load_checkpoint(silent_url)
        except Exception as err:  # noqa: BLE001 - examined below
            result['err'] = err

    start = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)  # a hang must fail the test, not stall the suite
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), 'the download of a silent server did not time out'
    assert time.monotonic() - start < 30
    err = result.get('err')
    assert isinstance(err, CheckpointLoadError), repr(err)
    msg = str(err)
    assert silent_url in msg and DOWNLOAD_TIMEOUT_ENV in msg and '\n' not in msg
    assert not [p for p in (tmp_path / 'hub').rglob('*') if p.is_file()]


# --------------------------------------------------------------------------------------------------- the tools
@pytest.fixture(scope='module')
def served_weights(tmp_path_factory, tools):
    """The tiny classifier's initial weights as a checkpoint file (what test.py / load_from read)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(str(tools.TINY_CLS))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    folder = tmp_path_factory.mktemp('served')
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 0}}, folder / 'tiny.pth')
    return folder


@pytest.mark.slow
def test_test_py_and_load_from_take_urls(served_weights, tools, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served_weights))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}/tiny.pth'
    hub = str(tmp_path / 'hub')
    try:
        r = tools.run([tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, url, '--work-dir', tmp_path / 'wt',
                       '--cfg-options', 'test_dataloader.dataset.indices=6'], cwd=tmp_path, TORCH_HOME=hub)
        assert r.returncode == 0, r.stderr[-3000:]
        assert re.search(r'accuracy/top1: [0-9.]+', r.stdout + r.stderr)
        r = tools.run([tools.PY, tools.REPO / 'tools/train.py', tools.TINY_CLS, '--work-dir', tmp_path / 'wl',
                       '--cfg-options', f'load_from={url}', 'train_cfg.max_epochs=1',
                       'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=6'], cwd=tmp_path,
                      TORCH_HOME=hub)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f'Load checkpoint from {url}' in r.stdout + r.stderr
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_test_py_with_a_silent_server_stops_with_one_line(silent_url, tools, tmp_path):
    hub = tmp_path / 'hub'
    start = time.monotonic()
    r = tools.run([tools.PY, tools.REPO / 'tools/test.py', tools.TINY_CLS, silent_url, '--work-dir', tmp_path / 'w'],
                  cwd=tmp_path, timeout=120, TORCH_HOME=str(hub), **{DOWNLOAD_TIMEOUT_ENV: '2'})
    assert time.monotonic() - start < 100
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith('error:'))
    assert silent_url in line and DOWNLOAD_TIMEOUT_ENV in line
    assert not [p for p in hub.rglob('*') if p.is_file()]
