"""tools/dist_*.sh set the thread variables torchrun and mmengine would set with a warning banner per process."""
import os
import stat
import subprocess

import pytest

KEYS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'PELK_MM_USER_OMP_NUM_THREADS')


def _env_seen_by_python(tools, tmp_path, script, args, **env):
    fake = tmp_path / 'fakepython'
    fake.write_text('#!/usr/bin/env bash\nenv > "$FAKE_OUT"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / 'env.txt'
    base = {k: v for k, v in os.environ.items() if k not in KEYS}
    r = subprocess.run(['bash', str(tools.REPO / 'tools' / script), *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=dict(base, PYTHON=str(fake), FAKE_OUT=str(out), **env))
    assert r.returncode == 0, r.stderr
    seen = dict(line.split('=', 1) for line in out.read_text().splitlines() if '=' in line)
    return {k: seen.get(k) for k in KEYS}


@pytest.mark.parametrize('script,args', [('dist_train.sh', ['cfg.py', '2']),
                                         ('dist_test.sh', ['cfg.py', 'ck.pth', '2'])])
def test_thread_variables_are_set_before_torchrun(tools, tmp_path, script, args):
    # unset, torchrun prints 'Setting OMP_NUM_THREADS environment variable for each process to be 1 in default' and
    # mmengine warns 'Setting MKL_NUM_THREADS ...' in every process; the user had set neither
    assert _env_seen_by_python(tools, tmp_path, script, args) == {
        'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PELK_MM_USER_OMP_NUM_THREADS': ''}
    # the user's own values pass through, and the launcher still sees OMP_NUM_THREADS as the user's choice
    assert _env_seen_by_python(tools, tmp_path, script, args, OMP_NUM_THREADS='3', MKL_NUM_THREADS='2') == {
        'OMP_NUM_THREADS': '3', 'MKL_NUM_THREADS': '2', 'PELK_MM_USER_OMP_NUM_THREADS': '3'}
