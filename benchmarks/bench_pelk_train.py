#!/usr/bin/env python
"""End-to-end PeLK training speed: one optimizer step (forward + backward + AdamW) of a PeLK backbone + linear
head, default peripheral-conv implementation (``auto``) vs the dense reference, with peak memory.

    python benchmarks/bench_pelk_train.py [--arch tiny] [--size 224] [--batch 2] [--iters 3] [--impls auto dense]
                                         [--bound] [--out work_dirs/benchmarks/pelk_train.json]
    python benchmarks/bench_pelk_train.py --config configs/demo/pelk_demo_in1k.py   # that config's backbone,
                                         # image size (img_size / RandomResizedCrop) and train batch size

The step runs on random tensors (no data loading), so it measures the model and optimizer only.

Each implementation runs in its own fresh process, so its peak memory is clean: on CPU the process's peak resident
set (``ru_maxrss``: weights, optimizer state and the step's activations, the same model for every row), on CUDA
``torch.cuda.max_memory_allocated``. ``--bound`` adds a row ``none`` in which the peripheral convolution is replaced
by the identity (everything else of the step unchanged): no implementation can beat that step, so
``dense / none`` is the largest end-to-end speed-up any peripheral-conv implementation could give on this machine.
Prints a markdown table and writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='take the backbone, image size and batch size from this config file')
    p.add_argument('--arch', default='tiny')
    p.add_argument('--size', type=int, default=None, help='default 224, or the config\'s image size')
    p.add_argument('--batch', type=int, default=None, help='default 2, or the config\'s train batch size')
    p.add_argument('--iters', type=int, default=3, help='timed steps (after one warm-up step)')
    p.add_argument('--impls', nargs='+', default=['auto', 'dense'])
    p.add_argument('--bound', action='store_true', help='add the "none" row (peripheral conv replaced by identity)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'benchmarks', 'pelk_train.json'))
    p.add_argument('--worker', help=argparse.SUPPRESS)  # internal: run one implementation, print its row as JSON
    args = p.parse_args(argv)
    args.backbone, args.num_classes = dict(arch=args.arch), 1000
    if args.config:
        _from_config(args, p)
    args.size = 224 if args.size is None else args.size
    args.batch = 2 if args.batch is None else args.batch
    if args.batch < 1 or args.iters < 1 or args.size < 32:
        p.error(f'--batch and --iters must be >= 1 and --size >= 32, got {args.batch}, {args.iters}, {args.size}')
    return args


def _from_config(args, parser) -> None:
    """Fill the backbone kwargs, image size, batch size and classes from ``args.config`` (explicit flags win)."""
    sys.path.insert(0, ROOT)
    from pelk_mm.config import load_config
    from pelk_mm.errors import LaunchError
    try:
        cfg = load_config(args.config)
    except LaunchError as err:
        parser.error(str(err))
    if str(cfg.model.get('type', '')).split('.')[-1] != 'ImageClassifier':
        parser.error(f'--config {args.config}: model.type is {cfg.model.get("type")!r}; the step benchmark takes a '
                     f'classification config (ImageClassifier), e.g. configs/demo/pelk_demo_in1k.py')
    backbone = dict(cfg.model.get('backbone', {}))
    if str(backbone.pop('type', '')).split('.')[-1] != 'PeLK':
        parser.error(f'--config {args.config}: model.backbone is not a PeLK backbone; pass a pelk_mm config')
    backbone.pop('init_cfg', None)
    args.backbone = backbone
    args.num_classes = cfg.model.get('head', {}).get('num_classes', 1000)
    if args.size is None:
        crops = [t.get('scale') for t in cfg.get('train_pipeline', []) if t.get('type') == 'RandomResizedCrop']
        args.size = cfg.get('img_size') or (crops[0] if crops and isinstance(crops[0], int) else None)
    if args.batch is None:
        args.batch = cfg.train_dataloader.batch_size


# Whole-network variants for interleaved comparisons: backbone kwargs on top of ``arch`` (PeLK-T channels throughout,
# so only the token mixer differs).
NETS = {
    'PeLK-T': dict(arch='tiny'),
    'PeLK-T dense': dict(arch='tiny', conv_impl='dense'),
    'SLaK-T-like': dict(arch='tiny', conv_type='stripe', conv_ratio=1.0, kpe_mode=None),
    'ConvNeXt-T-like': dict(arch=dict(depths=[3, 3, 9, 3], channels=[124, 249, 499, 998], kernel_sizes=[7] * 4,
                                      center_sizes=[5] * 4),
                            conv_type='dense', conv_ratio=1.0, kpe_mode=None, small_kernel=None),
    'PeLK-101-T': dict(arch='tiny-101'),
}


def make_step(backbone_kwargs: dict, device, batch: int, size: int, num_classes: int = 1000,
              amp_dtype=None, threads: Optional[int] = None):
    """Build a PeLK backbone + linear head + AdamW on ``device`` and return ``step()`` (one synchronised training
    step on fixed random inputs, under autocast to ``amp_dtype`` when given) and the model's parameter count."""
    sys.path.insert(0, ROOT)
    import torch

    from pelk_mm.models import PeLK
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device)
    backbone = PeLK(**backbone_kwargs).to(device)
    head = torch.nn.Linear(backbone.channels[-1], num_classes).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, ), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(head(backbone(x)[0]), y)
        loss.backward()
        opt.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return step, sum(p.numel() for p in params)


def interleaved_throughput(variants: Dict[str, tuple], rounds: int, batch: int, deadline: float = float('inf')):
    """``variants``: name -> ``(step, n_params)``. After one warm-up step each, ``rounds`` rounds of one timed step
    per variant in turn (machine noise hits every variant alike), until ``deadline`` (``time.time()``; variants not
    warmed up by then are left out); rows with the median step time and images per second."""
    times = {name: [] for name in variants}
    warm = []
    for name, (step, _) in variants.items():
        if time.time() < deadline:
            step()
            warm.append(name)
    for _ in range(rounds):
        if time.time() > deadline:
            break
        for name in warm:
            t0 = time.perf_counter()
            variants[name][0]()
            times[name].append(time.perf_counter() - t0)
    rows = []
    for name, (_, n_params) in variants.items():
        med = statistics.median(times[name]) if times[name] else float('nan')
        rows.append(dict(net=name, step_s=med, img_per_s=batch / med, steps=len(times[name]), params_m=n_params / 1e6))
    return rows


def bench(impl: str, args) -> dict:
    """One implementation in this process (``impl='none'``: the peripheral conv is the identity)."""
    sys.path.insert(0, ROOT)
    import torch

    from pelk_mm.models.layers import peripheral_conv as layer
    if impl == 'none':
        layer.peripheral_conv2d = lambda x, weight, grid, impl='auto': x
    device = torch.device(args.device)
    step, _ = make_step({**args.backbone, 'conv_impl': 'auto' if impl == 'none' else impl}, device, args.batch,
                        args.size, args.num_classes, threads=args.threads)
    step()  # warm-up (and the one-time C++ extension load)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == 'cuda' else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    med = statistics.median(times)
    return dict(impl=impl, step_s=med, it_per_s=1 / med, img_per_s=args.batch / med, peak_mb=peak, times=times,
                torch=torch.__version__)


def run_isolated(impl: str, argv) -> dict:
    cmd = [sys.executable, osp.abspath(__file__), *argv, '--worker', impl]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'benchmark of impl={impl!r} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(bench(args.worker, args)))
        return
    impls = list(args.impls) + (['none'] if args.bound and 'none' not in args.impls else [])
    rows = [run_isolated(impl, argv) for impl in impls]
    ref = next((r for r in rows if r['impl'] == 'dense'), None)
    mem = 'peak MB (CUDA allocated)' if args.device.startswith('cuda') else 'peak RSS MB (process)'
    model = args.config or f'PeLK-{args.arch}'
    print(f'{model} training step, batch {args.batch}, {args.size}x{args.size}, {args.device}, '
          f'{args.threads} threads, torch {rows[0]["torch"]}')
    print(f'| impl | s / step | it/s | img/s | {mem} | speed-up vs dense |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        speed = f"{ref['step_s'] / r['step_s']:.1f}x" if ref else '-'
        name = 'none (conv = identity: the bound)' if r['impl'] == 'none' else r['impl']
        print(f"| {name} | {r['step_s']:.3f} | {r['it_per_s']:.3f} | {r['img_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {speed} |")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(args=vars(args), machine=platform.processor() or platform.machine(), rows=rows), f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
