#!/usr/bin/env python
"""Export a PeLK model to ONNX (standard operators only) and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG CKPT OUT.onnx [--output classifier|segmentor|detector|backbone]
                                       [--shape H W] [--conv-form structured|dense] [--deployed] [--no-check]
                                       [--val] [--mmdeploy] [--threads N] [--cfg-options K=V ...]

CKPT is a train-form checkpoint (converted on the fly with ``switch_to_deploy``) or, with ``--deployed``, a
deploy-form one written by ``tools/deploy/convert_to_deploy.py``. Every graph takes the normalised image
(``(img - mean) / std`` of the config's data preprocessor, RGB) as ``input``; its height and width are fixed at
export (``--shape``). ``--output`` (default: the config's task):

* ``classifier`` (mmpretrain): ``input (batch, 3, H, W) -> logits (batch, classes)``, before softmax;
  ``--shape`` defaults to 224 224.
* ``segmentor`` (mmseg): ``input (batch, 3, H, W) -> seg_logits (batch, classes, H, W)``, before argmax.
  A config with slide inference exports its crop (``--shape`` defaults to ``model.test_cfg.crop_size``) and the
  sliding window runs in Python over the graph (:func:`pelk_mm.deploy_tasks.seg_logits`, mmseg's tiles and
  averaging); whole-image inference needs ``--shape`` = the padded test image size.
* ``detector`` (mmdet two-stage, Cascade Mask R-CNN included): ``input (1, 3, H, W)``, ``img_shape (2,)`` int64
  (h, w of the resized image inside the padding), ``scale_factor (2,)`` float32 (w, h), ``ori_shape (2,)`` int64
  -> ``dets (N, 5)`` (x1, y1, x2, y2, score in original pixels), ``labels (N,)``, ``masks (N, ori_h, ori_w)``
  bool; RPN, the cascade, NMS (``NonMaxSuppression``), RoI pooling (``RoiAlign``) and mask pasting
  (``GridSample``) are in the graph. ``--shape`` is required: the padded test image size (an image resized to
  less is padded bottom-right to it, e.g. 1344 1344 for COCO's 1333x800 keep-ratio resize).
* ``backbone``: ``input (batch, 3, H, W) -> feat0 ... featN``, the backbone's outputs.

``--mmdeploy`` (segmentor): the graph is written by mmdeploy 1.3 (``mmdeploy.apis.torch2onnx``, onnxruntime
backend, logits as ``output``; an optional extra: ``pip install --no-deps mmdeploy==1.3.1 aenum multiprocess
dill``) with pelk_mm's version-checked fixes for torch 2.x (:func:`pelk_mm.deploy_tasks.mmdeploy_fixes`); the
checks and ``--val`` are the same.

``--conv-form`` (default ``structured``): how the peripheral conv is written

* ``structured``: prefix sums (``CumSum``) + slices + the ``k' x k'`` contraction (a grouped ``1 x 1`` ``Conv``):
  ``O(K + k'^2)`` per pixel, the block-shared weights stay ``k' x k'`` in the file;
* ``dense``: the kernel expanded and cropped to the map, one grouped ``Conv``: ``O(K^2)`` per pixel, for runtimes
  that only optimise ``Conv``.

After export the file is run in onnxruntime on random inputs and compared with PyTorch (``--no-check`` skips
it). ``--val`` also scores PyTorch (the model as ``tools/test.py`` runs it) and the graph in onnxruntime on the
config's validation set with the config's evaluator and prints both; it fails when they differ by more than
:data:`PARITY`. Logic: pelk_mm/deploy.py, pelk_mm/deploy_tasks.py.

The tool is a convenience, not a requirement: the peripheral conv lowers itself to these forms under any export,
so ``torch.onnx.export(model, x)`` of a model holding PeLK (either exporter, or any tool that calls it) writes
the structured form too, and ``with pelk_mm.ops.export_conv_form('dense'):`` (or
``PELK_MM_EXPORT_CONV_FORM=dense``) the dense one.
"""
import argparse
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # this checkout

import pelk_mm  # noqa: E402,F401  (compat patches, pelk_mm.PeLK)

from pelk_mm.apis.cli import run_main  # noqa: E402
from pelk_mm.apis.launch import add_config_tool_args, parse_tool_args  # noqa: E402
from pelk_mm.errors import DeployError  # noqa: E402
from pelk_mm.analysis.builder import load_cfg  # noqa: E402
from pelk_mm.config import get_codebase  # noqa: E402
from pelk_mm.deploy import (CONV_FORMS, build_model, check_onnx, export_onnx, exportable,  # noqa: E402
                            load_weights, onnx_op_types, require_onnxruntime)
from pelk_mm.deploy_tasks import (OUTPUTS, TASK_OUTPUTS, check_task_onnx, default_output,  # noqa: E402
                                  default_shape, evaluate_onnx, export_task, mmdeploy_export,
                                  quiet_mmengine, task_module)

#: relative error above which the onnxruntime check fails (float32)
TOLERANCE = 1e-4
#: detector check on a random image: largest box difference (pixels) and smallest mask IoU accepted
BOX_TOLERANCE, MASK_IOU = 1e-2, 0.99
#: --val: largest difference of each metric between onnxruntime and PyTorch (the evaluators' units: top-1 and mIoU
#: in %, COCO mAP in [0, 1], so 0.002 = 0.2 AP points)
PARITY = {'accuracy/top1': 0.0, 'mIoU': 0.1, 'coco/bbox_mAP': 0.002, 'coco/segm_mAP': 0.002}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Export a PeLK model to ONNX and check it in onnxruntime')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint: train form, or deploy form with --deployed')
    p.add_argument('out', help='output .onnx file')
    p.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'),
                   help='input height and width (fixed in the graph). Default: 224 224 for a classifier or '
                        'backbone, the slide crop for a segmentor; required for a detector and a whole-image '
                        'segmentor')
    p.add_argument('--conv-form', choices=sorted(CONV_FORMS), default='structured',
                   help='peripheral conv as prefix sums + k\'xk\' matmul (structured) or one grouped Conv (dense)')
    p.add_argument('--output', choices=OUTPUTS, default=None,
                   help='what the graph computes: classifier logits (mmpretrain default), segmentor seg_logits '
                        '(mmseg default), detector dets/labels/masks (mmdet default) or the backbone\'s outputs')
    p.add_argument('--deployed', action='store_true', help='CKPT is already in deploy form (convert_to_deploy.py)')
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--no-check', action='store_true', help='skip the onnxruntime comparison')
    p.add_argument('--val', action='store_true',
                   help='also score PyTorch and onnxruntime on the config\'s validation set (its evaluator)')
    p.add_argument('--threads', type=int, default=1, help='onnxruntime intra-op threads (checks, --val)')
    p.add_argument('--mmdeploy', action='store_true',
                   help='segmentor only: write the graph with mmdeploy 1.3 (optional extra) instead of pelk_mm\'s '
                        'exporter')
    add_config_tool_args(p)
    args = parse_tool_args(p, argv)
    return args


def _task_line(args, output: str, shape, in_names, out_names, result) -> str:
    ops = onnx_op_types(args.out)
    batch = '1' if output == 'detector' or args.mmdeploy else 'batch'
    form = 'dense, by mmdeploy' if args.mmdeploy else args.conv_form
    text = (f'wrote {args.out}: {output} ({", ".join(in_names)} -> {", ".join(out_names)}), input '
            f'({batch}, 3, {shape[0]}, {shape[1]}), conv form {form}, '
            f'{len(ops)} operator types ({", ".join(o for o in ops if o in NOTABLE_OPS)} among them)')
    if result is None:
        return text
    if output != 'detector':
        return text + f'; onnxruntime vs PyTorch: max relative error {result["max_rel_err"]:.2e}'
    if 'max_box_err' not in result:
        return text + (f'; onnxruntime vs PyTorch on a random image: {int(result["num_dets_ort"])} vs '
                       f'{int(result["num_dets"])} detections')
    labels = 'equal' if result['labels_equal'] else 'differ'
    return text + (f'; onnxruntime vs PyTorch on a random image: {int(result["num_dets"])} detections in both, '
                   f'max box error {result["max_box_err"]:.1e} px, labels {labels}, mask IoU {result["mask_iou"]:.4f}')


#: operators worth naming in the one-line summary of a task graph
NOTABLE_OPS = ('CumSum', 'NonMaxSuppression', 'RoiAlign', 'GridSample', 'Resize', 'TopK')


def _check_task(result, output: str, path: str) -> None:
    if output != 'detector':
        if result['max_rel_err'] > TOLERANCE:
            raise DeployError(f'onnxruntime output differs from PyTorch by {result["max_rel_err"]:.2e} (relative) > '
                              f'{TOLERANCE:.0e}; the export of {path} is not faithful (try --conv-form dense and '
                              f'report it)')
        return
    if 'max_box_err' not in result or not result['labels_equal'] or result['max_box_err'] > BOX_TOLERANCE \
            or result['mask_iou'] < MASK_IOU:
        raise DeployError(f'onnxruntime detections differ from PyTorch on a random image ({result}); the export of '
                          f'{path} is not faithful (try --conv-form dense and report it)')


def _val(args, cfg, reference, codebase: str) -> None:
    from pelk_mm.datasets import ensure_demo_data
    ensure_demo_data(cfg)  # the demo configs' data, generated on first use as tools/test.py does
    metrics = evaluate_onnx(cfg, reference, codebase, args.out, threads=args.threads)
    keys = [k for k in PARITY if k in metrics['pytorch']] or sorted(metrics['pytorch'])
    print('validation set: ' + ', '.join(f'{k} PyTorch {metrics["pytorch"][k]:.4f} onnxruntime '
                                           f'{metrics["onnxruntime"][k]:.4f}' for k in keys))
    bad = [k for k in keys if k in PARITY and abs(metrics['pytorch'][k] - metrics['onnxruntime'][k]) > PARITY[k]]
    if bad:
        raise DeployError(f'onnxruntime differs from PyTorch on the validation set beyond the parity bounds '
                          f'({", ".join(f"{k} > {PARITY[k]}" for k in bad)}); the export of {args.out} is not faithful')


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_check or args.val:
        require_onnxruntime()  # fail before the export, with the install line
    cfg = load_cfg(args.config, args.cfg_options)
    codebase = get_codebase(cfg, args.config)
    output = args.output or default_output(codebase)
    if output != 'backbone' and TASK_OUTPUTS.get(codebase) != output:
        raise DeployError(f'--output {output} needs a {[c for c, o in TASK_OUTPUTS.items() if o == output][0]} '
                          f'config; {args.config} is a {codebase} config: use --output {default_output(codebase)} '
                          f'or --output backbone')
    if args.mmdeploy and output != 'segmentor':
        raise DeployError(f'--mmdeploy covers the segmentor graph; --output {output} is pelk_mm\'s own export '
                          f'(mmdeploy 1.3\'s Cascade R-CNN export asserts class-agnostic box regression, the '
                          f'PeLK detection configs regress per class)')
    if args.val and output == 'backbone':
        raise DeployError('--val scores a task graph; --output backbone has no predictions to score')
    shape = tuple(args.shape) if args.shape else default_shape(cfg, output)
    if shape is None:
        raise DeployError(f'--output {output} of {args.config} needs --shape H W: the padded size of the test images '
                          f'(the graph\'s input size is fixed)')
    with quiet_mmengine():  # the builder's init-weight report, one line per tensor
        model, codebase = build_model(cfg, deploy=args.deployed)
        load_weights(model, args.checkpoint)
    reference = copy.deepcopy(model) if args.val else None  # the model as tools/test.py evaluates it
    if not args.deployed:
        model.backbone.switch_to_deploy()
    if output in ('classifier', 'backbone'):
        module = exportable(model, output)
        names = export_onnx(module, args.out, shape, args.conv_form, args.opset)
        ops = onnx_op_types(args.out)
        print(f'wrote {args.out}: {output} ({", ".join(names)}), input (batch, 3, {shape[0]}, {shape[1]}), '
              f'conv form {args.conv_form}; operators: {" ".join(ops)}')
        if not args.no_check:
            errs = check_onnx(args.out, module, shape, threads=args.threads)
            worst = max(errs.values())
            print('onnxruntime vs PyTorch, max relative error: '
                  + ', '.join(f'batch {b}: {e:.2e}' for b, e in errs.items()))
            if worst > TOLERANCE:
                raise DeployError(f'onnxruntime output differs from PyTorch by {worst:.2e} (relative) > '
                                  f'{TOLERANCE:.0e}; the export of {args.out} is not faithful (try --conv-form dense '
                                  f'and report it)')
    else:
        module = task_module(model, output)
        if args.mmdeploy:
            mmdeploy_export(args.config, args.checkpoint, args.out, shape, args.cfg_options, args.opset)
            in_names, out_names = ['input'], ['output']
        else:
            in_names, out_names = export_task(module, args.out, output, shape, args.conv_form, args.opset)
        result = None if args.no_check else check_task_onnx(args.out, module, output, shape, threads=args.threads)
        print(_task_line(args, output, shape, in_names, out_names, result))
        if result is not None:
            _check_task(result, output, args.out)
    if args.val:
        _val(args, cfg, reference, codebase)
    return 0


if __name__ == '__main__':
    sys.exit(run_main(main, extra=(FileNotFoundError, )))
