"""Parameters and FLOPs of a config's model, with the peripheral convolution counted as the dense K x K conv.

Uses mmengine's jit-based complexity analysis (:class:`mmengine.analysis.FlopAnalyzer`, the counter behind
``mmengine.analysis.get_model_complexity_info``; one fused multiply-add = one FLOP, as fvcore and the paper count).
Two details matter for PeLK:

* the peripheral conv must be traced as a real convolution: every :class:`PeripheralConv2d` is switched to
  ``conv_impl='dense'`` (expand the shared weights to the dense kernel + ``F.conv2d``), so the jit sees an
  ``aten::_convolution`` with the dense ``K x K`` kernel; a custom kernel would be an opaque op counted as 0;
* the border-aware kernel-wise positional embedding is two band matmuls ``(H, K) @ (C, K, K) @ (K, W)``;
  mmengine's ``matmul`` handle ignores the broadcast batch dimension of the second operand, so a broadcast-aware
  handle is installed: ``C*H*K*K + C*H*K*W`` FLOPs per peripheral conv.

"params (dense-equivalent)" adds what the dense kernels would have had: ``sum C * (K^2 - k'^2)`` over the
peripheral convs (``k'`` = number of grid cells per axis). "params (non-zero)" counts non-zero entries, the number
sparse-trained models report (SLaK/PeLK at 40% sparsity); load such a model with ``checkpoint``.
"""
from __future__ import annotations

import copy
import importlib
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['DEFAULT_SHAPES', 'broadcast_matmul_flop_jit', 'build_model_for_analysis', 'analyze_model',
           'limit_mask_rois', 'analyze_config', 'format_table']

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


def _peripheral_convs(model: nn.Module):
    from pelk_mm.models.layers.peripheral_conv import PeripheralConv2d
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PeripheralConv2d)]


def force_dense_peripheral_conv(model: nn.Module) -> int:
    """Set ``conv_impl='dense'`` on every peripheral conv (so the jit traces a real conv). Returns how many."""
    convs = _peripheral_convs(model)
    for _, m in convs:
        m.conv_impl = 'dense'
        m._kpe_cache = None
    return len(convs)


def dense_equivalent_extra_params(model: nn.Module) -> Dict[str, int]:
    """``{module name: C * (K^2 - k'^2)}`` for every (not deployed) peripheral conv."""
    out = {}
    for name, m in _peripheral_convs(model):
        if getattr(m, 'deployed', False):
            continue
        k = len(m.grid)
        out[name] = m.channels * (m.kernel_size ** 2 - k * k)
    return out


def limit_mask_rois(model: nn.Module, num_rois: int) -> None:
    """Feed only the first ``num_rois`` RoIs to the mask head(s) of an mmdet two-stage detector.

    mmdet 3's tensor-mode ``_forward`` runs every mask head on all RPN proposals (1000 per image); mmdet 2's
    ``forward_dummy``, which produced the FLOPs of the Swin/ConvNeXt/PeLK detection tables, sent 1000 proposals
    through the bbox heads but only the first 100 through the mask heads. ``num_rois=100`` reproduces that
    convention in one traced run (for analysis only: the other RoIs get zero mask logits). Works for
    ``StandardRoIHead`` and ``CascadeRoIHead`` (one mask head per stage).
    """
    if num_rois < 1:
        raise ValueError(f'mask_rois must be a positive number of RoIs, got {num_rois}')
    roi_head = getattr(model, 'roi_head', None)
    if roi_head is None or not getattr(roi_head, 'with_mask', False):
        raise ValueError(f'mask_rois={num_rois} needs a detector with a mask RoI head '
                         f'({type(model).__name__} has none)')
    heads = roi_head.mask_head if isinstance(roi_head.mask_head, nn.ModuleList) else [roi_head.mask_head]
    for head in heads:
        original = head.forward

        def forward(x, *args, _original=original, **kwargs):
            # the first ``num_rois`` RoIs through the head; zeros for the rest keep the (R, ...) shape that the
            # RoI head splits per image (building them costs no multiply-adds)
            out = _original(x[:num_rois], *args, **kwargs)
            if x.shape[0] <= num_rois:
                return out
            return torch.cat([out, out.new_zeros((x.shape[0] - out.shape[0], ) + tuple(out.shape[1:]))])

        head.forward = forward


def build_model_for_analysis(cfg, mask_rois: Optional[int] = None) -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` in its codebase's scope, without pretrained weights, SyncBN reverted, eval mode;
    ``mask_rois`` limits the RoIs of a detector's mask heads (:func:`limit_mask_rois`)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    from pelk_mm.config import get_codebase, register_codebase
    codebase = get_codebase(cfg)
    register_codebase(codebase)
    init_default_scope(codebase)
    model_cfg = copy.deepcopy(cfg.model)
    backbone = model_cfg.get('backbone', None)
    if backbone is not None:
        backbone['init_cfg'] = None  # no checkpoint download for counting
        if 'PeLK' in str(backbone.get('type', '')):
            backbone['conv_impl'] = 'dense'
    registry = importlib.import_module(f'{codebase}.registry')
    model = registry.MODELS.build(model_cfg)
    model = revert_sync_batchnorm(model)
    force_dense_peripheral_conv(model)
    if mask_rois is not None:
        if codebase != 'mmdet':
            raise ValueError(f'mask_rois={mask_rois} applies to mmdet detectors, not to a {codebase} model')
        limit_mask_rois(model, mask_rois)
        model.analysis_mask_rois = mask_rois
    model.eval()
    return model, codebase


class _Call(nn.Module):
    """Runs ``fn(model, x)`` so that the analysis traces one tensor input; submodules appear as ``model.*``."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self._fn = fn

    def forward(self, x):
        return self._fn(self.model, x)


def _det_data_samples(h: int, w: int):
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1., 1.), img_id=0)
    return [DetDataSample(metainfo=meta)]


def _flop_analyzer(module: nn.Module, x: torch.Tensor):
    from mmengine.analysis import FlopAnalyzer
    fa = FlopAnalyzer(module, (x, ))
    fa.set_op_handle('aten::matmul', broadcast_matmul_flop_jit, 'aten::mm', broadcast_matmul_flop_jit)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    fa.total()  # trace now, so failures surface here
    return fa


def analyze_model(model: nn.Module, codebase: str, shape: Sequence[int]) -> Dict[str, Any]:
    """FLOPs / params of ``model`` (built by :func:`build_model_for_analysis`) for a ``(1, 3, H, W)`` input.

    Returns a dict with ``flops``, ``params``, ``params_dense_equivalent``, ``mode`` (what was traced), ``rows``
    (an ordered table: name -> dict(params, params_dense_equivalent, flops)) and ``notes``.
    """
    from mmengine.analysis import parameter_count
    h, w = int(shape[0]), int(shape[1])
    x = torch.randn(1, 3, h, w)
    notes: List[str] = []
    if codebase == 'mmdet':
        samples = _det_data_samples(h, w)
        try:
            wrapper = _Call(model, lambda m, t: m._forward(t, copy.deepcopy(samples)))
            with torch.no_grad():
                wrapper(x)  # cheap sanity run; jit errors are caught below as well
            fa = _flop_analyzer(wrapper, x)
            mode = 'whole detector (_forward: backbone + neck + heads, no post-processing)'
            if getattr(model, 'analysis_mask_rois', None):
                mode += f'; mask heads on the first {model.analysis_mask_rois} RoIs (mmdet 2 forward_dummy)'
        except Exception as err:  # noqa: BLE001 - fall back to the part that always traces
            notes.append(f'whole-detector trace failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); '
                         f'counted backbone + neck only')
            wrapper = _Call(model, lambda m, t: m.extract_feat(t))
            fa = _flop_analyzer(wrapper, x)
            mode = 'backbone + neck (extract_feat)'
    elif codebase == 'mmseg':
        wrapper = _Call(model, lambda m, t: m(t, mode='tensor'))
        fa = _flop_analyzer(wrapper, x)
        mode = 'EncoderDecoder tensor-mode forward (backbone + neck + decode head; the auxiliary head is training-only)'
    else:
        def cls_forward(m, t):
            feats = m.extract_feat(t)
            return m.head(feats) if getattr(m, 'with_head', False) else feats
        wrapper = _Call(model, cls_forward)
        fa = _flop_analyzer(wrapper, x)
        mode = 'backbone + neck + head (extract_feat + head)'

    flops_by_module = fa.by_module()
    params_by_module = parameter_count(model)
    with torch.no_grad():
        nonzero = int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    extra = dense_equivalent_extra_params(model)

    def sum_extra(prefix: str) -> int:
        return sum(v for k, v in extra.items() if prefix == '' or k == prefix or k.startswith(prefix + '.'))

    def row(name: str, prefixes: Sequence[str]) -> Dict[str, int]:
        params = sum(params_by_module.get(p, 0) for p in prefixes)
        flops = sum(flops_by_module.get(('model.' + p) if p else 'model', 0) for p in prefixes)
        dense = params + sum(sum_extra(p) for p in prefixes)
        return dict(params=int(params), params_dense_equivalent=int(dense), flops=int(flops))

    rows: 'OrderedDict[str, Dict[str, int]]' = OrderedDict()
    rows['total'] = row('total', [''])
    if hasattr(model, 'backbone'):
        rows['backbone'] = row('backbone', ['backbone'])
        bb = model.backbone
        if hasattr(bb, 'stages') and hasattr(bb, 'downsample_layers'):
            for i in range(len(bb.stages)):
                prefixes = [f'backbone.downsample_layers.{i}', f'backbone.stages.{i}']
                if hasattr(bb, f'norm{i}'):
                    prefixes.append(f'backbone.norm{i}')
                rows[f'  stage {i}'] = row(f'stage {i}', prefixes)
                convs = [n for n in extra if n.startswith(f'backbone.stages.{i}.')]
                if convs:
                    periph = 0
                    for n in convs:
                        mod = flops_by_module.get('model.' + n, 0)
                        small = flops_by_module.get('model.' + n + '.small_conv', 0)
                        norms = sum(flops_by_module.get('model.' + n + s, 0) for s in ('.norm', '.small_norm'))
                        periph += mod - small - norms
                    rows[f'  stage {i}'].update(peripheral_conv_flops=int(periph))
    for name in ('neck', 'head', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head', 'bbox_head',
                 'mask_head'):
        if hasattr(model, name) and getattr(model, name) is not None and name in dict(model.named_children()):
            rows[name] = row(name, [name])
    return dict(flops=rows['total']['flops'], params=rows['total']['params'],
                params_dense_equivalent=rows['total']['params_dense_equivalent'], params_nonzero=nonzero,
                mode=mode, rows=rows,
                input_shape=[1, 3, h, w], notes=notes)


def load_weights(model: nn.Module, checkpoint: str) -> None:
    """Load a checkpoint's ``state_dict`` (e.g. a sparse-trained model, for the non-zero count); a checkpoint that
    lacks weights of the model or holds them in another shape is refused in one line."""
    from mmengine.runner import load_checkpoint

    from pelk_mm.models import check_model_checkpoint
    check_model_checkpoint(model, checkpoint)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=False, logger='silent')


def analyze_config(cfg, shape: Optional[Sequence[int]] = None, checkpoint: Optional[str] = None,
                   mask_rois: Optional[int] = None) -> Dict[str, Any]:
    """Build ``cfg.model`` (optionally load ``checkpoint``) and analyse it at ``shape`` (default per codebase);
    ``mask_rois``: see :func:`limit_mask_rois`."""
    model, codebase = build_model_for_analysis(cfg, mask_rois)
    if checkpoint:
        load_weights(model, checkpoint)
    shape = tuple(shape) if shape else DEFAULT_SHAPES[codebase]
    result = analyze_model(model, codebase, shape)
    result['codebase'] = codebase
    return result


def _fmt(n: float) -> str:
    for unit, div in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(n) >= div:
            return f'{n / div:.3f}{unit}'
    return str(int(n))


def format_table(result: Dict[str, Any]) -> str:
    rows = result['rows']
    header = ('module', 'params', 'params (dense-equivalent)', 'FLOPs', 'of which peripheral conv')
    lines = [header]
    for name, r in rows.items():
        lines.append((name, _fmt(r['params']), _fmt(r['params_dense_equivalent']), _fmt(r['flops']),
                      _fmt(r['peripheral_conv_flops']) if 'peripheral_conv_flops' in r else ''))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append('| ' + ' | '.join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                                     for i, c in enumerate(line)) + ' |')
        if j == 0:
            out.append('|' + '|'.join('-' * (wd + 2) for wd in widths) + '|')
    return '\n'.join(out)
