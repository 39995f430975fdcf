"""ONNX export of PeLK models in both conv forms: standard operators only, the structured form without any
large-kernel Conv, onnxruntime equal to PyTorch (fp32, dynamic batch), with a plain ``torch.onnx.export`` (both
exporters, train and deploy form, no extra step) and with the export tool end to end."""
import importlib.util
import io
import os.path as osp
import sys
import warnings
from contextlib import redirect_stderr

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


def conv_kernel_sizes(path):
    import onnx
    sizes = []
    for node in onnx.load(path).graph.node:
        if node.op_type == 'Conv':
            sizes += [max(a.ints) for a in node.attribute if a.name == 'kernel_shape']
    return sizes


@pytest.mark.parametrize('form', ['structured', 'dense'])
@pytest.mark.parametrize('conv_type, kpe_mode', [('peripheral', 'input'), ('peripheral', 'bias'),
                                                 ('peripheral', None), ('stripe', None)])
def test_backbone_export_matches_pytorch(helpers, tmp_path, form, conv_type, kpe_mode):
    import onnx

    from pelk_mm.deploy import check_onnx, export_onnx, exportable
    train = helpers.tiny_pelk(0, conv_type=conv_type, kpe_mode=kpe_mode)
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        expected = [o.clone() for o in train(x)]
    train.switch_to_deploy()
    module = exportable(train, 'backbone')
    path = str(tmp_path / f'{form}.onnx')
    names = export_onnx(module, path, (64, 96), form)
    assert names == ['feat0', 'feat1', 'feat2', 'feat3']
    graph = onnx.load(path).graph
    assert all(n.domain in ('', 'ai.onnx') for n in graph.node)  # standard operators only
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    kernels = conv_kernel_sizes(path)
    if form == 'structured' and conv_type == 'peripheral':
        # every peripheral conv is CumSum + Slice + MatMul: only the 4x4 stem, the 2x2 downsampling and the 5x5
        # branches kept where the 5x5 kernel does not fit a 3x3 centre (stage 2) remain Convs
        assert max(kernels) == 5 and kernels.count(5) == 2 and 'CumSum' in {n.op_type for n in graph.node}
    elif conv_type == 'peripheral':
        assert max(kernels) == 13  # stage 0's dense kernel (13 fits the 16x24 map uncropped)
    errs = check_onnx(path, module, (64, 96), batches=(1, 3))
    assert max(errs.values()) <= 1e-4
    # and against the train form (an independent path: BNs, small branch, dense KPE term)
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = [torch.from_numpy(o) for o in sess.run(None, {'input': x.numpy()})]
    assert helpers.max_rel_err(got, expected) <= 1e-4


def _plain_export(module, x, exporter):
    """``torch.onnx.export`` as a user's script calls it (batch dynamic), the ONNX model proto back."""
    import onnx
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if exporter == 'dynamo':
            pytest.importorskip('onnxscript')
            return torch.onnx.export(module, (x, ), dynamo=True, input_names=['input'], verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim('batch')}, )).model_proto
        f = io.BytesIO()
        torch.onnx.export(module, (x, ), f, dynamo=False, input_names=['input'],
                          dynamic_axes={'input': {0: 'batch'}})
        return onnx.load_from_string(f.getvalue())


def _run_ort(proto, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    return [torch.from_numpy(o) for o in sess.run(None, {'input': x.numpy()})]


def _conv_attrs(proto):
    return [{a.name: list(a.ints) or a.i for a in n.attribute} for n in proto.graph.node if n.op_type == 'Conv']


@pytest.mark.parametrize('exporter, form', [('torchscript', 'train'), ('torchscript', 'deploy'),
                                            ('dynamo', 'train')])
def test_plain_torch_onnx_export(helpers, exporter, form):
    """``torch.onnx.export(PeLK(...), x)`` with no pelk_mm step: the peripheral convs lower themselves to the
    structured form (CumSum, no large-kernel Conv), standard domain only, onnxruntime equal to PyTorch at another
    batch size."""
    model = helpers.tiny_pelk(3)
    if form == 'deploy':
        model.switch_to_deploy()
    proto = _plain_export(model, torch.randn(2, 3, 64, 96), exporter)
    assert all(n.domain in ('', 'ai.onnx') for n in proto.graph.node), {n.domain for n in proto.graph.node}
    assert 'CumSum' in {n.op_type for n in proto.graph.node}
    assert max(max(c['kernel_shape']) for c in _conv_attrs(proto)) <= 5  # stem, downsampling, small kernels
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        expected = list(model(x))
    assert helpers.max_rel_err(_run_ort(proto, x), expected) <= 1e-5


def test_plain_torch_onnx_export_dense_request(helpers):
    """``with pelk_mm.ops.export_conv_form('dense')``: each peripheral conv is one grouped K x K Conv."""
    from pelk_mm.ops import export_conv_form
    model = helpers.tiny_pelk(4, kpe_mode=None)
    with export_conv_form('dense'):
        proto = _plain_export(model, torch.randn(1, 3, 64, 96), 'torchscript')
    assert 'CumSum' not in {n.op_type for n in proto.graph.node}
    large = [c for c in _conv_attrs(proto) if max(c['kernel_shape']) > 5]
    # stage 0 (16 x 24 map): K = 13 whole; stage 1 (8 x 12): K = 11 whole; stage 2 (4 x 6): K = 9 cropped to 7 x 9
    assert [(c['kernel_shape'], c['group']) for c in large] == [([13, 13], 6), ([11, 11], 9), ([7, 9], 12),
                                                                 ([7, 9], 12)]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = list(model(x))
    assert helpers.max_rel_err(_run_ort(proto, x), expected) <= 1e-5


def _load_tool():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', osp.join(ROOT, 'tools/deploy/export_onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_export_tool_classifier(helpers, tmp_path, capsys):
    """Classifier logits from a train-form checkpoint of the demo config, checked in onnxruntime by the tool."""
    import onnxruntime as ort

    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    cfg = load_cfg(osp.join(ROOT, 'configs/demo/pelk_demo_in1k.py'))
    model, _ = build_model(cfg, deploy=False)
    helpers.randomise(model.backbone, 5)
    ckpt, out = str(tmp_path / 'train.pth'), str(tmp_path / 'cls.onnx')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    tool = _load_tool()
    assert tool.main([osp.join(ROOT, 'configs/demo/pelk_demo_in1k.py'), ckpt, out, '--shape', '64', '64']) == 0
    printed = capsys.readouterr().out
    assert 'onnxruntime vs PyTorch, max relative error' in printed and 'CumSum' in printed
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = model.head(model.extract_feat(x))  # the train form
    got = torch.from_numpy(ort.InferenceSession(out, providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})[0])
    assert got.shape == (4, 6) and ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_missing_onnxruntime_is_one_line(monkeypatch, tmp_path):
    from pelk_mm.apis.cli import run_main
    from pelk_mm.errors import DeployError
    tool = _load_tool()
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` now raises ImportError
    err = io.StringIO()
    with redirect_stderr(err):
        code = run_main(lambda: tool.main(['configs/demo/pelk_demo_in1k.py', 'x.pth', str(tmp_path / 'a.onnx')]),
                        extra=(DeployError, ))
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'pip install' in lines[0] and 'onnxruntime' in lines[0], lines
