#!/usr/bin/env python
"""Convert a train-form checkpoint of a PeLK model (mmpretrain, mmseg or mmdet config) to its deploy form.

    python tools/deploy/convert_to_deploy.py CONFIG CKPT OUT [--cfg-options K=V ...] [--check-shape H W]

Builds the config's model, loads CKPT strictly, calls ``model.backbone.switch_to_deploy()`` (BatchNorms folded
into the peripheral conv's shared weights and a bias, the small kernel into the centre cells) and writes
``{'meta', 'state_dict'}`` to OUT. It then builds the config again with ``model.backbone.deploy=True``, loads OUT
strictly and compares the backbone's outputs on a random image (printed). Use the result with
``--cfg-options model.backbone.deploy=True`` (tools/test.py, tools/deploy/export_onnx.py, mmpretrain's APIs).
Logic: pelk_mm/deploy.py.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import pelk_mm  # noqa: E402,F401  (compat patches, pelk_mm.PeLK)

from pelk_mm.apis.cli import run_main  # noqa: E402
from pelk_mm.apis.console import quiet_console  # noqa: E402
from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args  # noqa: E402
from pelk_mm.errors import DeployError  # noqa: E402
from pelk_mm.analysis.builder import load_cfg  # noqa: E402
from pelk_mm.deploy import convert_checkpoint  # noqa: E402
from pelk_mm.deploy_tasks import quiet_mmengine  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Convert a train-form PeLK checkpoint to the deploy form')
    p.add_argument('config', help='config file (train form; deploy=True in it or in --cfg-options is ignored)')
    p.add_argument('checkpoint', help='train-form checkpoint (local path or URL)')
    p.add_argument('out', help='where to write the deploy-form checkpoint (.pth)')
    p.add_argument('--check-shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                   help='input size of the equivalence check (default 224 224)')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_cfg(args.config, args.cfg_options)
    if osp.abspath(args.out) == osp.abspath(args.checkpoint):
        raise DeployError(f'OUT {args.out!r} is the input checkpoint; write the deploy form to another file')
    from mmengine.logging import MMLogger
    # NOTE: quiet_mmengine drops the builder's init-weight report (one record per tensor, twice) and the loader's
    # notices; the console filter drops mmengine's warnings about its own FileClient, which save_checkpoint uses
    with quiet_mmengine():
        quiet_console(MMLogger.get_current_instance())
        r = convert_checkpoint(cfg, args.checkpoint, args.out, tuple(args.check_shape))
    print(f'{r["codebase"]}: wrote {args.out} (deploy form; load it with --cfg-options model.backbone.deploy=True)')
    print(f'params: train form {r["params_train"] / 1e6:.3f} M, deploy form {r["params_deploy"] / 1e6:.3f} M')
    print(f'backbone check at {args.check_shape[0]}x{args.check_shape[1]}: deployed vs train form max rel err '
          f'{r["max_rel_err_deploy"]:.2e}; reloaded (deploy=True, strict) vs deployed {r["max_rel_err_reload"]:.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main, extra=(FileNotFoundError, )))
