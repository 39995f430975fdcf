#!/usr/bin/env python
"""Parameters and FLOPs of a config's model (mmpretrain / mmseg / mmdet), PeLK's peripheral conv counted as the
dense K x K convolution it computes, plus the kernel-wise positional embedding's band matmuls.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--cfg-options K=V ...] [--json OUT]

Default input: 224x224 (mmpretrain), 512x512 (mmseg), 800x1280 (mmdet), batch 1. FLOPs are multiply-adds
(mmengine/fvcore convention, as in the paper). "params (dense-equivalent)" is what the model would have with
dense K x K kernels instead of the shared peripheral grid. Logic: pelk_mm/apis/complexity.py.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import pelk_mm  # noqa: E402,F401  (compat patches, pelk_mm.PeLK)
from mmengine.config import Config, DictAction  # noqa: E402

from pelk_mm.apis.complexity import _fmt, analyze_config, format_table  # noqa: E402
from pelk_mm.apis.launch import LaunchError  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Get the params and FLOPs of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=None, metavar='SIZE',
                        help='input size: H W, or one number for a square input (default: per codebase)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    parser.add_argument('--json', metavar='OUT', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = [args.shape[0], args.shape[0]]
        elif len(args.shape) != 2:
            parser.error(f'--shape takes H W or one size, got {args.shape}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isfile(args.config):
        print(f'error: config file {args.config!r} does not exist', file=sys.stderr)
        return 2
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        result = analyze_config(cfg, args.shape)
    except LaunchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    split = '=' * 80
    print(split)
    print(f'config: {args.config} ({result["codebase"]})')
    print(f'input shape: {tuple(result["input_shape"])}; counted: {result["mode"]}')
    for note in result['notes']:
        print(f'note: {note}')
    print(f'FLOPs: {_fmt(result["flops"])}   params: {_fmt(result["params"])}   '
          f'params (dense-equivalent): {_fmt(result["params_dense_equivalent"])}')
    print(format_table(result))
    print('FLOPs = multiply-adds; peripheral conv column = dense K x K conv + positional-embedding band matmuls.')
    print(split)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, **result), f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
