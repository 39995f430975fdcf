"""The peripheral conv under export and tracing: it lowers itself to standard operators (the structured form by
default, the cropped dense conv on request) in jit traces, ``torch.export`` programs and both ONNX exporters, with
a dynamic batch; ``torch.compile(fullgraph=True)`` keeps the kernels and works before any eager call.

Error metric as in ``test_peripheral_conv_impls.py``: ``max|a - b| / max|b|`` against an independent float64
dense reference.
"""
import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

from pelk_mm.ops import (EXPORT_FORMS, export_conv_form, get_export_conv_form, is_export_trace, peripheral_conv2d,
                         peripheral_grid, resolve_impl)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRID = peripheral_grid(13)  # K = 13, 9 cells per axis


def ref_conv(x, weight, grid):
    sizes = torch.tensor(list(grid))
    dense = weight.repeat_interleave(sizes, dim=-1).repeat_interleave(sizes, dim=-2)
    return F.conv2d(x.double(), dense.double(), padding=sum(grid) // 2, groups=x.shape[1])


def rel_err(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


class OneConv(torch.nn.Module):
    """``peripheral_conv2d`` with a weight parameter, as a model holds it."""

    def __init__(self, channels=4, grid=GRID, impl='auto', dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.grid, self.impl = grid, impl
        self.weight = torch.nn.Parameter(torch.randn(channels, 1, len(grid), len(grid), generator=g, dtype=dtype))

    def forward(self, x):
        return peripheral_conv2d(x, self.weight, self.grid, self.impl) * 2


def inputs(n, dtype=torch.float32, c=4, h=16, w=18, seed=1):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv('PELK_MM_CONV_IMPL', raising=False)
    monkeypatch.delenv('PELK_MM_EXPORT_CONV_FORM', raising=False)


# ------------------------------------------------------------------------------------------------ the switch
def test_export_form_switch(monkeypatch):
    assert EXPORT_FORMS == {'structured': 'cumsum', 'dense': 'dense_cl'}
    assert get_export_conv_form() == 'structured'
    monkeypatch.setenv('PELK_MM_EXPORT_CONV_FORM', 'dense')
    assert get_export_conv_form() == 'dense'
    with export_conv_form('structured'):  # the context manager wins over the environment
        assert get_export_conv_form() == 'structured'
        with export_conv_form('dense'):
            assert get_export_conv_form() == 'dense'
        assert get_export_conv_form() == 'structured'
    assert get_export_conv_form() == 'dense'
    monkeypatch.setenv('PELK_MM_EXPORT_CONV_FORM', 'sparse')
    with pytest.raises(ValueError, match=r"\$PELK_MM_EXPORT_CONV_FORM='sparse'.*'dense', 'structured'"):
        get_export_conv_form()
    with pytest.raises(ValueError, match="export_conv_form='Dense'"):
        with export_conv_form('Dense'):
            pass


#: (implementation named, export form requested) -> what runs under a trace
TRACE_CHOICES = {('auto', 'structured'): 'cumsum', ('cpp', 'structured'): 'cumsum', ('fft', 'structured'): 'cumsum',
                 ('auto', 'dense'): 'dense_cl', ('dense', 'structured'): 'dense', ('box', 'dense'): 'box',
                 ('cumsum', 'dense'): 'cumsum'}


def test_choice_under_jit_trace():
    """Under a trace, 'auto' and the kernels give the export form; an explicit standard-op implementation stays."""
    x, m = inputs(1), OneConv()
    assert not is_export_trace()
    assert resolve_impl(x, m.weight, GRID).name not in EXPORT_FORMS.values()  # eager: a runtime kernel
    seen = {}
    for (impl, form), expected in TRACE_CHOICES.items():
        def f(x, w):
            seen[impl, form] = (is_export_trace(), resolve_impl(x, w, GRID, impl).name)
            return peripheral_conv2d(x, w, GRID, impl)

        with warnings.catch_warnings(), export_conv_form(form):
            warnings.simplefilter('ignore')
            torch.jit.trace(f, (x, m.weight.detach()), check_trace=False)
    assert seen == {key: (True, name) for key, name in TRACE_CHOICES.items()}


# ------------------------------------------------------------------------------------------------ jit trace
@pytest.mark.parametrize('form', ['structured', 'dense'])
def test_jit_trace_is_standard_and_batch_generic(form):
    """A jit trace (torch.jit.trace, mmdeploy's TorchScript backend, the jit FLOP counters) holds aten ops only and
    runs any batch size."""
    m = OneConv(dtype=torch.float64)
    with warnings.catch_warnings(), export_conv_form(form):
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(m, (inputs(2, torch.float64), ), check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert not any(k.startswith('pelk_mm::') for k in kinds), kinds
    assert ('aten::cumsum' in kinds) == (form == 'structured')
    x = inputs(3, torch.float64, seed=2)
    with torch.no_grad():
        assert rel_err(traced(x), 2 * ref_conv(x, m.weight, GRID)) < 1e-10


# ------------------------------------------------------------------------------------------------ torch.export
@pytest.mark.parametrize('form', ['structured', 'dense'])
def test_torch_export_is_standard_with_dynamic_batch(monkeypatch, form):
    monkeypatch.setenv('PELK_MM_EXPORT_CONV_FORM', form)  # the environment switch
    m = OneConv()
    ep = torch.export.export(m, (inputs(2), ), dynamic_shapes=({0: torch.export.Dim('batch')}, ))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert not any('pelk_mm' in t for t in targets), targets
    assert ('aten.cumsum.default' in targets) == (form == 'structured')
    convs = [n for n in ep.graph.nodes if n.op == 'call_function' and 'conv' in str(n.target)]
    kernel = {tuple(n.args[1].meta['val'].shape[-2:]) for n in convs}
    assert kernel == ({(1, 1)} if form == 'structured' else {(13, 13)})  # the contraction, or the dense kernel
    x = inputs(5, seed=3)
    with torch.no_grad():
        assert rel_err(ep.module()(x), 2 * ref_conv(x, m.weight, GRID)) < 1e-5


# ------------------------------------------------------------------------------------------------ ONNX
def _onnx_export(m, x, exporter):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if exporter == 'dynamo':
            pytest.importorskip('onnxscript')
            prog = torch.onnx.export(m, (x, ), dynamo=True, input_names=['x'],
                                     dynamic_shapes=({0: torch.export.Dim('batch')}, ), verbose=False)
            return prog.model_proto
        torch.onnx.export(m, (x, ), f, dynamo=False, input_names=['x'], dynamic_axes={'x': {0: 'batch'}})
    import onnx
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize('exporter, impl, form', [
    ('torchscript', 'auto', 'structured'), ('torchscript', 'cpp', 'dense'), ('dynamo', 'auto', 'structured'),
    ('dynamo', 'auto', 'dense')])
def test_plain_onnx_export(exporter, impl, form):
    """``torch.onnx.export`` of a module holding the op, no extra step: standard ONNX only, onnxruntime equal to
    PyTorch at another batch size; the structured form has no large Conv, the dense one a grouped K x K Conv."""
    pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    m = OneConv(impl=impl)
    with export_conv_form(form):
        proto = _onnx_export(m, inputs(2), exporter)
    nodes = list(proto.graph.node)
    assert all(n.domain in ('', 'ai.onnx') for n in nodes), {n.domain for n in nodes}
    convs = [{a.name: list(a.ints) or a.i for a in n.attribute} for n in nodes if n.op_type == 'Conv']
    if form == 'structured':
        assert 'CumSum' in {n.op_type for n in nodes}
        assert [c.get('kernel_shape', [1, 1]) for c in convs] == [[1, 1]] and convs[0]['group'] == 4
    else:
        assert 'CumSum' not in {n.op_type for n in nodes}
        assert len(convs) == 1 and convs[0]['kernel_shape'] == [13, 13] and convs[0]['group'] == 4
    sess = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    x = inputs(3, seed=4)
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert got.shape == x.shape and rel_err(got, 2 * ref_conv(x, m.weight, GRID)) < 1e-5


# ------------------------------------------------------------------------------------------------ torch.compile
def test_compile_fullgraph_before_any_eager_call():
    """In a fresh process, ``torch.compile(fullgraph=True)`` of the op before it ever ran eagerly: the C++
    extension's availability is decided outside the traced code (no graph break on its build lock)."""
    code = textwrap.dedent('''
        import torch
        from pelk_mm.ops import peripheral_conv2d, peripheral_grid
        from pelk_mm.ops import _impl_cpp
        g = peripheral_grid(13)
        x, w = torch.randn(1, 3, 9, 8), torch.randn(3, 1, len(g), len(g))
        f = torch.compile(lambda x, w: peripheral_conv2d(x, w, g) + 1, fullgraph=True, backend='aot_eager')
        y = f(x, w) - 1
        ref = peripheral_conv2d(x.double(), w.double(), g, 'dense')
        print(_impl_cpp.extension() is not None, ((y - ref).abs().max() / ref.abs().max()).item() < 1e-5)
    ''')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == 'True', proc.stdout



def test_export_trace_follows_torch_exports_flag_not_is_exporting(monkeypatch):
    """Whether the op lowers itself is decided by the flag ``torch.export`` sets, not by ``torch.compiler.
    is_exporting()``, which torch 2.11's dynamo answers with True in every ``torch.compile`` trace (so compiled
    models would run the standard-operator lowering instead of the kernels)."""
    monkeypatch.setattr(torch.compiler, 'is_exporting', lambda: True)  # torch 2.11's answer inside torch.compile
    assert not is_export_trace()
    monkeypatch.setattr(torch.compiler, '_is_exporting_flag', True)  # what torch.export sets while it captures
    assert is_export_trace()


def test_compile_keeps_the_kernel_and_export_lowers():
    """``torch.compile`` traces the op as its custom-op call; ``torch.export`` of the same model lowers it."""
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm.code)
        return gm

    model = OneConv()
    x = torch.randn(2, 4, 9, 8)
    y = torch.compile(model, backend=capture, fullgraph=True)(x)
    assert graphs and 'pelk_mm.periconv' in graphs[0] and 'cumsum' not in graphs[0], graphs
    assert rel_err(y, 2 * ref_conv(x, model.weight, GRID)) < 1e-5
    program = torch.export.export(model, (x,))
    assert 'cumsum' in str(program.graph) and 'periconv' not in str(program.graph)
