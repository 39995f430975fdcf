#!/usr/bin/env python
"""Generate small deterministic synthetic datasets in the real ImageNet / ADE20K / COCO on-disk formats.

    python tools/dataset_converters/make_demo_data.py {imagenet,ade20k,coco,all} [--root data/demo] [--seed 0]
                                                      [--force]

Writes <root>/imagenet, <root>/ade/ADEChallengeData2016 and <root>/coco (layouts in pelk_mm/datasets/demo_data.py).
An existing dataset is kept unless --force. Each takes about a second.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

from pelk_mm.datasets.demo_data import DEFAULT_ROOT, DEMO_KINDS, make_demo_data  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('kind', choices=list(DEMO_KINDS) + ['all'], help='which dataset to generate')
    parser.add_argument('--root', default=DEFAULT_ROOT, help=f'output root (default: {DEFAULT_ROOT})')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--force', action='store_true', help='regenerate even if the dataset exists')
    args = parser.parse_args(argv)
    kinds = DEMO_KINDS if args.kind == 'all' else (args.kind, )
    for kind in kinds:
        try:
            make_demo_data(kind, args.root, seed=args.seed, force=args.force, logger=print)
        except FileExistsError as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
