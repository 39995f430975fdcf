"""Deployment of PeLK models: train-form -> deploy-form checkpoints and ONNX export (behind ``tools/deploy/``).

* :func:`convert_checkpoint` builds a config's model (mmpretrain / mmseg / mmdet) in train form, loads a checkpoint
  strictly, calls the backbone's ``switch_to_deploy`` and writes ``{'meta', 'state_dict'}``; the result loads
  strictly into the same config built with ``model.backbone.deploy=True``.
* :func:`export_onnx` exports a deployed backbone (its feature maps) or an mmpretrain classifier (its logits) with
  the peripheral conv in one of two forms made of standard ONNX operators only: ``'dense'`` (the kernel expanded,
  cropped to the map, one grouped ``Conv``) or ``'structured'`` (prefix sums + the ``k' x k'`` contraction as a
  grouped ``1 x 1`` ``Conv``, :mod:`pelk_mm.ops._impl_onnx`, ``O(K + k'^2)`` per pixel). Batch size is dynamic, the
  spatial size fixed. The op lowers itself to these forms under any export (:mod:`pelk_mm.ops.peripheral_conv`),
  so a plain ``torch.onnx.export`` works as well; this one adds the output names, the checks and
  :func:`conv_form`, which makes the requested form win over a config's explicit ``conv_impl``.
* :func:`check_onnx` runs the file in onnxruntime and compares it with PyTorch.

Models are built by the analysis builder (:func:`pelk_mm.analysis.builder.build_model`).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import os.path as osp
import warnings
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from pelk_mm.errors import DeployError, one_line
from pelk_mm.ops import EXPORT_FORMS

__all__ = ['CONV_FORMS', 'build_model', 'load_weights', 'convert_checkpoint', 'conv_form',
           'exportable', 'export_onnx', 'check_onnx', 'onnx_op_types', 'require_onnxruntime']

#: ONNX forms of the peripheral conv -> the ``pelk_mm.ops`` implementation that writes it (the op's export forms)
CONV_FORMS = EXPORT_FORMS

ONNXRUNTIME_INSTALL = 'pip install onnx==1.23.2 onnxruntime==1.31.1 (or re-run bash tools/setup.sh)'


def build_model(cfg, deploy: bool) -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` in its codebase's scope with a PeLK backbone in train (``deploy=False``) or deploy form:
    no pretrained download (the backbone's ``init_cfg`` is dropped: a checkpoint gives the weights,
    :func:`load_weights`), SyncBN reverted, eval mode, CPU (:func:`pelk_mm.analysis.builder.build_model`).

    Returns:
        tuple: ``(model, codebase)``.

    Raises:
        DeployError: the config's backbone is not ``pelk_mm.PeLK``.
    """
    from pelk_mm.analysis.builder import build_model as build_analysis_model, is_pelk_backbone
    backbone = cfg.model.get('backbone', None)
    if not is_pelk_backbone(backbone):
        kind = 'no backbone' if backbone is None else f'backbone type={backbone.get("type")!r}'
        raise DeployError(f'the config\'s model has {kind}; the deployment tools convert models whose backbone is '
                          f'pelk_mm.PeLK')
    return build_analysis_model(cfg, deploy=deploy, backbone_init_cfg=False)


def load_weights(model: nn.Module, checkpoint: str) -> dict:
    """Load ``checkpoint``'s ``state_dict`` (mmengine's loader: local path or URL) into ``model`` strictly; returns
    the whole checkpoint dict. A checkpoint of the other form raises
    :class:`~pelk_mm.errors.DeployFormError`, other key mismatches :class:`DeployError`."""
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint_to_model
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint {checkpoint!r} does not exist')
    ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    if not isinstance(ckpt, dict):
        raise DeployError(f'checkpoint {checkpoint!r} holds a {type(ckpt).__name__}, not a dict with a state_dict')
    try:
        _load_checkpoint_to_model(model, ckpt, strict=True)
    except RuntimeError as err:
        text = one_line(err)
        text = text if len(text) <= 400 else text[:400] + ' ...'
        raise DeployError(f'checkpoint {checkpoint!r} does not fit the config\'s model: {text}') from err
    return ckpt


def _backbone_outputs(backbone: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    with torch.no_grad():
        return [o.detach().clone() for o in backbone(x)]


def _max_rel_err(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(outs, refs))


def convert_checkpoint(cfg, checkpoint: str, out: str, check_shape: Sequence[int] = (224, 224),
                       seed: int = 0) -> Dict[str, object]:
    """Write the deploy-form checkpoint of ``checkpoint`` (train form) to ``out`` and check it.

    The check runs the backbone on a random ``check_shape`` image before and after :meth:`switch_to_deploy`, then
    builds the config with ``deploy=True``, loads ``out`` strictly and runs it again.

    Returns:
        dict: ``codebase``, ``max_rel_err_deploy`` (deployed vs train form), ``max_rel_err_reload`` (reloaded
        deploy-form model vs the deployed one), ``params_train``, ``params_deploy``.
    """
    from mmengine.runner.checkpoint import save_checkpoint
    model, codebase = build_model(cfg, deploy=False)
    ckpt = load_weights(model, checkpoint)
    backbone = model.backbone
    x = torch.randn(1, 3, *check_shape, generator=torch.Generator().manual_seed(seed))
    before = _backbone_outputs(backbone, x)
    params_train = sum(p.numel() for p in model.parameters())
    backbone.switch_to_deploy()
    after = _backbone_outputs(backbone, x)
    meta = dict(ckpt.get('meta', None) or {})
    meta['pelk_mm_deploy'] = dict(source=osp.basename(checkpoint), form='deploy',
                                  load_with='model.backbone.deploy=True')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    save_checkpoint({'meta': meta, 'state_dict': model.state_dict()}, out)
    reloaded, _ = build_model(cfg, deploy=True)
    load_weights(reloaded, out)
    again = _backbone_outputs(reloaded.backbone, x)
    return dict(codebase=codebase, max_rel_err_deploy=_max_rel_err(after, before),
                max_rel_err_reload=_max_rel_err(again, after), params_train=params_train,
                params_deploy=sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------------------- ONNX
@contextlib.contextmanager
def conv_form(model: nn.Module, form: str):
    """Within the block, every peripheral conv of ``model`` computes with the ONNX ``form`` (see
    :data:`CONV_FORMS`); the implementations before are restored on exit."""
    if form not in CONV_FORMS:
        raise DeployError(f'conv form must be one of {sorted(CONV_FORMS)}, got {form!r}')
    from pelk_mm.models.layers import PeripheralConv2d
    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    saved = [m.conv_impl for m in convs]
    try:
        for m in convs:
            m.conv_impl = CONV_FORMS[form]
        yield model
    finally:
        for m, impl in zip(convs, saved):
            m.conv_impl = impl


class _Classifier(nn.Module):
    """An mmpretrain ``ImageClassifier`` as ``image -> logits`` (backbone, neck, head; no softmax)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.extract_feat(x))


class _Backbone(nn.Module):
    """A backbone as ``image -> tuple of feature maps`` (what a segmentation / detection deployment starts from)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor):
        return tuple(self.backbone(x))


def exportable(model: nn.Module, output: str) -> nn.Module:
    """The module to export: ``output='classifier'`` (an mmpretrain classifier: logits) or ``'backbone'``."""
    if output == 'classifier':
        if not (hasattr(model, 'extract_feat') and hasattr(model, 'head')):
            raise DeployError(f'{type(model).__name__} is not an mmpretrain classifier (no extract_feat/head); '
                              f'export its backbone with --output backbone')
        return _Classifier(model).eval()
    if output == 'backbone':
        return _Backbone(model.backbone if hasattr(model, 'backbone') else model).eval()
    raise DeployError(f'output must be "classifier" or "backbone", got {output!r}')


def _check_shape(shape: Sequence[int]) -> Tuple[int, int]:
    if len(shape) != 2 or any(not isinstance(s, int) or s < 32 for s in shape):
        raise DeployError(f'shape must be H W, both integers >= 32 (the backbone downsamples by 32), got '
                          f'{list(shape)}')
    return int(shape[0]), int(shape[1])


def export_onnx(module: nn.Module, path: str, shape: Sequence[int], form: str = 'structured',
                opset: int = 17) -> List[str]:
    """Export ``module`` (a deployed PeLK backbone, or :func:`exportable`'s wrapper) for ``1 x 3 x H x W`` inputs
    with a dynamic batch dimension; returns the output names.

    The TorchScript-based exporter is used: it is the faster of the two here (seconds, against tens of seconds for
    the dynamo exporter), and the peripheral conv traces to standard operators in both forms with either.
    """
    h, w = _check_shape(shape)
    module = module.eval()
    x = torch.randn(1, 3, h, w)
    with torch.no_grad(), conv_form(module, form):
        outs = module(x)
    n_out = 1 if isinstance(outs, torch.Tensor) else len(outs)
    names = ['logits'] if isinstance(outs, torch.Tensor) else [f'feat{i}' for i in range(n_out)]
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    axes = {n: {0: 'batch'} for n in ['input'] + names}
    with torch.no_grad(), conv_form(module, form), warnings.catch_warnings():
        # the tracer warns that shapes become constants: intended (the spatial size is fixed at export)
        warnings.simplefilter('ignore')
        torch.onnx.export(module, (x, ), path, dynamo=False, input_names=['input'], output_names=names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    return names


def require_onnxruntime():
    """``import onnxruntime``, or :class:`DeployError` saying how to install it."""
    try:
        return importlib.import_module('onnxruntime')
    except ImportError as err:
        raise DeployError(f'onnxruntime is not installed ({err}); install it with {ONNXRUNTIME_INSTALL}') from err


def check_onnx(path: str, module: nn.Module, shape: Sequence[int], batches: Sequence[int] = (1, 2),
               threads: int = 2, seed: int = 0) -> Dict[int, float]:
    """Run ``path`` in onnxruntime (CPU) on random inputs of each batch size and compare with ``module`` in
    PyTorch; returns ``{batch: max relative error}`` (``max|ort - torch| / max|torch|`` over the outputs)."""
    ort = require_onnxruntime()
    h, w = _check_shape(shape)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    g = torch.Generator().manual_seed(seed)
    errs = {}
    for b in batches:
        x = torch.randn(b, 3, h, w, generator=g)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            ref = module(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        errs[b] = _max_rel_err([torch.from_numpy(o) for o in got], ref)
    return errs


def onnx_op_types(path: str) -> List[str]:
    """Sorted operator types of an ONNX file's graph."""
    import onnx
    return sorted({n.op_type for n in onnx.load(path).graph.node})
