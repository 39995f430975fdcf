"""Suite-wide settings.

The suite runs under pytest-xdist (``pytest -n 2``, as ``.ci/run`` and the README do) with ``--dist loadfile``:
each test file stays on one worker, so module/session fixtures and tests that build on each other's outputs
(e.g. the 2-process reference run in ``reliability/test_kill_resume.py``) keep working. With two workers on a
2-core machine, each worker and the tools it launches get one OpenMP thread; more only oversubscribes the cores.
"""
import os

import torch

if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'
    torch.set_num_threads(1)
