#!/usr/bin/env python
"""Export a PeLK model to ONNX (standard operators only) and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG CKPT OUT.onnx [--shape H W] [--conv-form structured|dense]
                                       [--output classifier|backbone] [--deployed] [--cfg-options K=V ...]
                                       [--no-check]

CKPT is a train-form checkpoint (converted on the fly with ``switch_to_deploy``) or, with ``--deployed``, a
deploy-form one written by ``tools/deploy/convert_to_deploy.py``. The graph takes the normalised image
(``(img - mean) / std`` of the config's data preprocessor) as ``input`` ``(batch, 3, H, W)``, batch dynamic, and
returns ``logits`` (mmpretrain classifier, before softmax) or ``feat0 ... featN`` (the backbone's outputs, what a
segmentation or detection deployment starts from; the default for mmseg/mmdet configs).

``--conv-form`` (default ``structured``): how the peripheral conv is written

* ``structured``: prefix sums (``CumSum``) + slices + the ``k' x k'`` contraction (a grouped ``1 x 1`` ``Conv``):
  ``O(K + k'^2)`` per pixel, the block-shared weights stay ``k' x k'`` in the file;
* ``dense``: the kernel expanded and cropped to the map, one grouped ``Conv``: ``O(K^2)`` per pixel, for runtimes
  that only optimise ``Conv``.

After export the file is run in onnxruntime on random inputs of batch 1 and 2 and compared with PyTorch (max
relative error printed; ``--no-check`` skips it). Logic: pelk_mm/deploy.py.

The tool is a convenience, not a requirement: the peripheral conv lowers itself to these forms under any export,
so ``torch.onnx.export(model, x)`` of a model holding PeLK (either exporter, or any tool that calls it) writes
the structured form too, and ``with pelk_mm.ops.export_conv_form('dense'):`` (or
``PELK_MM_EXPORT_CONV_FORM=dense``) the dense one.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import pelk_mm  # noqa: E402,F401  (compat patches, pelk_mm.PeLK)

from pelk_mm.apis.cli import run_main  # noqa: E402
from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args  # noqa: E402
from pelk_mm.errors import DeployError  # noqa: E402
from pelk_mm.analysis.builder import load_cfg  # noqa: E402
from pelk_mm.deploy import (CONV_FORMS, build_model, check_onnx, export_onnx, exportable,  # noqa: E402
                            load_weights, onnx_op_types, require_onnxruntime)

#: relative error above which the onnxruntime check fails (float32)
TOLERANCE = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Export a PeLK model to ONNX and check it in onnxruntime')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint: train form, or deploy form with --deployed')
    p.add_argument('out', help='output .onnx file')
    p.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                   help='input height and width (fixed in the graph; the batch is dynamic). Default 224 224')
    p.add_argument('--conv-form', choices=sorted(CONV_FORMS), default='structured',
                   help='peripheral conv as prefix sums + k\'xk\' matmul (structured) or one grouped Conv (dense)')
    p.add_argument('--output', choices=['classifier', 'backbone'], default=None,
                   help='what the graph returns: classifier logits (mmpretrain default) or the backbone\'s '
                        'outputs (default for mmseg/mmdet)')
    p.add_argument('--deployed', action='store_true', help='CKPT is already in deploy form (convert_to_deploy.py)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_check:
        require_onnxruntime()  # fail before the export, with the install line
    cfg = load_cfg(args.config, args.cfg_options)
    model, codebase = build_model(cfg, deploy=args.deployed)
    load_weights(model, args.checkpoint)
    if not args.deployed:
        model.backbone.switch_to_deploy()
    output = args.output or ('classifier' if codebase == 'mmpretrain' else 'backbone')
    module = exportable(model, output)
    names = export_onnx(module, args.out, args.shape, args.conv_form, args.opset)
    ops = onnx_op_types(args.out)
    print(f'wrote {args.out}: {output} ({", ".join(names)}), input (batch, 3, {args.shape[0]}, {args.shape[1]}), '
          f'conv form {args.conv_form}; operators: {" ".join(ops)}')
    if args.no_check:
        return 0
    errs = check_onnx(args.out, module, args.shape)
    worst = max(errs.values())
    print('onnxruntime vs PyTorch, max relative error: ' + ', '.join(f'batch {b}: {e:.2e}' for b, e in errs.items()))
    if worst > TOLERANCE:
        raise DeployError(f'onnxruntime output differs from PyTorch by {worst:.2e} (relative) > {TOLERANCE:.0e}; '
                          f'the export of {args.out} is not faithful (try --conv-form dense and report it)')
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main, extra=(FileNotFoundError, )))
