"""A PeLK backbone under the stock tracers: mmengine's jit FLOP counter (``get_model_complexity_info``, the
``get_flops.py`` of mmpretrain / mmdet) counts every peripheral conv at its structured cost, ``torch.export`` gives
a standard-operator program with a dynamic batch, ``torch.compile(fullgraph=True)`` compiles without warnings.

Needs mmengine (the backbone's registry); skipped without it.
"""
import copy
import warnings

import pytest
import torch

pytest.importorskip('mmengine')

from pelk_mm.models import PeLK  # noqa: E402
from pelk_mm.models.layers import PeripheralConv2d  # noqa: E402
from pelk_mm.ops import _impl_onnx  # noqa: E402

#: kernels 13..5 on a 64 px input: stage maps 16, 8, 4, 2 px, so stages 1-3 crop their kernels to the map
TINY = dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 48], kernel_sizes=[13, 11, 9, 5], center_sizes=[5, 5, 3, 3])


def tiny_pelk(seed=0, **kwargs):
    torch.manual_seed(seed)
    return PeLK(arch=copy.deepcopy(TINY), out_indices=(0, 1, 2, 3), **kwargs).eval()


def rel_err(outs, refs) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, refs))


def conv_inputs(model, x):
    """``{module name: (input shape, grid)}`` of every peripheral conv in one forward."""
    shapes, hooks = {}, []

    def hook(name, grid):
        def record(mod, args, out):
            shapes[name] = (tuple(args[0].shape), grid)
        return record

    for name, m in model.named_modules():
        if isinstance(m, PeripheralConv2d):
            hooks.append(m.register_forward_hook(hook(name, m.deploy_grid if m.deployed else m.grid)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize('deploy', [False, True])
def test_mmengine_flop_counter_sees_the_structured_cost(deploy):
    """The stock counter: no unsupported pelk_mm operator, and each peripheral conv's 'conv' FLOPs are its small
    branch's plus exactly ``N C H W (Gh + 1) Gw`` (the k' x k' contraction, cropped to the map), batch included."""
    from mmengine.analysis import FlopAnalyzer, get_model_complexity_info
    model = tiny_pelk()
    if deploy:
        model.switch_to_deploy()
    info = get_model_complexity_info(model, input_shape=(3, 64, 64), show_table=False, show_arch=False)
    assert info['flops'] > 0
    for batch in (1, 2):
        x = torch.randn(batch, 3, 64, 64)
        fa = FlopAnalyzer(model, (x, )).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        total = fa.total()
        if batch == 1:
            assert total == info['flops']
        assert not [op for op in fa.unsupported_ops() if 'pelk' in op], fa.unsupported_ops()
        per_op = fa.by_module_and_operator()
        convs = conv_inputs(model, x)
        assert len(convs) == 5
        for name, (shape, grid) in convs.items():
            small = sum(fa.by_module().get(f'{name}.{s}', 0) for s in ('small_conv', 'small_reparam'))
            structured = _impl_onnx.structured_macs(shape, grid)
            assert per_op[name]['conv'] - small == structured > 0, (name, shape, grid)
    # stage 0 (16 x 16 map, K = 13 fits): the contraction is (k' + 1) k' per pixel, k' = len(grid)
    name, (shape, grid) = next(iter(conv_inputs(model, torch.randn(1, 3, 64, 64)).items()))
    n, c, h, w = shape
    k = len(grid)
    assert _impl_onnx.structured_macs(shape, grid) == n * c * h * w * (k + 1) * k < n * c * h * w * 13 ** 2


def test_torch_export_of_the_backbone():
    """``torch.export`` with a dynamic batch: standard ATen only, equal to eager at another batch size; eager
    keeps working afterwards (nothing traced is cached for it)."""
    model = tiny_pelk(1)
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(model, (x, ), dynamic_shapes=({0: torch.export.Dim('batch')}, ))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert not any('pelk_mm' in t for t in targets) and 'aten.cumsum.default' in targets
    x3 = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x3)
        assert rel_err(ep.module()(x3), ref) < 1e-5
        assert rel_err(model(x3), ref) == 0


def test_torch_compile_fullgraph_of_the_backbone():
    """``torch.compile(fullgraph=True)`` of the backbone (kernels as opaque custom ops) matches eager and warns
    nothing (the KPE plan's cache is bypassed while compiling)."""
    torch._dynamo.reset()
    model = tiny_pelk(2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)  # eager first: the kernels are built, the KPE plans cached
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter('always')
        got = compiled(x)
    assert not [str(w.message) for w in caught if 'lru_cache' in str(w.message)]
    assert rel_err(got, ref) < 1e-5
