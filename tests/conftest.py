"""Suite-wide settings.

The suite runs under pytest-xdist (``pytest -n 2``, as ``.ci/run`` and the README do) with ``--dist loadfile``:
each test file stays on one worker, so module/session fixtures and tests that build on each other's outputs
(e.g. the 2-process reference run in ``reliability/test_kill_resume.py``) keep working. With two workers on a
2-core machine, each worker and the tools it launches get one OpenMP thread; more only oversubscribes the cores.
"""
import os

import pytest
import torch
import torch.nn.functional as F

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


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
