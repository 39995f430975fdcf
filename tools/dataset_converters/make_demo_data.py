#!/usr/bin/env python
"""Generate small deterministic synthetic datasets in the real ImageNet / ADE20K / COCO on-disk formats.

    python tools/dataset_converters/make_demo_data.py {imagenet,ade20k,coco,all} [--root data/demo] [--seed 0]
                                                      [--force]

Writes <root>/imagenet, <root>/ade/ADEChallengeData2016 and <root>/coco (layouts in pelk_mm/datasets/demo_data.py).
An existing dataset is kept unless --force. Each takes about a second.
"""
import argparse
import importlib.util
import os.path as osp
import sys


def _load_demo_data():
    """pelk_mm/datasets/demo_data.py of this checkout, loaded by path: it needs only numpy and Pillow, so the CLI
    starts in a fraction of a second instead of importing torch/mmengine through the pelk_mm package."""
    path = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'pelk_mm', 'datasets',
                    'demo_data.py')
    spec = importlib.util.spec_from_file_location('_pelk_mm_demo_data', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_demo = _load_demo_data()
DEFAULT_ROOT, DEMO_KINDS, make_demo_data = _demo.DEFAULT_ROOT, _demo.DEMO_KINDS, _demo.make_demo_data


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
