#!/usr/bin/env python
"""Wall time of the demo trainings on this CPU with the launcher's thread choice against fixed thread counts, on an
idle machine and while other processes keep some cores busy.

    python benchmarks/bench_cpu_threads.py [--configs configs/demo/pelk_demo_in1k.py ...]
                                           [--settings auto 1 2] [--loads 0 1]
                                           [--out work_dirs/benchmarks/cpu_threads.json]

For every load (the number of busy-loop processes started beside the run, each keeping one core busy) and every
setting, ``tools/train.py CONFIG`` runs once in a fresh work dir under ``work_dirs/benchmarks/``:

* ``auto``: no ``OMP_NUM_THREADS`` / ``PELK_MM_CPU_THREADS`` (the launcher chooses from the idle cores; the
  threads it chose are read from its log line);
* ``N``: ``OMP_NUM_THREADS=N``.

The table gives each run's wall time, its ratio to the fastest run under the same load, the threads used and the
final metric the run printed. The first-use work (building the C++ kernel, generating the demo data) is done
before, untimed. Prints a markdown table and writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIGS = ['configs/demo/pelk_demo_in1k.py', 'configs/demo/pelk_demo_upernet_ade20k.py']
BUSY_LOOP = 'while True:\n    pass\n'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS)
    p.add_argument('--settings', nargs='+', default=['auto', '1', '2'],
                   help="'auto' (the launcher's choice) or a thread count given as OMP_NUM_THREADS")
    p.add_argument('--loads', type=int, nargs='+', default=[0, 1], help='busy-loop processes beside each run')
    p.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'benchmarks', 'cpu_threads.json'))
    args = p.parse_args(argv)
    for s in args.settings:
        if s != 'auto' and not (s.isdigit() and int(s) >= 1):
            p.error(f"--settings {s!r} is neither 'auto' nor a thread count >= 1")
    return args


def run_once(config: str, setting: str, work_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('OMP_NUM_THREADS', 'PELK_MM_CPU_THREADS')}
    if setting != 'auto':
        env['OMP_NUM_THREADS'] = setting
    shutil.rmtree(work_dir, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f'error: {config} with threads={setting} failed (rc {proc.returncode}):\n'
                         f'{proc.stderr[-2000:]}')
    out = proc.stdout + proc.stderr
    chosen = re.search(r'CPU run: (\d+) torch thread', out)
    final = re.search(r'pelk_mm: train finished: ([^;\n]*)', out)
    return dict(config=config, setting=setting, wall_s=round(wall, 1),
                threads=int(chosen.group(1)) if chosen else (int(setting) if setting != 'auto' else None),
                metrics=final.group(1).strip() if final else None)


def main(argv=None):
    args = parse_args(argv)
    scratch = osp.join(ROOT, 'work_dirs', 'benchmarks', 'cpu_threads')
    # NOTE: first use builds the C++ kernel (tens of seconds) and writes the demo data; no timed run pays for it
    subprocess.run([sys.executable, '-c', 'from pelk_mm.ops import _impl_cpp; assert _impl_cpp.available()'],
                   cwd=ROOT, check=True)
    subprocess.run([sys.executable, 'tools/dataset_converters/make_demo_data.py', 'all'], cwd=ROOT, check=True,
                   capture_output=True)
    rows = []
    for load in args.loads:
        busy = [subprocess.Popen([sys.executable, '-c', BUSY_LOOP]) for _ in range(load)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for config in args.configs:
                for setting in args.settings:
                    row = run_once(config, setting, osp.join(scratch, f'load{load}_{setting}'))
                    row['load'] = load
                    rows.append(row)
                    print(f'  {osp.basename(config)} load={load} threads={setting}: {row["wall_s"]} s '
                          f'({row["threads"]} thread(s)); {row["metrics"]}', flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    shutil.rmtree(scratch, ignore_errors=True)
    for row in rows:
        best = min(r['wall_s'] for r in rows if r['config'] == row['config'] and r['load'] == row['load'])
        row['ratio_to_best'] = round(row['wall_s'] / best, 2)
    cpu = platform.processor() or platform.machine()
    print(f'\n{os.cpu_count()} cores ({cpu}), busy-loop processes beside the run as given by "load"\n')
    print('| config | load | setting | threads | wall (s) | / fastest | final metrics |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {osp.basename(r['config'])} | {r['load']} | {r['setting']} | {r['threads']} | {r['wall_s']} | "
              f"{r['ratio_to_best']} | {r['metrics']} |")
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    import torch
    with open(args.out, 'w') as f:
        json.dump(dict(machine=dict(cores=os.cpu_count(), cpu=cpu, python=platform.python_version(),
                                    torch=torch.__version__),
                       date=time.strftime('%Y-%m-%d'), rows=rows), f, indent=1)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
    main()
