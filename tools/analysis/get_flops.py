#!/usr/bin/env python
"""Parameters and FLOPs of a config's model (mmpretrain / mmseg / mmdet), PeLK's peripheral conv counted as the
dense K x K convolution it computes, plus the kernel-wise positional embedding's band matmuls.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--checkpoint CKPT] [--cfg-options K=V ...]
                                       [--json OUT]

Default input: 224x224 (mmpretrain), 512x512 (mmseg), 800x1280 (mmdet), batch 1. FLOPs are multiply-adds
(mmengine/fvcore convention, as in the paper). "params (dense-equivalent)" is what the model would have with
dense K x K kernels instead of the shared peripheral grid; "params (non-zero)" is what sparse-trained models
report (pass the trained --checkpoint). Logic: pelk_mm/analysis/dense_complexity.py (dense) and
pelk_mm/analysis/nonzero_complexity.py (--sparsity).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import pelk_mm  # noqa: E402,F401  (compat patches, pelk_mm.PeLK)

from pelk_mm.analysis.builder import load_cfg  # noqa: E402
from pelk_mm.analysis.dense_complexity import analyze_config, format_count, format_table  # noqa: E402
from pelk_mm.errors import LaunchError  # noqa: E402


def parse_args(argv=None):
    from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args
    parser = argparse.ArgumentParser(description='Get the params and FLOPs of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=None, metavar='SIZE',
                        help='input size: H W, or one number for a square input (default: per codebase)')
    parser.add_argument('--checkpoint', help='load these weights first (e.g. a sparse model: non-zero count)')
    parser.add_argument('--sparsity', type=float, default=None, metavar='S',
                        help='also count params/FLOPs the way SLaK/PeLK report them (non-zero weights only) with a '
                             'fraction S of the 2-D/4-D weights zeroed, e.g. 0.4 (backbone only for seg/det)')
    parser.add_argument('--sparse-init', default='uniform', choices=['uniform', 'erk', 'snip'],
                        help='layer-wise densities for --sparsity: uniform, ERK, or SNIP at init on --snip-images '
                             'demo images (SLaK default; classifier configs only)')
    parser.add_argument('--snip-images', type=int, default=8, help='batch size of the SNIP batch')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the SNIP model initialisation and of the random masks (same seed, same counts)')
    parser.add_argument('--sparse-densities', metavar='JSON',
                        help='per-parameter densities to use for --sparsity (e.g. a classifier\'s SNIP densities '
                             'written by --dump-densities, for its seg/det model: backbone.* names carry over)')
    parser.add_argument('--dump-densities', metavar='JSON', help='write the per-parameter densities used')
    parser.add_argument('--mask-rois', type=int, default=None, metavar='N',
                        help='detectors: run the mask heads on the first N RoIs only (100 = mmdet 2 forward_dummy, '
                             'the convention of the papers\' detection FLOPs); default: all RPN proposals')
    parser.add_argument('--json', metavar='OUT', help='also write the results to this JSON file')
    add_config_tool_args(parser)
    args = parse_tool_args(parser, argv)
    if args.shape is not None:
        if len(args.shape) == 1:
            args.shape = [args.shape[0], args.shape[0]]
        elif len(args.shape) != 2:
            parser.error(f'--shape takes H W or one size, got {args.shape}')
    return args


def _sparse_counts(cfg, args) -> dict:
    """Non-zero-aware params/FLOPs (pelk_mm.analysis.nonzero_complexity; SLaK's counter counts non-zero weights)."""
    from pelk_mm.analysis.nonzero_complexity import (analyze_config_sparse, format_sparse_summary,
                                                     snip_densities_for_config)
    from pelk_mm.engine.sparsity import check_sparsity
    check_sparsity(args.sparsity)
    densities = None
    if args.sparse_densities:
        with open(args.sparse_densities) as f:
            densities = json.load(f)
    elif args.sparse_init == 'snip':
        densities = snip_densities_for_config(cfg, args.snip_images, (args.shape or [224])[0], args.sparsity,
                                              seed=args.seed)
    sparse = analyze_config_sparse(cfg, args.shape, sparsity=args.sparsity, init=args.sparse_init
                                   if args.sparse_init != 'snip' else 'uniform', checkpoint=args.checkpoint,
                                   densities=densities, mask_rois=args.mask_rois, seed=args.seed)
    if args.dump_densities and densities is not None:
        with open(args.dump_densities, 'w') as f:
            json.dump(densities, f, indent=1)
    print(format_sparse_summary(sparse))
    sparse.pop('rows', None)
    return sparse


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_cfg(args.config, args.cfg_options)
        if args.checkpoint and not osp.isfile(args.checkpoint):
            raise LaunchError(f'checkpoint {args.checkpoint!r} does not exist')
        result = analyze_config(cfg, args.shape, args.checkpoint, mask_rois=args.mask_rois)
    except (LaunchError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    split = '=' * 80
    print(split)
    print(f'config: {args.config} ({result["codebase"]})')
    print(f'input shape: {tuple(result["input_shape"])}; counted: {result["mode"]}')
    for note in result['notes']:
        print(f'note: {note}')
    print(f'FLOPs: {format_count(result["flops"])}   params: {format_count(result["params"])}   '
          f'params (dense-equivalent): {format_count(result["params_dense_equivalent"])}   '
          f'params (non-zero): {format_count(result["params_nonzero"])}')
    print(format_table(result))
    print('FLOPs = multiply-adds; peripheral conv column = dense K x K conv + positional-embedding band matmuls.')
    if args.sparsity is not None:
        result['sparse'] = _sparse_counts(cfg, args)
    print(split)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, **result), f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    from pelk_mm.apis.cli import run_main
    sys.exit(run_main(main))
