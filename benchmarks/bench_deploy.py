#!/usr/bin/env python
"""Inference speed of the deploy forms of a PeLK backbone: structured deploy vs the train form vs a dense-fold
deploy vs the folding bound, and (``--onnx``) the exported ONNX graphs in onnxruntime.

    python benchmarks/bench_deploy.py [--arch tiny] [--size 224] [--batches 1 8] [--reps 9 5] [--threads 2]
                                      [--onnx] [--tasks [classifier segmentor detector]] [--task-reps 9]
                                      [--no-backbone] [--out work_dirs/benchmarks/deploy.json]

Rows (one random-weight PeLK, BatchNorm statistics randomised, eval mode, ``torch.inference_mode``):

* ``train form``: the model as trained (peripheral conv + BN + parallel 5x5 conv + BN + KPE term);
* ``deployed``: :meth:`PeLK.switch_to_deploy` (BNs and the 5x5 branch folded into the k' x k' weights and a
  bias, KPE term per forward; ``peripheral_conv2d``);
* ``dense-fold``: the same deployed weights expanded into one dense ``K x K`` depthwise ``nn.Conv2d`` with bias,
  the KPE term computed once per size and cached (how a RepLKNet-style re-parameterisation deploys);
* ``bound``: the train form with the small branch and both BatchNorms deleted (``small_kernel=None,
  conv_norm_cfg=None``): what folding can save at most;
* ``--onnx``: the deployed backbone exported by ``tools/deploy/export_onnx.py`` in both conv forms, run by
  onnxruntime's CPU provider with ``--threads`` intra-op threads.

``--tasks``: a second table, one block per task graph of ``tools/deploy/export_onnx.py`` on the demo configs
(random weights, ``init_weights`` + randomised BatchNorm statistics, seed 0), each the whole test path of one
image: ``PyTorch, train form`` (what ``tools/test.py`` runs: the classifier's logits; mmseg's slide inference of a
128 x 128 image over 64 x 64 crops; mmdet's ``predict(rescale=True)`` of a 160 x 160 image, boxes and pasted masks),
``PyTorch, deployed`` (the same after ``switch_to_deploy``) and ``onnxruntime`` (the exported graph; the slide loop
in Python around it for the segmentor). Each block also gives onnxruntime's difference from the PyTorch train form
on the timed input (max relative error of the logits; detections: count, max box error, mask IoU).

All rows of one batch size are timed interleaved (one forward of each row per round, the row order rotated every
round, ``--reps`` rounds after three warm-up rounds): the table gives each row's median time and the median of its
per-round ratios to the train form, so machine noise hits every row alike.
Prints a markdown table and writes JSON.
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arch', default='tiny')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    p.add_argument('--reps', type=int, nargs='+', default=[9, 5], help='timed rounds per batch size')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--onnx', action='store_true', help='add onnxruntime rows (dense and structured exports)')
    p.add_argument('--tasks', nargs='*', default=None, choices=list(TASK_CONFIGS),
                   help='add the task-graph table (all three tasks when given without names)')
    p.add_argument('--task-reps', type=int, default=9, help='timed rounds per task')
    p.add_argument('--no-backbone', action='store_true', help='only the task table')
    p.add_argument('--out', default=osp.join(ROOT, 'work_dirs', 'benchmarks', 'deploy.json'))
    args = p.parse_args(argv)
    if args.tasks == []:
        args.tasks = list(TASK_CONFIGS)
    if len(args.reps) == 1:
        args.reps = args.reps * len(args.batches)
    if len(args.reps) != len(args.batches):
        p.error(f'--reps needs one value or one per batch size ({len(args.batches)}), got {args.reps}')
    return args


def _randomise_bn(model, seed: int = 0) -> None:
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


class DenseFold:
    """Replace the forward of every deployed ``PeripheralConv2d`` by one dense ``K x K`` depthwise conv with bias
    plus the KPE term cached per map size (valid here: the weights never change during the benchmark)."""

    def __init__(self, model):
        import torch
        import torch.nn.functional as F
        from pelk_mm.models.layers import PeripheralConv2d
        for m in model.modules():
            if isinstance(m, PeripheralConv2d) and m.deployed:
                with torch.no_grad():
                    kernel = m.dense_weight().detach().clone()
                bias = m.reparam_bias.detach().clone()
                cache = {}

                def forward(x, kpe=None, _m=m, _kernel=kernel, _bias=bias, _cache=cache):
                    y = F.conv2d(x, _kernel, _bias, padding=_m.kernel_size // 2, groups=_m.channels)
                    if _m.kpe_mode == 'input':
                        key = tuple(x.shape[-2:])
                        if key not in _cache:
                            _cache[key] = _m._kpe_term(_m.reparam_kpe_weight, kpe, *key)
                        y = y + _cache[key]
                    return y

                m.forward = forward


def build_rows(args):
    """``{name: callable(x)}`` for every row."""
    import torch
    from pelk_mm.models import PeLK
    torch.manual_seed(0)
    train = PeLK(arch=args.arch).eval()
    _randomise_bn(train)
    bound = PeLK(arch=args.arch, small_kernel=None, conv_norm_cfg=None).eval()
    bound.load_state_dict(train.state_dict(), strict=False)  # same weights; the deleted modules are dropped
    deployed = PeLK(arch=args.arch).eval()
    deployed.load_state_dict(train.state_dict())
    deployed.switch_to_deploy()
    dense = PeLK(arch=args.arch, deploy=True).eval()
    dense.load_state_dict(deployed.state_dict())
    DenseFold(dense)
    rows = {'train form': train, 'deployed': deployed, 'dense-fold': dense, 'bound': bound}
    if args.onnx:
        rows.update(onnx_rows(deployed, args))
    return rows


def onnx_rows(deployed, args):
    """onnxruntime sessions of the deployed backbone in both conv forms (dynamic batch); each file is checked
    against PyTorch first (``ONNX_ERRORS``: max relative error per form and batch size)."""
    import numpy as np
    import onnxruntime as ort
    from pelk_mm.deploy import check_onnx, export_onnx
    rows = {}
    tmp = tempfile.mkdtemp(prefix='pelk_onnx_')
    for form in ('dense', 'structured'):
        path = osp.join(tmp, f'{form}.onnx')
        export_onnx(deployed, path, (args.size, args.size), form)
        ONNX_ERRORS[form] = check_onnx(path, deployed, (args.size, args.size), batches=args.batches,
                                       threads=args.threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        # NOTE: onnxruntime's idle workers spin after each run by default, stealing the cores from the PyTorch
        # row timed next (it slowed the train-form row by 35 % at batch 1 here); they sleep instead.
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
        name = sess.get_inputs()[0].name
        rows[f'onnxruntime, {form}'] = (lambda x, _s=sess, _n=name: _s.run(None, {_n: x.numpy().astype(np.float32)}))
    return rows


#: task -> (demo config, graph input H x W, image H x W of the timed test path)
TASK_CONFIGS = {
    'classifier': ('configs/demo/pelk_demo_in1k.py', (64, 64), (64, 64)),
    'segmentor': ('configs/demo/pelk_demo_upernet_ade20k.py', (64, 64), (128, 128)),
    'detector': ('configs/demo/pelk_demo_cascade_mask_rcnn_coco.py', (160, 160), (160, 160)),
}


def _rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def task_rows(task: str, threads: int):
    """``({row: callable(_)}, parity)`` of one task graph (see the module docstring)."""
    import copy

    import torch
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    from pelk_mm.deploy_tasks import export_task, ort_session, seg_logits, task_module
    config, graph_hw, image_hw = TASK_CONFIGS[task]
    from pelk_mm.deploy_tasks import quiet_mmengine
    cfg = load_cfg(osp.join(ROOT, config))
    torch.manual_seed(0)
    with quiet_mmengine():
        train, _ = build_model(cfg, deploy=False)
        train.init_weights()
    _randomise_bn(train)
    train.eval()
    deployed = copy.deepcopy(train)
    deployed.backbone.switch_to_deploy()
    path = osp.join(tempfile.mkdtemp(prefix='pelk_task_'), f'{task}.onnx')
    export_task(task_module(deployed, task), path, task, graph_hw)
    sess = ort_session(path, threads)
    x = torch.randn(1, 3, *image_hw, generator=torch.Generator().manual_seed(0))
    if task == 'classifier':
        def torch_row(m):
            return lambda _: m.head(m.extract_feat(x))

        def ort_row(_):
            return torch.from_numpy(sess.run(None, {'input': x.numpy()})[0])

        parity = lambda ref, got: dict(max_rel_err=_rel_err(got, ref))  # noqa: E731
    elif task == 'segmentor':
        metas = [dict(img_shape=image_hw, ori_shape=image_hw, pad_shape=image_hw)]

        def torch_row(m):
            return lambda _: m.inference(x, metas)

        def ort_row(_):
            return seg_logits(lambda t: torch.from_numpy(sess.run(None, {'input': t.contiguous().numpy()})[0]), x,
                              train.test_cfg, train.out_channels)

        parity = lambda ref, got: dict(max_rel_err=_rel_err(got, ref),  # noqa: E731
                                       pixels_differ=(got.argmax(1) != ref.argmax(1)).float().mean().item())
    else:
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=image_hw, scale_factor=(1.0, 1.0), ori_shape=image_hw, pad_shape=image_hw,
                    batch_input_shape=image_hw)
        feed = {'input': x.numpy(), 'img_shape': torch.tensor(image_hw).numpy(),
                'scale_factor': torch.tensor([1.0, 1.0]).numpy(), 'ori_shape': torch.tensor(image_hw).numpy()}

        def torch_row(m):
            return lambda _: m.predict(x, [DetDataSample(metainfo=dict(meta))], rescale=True)[0].pred_instances

        def ort_row(_):
            return [torch.from_numpy(o) for o in sess.run(None, feed)]

        def parity(ref, got):
            out = dict(num_dets=len(ref), num_dets_ort=int(got[0].shape[0]))
            if out['num_dets'] == out['num_dets_ort'] and len(ref):
                out['max_box_err'] = (got[0][:, :4] - ref.bboxes).abs().max().item()
                out['labels_equal'] = bool(torch.equal(got[1], ref.labels))
                out['mask_iou'] = ((got[2] & ref.masks).sum() / (got[2] | ref.masks).sum()).item()
            return out
    rows = {'PyTorch, train form': torch_row(train), 'PyTorch, deployed': torch_row(deployed),
            'onnxruntime': ort_row}
    with torch.inference_mode():
        result = parity(rows['PyTorch, train form'](None), rows['onnxruntime'](None))
    return rows, result


def run_tasks(args):
    """Time every ``--tasks`` graph against PyTorch (interleaved rounds); prints a table, returns JSON rows."""
    import torch
    out = []
    print(f'\nTask graphs (demo configs, random weights), one image per call, {args.threads} threads, '
          f'{args.task_reps} interleaved rounds; ratio = median of the per-round ratios to the PyTorch train form')
    print('| task | row | s / image | ÷ PyTorch train form |')
    print('|---|---|---|---|')
    for task in args.tasks:
        rows, parity = task_rows(task, args.threads)
        med, raw = time_interleaved(rows, None, args.task_reps)
        ref = raw['PyTorch, train form']
        for n in rows:
            ratio = statistics.median(t / u for t, u in zip(raw[n], ref))
            print(f'| {task} | {n} | {med[n]:.4f} | {ratio:.3f} |')
            out.append(dict(task=task, row=n, median_s=med[n], times_s=raw[n], ratio_to_train_form=ratio))
        cells = ', '.join(f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}' for k, v in parity.items())
        print(f'|  | onnxruntime vs PyTorch train form | {cells} | |')
        out.append(dict(task=task, parity=parity))
        del rows
        torch.set_num_threads(args.threads)
    return out


#: onnxruntime vs PyTorch, ``{form: {batch: max relative error}}`` (filled by :func:`onnx_rows`)
ONNX_ERRORS = {}

#: untimed rounds first: the first two forwards of a model at a new shape are 10-20x slower here
WARMUP = 3


def time_interleaved(rows, x, reps: int):
    import torch
    names = list(rows)
    times = {n: [] for n in names}
    with torch.inference_mode():
        for r in range(reps + WARMUP):
            order = names[r % len(names):] + names[:r % len(names)]
            for n in order:
                t0 = time.perf_counter()
                rows[n](x)
                dt = time.perf_counter() - t0
                if r >= WARMUP:  # the first rounds warm up (oneDNN primitives, allocator, onnxruntime arenas)
                    times[n].append(dt)
    return {n: statistics.median(v) for n, v in times.items()}, times


def main(argv=None):
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    tasks = run_tasks(args) if args.tasks else []
    if args.no_backbone:
        _write(args, dict(args=vars(args), machine=platform.processor() or platform.machine(),
                          torch=torch.__version__, tasks=tasks))
        return
    rows = build_rows(args)
    results = []
    for batch, reps in zip(args.batches, args.reps):
        x = torch.randn(batch, 3, args.size, args.size)
        med, raw = time_interleaved(rows, x, reps)
        for n in rows:
            results.append(dict(row=n, batch=batch, median_s=med[n], times_s=raw[n]))
    by = {(r['row'], r['batch']): r for r in results}
    for r in results:  # per-round ratios: both rows of a round saw the same machine state
        ref = by[('train form', r['batch'])]['times_s']
        r['ratio_to_train_form'] = statistics.median(t / u for t, u in zip(r['times_s'], ref))
    header = '| row | ' + ' | '.join(f'batch {b}: s / forward | ÷ train form' for b in args.batches) + ' |'
    print(f'PeLK-{args.arch} backbone inference, {args.size}x{args.size}, {args.threads} threads, '
          f'{platform.processor() or platform.machine()}, torch {torch.__version__}; medians of interleaved rounds, '
          f'ratios = median of the per-round ratios')
    print(header)
    print('|---|' + '---|---|' * len(args.batches))
    for n in rows:
        cells = [f'{by[(n, b)]["median_s"]:.3f} | {by[(n, b)]["ratio_to_train_form"]:.3f}' for b in args.batches]
        print(f'| {n} | ' + ' | '.join(cells) + ' |')
    for form, errs in ONNX_ERRORS.items():
        print(f'onnxruntime {form} vs PyTorch, max relative error: '
              + ', '.join(f'batch {b}: {e:.1e}' for b, e in errs.items()))
    _write(args, dict(args=vars(args), machine=platform.processor() or platform.machine(), torch=torch.__version__,
                      rows=results, onnx_max_rel_err=ONNX_ERRORS, tasks=tasks))


def _write(args, data) -> None:
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(data, f, indent=2)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
