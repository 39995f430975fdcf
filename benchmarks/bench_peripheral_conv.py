"""Benchmark every peripheral conv implementation at PeLK stage shapes (CPU by default).

Per implementation and input layout: median forward time (``torch.no_grad``), median forward+backward time
(grads for x and the block weights), peak memory of each, and ratios to the dense reference (NCHW, and on CUDA also
in the same layout) and to a 7x7 depthwise ``F.conv2d`` in the same layout - all measured in one run. On CUDA each
run is timed with CUDA events, on CPU with the host clock. The 7x7 ratio is the median over interleaved
(implementation, 7x7) pairs, so machine noise hits both sides of each pair alike.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the live bytes before the call; on CPU the peak of the
running sum of allocations/frees that ``torch.profiler`` (``profile_memory=True``) records for the call (each op's
self allocations minus frees, in op start order, so op-granular), i.e. bytes obtained through torch's CPU
allocator. Transient scratch allocated and freed inside one op (the C++ kernel's per-thread buffers: the k' x H x
W_pad row and column sums, the doubling tables and, for channels_last, 16-channel transpose blocks; ~0.3-1.3 MB per
thread at PeLK shapes) is not visible at that granularity.
Inputs and weights that exist before the call are not counted.

Usage::

    python benchmarks/bench_peripheral_conv.py           # full table -> work_dirs/benchmarks/peripheral_conv.json
    python benchmarks/bench_peripheral_conv.py --quick   # smoke run on one tiny shape
    python benchmarks/bench_peripheral_conv.py --out my.json --threads 2 --skip-dense
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
import types
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_ops():
    """``pelk_mm.ops`` without requiring the OpenMMLab stack that ``pelk_mm/__init__`` imports."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        return importlib.import_module('pelk_mm.ops')
    except Exception:  # noqa: BLE001 - mmengine/mmcv missing: load the ops package on its own
        for name in [n for n in sys.modules if n == 'pelk_mm' or n.startswith('pelk_mm.')]:
            del sys.modules[name]
        pkg = types.ModuleType('pelk_mm')
        pkg.__path__ = [os.path.join(ROOT, 'pelk_mm')]
        sys.modules['pelk_mm'] = pkg
        return importlib.import_module('pelk_mm.ops')


ops = _import_ops()

# PeLK-T convolves 3/8 of the stage widths 124/249/499/998 -> 46/93/187/374 channels.
FULL_SHAPES = [  # (C, H=W, K, centre size)
    (46, 56, 51, 5),
    (93, 28, 49, 5),
    (187, 14, 47, 5),
    (374, 7, 13, 5),
    (46, 56, 101, 7),  # PeLK-101 stage 1 (7x7 centre)
]
QUICK_SHAPES = [(8, 12, 13, 5)]
IMPLS = ['auto', 'cpp', 'triton', 'box', 'fft', 'dense_cl', 'dense']  # those the device does not support are skipped


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class _Timer:
    """Seconds of one run of ``fn``: CUDA events around it on CUDA (device time, launch gaps included), else the
    host clock."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], None]) -> float:
        if self.cuda:
            self.start.record()
            fn()
            self.end.record()
            self.end.synchronize()
            return self.start.elapsed_time(self.end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def _median_time(fn: Callable[[], None], device, reps: int, budget_s: float) -> float:
    """Median seconds over ``reps`` runs after one warm-up (fewer if over the time budget; the warm-up alone if one
    run exceeds it)."""
    timer = _Timer(device)
    _sync(device)
    first = timer(fn)
    if first > budget_s:
        return first  # one run is over the budget: the warm-up is the measurement (slow dense reference)
    n = max(1, min(reps, int(budget_s / max(first, 1e-9))))
    _sync(device)
    return statistics.median(timer(fn) for _ in range(n))


def _paired_ratio(fn: Callable[[], None], ref: Callable[[], None], device, reps: int) -> float:
    """Median of ``time(fn) / time(ref)`` over ``reps`` back-to-back pairs: on a shared or throttling machine both
    sides of each pair see the same conditions, so the ratio is far steadier than a ratio of two separate medians."""
    timer = _Timer(device)
    ratios = []
    for _ in range(reps):
        _sync(device)
        pair = [timer(f) for f in (fn, ref)]
        ratios.append(pair[0] / pair[1])
    return statistics.median(ratios)


def _peak_bytes(fn: Callable[[], None], device) -> int:
    """Peak extra bytes allocated during ``fn`` (see module docstring for the method)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # walk every op's *self* allocations minus frees (and the stand-alone "[memory]" events) in start order
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.cpu_memory_usage if e.name == '[memory]' else e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def _make_runs(impl: str, x: torch.Tensor, w: torch.Tensor, grid, gy: torch.Tensor):
    """(forward fn, forward+backward fn) for one implementation; ``impl`` may be ``'dw7'`` (7x7 depthwise)."""
    if impl == 'dw7':
        w7 = torch.randn(x.shape[1], 1, 7, 7, dtype=x.dtype, device=x.device, requires_grad=True)

        def conv(xx):
            return F.conv2d(xx, w7, padding=3, groups=x.shape[1])
        params = [w7]
    else:
        def conv(xx):
            return ops.peripheral_conv2d(xx, w, grid, impl)
        params = [w]

    def fwd():
        with torch.no_grad():
            conv(x)

    def fwd_bwd():
        xx = x.detach().requires_grad_(True)
        y = conv(xx)
        torch.autograd.grad(y, [xx] + params, gy)
    return fwd, fwd_bwd


def bench_shape(n, c, hw, k, centre, impls, layouts, device, dtype, reps, budget_s, skip_dense,
                errors: Optional[List[Dict]] = None) -> List[Dict]:
    """Rows of every implementation at one shape; with ``errors`` given, a failing implementation is recorded there
    (and skipped) instead of raising."""
    grid = ops.peripheral_grid(k, centre)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for layout in layouts:
        fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
        x = torch.randn(n, c, hw, hw, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
        w = (0.02 * torch.randn(c, 1, len(grid), len(grid), generator=gen)).to(device, dtype).requires_grad_(True)
        gy = torch.randn(x.shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
        names = ['dw7'] + [i for i in impls if not (skip_dense and i == 'dense')]
        dw7_runs = _make_runs('dw7', x, w, grid, gy)
        if layout == 'channels_last' and device.type != 'cuda':
            names = [i for i in names if i not in ('dense',)]  # on CPU the (slow) reference row is NCHW only
        for impl in names:
            try:
                chosen = impl if impl in ('dw7',) else ops.resolve_impl(x, w, grid, impl).name
                fwd, fwd_bwd = _make_runs(impl, x, w, grid, gy)
                row = dict(N=n, C=c, H=hw, W=hw, K=k, G=len(grid), layout=layout, impl=impl, runs=chosen,
                           fwd_ms=1e3 * _median_time(fwd, device, reps, budget_s),
                           fwd_bwd_ms=1e3 * _median_time(fwd_bwd, device, reps, budget_s))
                # ratio to the 7x7 depthwise conv of this layout from interleaved pairs (skipped for slow rows)
                for key, fn, ref in (('fwd', fwd, dw7_runs[0]), ('fwd_bwd', fwd_bwd, dw7_runs[1])):
                    fast = impl != 'dw7' and row[f'{key}_ms'] * max(reps, 5) < 1e3 * budget_s
                    row[f'paired_ratio_to_dw7_{key}'] = _paired_ratio(fn, ref, device, max(reps, 5)) if fast else None
                # memory: one extra profiled run each, skipped when a single run is over the time budget
                for key, fn in (('fwd', fwd), ('fwd_bwd', fwd_bwd)):
                    slow = row[f'{key}_ms'] > 1e3 * budget_s
                    row[f'{key}_peak_mb'] = None if slow else _peak_bytes(fn, device) / 2**20
            except ValueError as err:  # implementation does not support this device/dtype
                print(f'  skip {impl}: {err}', file=sys.stderr)
                continue
            except Exception as err:  # noqa: BLE001 - a failing implementation must not stop the other rows
                if errors is None:
                    raise
                errors.append(dict(N=n, C=c, H=hw, K=k, layout=layout, impl=impl, error=f'{type(err).__name__}: '
                                   f'{str(err)[:300]}'))
                print(f'  FAILED {impl}: {type(err).__name__}: {err}', file=sys.stderr)
                continue
            rows.append(row)
            print(f'  {n},{c},{hw}x{hw},K={k} {layout:13s} {impl:8s} fwd {row["fwd_ms"]:9.2f} ms  '
                  f'fwd+bwd {row["fwd_bwd_ms"]:9.2f} ms', file=sys.stderr, flush=True)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: List[Dict]) -> None:
    dense = next((r for r in rows if r['impl'] == 'dense' and r['layout'] == 'NCHW'), None)
    dense_same = {r['layout']: r for r in rows if r['impl'] == 'dense'}
    dw7 = {r['layout']: r for r in rows if r['impl'] == 'dw7'}
    for r in rows:
        for key in ('fwd_ms', 'fwd_bwd_ms'):
            tag = key[:-3]
            r[f'speedup_vs_dense_nchw_{tag}'] = dense[key] / r[key] if dense else None
            same = dense_same.get(r['layout'])
            r[f'speedup_vs_dense_same_layout_{tag}'] = same[key] / r[key] if same else None
            paired = r.get(f'paired_ratio_to_dw7_{tag}')
            r[f'ratio_to_dw7_same_layout_{tag}'] = paired if paired is not None else (
                r[key] / dw7[r['layout']][key] if r['layout'] in dw7 else None)


def _fmt(v: Optional[float], spec: str) -> str:
    return '-' if v is None else format(v, spec)


def markdown_table(rows: List[Dict]) -> str:
    head = ('| N,C,HxW,K (k\') | layout | impl (runs) | fwd ms | fwd+bwd ms | peak MB fwd / f+b | '
            'x faster than dense NCHW fwd / f+b | / dw7x7 same layout fwd / f+b |')
    lines = [head, '|' + '---|' * 8]
    for r in rows:
        name = r['impl'] if r['impl'] == r['runs'] else f"{r['impl']} ({r['runs']})"
        lines.append(
            f"| {r['N']},{r['C']},{r['H']}x{r['W']},{r['K']} ({r['G']}) | {r['layout']} | {name} | "
            f"{r['fwd_ms']:.3g} | {r['fwd_bwd_ms']:.3g} | {_fmt(r['fwd_peak_mb'], '.1f')} / "
            f"{_fmt(r['fwd_bwd_peak_mb'], '.1f')} | "
            f"{_fmt(r['speedup_vs_dense_nchw_fwd'], '.1f')} / {_fmt(r['speedup_vs_dense_nchw_fwd_bwd'], '.1f')} | "
            f"{_fmt(r['ratio_to_dw7_same_layout_fwd'], '.2f')} / "
            f"{_fmt(r['ratio_to_dw7_same_layout_fwd_bwd'], '.2f')} |")
    return '\n'.join(lines)


def machine_info(device) -> Dict:
    info = dict(torch=torch.__version__, python=platform.python_version(), threads=torch.get_num_threads(),
                device=str(device), cpu=platform.processor() or platform.machine())
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info['cpp_extension'] = 'loaded' if ops._impl_cpp.extension() is not None else \
        f'unavailable: {ops._impl_cpp.unavailable_reason()}'
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='one tiny shape, batch 1, 1 timed rep (smoke test)')
    p.add_argument('--out', default=os.path.join(ROOT, 'work_dirs', 'benchmarks', 'peripheral_conv.json'),
                   help='JSON output path')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float64', 'float16', 'bfloat16'])
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (CPU)')
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--impls', nargs='+', default=IMPLS)
    p.add_argument('--layouts', nargs='+', default=['NCHW', 'channels_last'])
    p.add_argument('--reps', type=int, default=5, help='timed repetitions (median), fewer for slow runs')
    p.add_argument('--budget', type=float, default=4.0, help='seconds of timed runs per measurement, at most')
    p.add_argument('--skip-dense', action='store_true', help='leave out the (slow) dense NCHW reference')
    return p.parse_args(argv)


def main(argv=None) -> List[Dict]:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    batches = [1] if args.quick else args.batches
    reps = 1 if args.quick else args.reps
    info = machine_info(device)
    rows = []
    for (c, hw, k, centre) in shapes:
        for n in batches:
            rows += bench_shape(n, c, hw, k, centre, args.impls, args.layouts, device, dtype, reps, args.budget,
                                args.skip_dense)
    table = markdown_table(rows)
    print(f"Machine: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, {args.dtype}, "
          f"device {info['device']}; C++ extension {info['cpp_extension']}\n")
    print(table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(machine=info, args=vars(args), rows=rows, table=table), f, indent=1, default=str)
    print(f'\nwrote {args.out}')
    return rows


if __name__ == '__main__':
    main()
