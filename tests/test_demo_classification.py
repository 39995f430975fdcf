"""The README's main job: the demo classification config trains on CPU, beats chance clearly, and tools/test.py
reproduces its accuracy from the checkpoint."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'demo' / 'pelk_demo_in1k.py'


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('LOCAL_RANK', None)
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
def test_demo_classification_trains_and_test_reproduces(tmp_path):
    work_dir = tmp_path / 'work'
    log = _run(['tools/train.py', CONFIG, '--work-dir', work_dir], tmp_path)
    accs = [float(a) for a in re.findall(r'Epoch\(val\).*accuracy/top1: ([0-9.]+)', log)]
    assert len(accs) == 6, log[-2000:]  # validated every 4 of 24 epochs
    chance = 100 / 6
    assert accs[-1] >= 80.0 > 4 * chance, f'demo top-1 {accs[-1]:.1f}% (chance {chance:.1f}%): {accs}'
    ckpt = work_dir / 'epoch_24.pth'
    assert ckpt.is_file()
    _check_console(log, 'train', 566, n_val=6)
    test_log = _run(['tools/test.py', CONFIG, ckpt, '--work-dir', tmp_path / 'test'], tmp_path)
    tested = float(re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)', test_log)[-1])
    assert tested == pytest.approx(accs[-1], abs=1e-3)
    _check_console(test_log, 'test', 430, n_val=0)


def _check_console(log, what, lines_before, n_val):
    """The console shows progress, results and warnings the user can act on, at least 5x fewer lines than the
    Runner's full output (``lines_before``: mmengine's console for the same run); the log file keeps everything."""
    lines = log.splitlines()
    assert len(lines) * 5 <= lines_before, log
    for noise in ('System environment', 'Config:', 'Hooks will be executed', 'paramwise_options', 'FileClient',
                  'has been overridden after parameter value scheduler', 'No CUDA runtime is found'):
        assert noise not in log, noise
    final = [line for line in lines if line.startswith(f'pelk_mm: {what} finished: ')]
    assert len(final) == 1 and 'accuracy/top1' in final[0], log[-2000:]
    log_file = Path(re.search(r'full log (\S+\.log)', final[0]).group(1))
    text = log_file.read_text()
    assert 'System environment' in text and 'Config:' in text and 'Hooks will be executed' in text
    assert len(re.findall(r'Epoch\(val\) \[', text)) == n_val
