"""Suite-wide settings.

The suite runs under pytest-xdist (``pytest -n 2``, as ``.ci/run`` and the README do) with ``--dist loadfile``:
each test file stays on one worker, so module/session fixtures and tests that build on each other's outputs
(e.g. the 2-process reference run in ``reliability/test_kill_resume.py``) keep working. With two workers on a
2-core machine, each worker and the tools it launches get one OpenMP thread; more only oversubscribes the cores.

Every test's mmengine Runners are independent of other tests': mmengine keeps its ``MessageHub``, ``MMLogger``,
``Visualizer`` and ``DefaultScope`` instances by name for the whole process (the newest ``DefaultScope`` decides
which codebase's registry an unscoped type is looked up in), and a Runner whose experiment name another test's Runner
used (an explicit name, or the default timestamp of the same second) would pick up that test's message hub (its
best score, its checkpoint ids). The instances a test creates are dropped when it ends.
"""
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


def _mmengine_instance_dicts():
    """``{class: its instance dict}`` of mmengine's MessageHub, MMLogger, Visualizer and DefaultScope (and
    subclasses)."""
    if 'mmengine' not in sys.modules:
        return {}
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    found, todo = {}, [MessageHub, MMLogger, Visualizer, DefaultScope]
    while todo:
        cls = todo.pop()
        found[cls] = cls._instance_dict
        todo.extend(cls.__subclasses__())
    return found


@pytest.fixture(autouse=True)
def independent_runners():
    """Drop the mmengine instances (message hubs, loggers, visualizers, default scopes) that the test created."""
    before = {cls: set(d) for cls, d in _mmengine_instance_dicts().items()}
    yield
    for cls, instances in _mmengine_instance_dicts().items():
        for name in [n for n in instances if n not in before.get(cls, ())]:
            del instances[name]


def _reference_eq3(x: torch.Tensor, dense: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """PeLK Eq. 3 written out with unfold: ``Y(p) = sum_t w(t) (X(p + t) + h(t) [p + t inside the image])`` for
    ``x`` ``(N, C, H, W)``, a dense depthwise kernel ``(C, K, K)`` and an embedding ``h`` ``(C, K, K)``."""
    n, c, height, width = x.shape
    k = dense.shape[-1]
    cols = F.unfold(x, k, padding=k // 2).view(n, c, k * k, height * width)
    inside = F.unfold(torch.ones_like(x[:1]), k, padding=k // 2).view(1, c, k * k, height * width)
    taps = cols + h.reshape(1, c, k * k, 1) * inside
    return (taps * dense.reshape(1, c, k * k, 1)).sum(2).view(n, c, height, width)


@pytest.fixture(scope='session')
def reference_eq3():
    """The independent Eq. 3 reference the KPE tests compare with (a fixture: test modules cannot import each
    other under ``--import-mode=importlib``)."""
    return _reference_eq3


_ONE_PROCESS_DRIVER = Path(__file__).resolve().parent / 'data' / 'run_tools_in_one_process.py'


def _run_tools_in_one_process(argvs, cwd, env, timeout=600):
    """Run the command lines ``argvs`` (``[tool.py, args...]`` each, no interpreter) one after the other in one
    Python process (``tests/data/run_tools_in_one_process.py``), as ``python TOOL ARGS`` runs each: the imports are
    paid once. Returns one ``CompletedProcess``-like namespace per command (``args``, ``returncode``, ``stdout``,
    ``stderr``, ``elapsed``)."""
    with tempfile.TemporaryDirectory(prefix='tools_one_process_') as out:
        cases = os.path.join(out, 'cases.json')
        with open(cases, 'w') as f:
            json.dump([[str(a) for a in argv] for argv in argvs], f)
        r = subprocess.run([sys.executable, str(_ONE_PROCESS_DRIVER), cases, out], cwd=str(cwd), env=env,
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        results = []
        for i, argv in enumerate(argvs):
            read = lambda ext: open(os.path.join(out, f'{i}.{ext}')).read()  # noqa: E731
            status = json.loads(read('json'))
            results.append(types.SimpleNamespace(args=argv, stdout=read('out'), stderr=read('err'), **status))
        return results


@pytest.fixture(scope='session')
def tools_in_one_process():
    """:func:`_run_tools_in_one_process`: many short tool runs at the cost of one interpreter start."""
    return _run_tools_in_one_process
