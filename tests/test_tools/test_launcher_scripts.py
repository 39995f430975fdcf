"""The shell launchers pass the OpenMMLab argument/env contract through (fake srun/python on PATH)."""
import os
import stat
import subprocess

import pytest


def _fake(bin_dir, name):
    path = bin_dir / name
    path.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$0" "$@" > "$FAKE_OUT"\nenv | grep -E "^(PYTHONPATH)=" '
                    '>> "$FAKE_OUT"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _run(tools, script, args, tmp_path, **env):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    _fake(bin_dir, 'srun')
    fake_py = _fake(bin_dir, 'fakepython')
    out = tmp_path / 'out.txt'
    e = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_OUT=str(out), PYTHON=str(fake_py), **env)
    r = subprocess.run(['bash', str(tools.REPO / 'tools' / script), *map(str, args)], env=e, capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    return r, (out.read_text().splitlines() if out.exists() else [])


def test_dist_train_uses_torchrun_contract(tools, tmp_path):
    r, argv = _run(tools, 'dist_train.sh', ['cfg.py', 4, '--amp', '--cfg-options', 'a=1'], tmp_path,
                   NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.5')
    assert r.returncode == 0, r.stderr
    assert argv[1:3] == ['-m', 'pelk_mm.apis.torchrun']  # torch.distributed.run, failures in one line
    assert {'--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.5', '--master_port=29500',
            '--nproc_per_node=4'} <= set(argv)
    i = argv.index(str(tools.REPO / 'tools' / 'train.py'))
    assert argv[i + 1:i + 7] == ['cfg.py', '--launcher', 'pytorch', '--amp', '--cfg-options', 'a=1']
    assert any(line.startswith(f'PYTHONPATH={tools.REPO}') for line in argv)


def test_dist_test_and_port(tools, tmp_path):
    r, argv = _run(tools, 'dist_test.sh', ['cfg.py', 'ck.pth', 2, '--out', 'x.pkl'], tmp_path, PORT='29777')
    assert r.returncode == 0, r.stderr
    assert '--master_port=29777' in argv and '--nnodes=1' in argv and '--master_addr=127.0.0.1' in argv
    i = argv.index(str(tools.REPO / 'tools' / 'test.py'))
    assert argv[i + 1:i + 7] == ['cfg.py', 'ck.pth', '--launcher', 'pytorch', '--out', 'x.pkl']


@pytest.mark.parametrize('script,n', [('dist_train.sh', 1), ('dist_test.sh', 2), ('slurm_train.sh', 3),
                                      ('slurm_test.sh', 3)])
def test_usage_errors(tools, tmp_path, script, n):
    r, argv = _run(tools, script, ['a'] * n, tmp_path)
    assert r.returncode == 1 and 'usage:' in r.stderr and not argv


def test_slurm_train_layout(tools, tmp_path):
    r, argv = _run(tools, 'slurm_train.sh', ['part', 'job', 'cfg.py', 'wd', '--resume'], tmp_path, GPUS='16',
                   SRUN_ARGS='--quotatype=auto')
    assert r.returncode == 0, r.stderr
    assert argv[0].endswith('srun')
    assert {'-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=16', '--ntasks-per-node=8',
            '--cpus-per-task=5', '--kill-on-bad-exit=1', '--quotatype=auto'} <= set(argv)
    i = argv.index(str(tools.REPO / 'tools' / 'train.py'))
    assert argv[i - 1] == '-u'
    assert argv[i + 1:i + 5] == ['cfg.py', '--work-dir=wd', '--launcher=slurm', '--resume']


def test_slurm_test_layout(tools, tmp_path):
    r, argv = _run(tools, 'slurm_test.sh', ['part', 'job', 'cfg.py', 'ck.pth', '--tta'], tmp_path, GPUS='4',
                   GPUS_PER_NODE='4', CPUS_PER_TASK='2')
    assert r.returncode == 0, r.stderr
    assert {'--gres=gpu:4', '--ntasks=4', '--ntasks-per-node=4', '--cpus-per-task=2'} <= set(argv)
    i = argv.index(str(tools.REPO / 'tools' / 'test.py'))
    assert argv[i + 1:i + 5] == ['cfg.py', 'ck.pth', '--launcher=slurm', '--tta']


def test_venv_interpreter_is_default(tools, tmp_path):
    """Without $PYTHON the scripts use <repo>/.venv/bin/python when it exists."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _fake(bin_dir, 'srun')
    out = tmp_path / 'out.txt'
    e = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    e.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_OUT=str(out))
    r = subprocess.run(['bash', str(tools.REPO / 'tools/slurm_train.sh'), 'p', 'j', 'c.py', 'w'], env=e,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    expected = tools.REPO / '.venv/bin/python'
    assert (str(expected) if expected.exists() else 'python') in out.read_text().splitlines()
