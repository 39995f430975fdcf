#!/usr/bin/env python
"""Inference throughput (images/s) of one or more configs, paper Table 8 protocol: FP32, batch of random
``--shape`` images, ``--warmup`` untimed iterations, then ``--iters`` timed ones, device synchronised around the
timed region, ``torch.inference_mode``.

    python tools/analysis/benchmark_throughput.py CONFIG [CONFIG ...] [--batch-size 64] [--shape 224] \
        [--warmup 10] [--iters 30] [--device cuda|cpu] [--channels-last] [--deploy] [--json OUT]

``--deploy`` re-parameterises the model first (``switch_to_deploy``: BN and the small branch folded into one
depthwise conv); ``--checkpoint`` is optional (weights do not change the speed of dense kernels). The table lists
images/s, ms per batch and the backbone's peripheral conv implementation. Logic: pelk_mm/analysis/throughput.py.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import torch  # noqa: E402


def parse_args(argv=None):
    from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args
    p = argparse.ArgumentParser(description='Measure inference throughput (Table 8 protocol)')
    p.add_argument('configs', nargs='+', help='config file(s)')
    p.add_argument('--checkpoint', help='checkpoint for the (single) config')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--shape', type=int, nargs='+', default=[224], help='input H [W]')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--iters', type=int, default=30)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--channels-last', action='store_true', help='model and input in channels_last')
    p.add_argument('--deploy', action='store_true', help='re-parameterise (switch_to_deploy) before timing')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--json', metavar='OUT', help='write the results as JSON')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2:
        p.error(f'--shape takes H [W], got {args.shape}')
    if args.batch_size < 1 or args.iters < 1 or args.warmup < 0:
        p.error('--batch-size and --iters must be >= 1, --warmup >= 0')
    if args.checkpoint and len(args.configs) > 1:
        p.error('--checkpoint applies to a single config')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error(f'--device {args.device} requested but CUDA is not available')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pelk_mm.analysis.builder import build_model, get_backbone, load_cfg
    from pelk_mm.analysis.throughput import benchmark, impl_of
    rows = []
    for config in args.configs:
        cfg = load_cfg(config, args.cfg_options)
        model, codebase = build_model(cfg, args.checkpoint, args.device)
        if args.deploy:
            target = get_backbone(model)
            if not hasattr(target, 'switch_to_deploy'):
                raise ValueError(f'{type(target).__name__} has no switch_to_deploy(); drop --deploy')
            target.switch_to_deploy()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        res = benchmark(model, codebase, args.batch_size, args.shape, args.warmup, args.iters, args.device,
                        args.channels_last)
        rows.append(dict(config=config, device=args.device, batch_size=args.batch_size, shape=list(args.shape),
                         channels_last=args.channels_last, deploy=args.deploy, conv_impl=impl_of(model),
                         warmup=args.warmup, iters=args.iters, torch=torch.__version__,
                         device_name=(torch.cuda.get_device_name(args.device) if args.device.startswith('cuda')
                                      else 'cpu'), **res))
        del model
    print('| config | device | batch | input | channels_last | deploy | conv impl | images/s | ms/batch |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {osp.basename(r["config"])} | {r["device_name"]} | {r["batch_size"]} | '
              f'{r["shape"][0]}x{r["shape"][1]} | {r["channels_last"]} | {r["deploy"]} | {r["conv_impl"]} | '
              f'{r["images_per_s"]:.1f} | {r["ms_per_batch"]:.1f} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    from pelk_mm.apis.cli import run_main
    sys.exit(run_main(main, (FileNotFoundError, )))
