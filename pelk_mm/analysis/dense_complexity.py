"""Dense parameters and FLOPs of a config's model, the peripheral convolution counted as the dense K x K conv.

Uses mmengine's jit-based complexity analysis (:class:`mmengine.analysis.FlopAnalyzer`, the counter behind
``mmengine.analysis.get_model_complexity_info``; one fused multiply-add = one FLOP, as fvcore and the paper count)
on :func:`pelk_mm.analysis.forward.analysed_forward`. Two details matter for PeLK:

* the peripheral conv must be traced as a real convolution: every :class:`PeripheralConv2d` is switched to
  ``conv_impl='dense'`` (expand the shared weights to the dense kernel + ``F.conv2d``), so the jit sees an
  ``aten::_convolution`` with the dense ``K x K`` kernel; a custom kernel would be an opaque op counted as 0;
* the border-aware kernel-wise positional embedding is two band matmuls ``(H, K) @ (C, K, K) @ (K, W)``;
  mmengine's ``matmul`` handle ignores the broadcast batch dimension of the second operand, so a broadcast-aware
  handle is installed: ``C*H*K*K + C*H*K*W`` FLOPs per peripheral conv.

"params (dense-equivalent)" adds what dense kernels would have had in the same (train or deploy) form
(:func:`dense_equivalent_extra_params`). "params (non-zero)" counts non-zero entries, the number sparse-trained
models report (SLaK/PeLK at 40% sparsity); load such a model with ``checkpoint``. Non-zero FLOPs are counted by
:mod:`pelk_mm.analysis.nonzero_complexity`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .builder import build_model
from .forward import FEATURES_MODE, analysed_forward

__all__ = ['DEFAULT_SHAPES', 'broadcast_matmul_flop_jit', 'dense_equivalent_extra_params', 'analyze_model',
           'build_counted_model', 'analyze_config', 'format_count', 'format_table']

#: default input (H, W) per codebase
DEFAULT_SHAPES = {'mmpretrain': (224, 224), 'mmseg': (512, 512), 'mmdet': (800, 1280)}


def broadcast_matmul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """FLOPs of ``aten::matmul``/``aten::mm`` with numpy broadcasting of the batch dimensions of both operands."""
    from mmengine.analysis.jit_handles import get_shape
    a, b = (list(get_shape(v)) for v in inputs[:2])
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    assert a[-1] == b[-2], (a, b)
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    n = 1
    for d in batch:
        n *= d
    return int(n * a[-2] * a[-1] * b[-1])


def dense_equivalent_extra_params(model: nn.Module) -> Dict[str, int]:
    """``{module name: extra parameters}`` of every peripheral conv if its shared ``k' x k'`` weights were dense
    ``K x K`` kernels, in the form the conv is in.

    Train form: ``C * (K^2 - k'^2)`` (``k'`` = number of grid cells per axis). Deploy form: the same for the
    re-parameterised weight (``k'`` of :attr:`~PeripheralConv2d.deploy_grid`, which is ``K`` for
    ``kpe_mode='weight'``: nothing to add), plus ``C * (K^2 - k'^2)`` for the deployed kernel-wise positional
    embedding weight (``kpe_mode='input'``), which a dense conv would hold at ``K x K`` too.
    """
    from pelk_mm.models.layers import PeripheralConv2d
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, PeripheralConv2d):
            continue
        dense = m.channels * m.kernel_size ** 2
        if not m.deployed:
            k = len(m.grid)
            out[name] = dense - m.channels * k * k
            continue
        k = len(m.deploy_grid)
        extra = dense - m.channels * k * k
        if m.kpe_mode == 'input':
            extra += dense - m.reparam_kpe_weight.numel()
        out[name] = extra
    return out


class _Call(nn.Module):
    """Runs ``forward(x)`` so that the analysis traces one tensor input; the model's submodules appear as
    ``model.*``."""

    def __init__(self, model: nn.Module, forward):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, x):
        return self._forward(x)


def _flop_analyzer(module: nn.Module, x: torch.Tensor):
    from mmengine.analysis import FlopAnalyzer
    fa = FlopAnalyzer(module, (x, ))
    fa.set_op_handle('aten::matmul', broadcast_matmul_flop_jit, 'aten::mm', broadcast_matmul_flop_jit)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    fa.total()  # trace now, so failures surface here
    return fa


def _trace(model: nn.Module, codebase: str, x: torch.Tensor, notes: List[str]):
    """The FlopAnalyzer of the analysed forward and its mode; a detector whose whole forward does not trace falls
    back to backbone + neck (with a note)."""
    h, w = x.shape[-2:]
    if codebase != 'mmdet':
        forward, mode = analysed_forward(model, codebase)
        return _flop_analyzer(_Call(model, forward), x), mode
    try:
        forward, mode = analysed_forward(model, codebase, input_shape=(h, w))
        wrapper = _Call(model, forward)
        with torch.no_grad():
            wrapper(x)  # cheap sanity run; jit errors are caught below as well
        return _flop_analyzer(wrapper, x), mode
    except Exception as err:  # noqa: BLE001 - fall back to the part that always traces
        notes.append(f'whole-detector trace failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); '
                     f'counted backbone + neck only')
        forward, mode = analysed_forward(model, codebase, part='features')
        assert mode == FEATURES_MODE
        return _flop_analyzer(_Call(model, forward), x), mode


def analyze_model(model: nn.Module, codebase: str, shape: Sequence[int]) -> Dict[str, Any]:
    """FLOPs / params of ``model`` (built with ``conv_impl='dense'``) for a random ``(1, 3, H, W)`` input.

    Returns:
        dict: ``flops``, ``params``, ``params_dense_equivalent``, ``params_nonzero``, ``mode`` (what was traced),
        ``rows`` (an ordered table: name -> dict(params, params_dense_equivalent, flops[, peripheral_conv_flops])),
        ``input_shape`` and ``notes``.
    """
    from mmengine.analysis import parameter_count
    h, w = int(shape[0]), int(shape[1])
    x = torch.randn(1, 3, h, w)
    notes: List[str] = []
    fa, mode = _trace(model, codebase, x, notes)

    flops_by_module = fa.by_module()
    params_by_module = parameter_count(model)
    with torch.no_grad():
        nonzero = int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    extra = dense_equivalent_extra_params(model)

    def sum_extra(prefix: str) -> int:
        return sum(v for k, v in extra.items() if prefix == '' or k == prefix or k.startswith(prefix + '.'))

    def row(prefixes: Sequence[str]) -> Dict[str, int]:
        params = sum(params_by_module.get(p, 0) for p in prefixes)
        flops = sum(flops_by_module.get(('model.' + p) if p else 'model', 0) for p in prefixes)
        dense = params + sum(sum_extra(p) for p in prefixes)
        return dict(params=int(params), params_dense_equivalent=int(dense), flops=int(flops))

    rows: 'OrderedDict[str, Dict[str, int]]' = OrderedDict()
    rows['total'] = row([''])
    if hasattr(model, 'backbone'):
        rows['backbone'] = row(['backbone'])
        bb = model.backbone
        if hasattr(bb, 'stages') and hasattr(bb, 'downsample_layers'):
            for i in range(len(bb.stages)):
                prefixes = [f'backbone.downsample_layers.{i}', f'backbone.stages.{i}']
                if hasattr(bb, f'norm{i}'):
                    prefixes.append(f'backbone.norm{i}')
                rows[f'  stage {i}'] = row(prefixes)
                convs = [n for n in extra if n.startswith(f'backbone.stages.{i}.')]
                if convs:
                    periph = 0
                    for n in convs:
                        mod = flops_by_module.get('model.' + n, 0)
                        small = sum(flops_by_module.get('model.' + n + s, 0)
                                    for s in ('.small_conv', '.small_reparam'))  # train / deploy form
                        norms = sum(flops_by_module.get('model.' + n + s, 0) for s in ('.norm', '.small_norm'))
                        periph += mod - small - norms
                    rows[f'  stage {i}'].update(peripheral_conv_flops=int(periph))
    for name in ('neck', 'head', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head', 'bbox_head',
                 'mask_head'):
        if hasattr(model, name) and getattr(model, name) is not None and name in dict(model.named_children()):
            rows[name] = row([name])
    return dict(flops=rows['total']['flops'], params=rows['total']['params'],
                params_dense_equivalent=rows['total']['params_dense_equivalent'], params_nonzero=nonzero,
                mode=mode, rows=rows,
                input_shape=[1, 3, h, w], notes=notes)


def build_counted_model(cfg, checkpoint: Optional[str] = None,
                        mask_rois: Optional[int] = None) -> Tuple[nn.Module, str]:
    """``cfg.model`` as the counters see it: every peripheral conv ``conv_impl='dense'``, the constructors' weights
    (no ``init_weights``; the backbone's ``init_cfg`` dropped, so a later ``model.init_weights()`` runs the model's
    ``init_cfg`` only) or ``checkpoint``'s (loaded silently), eval mode, CPU.

    Returns:
        tuple: ``(model, codebase)``.
    """
    return build_model(cfg, checkpoint, conv_impl='dense', init_weights=False, backbone_init_cfg=False,
                       mask_rois=mask_rois, checkpoint_logger='silent')


def analyze_config(cfg, shape: Optional[Sequence[int]] = None, checkpoint: Optional[str] = None,
                   mask_rois: Optional[int] = None) -> Dict[str, Any]:
    """Build ``cfg.model`` for counting (:func:`build_counted_model`) and analyse it at ``shape`` (default per
    codebase, :data:`DEFAULT_SHAPES`).

    Args:
        mask_rois (int, optional): See :func:`pelk_mm.analysis.builder.limit_mask_rois`.

    Returns:
        dict: :func:`analyze_model`'s result plus ``codebase``.
    """
    model, codebase = build_counted_model(cfg, checkpoint, mask_rois)
    shape = tuple(shape) if shape else DEFAULT_SHAPES[codebase]
    result = analyze_model(model, codebase, shape)
    result['codebase'] = codebase
    return result


def format_count(n: float) -> str:
    """``n`` with a T/G/M/K suffix and three decimals (plain integer below 1000)."""
    for unit, div in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= div:
            return f'{n / div:.3f}{unit}'
    return str(int(n))


def format_table(result: Dict[str, Any]) -> str:
    """:func:`analyze_model`'s rows as a Markdown table (params, dense-equivalent params, FLOPs, peripheral conv
    FLOPs per stage)."""
    rows = result['rows']
    header = ('module', 'params', 'params (dense-equivalent)', 'FLOPs', 'of which peripheral conv')
    lines = [header]
    for name, r in rows.items():
        lines.append((name, format_count(r['params']), format_count(r['params_dense_equivalent']),
                      format_count(r['flops']),
                      format_count(r['peripheral_conv_flops']) if 'peripheral_conv_flops' in r else ''))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append('| ' + ' | '.join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                     for i, c in enumerate(line)) + ' |')
        if j == 0:
            out.append('|' + '|'.join('-' * (wd + 2) for wd in widths) + '|')
    return '\n'.join(out)
