#!/usr/bin/env python
"""End-to-end PeLK training speed: one optimizer step (forward + backward + AdamW) of a PeLK backbone + linear
head, default peripheral-conv implementation (``auto``) vs the dense reference, with peak memory; with ``--compile``
also ``auto`` under ``torch.compile``.

    python benchmarks/bench_pelk_train.py [--arch tiny] [--size 224] [--batch 2] [--iters 3] [--impls auto dense]
                                         [--bound] [--compile [--compile-backend inductor]] [--amp bfloat16]
                                         [--out work_dirs/benchmarks/pelk_train.json]
    python benchmarks/bench_pelk_train.py --config configs/demo/pelk_demo_in1k.py   # that config's backbone,
                                         # image size (img_size / RandomResizedCrop) and train batch size

The step runs on random tensors (no data loading), so it measures the model and optimizer only.

Each implementation runs in its own fresh process, so its peak memory is clean: on CPU the process's peak resident
set (``ru_maxrss``: weights, optimizer state and the step's activations, the same model for every row), on CUDA
``torch.cuda.max_memory_allocated``. ``--bound`` adds a row ``none`` in which the peripheral convolution is replaced
by the identity (everything else of the step unchanged): no implementation can beat that step, so
``dense / none`` is the largest end-to-end speed-up any peripheral-conv implementation could give on this machine.
``--compile`` adds a row ``auto+compile``: the whole step function (forward, loss, backward, optimizer step) under
``torch.compile``, as mmengine's ``compile=True`` compiles a model's ``train_step``. Its warm-up (two steps: the
optimizer's state is created in the first, so the second compiles again) is timed apart and reported as the
compile time (warm-up time less two timed steps); the step time is the median of the steps after it.
Prints a markdown table and writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='take the backbone, image size and batch size from this config file')
    p.add_argument('--arch', default='tiny', help='a PeLK arch name, or an arch dict as JSON')
    p.add_argument('--size', type=int, default=None, help='default 224, or the config\'s image size')
    p.add_argument('--batch', type=int, default=None, help='default 2, or the config\'s train batch size')
    p.add_argument('--iters', type=int, default=3, help='timed steps (after one warm-up step)')
    p.add_argument('--impls', nargs='+', default=['auto', 'dense'])
    p.add_argument('--bound', action='store_true', help='add the "none" row (peripheral conv replaced by identity)')
    p.add_argument('--compile', action='store_true', help='add the "auto+compile" row (the step under torch.compile)')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend of that row')
    p.add_argument('--amp', choices=['bfloat16', 'float16'], help='autocast the forward to this dtype')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads (0: leave torch\'s default)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'benchmarks', 'pelk_train.json'))
    p.add_argument('--worker', help=argparse.SUPPRESS)  # internal: run one implementation, print its row as JSON
    args = p.parse_args(argv)
    # NOTE: an arch as JSON (a dict of depths, channels, kernel_sizes...) for the smoke runs of tiny networks
    arch = json.loads(args.arch) if args.arch.lstrip().startswith('{') else args.arch
    args.backbone, args.num_classes = dict(arch=arch), 1000
    if args.config:
        _from_config(args, p)
    args.size = 224 if args.size is None else args.size
    args.batch = 2 if args.batch is None else args.batch
    if args.batch < 1 or args.iters < 1 or args.size < 32 or args.threads < 0:
        p.error(f'--batch and --iters must be >= 1, --size >= 32 and --threads >= 0, got {args.batch}, {args.iters}, '
                f'{args.size}, {args.threads}')
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
              amp_dtype=None, threads: Optional[int] = None, compile_kwargs: Optional[dict] = None):
    """Build a PeLK backbone + linear head + AdamW on ``device`` and return ``step()`` (one synchronised training
    step on fixed random inputs, under autocast to ``amp_dtype`` when given; with ``compile_kwargs`` the step
    function runs under ``torch.compile(**compile_kwargs)``, synchronisation outside) and the model's parameter
    count."""
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

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(head(backbone(x)[0]), y)
        loss.backward()
        opt.step()

    # NOTE: the whole function, as mmengine's compile=True compiles train_step: dynamo captures the forward and loss
    # as one graph (backward by AOTAutograd), breaks at loss.backward() and compiles the optimizer step on its own
    run = train_step if compile_kwargs is None else torch.compile(train_step, **compile_kwargs)

    def step():
        run()
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


COMPILED = '+compile'


def bench(impl: str, args) -> dict:
    """One implementation in this process (``impl='none'``: the peripheral conv is the identity; ``'<impl>+compile'``:
    that implementation with the step under ``torch.compile``)."""
    sys.path.insert(0, ROOT)
    import torch

    from pelk_mm.models.layers import peripheral_conv as layer
    compiled = impl.endswith(COMPILED)
    conv_impl = impl[:-len(COMPILED)] if compiled else impl
    if conv_impl == 'none':
        layer.peripheral_conv2d = lambda x, weight, grid, impl='auto': x
    device = torch.device(args.device)
    amp = getattr(torch, args.amp) if args.amp else None
    step, _ = make_step({**args.backbone, 'conv_impl': 'auto' if conv_impl == 'none' else conv_impl}, device,
                        args.batch, args.size, args.num_classes, amp_dtype=amp, threads=args.threads,
                        compile_kwargs=dict(backend=args.compile_backend) if compiled else None)
    warmup = 2 if compiled else 1
    t0 = time.perf_counter()
    for _ in range(warmup):  # the one-time C++ extension load; compilation (twice: without, with optimizer state)
        step()
    warmup_s = time.perf_counter() - t0
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
    row = dict(impl=impl, step_s=med, it_per_s=1 / med, img_per_s=args.batch / med, peak_mb=peak, times=times,
               warmup_steps=warmup, warmup_s=warmup_s, torch=torch.__version__)
    if compiled:
        row.update(compile_backend=args.compile_backend, compile_s=max(0.0, warmup_s - warmup * med))
    return row


def run_isolated(impl: str, argv, timeout: Optional[float] = None) -> dict:
    """``bench(impl)`` in a fresh process; its row. ``timeout``: seconds, then the process and its children (its
    own session: inductor's compile workers too) are killed and ``subprocess.TimeoutExpired`` raised."""
    cmd = [sys.executable, osp.abspath(__file__), *argv, '--worker', impl]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    if proc.returncode != 0:
        raise SystemExit(f'benchmark of impl={impl!r} failed (exit {proc.returncode}):\n{err[-2000:]}')
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(bench(args.worker, args)))
        return
    impls = list(args.impls) + (['none'] if args.bound and 'none' not in args.impls else [])
    impls += ['auto' + COMPILED] if args.compile and 'auto' + COMPILED not in impls else []
    rows = [run_isolated(impl, argv) for impl in impls]
    ref = next((r for r in rows if r['impl'] == 'dense'), None)
    mem = 'peak MB (CUDA allocated)' if args.device.startswith('cuda') else 'peak RSS MB (process)'
    model = args.config or f'PeLK-{args.arch}'
    eager = next((r for r in rows if r['impl'] == 'auto'), None)
    print(f'{model} training step, batch {args.batch}, {args.size}x{args.size}, {args.device}, '
          f'{args.threads or "default"} threads, {args.amp or "float32"}, torch {rows[0]["torch"]}')
    print(f'| impl | s / step | it/s | img/s | {mem} | speed-up vs dense | vs auto | compile s |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        speed = f"{ref['step_s'] / r['step_s']:.1f}x" if ref else '-'
        vs_auto = f"{eager['step_s'] / r['step_s']:.2f}x" if eager else '-'
        name = 'none (conv = identity: the bound)' if r['impl'] == 'none' else r['impl']
        if 'compile_s' in r:
            name += f" ({r['compile_backend']})"
        compile_s = f"{r['compile_s']:.1f}" if 'compile_s' in r else '-'
        print(f"| {name} | {r['step_s']:.3f} | {r['it_per_s']:.3f} | {r['img_per_s']:.2f} | "
              f"{r['peak_mb']:.0f} | {speed} | {vs_auto} | {compile_s} |")
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(args=vars(args), machine=platform.processor() or platform.machine(), rows=rows), f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
