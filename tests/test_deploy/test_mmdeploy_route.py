"""The optional mmdeploy 1.3 route (skipped without mmdeploy): pelk_mm.deploy_tasks.mmdeploy_fixes makes its export
run on torch 2.x -- the TorchScript exporter that applies its rewriters, the ``_cast_Long`` its RoIAlign symbolic
imports, exact adaptive pooling instead of its ``floor(size / bins)`` windows -- and undoes every fix on exit;
mmdeploy's graph of the demo UperNet segmentor (pyramid pooling of 3 and 6 bins on a 2 x 2 map) equals PyTorch in
onnxruntime."""
import io
import os.path as osp
import warnings

import pytest
import torch

mmdeploy = pytest.importorskip('mmdeploy')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG = osp.join(ROOT, 'configs/demo/pelk_demo_upernet_ade20k.py')


def test_fixes_apply_inside_and_are_undone():
    import torch.onnx.symbolic_opset9 as opset9

    from pelk_mm.deploy_tasks import mmdeploy_fixes
    export, had_cast = torch.onnx.export, hasattr(opset9, '_cast_Long')
    with mmdeploy_fixes():
        from torch.onnx.symbolic_opset9 import _cast_Long  # noqa: F401  (what mmdeploy's RoIAlign symbolic imports)
        assert torch.onnx.export.keywords == {'dynamo': False}
    assert torch.onnx.export is export and hasattr(opset9, '_cast_Long') == had_cast
    from mmdeploy.core import FUNCTION_REWRITER
    records = FUNCTION_REWRITER._registry._rewrite_records['torch.nn.functional.adaptive_avg_pool2d']
    assert not any('_exact_adaptive_avg_pool2d' in getattr(r['_object'], '__name__', '') for r in records)


def test_mmdeploy_roi_align_symbolic_runs(tmp_path):
    """mmdeploy's rewrite of mmcv's RoIAlign symbolic (onnxruntime backend, opset 17: RoiAlign, half-pixel) exports
    with the restored _cast_Long and equals mmcv in onnxruntime."""
    import onnxruntime as ort
    from mmcv.ops import RoIAlign
    from mmdeploy.core import RewriterContext
    from mmengine.config import Config

    from pelk_mm.deploy_tasks import mmdeploy_fixes
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    feat = torch.randn(1, 8, 32, 40)
    rois = torch.tensor([[0, 3.2, 4.1, 60.0, 90.3], [0, 10.0, 0.0, 150.0, 120.0], [0, 0.5, 0.5, 9.0, 30.0]])
    deploy_cfg = Config(dict(onnx_config=dict(type='onnx', opset_version=17),
                             backend_config=dict(type='onnxruntime'), codebase_config=dict(type='mmdet')))
    f = io.BytesIO()
    with mmdeploy_fixes(), RewriterContext(cfg=deploy_cfg, backend='onnxruntime', opset=17), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(layer, (feat, rois), f, opset_version=17, input_names=['feat', 'rois'])
    sess = ort.InferenceSession(f.getvalue(), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(sess.run(None, {'feat': feat.numpy(), 'rois': rois.numpy()})[0])
    with torch.no_grad():
        ref = layer(feat, rois)
    assert (got - ref).abs().max() < 1e-5


def test_mmdeploy_segmentor_graph_matches_pytorch(tmp_path):
    """export_onnx.py --mmdeploy's export (mmdeploy.apis.torch2onnx) of the demo segmentor's 64 x 64 crop graph:
    logits equal to PyTorch's encode_decode in onnxruntime."""
    from pelk_mm.analysis.builder import load_cfg
    from pelk_mm.deploy import build_model
    from pelk_mm.deploy_tasks import SegmentorExport, mmdeploy_export, ort_session
    cfg = load_cfg(SEG)
    torch.manual_seed(0)
    model, _ = build_model(cfg, deploy=False)
    model.init_weights()
    ckpt = str(tmp_path / 'seg.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    path = mmdeploy_export(SEG, ckpt, str(tmp_path / 'mmdeploy' / 'seg.onnx'), (64, 64))
    sess = ort_session(path)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        ref = SegmentorExport(model.eval())(x)
    assert got.shape == ref.shape == (1, 150, 64, 64)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
