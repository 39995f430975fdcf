#!/usr/bin/env python
"""One prepared GPU check of the peripheral conv (run by ``benchmarks/gpu_check.sh``; about 7 minutes on one H200).

(a) battery: every implementation the device supports (triton, box, fft, dense_cl, dense, auto) x float32 /
    bfloat16 / float16 x NCHW / channels_last x grid cases (K 1..101, odd sizes, maps smaller than the kernel, batch
    1, PeLK stage shapes): forward, grad-input and grad-weight against a float64 dense reference (``repeat_interleave``
    + ``F.conv2d``, TF32 off), fresh random inputs per case, and freed NaN-filled blocks handed out by the caching
    allocator before every call, so a result element that is never written shows up as NaN.
(v) Triton variants: at PeLK's stage shapes (batch 64, bfloat16 and float32, NCHW and channels_last) the kernels'
    tuner times every candidate launch variant of the forward and grad-weight kernels (tile shapes, warps, stages,
    the ``tl.dot`` contraction, the 2^p + 1 H-cell split); the winners' gradients are checked against the default
    variant's, and each winner's share of the roofline (bytes and FLOPs over this run's copy bandwidth and matmul
    rate) is reported. The battery before runs the default variants; the benchmark after reuses the winners.
(b) op benchmark at the PeLK-T (and PeLK-101 stage-1) shapes, batch 64, float32 and bfloat16, NCHW and
    channels_last: every implementation vs dense (cuDNN, both layouts) and a 7x7 depthwise conv, CUDA-event medians,
    forward and forward+backward, peak memory (``benchmarks/bench_peripheral_conv.py``).
(c) training-step throughput (224x224, batch 64, bf16 autocast and float32, interleaved in this process): PeLK-T
    (``auto``), PeLK-T with ``dense``, SLaK-T-like, ConvNeXt-T-like and PeLK-101-T (``benchmarks/bench_pelk_train.py``).
    Then, in the seconds of the part left (at least ``--compile-reserve``), PeLK-T's bf16 step under
    ``torch.compile`` (``--compile-backend``, inductor: the whole step function, as mmengine's ``compile=True``) in a
    process of its own, killed at the part's deadline: compile time (its two warm-up steps less two steps) and step
    time, against the eager PeLK-T bf16 row. Needs the backbone (mmengine); skipped, with the reason recorded, when
    it cannot be imported.
(d) the real launcher: ``tools/train.py configs/demo/pelk_demo_in1k.py`` and ``tools/dist_train.sh ... 1`` (one
    process, NCCL on CUDA) with ``--amp`` in bfloat16, the full demo schedule, one after the other; each run's final
    top-1 (the launcher's ``pelk_mm: train finished: accuracy/top1 X`` line) against the demo's CPU top-1, 98.61
    (pass within 1 point), and what the run's own log says it ran on (CUDA, distributed, optimizer wrapper and AMP
    dtype). Its budget grows by the seconds the earlier parts left unused. Needs mmengine, mmcv (no compiled ops
    needed) and mmpretrain; left out by ``--quick`` unless ``--parts`` names it (then one epoch, accuracy not
    compared).

Each part has its own time budget and records a failure instead of stopping the later parts. Everything goes to
``<out>/gpu_check.json``; a short summary table is printed last.

    python benchmarks/gpu_check.py [--out DIR] [--parts battery variants bench train launch]
    TRITON_INTERPRET=1 python benchmarks/gpu_check.py --device cpu --quick   # smoke run on CPU
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_peripheral_conv as bpc  # noqa: E402  (imports pelk_mm.ops with torch alone)

ops = bpc.ops
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
IMPLS = ['triton', 'box', 'fft', 'dense_cl', 'dense', 'auto']
LAYOUTS = {'NCHW': torch.contiguous_format, 'channels_last': torch.channels_last}


# ------------------------------------------------------------------------------------------------ (a) battery
def battery_cases(quick: bool) -> List[tuple]:
    """``(N, C, H, W, grid)`` cases: K from 1 to 101, odd sizes, single rows, maps smaller than the kernel, several
    row blocks and column tiles, PeLK stage shapes."""
    g = ops.peripheral_grid
    cases = [(1, 2, 5, 4, g(1, 1)), (1, 3, 7, 7, g(3, 3)), (1, 2, 1, 9, g(13)), (1, 4, 7, 7, g(13)),
             (2, 3, 14, 13, g(47)), (1, 2, 12, 16, g(51)), (1, 2, 24, 9, g(101, 7)), (1, 2, 56, 3, g(101)),
             (2, 2, 9, 10, (1, 2, 1, 3)), (1, 3, 20, 17, (3, 1, 5, 1, 2, 8, 5, 8)),
             (1, 3, 130, 70, g(13)), (3, 5, 65, 97, (8, 5, 1, 1, 3, 1, 8, 2, 5, 8, 3, 8, 8)),
             (4, 46, 56, 56, g(51)), (2, 46, 56, 56, g(101, 7)), (4, 93, 28, 28, g(49)), (4, 187, 14, 14, g(47)),
             (8, 374, 7, 7, g(13))]
    return cases[:4] if quick else cases


def ref_conv(x: torch.Tensor, weight: torch.Tensor, grid) -> torch.Tensor:
    """Float64 dense reference, built independently of the code under test."""
    sizes = torch.tensor(list(grid), device=x.device)
    dense = weight.repeat_interleave(sizes, dim=-1).repeat_interleave(sizes, dim=-2)
    return F.conv2d(x, dense, padding=sum(grid) // 2, groups=x.shape[1])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``; NaN if ``a`` holds a NaN (an element never written)."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float('nan')
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def poison(device: torch.device, nbytes: List[int]) -> None:
    """Fill blocks of these sizes with 0xFF (NaN in every float type) and free them: the caching allocator hands
    them to the next allocations of those sizes, so unwritten output elements read NaN."""
    if device.type != 'cuda':
        return
    junk = [torch.empty(n, dtype=torch.uint8, device=device).fill_(255) for n in nbytes]
    del junk


def check_one(impl: str, x: torch.Tensor, w: torch.Tensor, grid, gy: torch.Tensor, ref: tuple) -> Dict:
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    nb = x.numel() * x.element_size()
    poison(x.device, [nb, nb, 4 * nb, 64 * w.numel() * 4])
    y = ops.peripheral_conv2d(x, w, grid, impl)
    poison(x.device, [nb, nb, 4 * nb, 64 * w.numel() * 4])
    gx, gw = torch.autograd.grad(y, (x, w), gy)
    errs = {name: rel_err(a, b) for name, a, b in (('fwd', y, ref[0]), ('gx', gx, ref[1]), ('gw', gw, ref[2]))}
    cl = torch.channels_last
    same_format = x.is_contiguous(memory_format=cl) == y.is_contiguous(memory_format=cl)
    return dict(errs, out_format_matches=same_format)


def part_battery(args, deadline: float) -> Dict:
    # NOTE: the battery checks the default Triton variants (the variants part checks the tuned ones) and spends no
    # time tuning its many small shapes
    with _env('PELK_MM_TRITON_TUNE', '0'):
        return _battery(args, deadline)


def _battery(args, deadline: float) -> Dict:
    device = torch.device(args.device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    rows, gen = [], torch.Generator().manual_seed(int(time.time()))  # fresh inputs on every run
    try:
        for (n, c, h, w, grid) in battery_cases(args.quick):
            for dname in args.dtypes:
                if time.time() > deadline:
                    return dict(rows=rows, note=f'time budget reached after {len(rows)} checks')
                dtype = DTYPES[dname]
                x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
                wt = torch.randn(c, 1, len(grid), len(grid), generator=gen, dtype=torch.float64).to(device, dtype)
                gy = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
                xr, wr = x.double().requires_grad_(True), wt.double().requires_grad_(True)
                yr = ref_conv(xr, wr, grid)
                ref = (yr.detach(), *torch.autograd.grad(yr, (xr, wr), gy.double()))
                for layout, fmt in LAYOUTS.items():
                    xl, gyl = x.contiguous(memory_format=fmt), gy.contiguous(memory_format=fmt)
                    for impl in args.impls:
                        row = dict(impl=impl, dtype=dname, layout=layout, case=f'{n}x{c}x{h}x{w}-K{sum(grid)}')
                        try:
                            if impl != 'auto' and not ops.peripheral_conv._IMPLS[impl].supports(xl, wt, grid):
                                continue
                            row['runs'] = ops.resolve_impl(xl, wt, grid, impl).name
                            row.update(check_one(impl, xl, wt, grid, gyl, ref))
                            row['ok'] = all(row[k] <= TOL[dtype] for k in ('fwd', 'gx', 'gw'))  # NaN fails
                        except Exception as err:  # noqa: BLE001 - record and go on
                            row.update(ok=False, error=f'{type(err).__name__}: {str(err)[:300]}')
                        rows.append(row)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return dict(rows=rows)


def battery_summary(rows: List[Dict]) -> List[Dict]:
    """Per (impl, dtype, layout): checks, failures, worst error / tolerance."""
    groups: Dict[tuple, Dict] = {}
    for r in rows:
        g = groups.setdefault((r['impl'], r['dtype'], r['layout']), dict(impl=r['impl'], dtype=r['dtype'],
                                                                         layout=r['layout'], checks=0, failed=0,
                                                                         worst_err_over_tol=0.0))
        g['checks'] += 1
        g['failed'] += 0 if r.get('ok') else 1
        errs = [r.get(k, float('nan')) for k in ('fwd', 'gx', 'gw')]
        worst = max((e if e == e else float('inf')) for e in errs) / TOL[DTYPES[r['dtype']]]
        g['worst_err_over_tol'] = max(g['worst_err_over_tol'], worst)
    return list(groups.values())


# ------------------------------------------------------------------------------------------------ (v) variants
VARIANT_SHAPES = [(46, 56, 51, 5), (46, 56, 101, 7), (374, 7, 13, 5), (93, 28, 49, 5), (187, 14, 47, 5)]
ELEMENT_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def measure_peaks(device: torch.device, dtypes: List[str], quick: bool) -> Dict:
    """This run's copy bandwidth (GB/s, a large ``copy_``: read + write) and matmul rate (TFLOP/s, ``torch.mm``
    per dtype; float32 with TF32 off, as the exact kernels compute), the roofline the variants are measured
    against."""
    n_bytes = (1 << 20) if quick else (1 << 30)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    copy_ms = 1e3 * bpc._median_time(lambda: dst.copy_(src), device, 3 if quick else 10, 5.0)
    peaks = dict(copy_gbps=2 * n_bytes / copy_ms / 1e6, mm_tflops={})
    size = 256 if quick else 8192
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dname in dtypes:
            a = torch.randn(size, size, device=device).to(DTYPES[dname])
            ms = 1e3 * bpc._median_time(lambda: torch.mm(a, a), device, 3 if quick else 10, 5.0)
            peaks['mm_tflops'][dname] = 2 * size ** 3 / ms / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return peaks


def roofline_row(key: tuple, rec: Dict, peaks: Dict) -> Dict:
    """One tuned (pass, shape): every candidate's time, the winner, and the winner's share of the roofline.

    Bytes: the input read and the output written once (forward / grad-input), ``x`` and ``gy`` read once
    (grad-weight). FLOPs: the structured algorithm's ``2 k'_h k'_w`` (contraction) ``+ 2 k'_w + 2 k'_h`` (box sums
    from prefix differences) per output pixel. Roofline time: the larger of bytes / copy bandwidth and FLOPs /
    matmul rate of the dtype; share = roofline time / measured time."""
    pass_, dname, n, c, h, w, channels_last, lo_h, hi_h, lo_w, hi_w = key
    gh, gw = len(lo_h), len(lo_w)
    pixels = n * c * h * w
    nbytes = 2 * pixels * ELEMENT_BYTES.get(dname, 4)
    flops = pixels * (2 * gh * gw + 2 * gw + 2 * gh)
    timed = {v: t for v, t in rec['candidates'].items() if isinstance(t, float)}
    best = timed.get(rec['winner'])
    bound_ms = max(nbytes / peaks['copy_gbps'] / 1e6, flops / (peaks['mm_tflops'].get(dname) or float('inf')) / 1e9)
    return dict(pass_=pass_, dtype=dname, N=n, C=c, H=h, W=w, layout='channels_last' if channels_last else 'NCHW',
                cells=f'{gh}x{gw}', K=f'{hi_h[-1] - lo_h[0] + 1}x{hi_w[-1] - lo_w[0] + 1}', how=rec['how'],
                candidates=rec['candidates'], failed=sorted(set(rec['candidates']) - set(timed)),
                winner=rec['winner'], winner_ms=best, default=rec['default'], default_ms=timed.get(rec['default']),
                speedup_vs_default=(timed[rec['default']] / best) if best and rec['default'] in timed else None,
                gbytes=nbytes / 1e9, gflops=flops / 1e9, roofline_ms=bound_ms,
                bound='memory' if nbytes / peaks['copy_gbps'] / 1e6 >= bound_ms else 'compute',
                roofline_share=bound_ms / best if best else None)


def part_variants(args, deadline: float) -> Dict:
    """Tunes the Triton kernels (every candidate variant timed by the tuner itself) at PeLK's shapes, forward,
    grad-input and grad-weight, checks the winner against the default variant, and reports the roofline share."""
    device = torch.device(args.device)
    it = ops._impl_triton
    if not (it.triton_available() and (device.type == 'cuda' or it.interpreter_mode())):
        return dict(status='skipped', reason='triton cannot run on this device', rows=[])
    peaks = measure_peaks(device, args.bench_dtypes, args.quick)
    shapes = bpc.QUICK_SHAPES if args.quick else VARIANT_SHAPES
    layouts = ['NCHW'] if args.quick else list(LAYOUTS)
    batch = 1 if args.quick else args.batch
    it.clear_variant_cache()
    checks, skipped, gen = [], [], torch.Generator().manual_seed(0)
    # NOTE: a cache directory of its own: every candidate is timed in this run, whatever an earlier run stored
    with _env('PELK_MM_TRITON_TUNE', '1'), _env('PELK_MM_CACHE', tempfile.mkdtemp(prefix='pelk_gpu_check_')):
        for dname in args.bench_dtypes:
            for (c, hw, k, centre) in shapes:
                for layout in layouts:
                    if time.time() > deadline:
                        skipped.append(f'{dname} C={c} {hw}x{hw} K={k} {layout}')
                        continue
                    grid = ops.peripheral_grid(k, centre)
                    x = torch.randn(batch, c, hw, hw, generator=gen).to(device, DTYPES[dname])
                    x = x.contiguous(memory_format=LAYOUTS[layout]).requires_grad_(True)
                    w = (0.02 * torch.randn(c, 1, len(grid), len(grid), generator=gen)).to(device, DTYPES[dname])
                    w.requires_grad_(True)
                    gy = torch.randn(x.shape, generator=gen).to(device, DTYPES[dname])
                    got = torch.autograd.grad(ops.peripheral_conv2d(x, w, grid, 'triton'), (x, w), gy)
                    # the tuned winners against the default variants on the same inputs
                    cand = [it.candidates(p, hw, hw, *_cropped(grid, hw)) for p in it.PASSES]
                    with it.use_variant('fwd', cand[0][0]), it.use_variant('grad_w', cand[1][0]):
                        ref = torch.autograd.grad(ops.peripheral_conv2d(x, w, grid, 'triton'), (x, w), gy)
                    errs = [rel_err(a, b) for a, b in zip(got, ref)]
                    checks.append(dict(dtype=dname, shape=f'{batch}x{c}x{hw}x{hw} K{k}', layout=layout,
                                       grad_input_err=errs[0], grad_weight_err=errs[1],
                                       ok=all(e <= TOL[DTYPES[dname]] for e in errs)))
    rows = [roofline_row(key, rec, peaks) for key, rec in it.tuning_records().items()]
    return dict(rows=rows, peaks=peaks, checks=checks, skipped=skipped,
                note='times from the tuner: best of two groups of five launches after a warm-up, per candidate')


def _cropped(grid, size: int) -> tuple:
    """``(gh, gw, kw)`` of ``grid`` cropped to a ``size x size`` map (as the kernels see it)."""
    from pelk_mm.ops._cells import axis_cells
    cells = axis_cells(grid, size)
    return len(cells.lo), len(cells.lo), cells.hi[-1] - cells.lo[0] + 1


# ------------------------------------------------------------------------------------------------ (b) bench
def part_bench(args, deadline: float) -> Dict:
    # NOTE: shapes the variants part tuned run their winners; any other shape runs the default variant instead of
    # spending the part's time compiling candidates
    with _env('PELK_MM_TRITON_TUNE', '0'):
        return _bench(args, deadline)


def _bench(args, deadline: float) -> Dict:
    device = torch.device(args.device)
    shapes = bpc.QUICK_SHAPES if args.quick else bpc.FULL_SHAPES
    batch = 1 if args.quick else args.batch
    rows, errors, skipped = [], [], []
    impls = [i for i in args.impls if i != 'auto'] + ['auto']
    for dname in args.bench_dtypes:
        for (c, hw, k, centre) in shapes:
            for layout in LAYOUTS:
                if time.time() > deadline:
                    skipped.append(f'{dname} C={c} {hw}x{hw} K={k} {layout}')
                    continue
                got = bpc.bench_shape(batch, c, hw, k, centre, impls, [layout], device, DTYPES[dname],
                                      1 if args.quick else args.reps, args.measure_budget, False, errors)
                for r in got:
                    r['dtype'] = dname
                rows += got
    return dict(rows=rows, errors=errors, skipped=skipped, table=bpc.markdown_table(rows))


# ------------------------------------------------------------------------------------------------ (c) train
QUICK_ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], kernel_sizes=[13, 11, 7, 5])


def part_train(args, deadline: float) -> Dict:
    try:
        import bench_pelk_train as bpt
        from pelk_mm.models import PeLK  # noqa: F401
    except Exception as err:  # noqa: BLE001 - no mmengine on this machine: recorded, not fatal
        return dict(status='skipped', reason=f'backbone cannot be imported: {type(err).__name__}: {err}', rows=[])
    nets = dict(bpt.NETS)
    if args.quick:
        nets = {name: {**kw, 'arch': dict(QUICK_ARCH, kernel_sizes=[7] * 4) if 'ConvNeXt' in name else QUICK_ARCH}
                for name, kw in nets.items() if name in ('PeLK-T', 'ConvNeXt-T-like')}
    size, batch = (64, 1) if args.quick else (224, args.batch)
    # NOTE: the eager nets stop at eager_deadline, so the compiled step keeps at least --compile-reserve seconds
    eager_deadline = deadline - args.compile_reserve
    variants = {}
    for prec in args.train_precisions:
        for name, kw in nets.items():
            if time.time() > eager_deadline:
                break
            amp = None if prec == 'float32' else DTYPES[prec]
            variants[f'{name} | {prec}'] = bpt.make_step(kw, args.device, batch, size, 1000, amp_dtype=amp)
    rows = bpt.interleaved_throughput(variants, 1 if args.quick else args.rounds, batch, eager_deadline)
    for r in rows:
        r['net'], r['precision'] = r['net'].split(' | ')
    missing = [f'{n} | {p}' for p in args.train_precisions for n in nets if f'{n} | {p}' not in variants]
    res = dict(rows=rows, size=size, batch=batch, not_built=missing,
               autotune={' '.join(map(str, k)): v for k, v in ops.autotune_cache().items()})
    if args.compile_reserve > 0:
        del variants  # the compiled step's process gets the GPU memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        res['compile'] = compiled_step(bpt, nets['PeLK-T'], args, size, batch, rows, deadline)
    return res


def compiled_step(bpt, backbone: Dict, args, size: int, batch: int, eager_rows: List[Dict], deadline: float) -> Dict:
    """PeLK-T's bf16 step under ``torch.compile`` in a process of its own (``bench_pelk_train.py --worker
    auto+compile``, the same step as the eager rows), killed at ``deadline``; with its ratio to the eager row."""
    prec = 'bfloat16' if not args.quick else args.train_precisions[0]
    backend = 'eager' if args.quick else args.compile_backend  # NOTE: --quick: dynamo's capture alone, no codegen
    argv = ['--arch', json.dumps(backbone['arch']) if isinstance(backbone['arch'], dict) else backbone['arch'],
            '--size', str(size), '--batch', str(batch), '--device', args.device, '--threads', '0',
            '--iters', '1' if args.quick else '5', '--compile-backend', backend]
    argv += [] if prec == 'float32' else ['--amp', prec]
    res = dict(net='PeLK-T', precision=prec, backend=backend, cmd='benchmarks/bench_pelk_train.py ' + ' '.join(argv))
    left = deadline - time.time()
    if left < 5:
        return dict(res, status='skipped', reason=f'{left:.0f} s of the part left')
    t0 = time.time()
    try:
        row = bpt.run_isolated('auto' + bpt.COMPILED, argv, timeout=left)
    except subprocess.TimeoutExpired:
        return dict(res, status='timeout', reason=f'compiled step not done within {left:.0f} s (killed)',
                    seconds=round(time.time() - t0, 1))
    except SystemExit as err:  # the worker failed: its stderr's tail
        return dict(res, status='failed', reason=str(err)[-1500:], seconds=round(time.time() - t0, 1))
    eager = next((r for r in eager_rows if r['net'] == 'PeLK-T' and r['precision'] == prec and r['steps']), None)
    res.update(status='ok', seconds=round(time.time() - t0, 1), row=row,
               eager_step_s=eager['step_s'] if eager else None,
               speedup_vs_eager=eager['step_s'] / row['step_s'] if eager else None)
    return res


# ------------------------------------------------------------------------------------------------ (d) launch
CLS_DEMO = 'configs/demo/pelk_demo_in1k.py'
CLS_DEMO_CPU_TOP1 = 98.61  # the demo's top-1 on CPU (README, docs/configs.md: 71 of 72 val images)
LAUNCH_TOLERANCE = 1.0  # points of top-1
# NOTE: --amp alone gives mmengine's float16 AmpOptimWrapper; the type is named so that the launcher's CPU fallback
# also drops the dtype (OptimWrapper takes none)
BF16_AMP = ['--amp', '--cfg-options', 'optim_wrapper.type=AmpOptimWrapper', 'optim_wrapper.dtype=bfloat16']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _read_run_log(out: str, work: str) -> Dict:
    """What the run's own mmengine log and dumped config say it ran on."""
    info: Dict = {}
    found = re.search(r'full log (\S+\.log)', out)
    text = ''
    if found and os.path.isfile(found.group(1)):
        with open(found.group(1)) as f:
            text = f.read()
    for key, pattern in (('cuda', r'CUDA available: (\w+)'), ('distributed', r'Distributed training: (\w+)'),
                         ('gpu', r'GPU 0[^:]*: ([^\n]+)')):
        m = re.search(pattern, text)
        info[key] = m.group(1).strip() if m else None
    dumped = os.path.join(work, os.path.basename(CLS_DEMO))
    try:  # mmengine's dump of the config the runner was built from (after the launcher resolved --amp): plain dicts
        wrapper = runpy.run_path(dumped)['optim_wrapper']
        info['optim_wrapper'], info['amp_dtype'] = wrapper.get('type'), wrapper.get('dtype')
    except Exception as err:  # noqa: BLE001 - recorded, the accuracy still counts
        info['optim_wrapper'] = f'unread: {type(err).__name__}'
    return info


def _stop(proc: subprocess.Popen) -> str:
    """End a launch (its own process group) and return what it printed. torchrun starts its workers in sessions of
    their own and stops them on SIGTERM, so SIGTERM comes first; SIGKILL if that does not end it."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.communicate(timeout=wait)[0]
        except subprocess.TimeoutExpired:
            continue
    return '(no output: a process of the launch still holds its pipe)'


def part_launch(args, deadline: float) -> Dict:
    work_root = os.path.join(args.launch_work_dir, 'launch')
    runs = {'train.py': [sys.executable, 'tools/train.py', CLS_DEMO],
            'dist_train.sh 1': ['bash', 'tools/dist_train.sh', CLS_DEMO, '1']}
    extra = BF16_AMP + (['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'] if args.quick else [])
    env = dict(os.environ, PYTHON=sys.executable)  # dist_train.sh runs $PYTHON (this image has no `python`)
    if not args.device.startswith('cuda'):
        env['CUDA_VISIBLE_DEVICES'] = ''
    rows = []
    for i, (name, cmd) in enumerate(runs.items()):
        # NOTE: a hung first run leaves the second a share of the budget
        left = deadline - time.time() - 30.0 * (len(runs) - 1 - i)
        row = dict(launch=name, cpu_top1=CLS_DEMO_CPU_TOP1, top1=None, ok=False)
        rows.append(row)
        if left < 15:
            row['error'] = 'time budget reached'
            continue
        tag = name.split('.')[0]
        work = os.path.join(work_root, tag)
        shutil.rmtree(work, ignore_errors=True)
        full = cmd + ['--work-dir', work] + extra
        row['cmd'] = ' '.join(full[1:] if full[0] == sys.executable else full)
        t0 = time.time()
        proc = subprocess.Popen(full, cwd=ROOT, env=dict(env, PORT=str(_free_port())), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=left)
            row['rc'] = proc.returncode
        except subprocess.TimeoutExpired:
            row['rc'], row['error'] = 'timeout', f'no result within {left:.0f} s'
            out = _stop(proc)
        row['seconds'] = round(time.time() - t0, 1)
        log = os.path.join(args.out, f'launch_{tag}.log')
        with open(log, 'w') as f:
            f.write(out)
        row['console_log'] = log
        final = re.search(r'pelk_mm: train finished: accuracy/top1 ([0-9.]+)', out)
        if final:
            row['top1'] = float(final.group(1))
            row['diff'] = round(row['top1'] - CLS_DEMO_CPU_TOP1, 2)
        elif 'error' not in row:
            row['error'] = ' | '.join(out.strip().splitlines()[-3:])[-400:]
        row.update(_read_run_log(out, work))
        finished = row['rc'] == 0 and final is not None
        row['compared'] = not args.quick
        row['ok'] = finished and (args.quick or abs(row['diff']) <= LAUNCH_TOLERANCE)
    return dict(rows=rows, reference=f'CPU top-1 {CLS_DEMO_CPU_TOP1}, pass within {LAUNCH_TOLERANCE} point'
                + (' (not compared: --quick trains one epoch)' if args.quick else ''))


# ------------------------------------------------------------------------------------------------ driver
def run_part(name: str, fn: Callable, args, budget: float) -> Dict:
    t0 = time.time()
    try:
        res = fn(args, t0 + budget)
        res.setdefault('status', 'ok')
    except Exception as err:  # noqa: BLE001 - a broken part must not stop the later ones
        res = dict(status='failed', reason=f'{type(err).__name__}: {err}', traceback=traceback.format_exc()[-4000:],
                   rows=[])
    res['seconds'] = round(time.time() - t0, 1)
    print(f'[gpu_check] part {name}: {res["status"]} in {res["seconds"]} s', file=sys.stderr, flush=True)
    return res


def _launch_verdict(row: Dict) -> str:
    if not row['ok']:
        return 'FAIL: ' + str(row.get('error') or f"top-1 {row.get('top1')}, rc {row.get('rc')}")[:80]
    return 'pass' if row.get('compared') else 'finished (accuracy not compared)'


def summary_table(parts: Dict[str, Dict]) -> str:
    lines = ['| part | status | s | result |', '|---|---|---|---|']
    for name, res in parts.items():
        if name == 'battery' and res.get('rows'):
            fails = sum(1 for r in res['rows'] if not r.get('ok'))
            info = f"{len(res['rows'])} checks, {fails} failed {res.get('note', '')}"
        elif name == 'variants' and res.get('status') == 'ok':
            bad = sum(1 for c in res.get('checks', []) if not c['ok'])
            info = f"{len(res.get('rows', []))} tuned, {bad} of {len(res.get('checks', []))} checks failed, " \
                   f"{len(res.get('skipped', []))} skipped"
        elif name == 'bench':
            info = f"{len(res.get('rows', []))} rows, {len(res.get('errors', []))} errors, " \
                   f"{len(res.get('skipped', []))} skipped"
        elif name == 'launch' and res.get('rows'):
            info = ', '.join(f"{r['launch']}: {_launch_verdict(r)}" for r in res['rows'])
        else:
            info = res.get('reason') or f"{len(res.get('rows', []))} rows"
        lines.append(f"| {name} | {res['status']} | {res['seconds']} | {info.strip()[:160]} |")
    bat = parts.get('battery', {}).get('summary') or []
    if bat:
        lines += ['', '| impl | dtype | layout | checks | failed | worst err / tol |', '|---|---|---|---|---|---|']
        lines += [f"| {g['impl']} | {g['dtype']} | {g['layout']} | {g['checks']} | {g['failed']} | "
                  f"{g['worst_err_over_tol']:.3g} |" for g in bat]
    var = parts.get('variants', {})
    if var.get('rows'):
        peaks = var['peaks']
        mm = ', '.join(f'{d} {v:.1f}' for d, v in peaks['mm_tflops'].items())
        lines += ['', f"Triton variants (roofline: copy {peaks['copy_gbps']:.0f} GB/s, matmul TFLOP/s {mm})", '',
                  '| pass | dtype | N,C,HxW | layout | cells | winner | ms | default ms | x default | '
                  'roofline share (bound) | candidates (failed) |', '|---|---|---|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['pass_']} | {r['dtype']} | {r['N']},{r['C']},{r['H']}x{r['W']} | {r['layout']} | "
                  f"{r['cells']} | {r['winner']} | {bpc._fmt(r['winner_ms'], '.3g')} | "
                  f"{bpc._fmt(r['default_ms'], '.3g')} | {bpc._fmt(r['speedup_vs_default'], '.2f')} | "
                  f"{bpc._fmt(r['roofline_share'], '.2f')} ({r['bound']}) | "
                  f"{len(r['candidates'])} ({len(r['failed'])}) |" for r in var['rows']]
    bench = parts.get('bench', {}).get('rows') or []
    if bench:
        lines += ['', '| dtype | C,HxW,K | layout | impl (runs) | fwd ms | f+b ms | x dense same layout f+b | '
                  '/ dw7 f+b |', '|---|---|---|---|---|---|---|---|']
        for r in bench:
            name = r['impl'] if r['impl'] == r['runs'] else f"{r['impl']} ({r['runs']})"
            lines.append(f"| {r['dtype']} | {r['C']},{r['H']}x{r['W']},{r['K']} | {r['layout']} | {name} | "
                         f"{r['fwd_ms']:.3g} | {r['fwd_bwd_ms']:.3g} | "
                         f"{bpc._fmt(r.get('speedup_vs_dense_same_layout_fwd_bwd'), '.2f')} | "
                         f"{bpc._fmt(r.get('ratio_to_dw7_same_layout_fwd_bwd'), '.2f')} |")
    train = parts.get('train', {}).get('rows') or []
    if train:
        lines += ['', '| net | precision | img/s | s / step | steps |', '|---|---|---|---|---|']
        lines += [f"| {r['net']} | {r['precision']} | {r['img_per_s']:.1f} | {r['step_s']:.4f} | {r['steps']} |"
                  for r in train]
    comp = parts.get('train', {}).get('compile')
    if comp:
        row = comp.get('row') or {}
        lines += ['', '| torch.compile | precision | backend | status | compile s | s / step | eager s / step | '
                  'speed-up vs eager | img/s | peak MB |', '|---|---|---|---|---|---|---|---|---|---|',
                  f"| {comp['net']} | {comp['precision']} | {comp['backend']} | "
                  f"{comp['status'] if comp['status'] == 'ok' else comp.get('reason', comp['status'])[:120]} | "
                  f"{bpc._fmt(row.get('compile_s'), '.1f')} | {bpc._fmt(row.get('step_s'), '.4f')} | "
                  f"{bpc._fmt(comp.get('eager_step_s'), '.4f')} | {bpc._fmt(comp.get('speedup_vs_eager'), '.2f')} | "
                  f"{bpc._fmt(row.get('img_per_s'), '.1f')} | {bpc._fmt(row.get('peak_mb'), '.0f')} |"]
    launch = parts.get('launch', {}).get('rows') or []
    if launch:
        lines += ['', f"| launch (classification demo) | s | CUDA | distributed | optim wrapper | AMP dtype | top-1 | "
                  f"CPU top-1 | diff | ok |", '|---|---|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['launch']} | {r.get('seconds', '-')} | {r.get('cuda')} | {r.get('distributed')} | "
                  f"{r.get('optim_wrapper')} | {r.get('amp_dtype')} | {bpc._fmt(r.get('top1'), '.2f')} | "
                  f"{r['cpu_top1']:.2f} | {bpc._fmt(r.get('diff'), '+.2f')} | "
                  f"{_launch_verdict(r)} |" for r in launch]
    return '\n'.join(lines)


PARTS = ['battery', 'variants', 'bench', 'train', 'launch']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=os.environ.get('OUT') or os.path.join(ROOT, 'work_dirs', 'gpu_check'))
    p.add_argument('--device', default='cuda')
    p.add_argument('--quick', action='store_true', help='tiny shapes, one rep (smoke run, e.g. on CPU)')
    p.add_argument('--parts', nargs='+', choices=PARTS,
                   help='default: all; with --quick all but launch (a launch trains for minutes on a CPU)')
    p.add_argument('--impls', nargs='+', default=IMPLS)
    p.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    p.add_argument('--bench-dtypes', nargs='+', default=['bfloat16', 'float32'], choices=list(DTYPES))
    p.add_argument('--train-precisions', nargs='+', default=['bfloat16', 'float32'], choices=['bfloat16', 'float32'])
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--reps', type=int, default=10, help='(b) timed repetitions per measurement (median)')
    p.add_argument('--measure-budget', type=float, default=0.25, help='(b) seconds per measurement, at most')
    p.add_argument('--rounds', type=int, default=8, help='(c) interleaved rounds')
    p.add_argument('--compile-reserve', type=float, default=60,
                   help='(c) seconds of the part kept for the step under torch.compile (0: leave it out)')
    p.add_argument('--compile-backend', default='inductor', help='(c) torch.compile backend (--quick: eager)')
    p.add_argument('--budgets', type=float, nargs=5, default=[70, 70, 110, 120, 90],
                   metavar=('A', 'V', 'B', 'C', 'D'), help='seconds for parts battery, variants, bench, train, launch')
    p.add_argument('--launch-work-dir', default=os.path.join(os.environ.get('TMPDIR', '/tmp'), 'pelk_gpu_check'),
                   help='(d) work dirs of the launches (checkpoints); their console output goes to --out')
    args = p.parse_args(argv)
    if args.parts is None:
        args.parts = [name for name in PARTS if not (args.quick and name == 'launch')]
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    info = dict(torch=torch.__version__, python=platform.python_version(), device=args.device,
                triton=ops.peripheral_conv._package_version('triton'), argv=sys.argv[1:] if argv is None else argv)
    if args.device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name()
    budgets = dict(zip(PARTS, args.budgets))
    fns = dict(battery=part_battery, variants=part_variants, bench=part_bench, train=part_train, launch=part_launch)
    parts, start, planned = {}, time.time(), 0.0
    for name in args.parts:
        planned += budgets[name]
        # NOTE: the launches (their first Triton compiles and autotuning at the demo's shapes happen inside them) also
        # get the seconds the earlier parts left unused; the total stays within the sum of the budgets
        budget = max(budgets[name], start + planned - time.time()) if name == 'launch' else budgets[name]
        parts[name] = run_part(name, fns[name], args, budget)
        if name == 'battery':
            parts[name]['summary'] = battery_summary(parts[name].get('rows', []))
        table = summary_table(parts)
        with open(os.path.join(args.out, 'gpu_check.json'), 'w') as f:  # after each part: a later crash keeps it
            json.dump(dict(machine=info, parts=parts, table=table), f, indent=1, default=str)
    print(f"\nGPU check: {info.get('gpu', args.device)}, torch {info['torch']}, triton {info['triton']}; "
          f"wrote {os.path.join(args.out, 'gpu_check.json')}\n")
    print(table)
    return dict(machine=info, parts=parts, table=table)


if __name__ == '__main__':
    main()
