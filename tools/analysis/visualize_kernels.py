#!/usr/bin/env python
"""Sharing grids and learned large kernels of a PeLK checkpoint, and the parameter-vs-kernel-size curve (Fig. 6).

    # grids + expanded kernels of every stage (block 0) of a config/checkpoint
    python tools/analysis/visualize_kernels.py CONFIG [--checkpoint CKPT] [--block 0] [--channels 8] \
        [--out-dir work_dirs/kernels]
    # only the Fig. 6 curve (ConvNeXt-T-like net, all kernels K, peripheral vs dense vs stripe)
    python tools/analysis/visualize_kernels.py --param-curve-only [--kernel-sizes 7 13 ... 151]

Per stage ``i`` it writes ``stage{i}_grid.png`` (the K x K sharing grid: one rectangle per weight, the unshared
centre shaded, axes in tap offsets from the centre) and ``stage{i}_kernels.png`` (the expanded kernel: mean |w| over
the convolved channels and the first ``--channels`` channels, each with a colour bar); ``overview.png`` puts the
first stage's grid and mean |w| side by side; ``param_curve.png`` + ``param_curve.json`` hold Fig. 6.
Logic: pelk_mm/analysis/kernels.py.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pelk_mm.analysis.kernels import FIG6_KERNELS, expanded_kernel, large_kernel_convs, param_curve  # noqa: E402


def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def parse_args(argv=None):
    from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args
    p = argparse.ArgumentParser(description='Plot sharing grids, learned kernels and the params-vs-K curve')
    p.add_argument('config', nargs='?', help='config with a PeLK backbone')
    p.add_argument('--checkpoint', help='checkpoint (default: random init, still shows the grids)')
    p.add_argument('--block', type=int, default=0, help='block of each stage whose kernel is drawn')
    p.add_argument('--channels', type=int, default=8, help='individual channels drawn per stage')
    p.add_argument('--kernel-sizes', type=int, nargs='+', default=list(FIG6_KERNELS),
                   help='kernel sizes of the Fig. 6 curve')
    p.add_argument('--no-param-curve', action='store_true', help='skip the Fig. 6 curve')
    p.add_argument('--param-curve-only', action='store_true', help='only the Fig. 6 curve (no config needed)')
    p.add_argument('--out-dir', default='work_dirs/kernels')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    if args.config is None and not args.param_curve_only:
        p.error('give a CONFIG, or --param-curve-only')
    for k in args.kernel_sizes:
        if k < 5 or k % 2 == 0:
            p.error(f'--kernel-sizes must be odd and >= 5 (the stripe short side), got {k}')
    return args


# ------------------------------------------------------------------ grids and kernels
def _offset_ticks(ax, edges: np.ndarray, k: int) -> None:
    """Ticks at the cell edges, labelled as offsets from the centre tap (edges lie between taps: -25.5 ... 25.5)."""
    ticks = [float(e) for e in edges]
    labels = [f'{e - k / 2:g}' for e in edges]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(labels, fontsize=5, rotation=90)
    ax.set_yticklabels(labels, fontsize=5)
    ax.set_xlabel('offset from the centre tap, columns (ticks: cell edges)', fontsize=7)
    ax.set_ylabel('offset from the centre tap, rows', fontsize=7)


def _draw_grid(ax, conv) -> None:
    from matplotlib.patches import Patch, Rectangle
    k = conv.kernel_size
    grid = list(getattr(conv, 'grid', [1] * k))
    edges = np.concatenate([[0], np.cumsum(grid)])
    ax.set_xlim(0, k)
    ax.set_ylim(k, 0)
    centre = [j for j, s in enumerate(grid) if s == 1]
    for a in range(len(grid)):
        for b in range(len(grid)):
            fine = grid[a] == 1 and grid[b] == 1 and a in centre and b in centre
            ax.add_patch(Rectangle((edges[b], edges[a]), grid[b], grid[a], facecolor='#f4a261' if fine else
                                   '#e9f5f9', edgecolor='#264653', linewidth=0.6))
    handles = [Patch(facecolor='#f4a261', edgecolor='#264653', label='one weight per tap'),
               Patch(facecolor='#e9f5f9', edgecolor='#264653', label='one weight shared by the cell')]
    if hasattr(conv, 'stripe_width'):  # stripe: shade the cross support
        s = conv.stripe_width
        lo = k // 2 - s // 2
        ax.add_patch(Rectangle((lo, 0), s, k, facecolor='#2a9d8f', alpha=0.4))
        ax.add_patch(Rectangle((0, lo), k, s, facecolor='#2a9d8f', alpha=0.4))
        handles.append(Patch(facecolor='#2a9d8f', alpha=0.4, label=f'stripe support ({k}x{s} + {s}x{k})'))
    _offset_ticks(ax, edges, k)
    ax.set_aspect('equal')
    ax.legend(handles=handles, fontsize=6, loc='upper left', bbox_to_anchor=(0, -0.16), ncol=2, frameon=False)


def plot_grid(conv, path: str, title: str):
    """The K x K sharing grid: every rectangle is one weight; axes are tap offsets from the centre. Returns the
    (closed) figure."""
    plt = _plt()
    k = conv.kernel_size
    cells = len(getattr(conv, 'grid', [1] * k))
    fig, ax = plt.subplots(figsize=(6, 6.8), dpi=100)
    _draw_grid(ax, conv)
    ax.set_title(f'{title}\nsharing grid: {cells}x{cells} weights cover the {k}x{k} kernel', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches='tight')
    plt.close(fig)
    return fig


def _kernel_image(ax, image: np.ndarray, cmap: str, vmin: float, vmax: float, label: str, fig):
    k = image.shape[-1]
    r = k // 2
    im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5))
    ax.tick_params(labelsize=5)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(label, fontsize=6)
    bar.ax.tick_params(labelsize=5)
    return im


def plot_kernels(kernel: torch.Tensor, path: str, title: str, channels: int):
    """The expanded K x K kernel (every tap's effective weight): the mean |w| over the convolved channels, then the
    first ``channels`` channels, each with its own symmetric colour scale. Returns the (closed) figure."""
    plt = _plt()
    kernel = kernel.float().cpu()
    n = min(channels, kernel.shape[0])
    cols = min(n, 4) if n else 1
    rows = 1 + (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.7 * rows + 0.4), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    mean_abs = kernel.abs().mean(0).numpy()
    axes[0, 0].axis('on')
    _kernel_image(axes[0, 0], mean_abs, 'viridis', 0.0, float(mean_abs.max()) or 1.0, 'mean |weight|', fig)
    axes[0, 0].set_title(f'mean |w| over {kernel.shape[0]} channels', fontsize=7)
    axes[0, 0].set_xlabel('tap offset (columns)', fontsize=6)
    axes[0, 0].set_ylabel('tap offset (rows)', fontsize=6)
    for c in range(n):
        ax = axes[1 + c // cols, c % cols]
        ax.axis('on')
        w = kernel[c].numpy()
        v = float(np.abs(w).max()) or 1.0
        _kernel_image(ax, w, 'RdBu_r', -v, v, 'weight', fig)
        ax.set_title(f'channel {c}', fontsize=7)
    fig.suptitle(f'{title}\neffective weight of every tap of the expanded kernel (axes: offset from the centre)',
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches='tight')
    plt.close(fig)
    return fig


def plot_overview(conv, kernel: torch.Tensor, path: str, title: str):
    """One figure for a reader new to PeLK: the sharing grid (left) and the mean |w| of the expanded kernel (right),
    on the same tap-offset axes. Returns the (closed) figure."""
    plt = _plt()
    k = conv.kernel_size
    cells = len(getattr(conv, 'grid', [1] * k))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 5.4), dpi=100)
    _draw_grid(left, conv)
    left.set_title(f'sharing grid: {cells}x{cells} weights for {k}x{k} taps', fontsize=9)
    mean_abs = kernel.float().abs().mean(0).cpu().numpy()
    _kernel_image(right, mean_abs, 'viridis', 0.0, float(mean_abs.max()) or 1.0,
                  f'mean |weight| over {kernel.shape[0]} channels', fig)
    right.set_xlabel('tap offset from the centre, columns', fontsize=7)
    right.set_ylabel('tap offset from the centre, rows', fontsize=7)
    right.set_title('expanded kernel: each tap takes its cell\'s weight', fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches='tight')
    plt.close(fig)
    return fig


# ------------------------------------------------------------------ Fig. 6
def plot_param_curve(curve: Dict[str, List[int]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    styles = {'dense': ('#e76f51', 'dense K x K'), 'stripe': ('#2a9d8f', 'stripe K x 5 + 5 x K (SLaK)'),
              'peripheral': ('#264653', 'peripheral (PeLK)')}
    for form, (color, label) in styles.items():
        ax.plot(curve['kernel_size'], np.array(curve[form]) / 1e6, 'o-', color=color, label=label)
    ax.set_xlabel('kernel size K (all stages)')
    ax.set_ylabel('parameters (M)')
    ax.set_yscale('log')
    ax.set_title('ConvNeXt-T-like network, every kernel K x K (paper Fig. 6)', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    if not args.param_curve_only:
        from pelk_mm.analysis.builder import build_model, get_backbone, load_cfg
        cfg = load_cfg(args.config, args.cfg_options)
        model, _ = build_model(cfg, args.checkpoint)
        backbone = get_backbone(model)
        if not hasattr(backbone, 'stages'):
            raise ValueError(f'{type(backbone).__name__} has no PeLK-style `stages`; nothing to draw')
        convs = large_kernel_convs(backbone, args.block)
        if not convs:
            raise ValueError('no large-kernel conv found in the backbone stages')
        summary = []
        for i, conv in convs:
            kernel = expanded_kernel(conv)
            grid = list(getattr(conv, 'grid', []))
            desc = (f'stage {i}, block {args.block}: {type(conv).__name__} K={conv.kernel_size}'
                    + (f', grid {grid}' if grid else ''))
            plot_grid(conv, osp.join(args.out_dir, f'stage{i}_grid.png'), desc)
            plot_kernels(kernel, osp.join(args.out_dir, f'stage{i}_kernels.png'),
                         desc + ('' if args.checkpoint else ' (random init)'), args.channels)
            written += [f'stage{i}_grid.png', f'stage{i}_kernels.png']
            if i == convs[0][0]:
                plot_overview(conv, kernel, osp.join(args.out_dir, 'overview.png'),
                              desc + ('' if args.checkpoint else ' (random init)'))
                written.append('overview.png')
            summary.append(dict(stage=i, type=type(conv).__name__, kernel_size=conv.kernel_size, grid=grid,
                                channels=int(kernel.shape[0]), zero_fraction=float((kernel == 0).float().mean())))
            print(desc + f'; zero taps {summary[-1]["zero_fraction"]:.3f}')
        with open(osp.join(args.out_dir, 'kernels.json'), 'w') as f:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, block=args.block, stages=summary), f,
                      indent=2)
        written.append('kernels.json')
    if not args.no_param_curve:
        curve = param_curve(args.kernel_sizes)
        plot_param_curve(curve, osp.join(args.out_dir, 'param_curve.png'))
        with open(osp.join(args.out_dir, 'param_curve.json'), 'w') as f:
            json.dump(curve, f, indent=2)
        written += ['param_curve.png', 'param_curve.json']
        print('| K | ' + ' | '.join(str(k) for k in curve['kernel_size']) + ' |')
        for form in ('peripheral', 'stripe', 'dense'):
            print(f'| {form} (M) | ' + ' | '.join(f'{c / 1e6:.1f}' for c in curve[form]) + ' |')
    print(f'wrote {", ".join(written)} to {args.out_dir}')
    return 0


if __name__ == '__main__':
    from pelk_mm.apis.cli import run_main
    sys.exit(run_main(main, (FileNotFoundError, )))
