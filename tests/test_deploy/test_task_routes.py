"""The three task graphs by the standard routes, with no pelk_mm export step and the model in its train form: the
classifier, segmentor and detector modules of :func:`pelk_mm.deploy_tasks.task_module` on the demo configs (random
weights, BatchNorm statistics that matter) under ``torch.onnx.export(..., dynamo=True)`` (standard ONNX domain,
the peripheral conv as ``CumSum``, NMS in the detector graph, onnxruntime equal to PyTorch), ``torch.export``
(standard ATen only, equal to eager) and ``torch.compile(fullgraph=True)`` (equal to eager). The TorchScript
exporter of the same modules is what ``tools/deploy/export_onnx.py`` runs (test_task_export.py,
test_onnx_export.py, test_task_parity.py)."""
import os.path as osp

import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')  # the dynamo exporter's

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: task -> demo config, input height and width
TASKS = {'classifier': ('configs/demo/pelk_demo_in1k.py', (64, 64)),
         'segmentor': ('configs/demo/pelk_demo_upernet_ade20k.py', (64, 64)),
         'detector': ('configs/demo/pelk_demo_cascade_mask_rcnn_coco.py', (160, 160))}
#: a padded 160 x 160 detector input holding a 150 x 160 resized image of a 120 x 128 original (scale 1.25)
DET_META = dict(img_shape=(150, 160), scale_factor=(1.25, 1.25), ori_shape=(120, 128))


@pytest.fixture(scope='module', params=list(TASKS))
def case(request):
    """``(task, module, inputs, PyTorch outputs)``: the train-form task module, built once per task."""
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    from pelk_mm.deploy_tasks import det_meta_inputs, quiet_mmengine, task_module
    task = request.param
    config, (h, w) = TASKS[task]
    torch.manual_seed(0)
    with quiet_mmengine():
        model, _ = build_model(load_cfg(osp.join(ROOT, config)), deploy=False)
        model.init_weights()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # init_weights leaves the statistics 0 / 1, which would hide a wrong BatchNorm
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    module = task_module(model.eval(), task)
    inputs = (torch.randn(1, 3, h, w, generator=g), )
    if task == 'detector':
        inputs += det_meta_inputs(DET_META)
    with torch.no_grad():
        ref = _as_tuple(module(*inputs))
    if task == 'detector':
        assert ref[0].shape[0] > 10  # random weights: many boxes pass the score threshold
    return task, module, inputs, ref


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out, )


def assert_close(got, ref, tol: float) -> None:
    """Floating outputs within ``tol`` (relative to the largest reference value), integer outputs equal, pasted
    masks equal but for a border pixel flipping at 0.5."""
    got = _as_tuple(got)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        a = torch.as_tensor(a)
        assert a.shape == b.shape, (a.shape, b.shape)
        if b.dtype == torch.bool:
            assert (a != b).float().mean() < 1e-3
        elif b.is_floating_point():
            assert ((a - b).abs().max() / b.abs().max()).item() <= tol
        else:
            assert torch.equal(a.to(b.dtype), b)


def test_dynamo_onnx_export(case, tmp_path):
    import onnx

    from pelk_mm.deploy_tasks import ort_session
    task, module, inputs, ref = case
    path = str(tmp_path / f'{task}.onnx')
    with torch.no_grad():
        torch.onnx.export(module, inputs, path, dynamo=True)
    nodes = onnx.load(path).graph.node
    ops = {n.op_type for n in nodes}
    assert all(n.domain in ('', 'ai.onnx') for n in nodes), {n.domain for n in nodes}
    assert 'CumSum' in ops
    if task == 'detector':
        assert {'NonMaxSuppression', 'RoiAlign', 'GridSample'} <= ops
    sess = ort_session(path)
    got = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), inputs)})
    assert_close([torch.from_numpy(o) for o in got], ref, 1e-4)


def test_torch_export(case):
    task, module, inputs, ref = case
    ep = torch.export.export(module, inputs)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert not [t for t in targets if 'pelk_mm' in t] and 'aten.cumsum.default' in targets
    with torch.no_grad():
        assert_close(ep.module()(*inputs), ref, 1e-5)


def test_torch_compile_fullgraph(case):
    task, module, inputs, ref = case
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        assert_close(compiled(*inputs), ref, 1e-5)
