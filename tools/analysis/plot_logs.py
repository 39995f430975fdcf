#!/usr/bin/env python
"""Training curves from a work_dir: reads the JSON-lines scalars mmengine's ``LocalVisBackend`` writes
(``<work_dir>/<timestamp>/vis_data/*.json``; one dict per logged step) and plots losses, learning rate and
validation metrics.

    python tools/analysis/plot_logs.py WORK_DIR [WORK_DIR ...] [--keys loss accuracy/top1] [--out-dir DIR]

Lines carrying ``lr`` or a ``loss*`` key are training records (x axis: ``iter``, else ``step``); the others are
validation records (x axis: ``step``, the epoch or iteration at which validation ran). Several runs of one work_dir
(resumed training) are concatenated in time order; several work_dirs are overlaid. Writes ``loss.png``, ``lr.png``
(if logged), ``val_metrics.png`` (if any) and ``scalars.json`` (the parsed series) into ``--out-dir`` (default:
``<first work_dir>/plots``).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

IGNORED_TRAIN = {'iter', 'epoch', 'step', 'data_time', 'time', 'memory', 'lr'}
IGNORED_VAL = {'step', 'data_time', 'time', 'epoch', 'iter'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Plot loss / lr / metric curves of mmengine work_dirs')
    p.add_argument('work_dirs', nargs='+', help='work_dir(s) of training runs')
    p.add_argument('--keys', nargs='+', default=None,
                   help='only these scalar keys (default: every loss key, lr and every validation metric)')
    p.add_argument('--out-dir', default=None, help='output folder (default: <first work_dir>/plots)')
    return p.parse_args(argv)


def find_scalar_files(work_dir: str) -> List[str]:
    """Every ``vis_data/*.json`` under ``work_dir`` (run folders sort by their timestamp names)."""
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'work_dir {work_dir!r} does not exist')
    files = sorted(glob.glob(osp.join(work_dir, '**', 'vis_data', '*.json'), recursive=True))
    files = [f for f in files if osp.basename(f) != 'config.json']
    if not files:
        raise FileNotFoundError(f'no vis_data/*.json under {work_dir!r}: was the run logged with a '
                                f'LocalVisBackend (visualizer.vis_backends)?')
    return files


def _is_train(rec: dict) -> bool:
    return 'lr' in rec or any(k.startswith('loss') or k.endswith('loss') or '/loss' in k for k in rec)


def load_scalars(work_dir: str) -> Tuple[Dict[str, list], Dict[str, list]]:
    """``(train, val)``: ``{key: [(x, value), ...]}``, de-duplicated by x (a resumed run overwrites)."""
    train: Dict[str, Dict[float, float]] = OrderedDict()
    val: Dict[str, Dict[float, float]] = OrderedDict()
    for path in find_scalar_files(work_dir):  # <ts>.json and scalars.json may repeat records: keyed by x below
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(rec, dict):
                    continue
                if _is_train(rec):
                    x = rec.get('iter', rec.get('step'))
                    target, ignored = train, IGNORED_TRAIN - {'lr'}
                else:
                    x = rec.get('step')
                    target, ignored = val, IGNORED_VAL
                if x is None:
                    continue
                for k, v in rec.items():
                    if k in ignored or not isinstance(v, (int, float)) or isinstance(v, bool):
                        continue
                    target.setdefault(k, OrderedDict())[float(x)] = float(v)
    as_list = lambda d: OrderedDict((k, sorted(v.items())) for k, v in d.items())  # noqa: E731
    return as_list(train), as_list(val)


def _plot(series: Dict[str, Dict[str, list]], path: str, title: str, xlabel: str, log_y: bool = False) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    keys = sorted({k for per_run in series.values() for k in per_run})
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.8 * len(keys)), dpi=100, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for run, per_run in series.items():
            if key in per_run:
                xs, ys = zip(*per_run[key])
                ax.plot(xs, ys, marker='o' if len(xs) < 30 else None, markersize=3, label=run)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale('log')
        if len(series) > 1:
            ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel(xlabel)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for wd in args.work_dirs:
        if not osp.isdir(wd):
            raise FileNotFoundError(f'work_dir {wd!r} does not exist')
    out_dir = args.out_dir or osp.join(args.work_dirs[0], 'plots')
    os.makedirs(out_dir, exist_ok=True)
    losses, lrs, metrics, dump = OrderedDict(), OrderedDict(), OrderedDict(), OrderedDict()
    for wd in args.work_dirs:
        name = osp.basename(osp.normpath(wd))
        train, val = load_scalars(wd)
        if args.keys:
            train = OrderedDict((k, v) for k, v in train.items() if k in args.keys)
            val = OrderedDict((k, v) for k, v in val.items() if k in args.keys)
        losses[name] = OrderedDict((k, v) for k, v in train.items() if 'loss' in k)
        lrs[name] = OrderedDict((k, v) for k, v in train.items() if k == 'lr' or k.endswith('_lr'))
        extra = OrderedDict((k, v) for k, v in train.items() if k not in losses[name] and k not in lrs[name])
        losses[name].update(extra)  # e.g. train/sparsity_density: plotted with the training curves
        metrics[name] = val
        dump[name] = dict(train=train, val=val)
    written = []
    if any(losses.values()):
        _plot(losses, osp.join(out_dir, 'loss.png'), 'training scalars', 'iteration')
        written.append('loss.png')
    if any(lrs.values()):
        _plot(lrs, osp.join(out_dir, 'lr.png'), 'learning rate', 'iteration')
        written.append('lr.png')
    if any(metrics.values()):
        _plot(metrics, osp.join(out_dir, 'val_metrics.png'), 'validation metrics', 'step (epoch or iteration)')
        written.append('val_metrics.png')
    if not written:
        print('error: no scalar to plot (check --keys)', file=sys.stderr)
        return 1
    with open(osp.join(out_dir, 'scalars.json'), 'w') as f:
        json.dump(dump, f, indent=1)
    for name, d in dump.items():
        print(f'{name}: train keys {list(d["train"])}, val keys {list(d["val"])}')
    print(f'wrote {", ".join(written)} and scalars.json to {out_dir}')
    return 0


if __name__ == '__main__':
    from pelk_mm.apis.cli import run_main
    sys.exit(run_main(main, (FileNotFoundError, )))
