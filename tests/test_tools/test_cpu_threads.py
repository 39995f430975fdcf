"""CPU runs choose their torch thread count from the idle cores, unless the user chose."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pelk_mm.apis.cpu_threads import THREADS_ENV, USER_OMP_ENV, apply_cpu_threads, choose_cpu_threads
from pelk_mm.errors import LaunchError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('cores,busy,procs,expected', [
    (2, 0.05, 1, 2),   # idle 2-core machine: both cores
    (2, 0.9, 1, 1),    # one core busy with another job: one thread, no waiting at barriers
    (2, 1.9, 1, 1),    # everything busy: still one
    (2, 0.0, 2, 1),    # two processes of one job share the two cores
    (16, 3.6, 4, 3),   # 12.4 idle over 4 processes
    (16, 0.0, 1, 16),
])
def test_threads_from_idle_cores(cores, busy, procs, expected):
    env = {'LOCAL_WORLD_SIZE': str(procs), USER_OMP_ENV: ''} if procs > 1 else {}
    threads, why = choose_cpu_threads(env, cores, busy)
    assert threads == expected and f'{cores} usable core(s)' in why


def test_user_choice_wins():
    assert choose_cpu_threads({'OMP_NUM_THREADS': '3'}, 2, 1.9) == (None, 'OMP_NUM_THREADS=3 (yours)')
    assert choose_cpu_threads({THREADS_ENV: '4', 'OMP_NUM_THREADS': '1'}, 2, 1.9)[0] == 4
    # under torchrun OMP_NUM_THREADS=1 is torchrun's default, not the user's: the dist scripts pass the user's value
    torchrun = {'LOCAL_WORLD_SIZE': '1', 'OMP_NUM_THREADS': '1', USER_OMP_ENV: ''}
    assert choose_cpu_threads(torchrun, 2, 0.0)[0] == 2
    assert choose_cpu_threads(dict(torchrun, **{USER_OMP_ENV: '1'}), 2, 0.0)[0] is None
    with pytest.raises(LaunchError, match=f'{THREADS_ENV}=\'two\' is not a thread count'):
        choose_cpu_threads({THREADS_ENV: 'two'}, 2, 0.0)


def test_apply_sets_torch_threads_on_cpu_only():
    import torch
    before = torch.get_num_threads()
    try:
        assert apply_cpu_threads({THREADS_ENV: '1'}, cuda=True) is None
        note = apply_cpu_threads({THREADS_ENV: '1'}, cuda=False)
        assert torch.get_num_threads() == 1 and note.startswith('CPU run: 1 torch thread(s)')
    finally:
        torch.set_num_threads(before)


def test_train_tool_reports_its_choice(tmp_path):
    """tools/train.py under a busy core picks fewer threads than cores and says so in one line."""
    env = dict(os.environ, PELK_MM_CPU_THREADS='1')
    env.pop('OMP_NUM_THREADS', None)
    proc = subprocess.run([sys.executable, 'tools/train.py', 'configs/demo/pelk_demo_in1k.py', '--work-dir',
                           str(tmp_path / 'w'), '--cfg-options', 'train_cfg.max_epochs=1',
                           'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                           'val_dataloader.persistent_workers=False'],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'CPU run: 1 torch thread(s) (PELK_MM_CPU_THREADS=1)' in proc.stdout
