#!/usr/bin/env python
"""End-to-end PeLK training speed: one optimizer step (forward + backward + AdamW) of a PeLK backbone + linear
head, default peripheral-conv implementation (``auto``) vs the dense reference, with peak memory.

    python benchmarks/bench_pelk_train.py [--arch tiny] [--size 224] [--batch 2] [--iters 3] [--impls auto dense]
                                         [--out work_dirs/benchmarks/pelk_train.json]

Prints a markdown table and writes JSON. Peak memory on CPU is the peak RSS growth of this process during the
timed steps (``resource.getrusage``, so run one implementation per process for a clean number: ``--impls auto``);
on CUDA it is ``torch.cuda.max_memory_allocated``.
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from pelk_mm.models import PeLK  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='tiny')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--iters', type=int, default=3, help='timed steps (after one warm-up step)')
    p.add_argument('--impls', nargs='+', default=['auto', 'dense'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='work_dirs/benchmarks/pelk_train.json')
    args = p.parse_args()
    if args.batch < 1 or args.iters < 1 or args.size < 32:
        p.error(f'--batch and --iters must be >= 1 and --size >= 32, got {args.batch}, {args.iters}, {args.size}')
    return args


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(impl: str, args) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = PeLK(arch=args.arch, conv_impl=impl).to(device)
    head = torch.nn.Linear(backbone.channels[-1], 1000).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch, ), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(backbone(x)[0]), y)
        loss.backward()
        opt.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()

    step()  # warm-up (and the one-time C++ extension load)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    rss0 = peak_rss_mb()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else peak_rss_mb() - rss0)
    med = statistics.median(times)
    return dict(impl=impl, step_s=med, it_per_s=1 / med, img_per_s=args.batch / med, peak_mb=peak, times=times)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(impl, args) for impl in args.impls]
    ref = next((r for r in rows if r['impl'] == 'dense'), None)
    print(f'PeLK-{args.arch} training step, batch {args.batch}, {args.size}x{args.size}, {args.device}, '
          f'{args.threads} threads, torch {torch.__version__}')
    print('| impl | s / step | it/s | img/s | peak MB (RSS growth) | speed-up vs dense |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        speed = f"{ref['step_s'] / r['step_s']:.1f}x" if ref else '-'
        print(f"| {r['impl']} | {r['step_s']:.3f} | {r['it_per_s']:.3f} | {r['img_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {speed} |")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(args=vars(args), machine=platform.processor() or platform.machine(),
                       torch=torch.__version__, rows=rows), f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
