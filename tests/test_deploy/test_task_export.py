"""Task graphs of pelk_mm.deploy_tasks on the demo configs with random weights: the detector's export forward is
mmdet's ``predict`` to the bit (class-specific and class-agnostic cascades), its ONNX graph holds NMS, RoiAlign and
mask pasting in standard operators and runs in onnxruntime as in PyTorch (also with nothing detected); the
segmentor's crop graph under mmseg's slide loop equals mmseg's slide inference; the export tool refuses a wrong
--output or a missing --shape in one line."""
import io
import os.path as osp
from contextlib import redirect_stderr

import pytest
import torch
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET = osp.join(ROOT, 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py')
SEG = osp.join(ROOT, 'configs/demo/pelk_demo_upernet_ade20k.py')
CLS = osp.join(ROOT, 'configs/demo/pelk_demo_in1k.py')

#: a padded 160 x 160 input holding a 150 x 160 resized image of a 120 x 128 original (scale 1.25)
META = dict(img_shape=(150, 160), scale_factor=(1.25, 1.25), ori_shape=(120, 128), pad_shape=(160, 160),
            batch_input_shape=(160, 160))


def _build(config, seed, deploy_form=True, **options):
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    cfg = load_cfg(config, options or None)
    torch.manual_seed(seed)
    model, _ = build_model(cfg, deploy=False)
    model.init_weights()
    with torch.no_grad():  # BN statistics that matter (init_weights leaves them 0 / 1)
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    if deploy_form:
        model.backbone.switch_to_deploy()
    return cfg, model.eval()


def _mmdet_predict(model, x):
    from mmdet.structures import DetDataSample
    with torch.no_grad():
        return model.predict(x, [DetDataSample(metainfo=dict(META))], rescale=True)[0].pred_instances


def _meta_inputs():
    from pelk_mm.deploy_tasks import det_meta_inputs
    return det_meta_inputs(META)


@pytest.mark.parametrize('agnostic', [False, True])
def test_detector_forward_is_mmdet_predict(agnostic):
    """DetectorExport in PyTorch gives mmdet's CascadeRoIHead.predict(rescale=True) exactly: same boxes, scores,
    labels, pasted masks (class-specific regression as the configs have it, and class-agnostic)."""
    from pelk_mm.deploy_tasks import DetectorExport
    options = {f'model.roi_head.bbox_head.{i}.reg_class_agnostic': agnostic for i in range(3)}
    _, model = _build(DET, 1, **options)
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    ref = _mmdet_predict(model, x)
    assert len(ref) > 10  # random weights: many boxes pass score_thr=0.05 (4 classes + background)
    with torch.no_grad():
        dets, labels, masks = DetectorExport(model)(x, *_meta_inputs())
    assert torch.equal(dets[:, :4], ref.bboxes) and torch.equal(dets[:, 4], ref.scores)
    assert torch.equal(labels, ref.labels) and torch.equal(masks, ref.masks)
    assert masks.shape[1:] == (120, 128) and masks.dtype == torch.bool


def test_detector_onnx_matches_pytorch(tmp_path):
    """The detector graph: standard ONNX domain only, NMS / RoiAlign / GridSample / TopK in it, the padded-input
    meta (img_shape, scale_factor, ori_shape) honoured, onnxruntime equal to PyTorch; a graph whose score
    threshold nothing passes returns empty outputs instead of failing."""
    import onnx

    from pelk_mm.deploy_tasks import DetectorExport, export_task, ort_session
    _, model = _build(DET, 2)
    module = DetectorExport(model).eval()
    path = str(tmp_path / 'det.onnx')
    assert export_task(module, path, 'detector', (160, 160)) == (
        ['input', 'img_shape', 'scale_factor', 'ori_shape'], ['dets', 'labels', 'masks'])
    graph = onnx.load(path).graph
    ops = {n.op_type for n in graph.node}
    assert {'NonMaxSuppression', 'RoiAlign', 'GridSample', 'TopK', 'CumSum'} <= ops
    assert all(n.domain in ('', 'ai.onnx') for n in graph.node)
    roi_align = [n for n in graph.node if n.op_type == 'RoiAlign']
    assert all({a.name: a.s for a in n.attribute}['coordinate_transformation_mode'] == b'half_pixel'
               for n in roi_align)  # mmcv's aligned=True

    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = module(x, *_meta_inputs())
    sess = ort_session(path)
    names = [i.name for i in sess.get_inputs()]
    got = [torch.from_numpy(o) for o in sess.run(None, {n: a.numpy() for n, a in zip(names, (x, ) + _meta_inputs())})]
    assert got[0].shape == ref[0].shape and ref[0].shape[0] > 10
    assert (got[0] - ref[0]).abs().max() < 1e-3 and torch.equal(got[1], ref[1])
    assert got[2].shape == (ref[0].shape[0], 120, 128)
    assert (got[2] != ref[2]).float().mean() < 1e-3  # a border pixel may flip at 0.5

    model.test_cfg.rcnn.score_thr = 1.0  # softmax scores never exceed it
    empty = str(tmp_path / 'empty.onnx')
    export_task(DetectorExport(model).eval(), empty, 'detector', (160, 160))
    sess = ort_session(empty)
    out = sess.run(None, {n: a.numpy() for n, a in zip(names, (x, ) + _meta_inputs())})
    assert [o.shape for o in out] == [(0, 5), (0, ), (0, 120, 128)]


def test_adaptive_pooling_export_form():
    """UperNet's pyramid pooling (1, 2, 3, 6 bins) on maps it does not divide: the export form (two MatMul with
    PyTorch's bins) equals F.adaptive_avg_pool2d; eager calls run the PyTorch op."""
    from pelk_mm.deploy_tasks import ExportableAdaptiveAvgPool2d, _pool_matrix
    x = torch.randn(2, 3, 16, 7)
    for out in [(1, 1), (2, 2), (3, 3), (6, 6), (6, 3)]:
        rows, cols = _pool_matrix(16, out[0]), _pool_matrix(7, out[1])
        assert torch.allclose(rows @ x @ cols.t(), F.adaptive_avg_pool2d(x, out), atol=1e-6)
    pool = ExportableAdaptiveAvgPool2d(3)
    assert torch.equal(pool(x), F.adaptive_avg_pool2d(x, 3))


def test_segmentor_slide_graph_is_mmseg_slide_inference(tmp_path):
    """The demo segmentor's 64 x 64 crop graph (pyramid pooling of 3 and 6 bins on a 2 x 2 map) under
    pelk_mm.deploy_tasks.seg_logits equals mmseg's slide inference on a 96 x 128 image (6 overlapping tiles)."""
    from pelk_mm.deploy_tasks import SegmentorExport, export_task, ort_session, seg_logits
    _, model = _build(SEG, 4)
    assert model.test_cfg.mode == 'slide'
    module = SegmentorExport(model).eval()
    path = str(tmp_path / 'seg.onnx')
    export_task(module, path, 'segmentor', (64, 64))
    sess = ort_session(path)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model.inference(x, [dict(img_shape=(96, 128), ori_shape=(96, 128), pad_shape=(96, 128))] * 2)
    got = seg_logits(lambda t: torch.from_numpy(sess.run(None, {'input': t.contiguous().numpy()})[0]), x,
                     model.test_cfg, model.out_channels)
    assert got.shape == ref.shape == (2, 150, 96, 128)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    assert torch.equal(got.argmax(1), ref.argmax(1))


def _tool_error(argv):
    import importlib.util

    from pelk_mm.apis.cli import run_main
    from pelk_mm.errors import DeployError
    spec = importlib.util.spec_from_file_location('export_onnx_tool', osp.join(ROOT, 'tools/deploy/export_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    err = io.StringIO()
    with redirect_stderr(err):
        code = run_main(lambda: tool.main(argv), extra=(DeployError, ))
    return code, err.getvalue().strip().splitlines()


@pytest.mark.parametrize('config, extra, expected', [
    (SEG, ['--output', 'detector'], '--output detector needs a mmdet config'),
    (CLS, ['--output', 'segmentor'], '--output segmentor needs a mmseg config'),
    (DET, [], '--output detector of'),
    (SEG, ['--cfg-options', 'model.test_cfg.mode=whole'], '--output segmentor of'),
    (DET, ['--output', 'backbone', '--val'], '--val scores a task graph'),
], ids=['detector-of-seg', 'segmentor-of-cls', 'det-no-shape', 'whole-seg-no-shape', 'val-backbone'])
def test_export_tool_refuses_in_one_line(tmp_path, config, extra, expected):
    code, lines = _tool_error([config, str(tmp_path / 'none.pth'), str(tmp_path / 'x.onnx')] + extra)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / 'x.onnx').exists()


def test_export_tool_prints_its_answer(tmp_path):
    """The tool's whole output is its summary line: no init-weight report, loader notice or mmseg build warning."""
    import os
    import subprocess
    import sys
    _, model = _build(SEG, 4, deploy_form=False)
    ckpt, out = str(tmp_path / 'seg.pth'), str(tmp_path / 'seg.onnx')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    proc = subprocess.run([sys.executable, 'tools/deploy/export_onnx.py', SEG, ckpt, out], cwd=ROOT, text=True,
                          capture_output=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = (proc.stdout + proc.stderr).splitlines()
    assert len(printed) == 1 and printed[0].startswith(f'wrote {out}: segmentor'), printed[:6]
    assert 'onnxruntime vs PyTorch: max relative error' in printed[0]


def test_bench_deploy_task_table(tmp_path, capsys):
    """benchmarks/bench_deploy.py --tasks classifier --no-backbone: the classifier graph timed against PyTorch
    (train form, deployed) in one interleaved run, a markdown table and JSON with onnxruntime's difference."""
    import importlib.util
    import json
    spec = importlib.util.spec_from_file_location('bench_deploy', osp.join(ROOT, 'benchmarks/bench_deploy.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(['--tasks', 'classifier', '--no-backbone', '--task-reps', '2', '--threads', '1', '--out',
                    str(tmp_path / 'deploy.json')])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert '| classifier | onnxruntime |' in printed and '| classifier | PyTorch, train form |' in printed
    tasks = json.load(open(tmp_path / 'deploy.json'))['tasks']
    rows = [r for r in tasks if 'row' in r]
    assert [r['row'] for r in rows] == ['PyTorch, train form', 'PyTorch, deployed', 'onnxruntime']
    assert all(len(r['times_s']) == 2 and r['median_s'] > 0 for r in rows)
    assert [r['parity']['max_rel_err'] for r in tasks if 'parity' in r][0] < 1e-4
