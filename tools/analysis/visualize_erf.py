#!/usr/bin/env python
"""Effective receptive field (ERF) of a backbone's last stage, as RepLKNet/SLaK/PeLK (paper Fig. 4) measure it.

For each of N images (resized to ``--input-size``, the paper uses 50 validation images at 1024x1024) the gradient of
``sum_c relu(y[c, h/2, w/2])`` (the central point of the last stage's feature map) with respect to the input is
taken; its positive part, summed over channels, is accumulated over the images. As RepLKNet's ``analyze_erf.py``:
the map is ``log10(x + 1)``-scaled and normalised to [0, 1], plotted as a heatmap, and the high-contribution area
ratio ``r(t)`` is the area of the smallest centred square holding a fraction ``t`` of the total (t = 0.2, 0.3, 0.5,
0.99).

    python tools/analysis/visualize_erf.py CONFIG [--checkpoint CKPT] [--data DIR | (demo data)] \
        [--num-images 50] [--input-size 1024] [--out-dir work_dirs/erf]

Writes ``erf.npy`` (the raw aggregated map), ``erf.png`` and ``erf.json`` (ratios, side lengths, settings).
Logic: pelk_mm/analysis/erf.py.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import numpy as np  # noqa: E402

from pelk_mm.analysis.erf import THRESHOLDS, compute_erf, high_contribution_ratios, normalised_log_map  # noqa: E402


def parse_args(argv=None):
    from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args
    p = argparse.ArgumentParser(description='Visualise and quantify the ERF of the last stage')
    p.add_argument('config', help='config file (mmpretrain / mmseg / mmdet; a PeLK-style backbone)')
    p.add_argument('--checkpoint', help='checkpoint to load (default: random init)')
    p.add_argument('--data', help='folder of images (recursive); default: the demo ImageNet val split')
    p.add_argument('--demo-root', default='data/demo', help='where the demo data lives / is generated')
    p.add_argument('--num-images', type=int, default=50, help='images to aggregate (paper: 50)')
    p.add_argument('--input-size', type=int, default=1024, help='square input size (paper: 1024)')
    p.add_argument('--thresholds', type=float, nargs='+', default=list(THRESHOLDS))
    p.add_argument('--out-dir', default='work_dirs/erf')
    p.add_argument('--device', default='cpu')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    if args.num_images < 1 or args.input_size < 16:
        p.error(f'--num-images must be >= 1 and --input-size >= 16, got {args.num_images}, {args.input_size}')
    for t in args.thresholds:
        if not 0 < t < 1:
            p.error(f'--thresholds must lie in (0, 1), got {t}')
    return args


def save_heatmap(erf: np.ndarray, path: str, title: str = ''):
    """The ERF map as plotted by RepLKNet: ``log10(erf + 1)`` scaled so its maximum is 1, on axes in input pixels
    from the centre, with a labelled colour bar. Returns the (closed) figure."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    data = normalised_log_map(erf)
    h, w = data.shape
    fig, ax = plt.subplots(figsize=(6.2, 6.4), dpi=100)
    im = ax.imshow(data, cmap='RdYlGn', vmin=0, vmax=1, extent=(-w / 2, w / 2, h / 2, -h / 2))
    ax.set_xlabel('input pixels from the centre (x)', fontsize=8)
    ax.set_ylabel('input pixels from the centre (y)', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f'{title}\ncontribution of each input pixel to the centre output of the last stage', fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label('log10(1 + summed positive input gradient), divided by its maximum', fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from pelk_mm.analysis.builder import build_model, find_images, get_backbone, load_cfg, norm_params
    cfg = load_cfg(args.config, args.cfg_options)
    model, _ = build_model(cfg, args.checkpoint, args.device)
    backbone = get_backbone(model)
    for p in backbone.parameters():
        p.requires_grad_(False)
    paths = find_images(args.data, args.num_images, args.demo_root)
    mean, std = norm_params(cfg)
    erf, used = compute_erf(backbone, paths, args.input_size, mean, std, args.device)
    ratios = high_contribution_ratios(erf, args.thresholds)
    os.makedirs(args.out_dir, exist_ok=True)
    np.save(osp.join(args.out_dir, 'erf.npy'), erf)
    name = osp.splitext(osp.basename(args.config))[0]
    save_heatmap(erf, osp.join(args.out_dir, 'erf.png'),
                 f'ERF {name} ({used} images, {args.input_size}px)')
    report = dict(config=args.config, checkpoint=args.checkpoint, num_images=used, input_size=args.input_size,
                  ratios=ratios)
    with open(osp.join(args.out_dir, 'erf.json'), 'w') as f:
        json.dump(report, f, indent=2)
    print(f'ERF of {name} over {used} images at {args.input_size}x{args.input_size}')
    print('| threshold t | square side | area ratio r(t) |')
    print('|---|---|---|')
    for t, r in ratios.items():
        ar = f'{r["area_ratio"]:.4f}' if r['area_ratio'] is not None else 'n/a'
        print(f'| {t} | {r["side"]} | {ar} |')
    print(f'wrote {osp.join(args.out_dir, "erf.png")}, erf.npy, erf.json')
    return 0


if __name__ == '__main__':
    from pelk_mm.apis.cli import run_main
    sys.exit(run_main(main, (FileNotFoundError, )))
