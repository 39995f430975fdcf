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
    test_log = _run(['tools/test.py', CONFIG, ckpt, '--work-dir', tmp_path / 'test'], tmp_path)
    tested = float(re.findall(r'Epoch\(test\).*accuracy/top1: ([0-9.]+)', test_log)[-1])
    assert tested == pytest.approx(accs[-1], abs=1e-3)
