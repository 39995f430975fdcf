import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'tests' / 'data' / 'configs'
TINY_CLS = CONFIGS / 'tiny_pelk_cls_demo.py'


def tool_env(**extra):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / 'tests' / 'data'), env.get('PYTHONPATH', '')]))
    env.pop('LOCAL_RANK', None)
    env.update(extra)
    return env


def run_tool(args, cwd, timeout=240, **env):
    """Run a command (list), return CompletedProcess with text stdout/stderr."""
    return subprocess.run([str(a) for a in args], cwd=str(cwd), env=tool_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    """All three demo datasets, generated once per session."""
    from pelk_mm.datasets import make_demo_data
    root = tmp_path_factory.mktemp('demo')
    for kind in ('imagenet', 'ade20k', 'coco'):
        make_demo_data(kind, str(root))
    return root


PY = sys.executable


class Tools:
    """Helpers for the launcher tests (a fixture, since test modules cannot import each other)."""
    PY = PY
    REPO = REPO
    CONFIGS = CONFIGS
    TINY_CLS = TINY_CLS
    run = staticmethod(run_tool)
    env = staticmethod(tool_env)
    free_port = staticmethod(free_port)


@pytest.fixture(scope='session')
def tools():
    return Tools


@pytest.fixture(autouse=True)
def _restore_local_rank():
    """parse_train_args/parse_test_args set LOCAL_RANK like the stock tools; keep it out of other tests."""
    before = os.environ.get('LOCAL_RANK')
    yield
    if before is None:
        os.environ.pop('LOCAL_RANK', None)
    else:
        os.environ['LOCAL_RANK'] = before
