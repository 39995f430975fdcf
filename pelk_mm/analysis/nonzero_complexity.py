"""Non-zero parameter and FLOP counts, the way SLaK (and so PeLK) report sparse models.

SLaK's FLOP counter counts a parameter only where it is non-zero (the non-zeros of the 2-D/4-D weights) and a
convolution's cost from its non-zero taps. PeLK's Table 2-4 numbers are for 40 % sparse models, so a dense count
overstates them by about 1/0.6. This module

* simulates the sparsity of a trained model on a freshly built one (:func:`sparsify_`: masks drawn as
  :class:`~pelk_mm.engine.hooks.DynamicSparsityHook` draws them; uniform by default, SNIP densities at
  initialisation with :func:`snip_densities_from_images`), or uses a real sparse checkpoint as is;
* counts parameters three ways (:func:`count_params`): all, all with zeros skipped, and SLaK's 2-D/4-D non-zeros;
* counts the multiply-accumulates (one MAC = one FLOP, as fvcore/mmengine and the paper) that zeros remove
  (:func:`count_nonzero_macs`), by running the analysed forward (:func:`pelk_mm.analysis.forward.analysed_forward`)
  once under a ``TorchDispatchMode`` that sees every convolution / matrix product with its actual operands: a
  convolution costs ``N * H_out * W_out * nnz(weight)`` (dense: ``numel(weight)``), a matrix product with a
  parameter operand ``M * nnz(parameter)``. The peripheral conv runs as the expanded dense ``K x K`` kernel
  (``conv_impl='dense'``), so a pruned shared cell removes every tap it covers.

The non-zero FLOPs of a model are then ``dense FLOPs`` (:mod:`pelk_mm.analysis.dense_complexity`) ``- saved MACs``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from pelk_mm.engine.sparsity import (build_masks, check_choice, check_sparsity, erk_densities, snip_densities,
                                     snip_scores, sparsifiable_params, uniform_densities)
from pelk_mm.errors import LaunchError
from .builder import IMAGENET_MEAN, IMAGENET_STD, find_images, load_image
from .dense_complexity import DEFAULT_SHAPES, analyze_model, build_counted_model
from .forward import FEATURES_MODE, analysed_forward

__all__ = ['sparsify_', 'snip_densities_of', 'snip_densities_from_images', 'snip_densities_for_config',
           'count_params', 'count_nonzero_macs', 'NonZeroMacCounter', 'analyze_config_sparse',
           'format_sparse_summary']

aten = torch.ops.aten


def _selected_params(model: nn.Module, layers: str, include: Sequence[str],
                     exclude: Sequence[str]) -> 'OrderedDict[str, nn.Parameter]':
    """:func:`~pelk_mm.engine.sparsity.sparsifiable_params`, kept to names containing one of ``include`` (if any)."""
    params = sparsifiable_params(model, layers, exclude)
    if include:
        params = OrderedDict((n, p) for n, p in params.items() if any(s in n for s in include))
    return params


@torch.no_grad()
def sparsify_(model: nn.Module, sparsity: float, init: str = 'uniform', layers: str = 'all', seed: int = 0,
              include=(), exclude=(), densities: Optional[Dict[str, float]] = None) -> Dict[str, torch.Tensor]:
    """Zero a random ``sparsity`` fraction of the selected weights in place, as a sparse training run leaves them.

    Args:
        model (nn.Module): Freshly built model.
        sparsity (float): Fraction of zeros over the selected weights, in ``[0, 1)``.
        init (str): Layer-wise allocation: ``'uniform'`` (every layer at ``1 - sparsity``) or ``'erk'``.
        layers (str): ``'all'`` 2-D/4-D weights or ``'large_kernel'`` (see
            :func:`~pelk_mm.engine.sparsity.sparsifiable_params`).
        seed (int): Mask RNG seed.
        include, exclude: Substring filters on parameter names.
        densities (dict, optional): Explicit per-parameter densities (e.g. from :func:`snip_densities_of`, or
            those of the pretrained backbone for a downstream model); they replace ``init``. Selected weights
            without an entry keep density ``1 - sparsity``.

    Returns:
        dict: the ``bool`` masks applied (``True`` = kept).
    """
    sparsity = check_sparsity(sparsity)
    init = check_choice(init, ('uniform', 'erk'), 'init')
    params = _selected_params(model, layers, include, exclude)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    density = 1 - sparsity
    if densities is not None:
        densities = {n: float(densities.get(n, density)) for n in shapes}
    else:
        densities = uniform_densities(shapes, density) if init == 'uniform' else erk_densities(shapes, density)
    g = torch.Generator().manual_seed(seed)
    masks = build_masks(densities, params, generator=g)
    for n, m in masks.items():
        params[n].mul_(m.to(params[n].dtype))
    return masks


def snip_densities_of(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, sparsity: float,
                      layers: str = 'all', include: Sequence[str] = (),
                      exclude: Sequence[str] = ()) -> Dict[str, float]:
    """SLaK's SNIP layer-wise densities for an image classifier at its current (initial) weights.

    One batch, cross-entropy of ``model(inputs, mode='tensor')`` logits, scores ``|w * dL/dw|``
    (:func:`~pelk_mm.engine.sparsity.snip_scores`, on a copy in train mode), global top-k at density
    ``1 - sparsity``: what :class:`~pelk_mm.engine.hooks.DynamicSparsityHook` does with ``init='snip'``.
    """
    sparsity = check_sparsity(sparsity)
    params = _selected_params(model, layers, include, exclude)

    def loss_fn(net: nn.Module) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(net(inputs, mode='tensor'), labels)

    return snip_densities(snip_scores(model, loss_fn, list(params)), 1 - sparsity)


def count_params(model: nn.Module) -> Dict[str, int]:
    """``total`` (every parameter), ``nonzero`` (every parameter, zeros skipped) and ``slak_nonzero`` (SLaK's
    ``print_model_param_nums``: non-zeros of the 2-D/4-D parameters only)."""
    total = nonzero = slak = 0
    for p in model.parameters():
        nz = int((p != 0).sum())
        total += p.numel()
        nonzero += nz
        if p.dim() in (2, 4):
            slak += nz
    return dict(total=total, nonzero=nonzero, slak_nonzero=slak)


def _storage_key(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # noqa: BLE001 - tensors without storage (e.g. meta)
        return None


class NonZeroMacCounter(TorchDispatchMode):
    """Counts dense and non-zero MACs of convolutions and of matrix products with a parameter operand.

    Attributes after the forward: ``dense`` / ``nonzero`` (MACs of the counted ops) and ``by_op`` (per aten op).
    """

    MM_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}

    def __init__(self, params):
        super().__init__()
        self.param_keys = {_storage_key(p) for p in params}
        self.param_keys.discard(None)
        self.dense = 0
        self.nonzero = 0
        self.by_op: Dict[str, Dict[str, int]] = {}

    def _add(self, op_name: str, dense: int, nonzero: int) -> None:
        self.dense += dense
        self.nonzero += nonzero
        rec = self.by_op.setdefault(op_name, dict(dense=0, nonzero=0))
        rec['dense'] += dense
        rec['nonzero'] += nonzero

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = getattr(func, 'overloadpacket', None)
        if packet is aten.convolution:
            weight = args[1]
            transposed = bool(args[6]) if len(args) > 6 else False
            if transposed:  # every input position scatters through the kernel
                positions = args[0].shape[0] * int(torch.tensor(args[0].shape[2:]).prod())
            else:
                positions = out.shape[0] * int(torch.tensor(out.shape[2:]).prod())
            self._add('convolution', positions * weight.numel(), positions * int((weight != 0).sum()))
        elif func in self.MM_OPS:
            a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
            batch = a.shape[0] if a.dim() == 3 else 1
            m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
            dense = batch * m * k * n
            if _storage_key(b) in self.param_keys:
                nonzero = int((b != 0).sum()) * m * (batch if b.dim() == 3 else 1)
            elif _storage_key(a) in self.param_keys:
                nonzero = int((a != 0).sum()) * n * (batch if a.dim() == 3 else 1)
            else:
                nonzero = dense
            self._add(str(packet), dense, nonzero)
        return out


@torch.no_grad()
def count_nonzero_macs(model: nn.Module, forward: Callable[[], object]) -> Dict[str, object]:
    """Run ``forward()`` (a closure calling ``model``) once and count dense vs non-zero MACs.

    Returns:
        dict: ``dense`` and ``nonzero`` MACs of the counted ops, ``saved = dense - nonzero`` and ``by_op``.
    """
    counter = NonZeroMacCounter(list(model.parameters()))
    with counter:
        forward()
    return dict(dense=counter.dense, nonzero=counter.nonzero, saved=counter.dense - counter.nonzero,
                by_op=counter.by_op)


def analyze_config_sparse(cfg, shape=None, sparsity: Optional[float] = 0.4, init: str = 'uniform',
                          layers: str = 'all', checkpoint: Optional[str] = None, seed: int = 0,
                          backbone_only: Optional[bool] = None,
                          densities: Optional[Dict[str, float]] = None,
                          mask_rois: Optional[int] = None) -> Dict[str, object]:
    """The paper's (SLaK's) non-zero-aware params/FLOPs of a config's model, next to the dense counts.

    Builds the model as the dense count does (:func:`~pelk_mm.analysis.dense_complexity.build_counted_model`:
    peripheral convs traced as dense ``K x K`` convs), optionally loads a (sparse) ``checkpoint``, simulates ``sparsity`` with
    :func:`sparsify_` (``None``: count the weights as they are), then takes the dense FLOPs from mmengine's analyzer
    and subtracts the MACs the zeros save on the same analysed forward and input.

    Args:
        backbone_only (bool, optional): Sparsify only ``backbone.*`` weights. Default: ``True`` for mmseg/mmdet
            (downstream models fine-tune a sparse pretrained backbone with dense heads), ``False`` for classifiers
            (SLaK masks every 2-D/4-D weight, the classifier head included).
        densities (dict, optional): Per-parameter densities (e.g. SNIP's, saved from a classifier run; names are
            matched as they are, so ``backbone.*`` entries carry over to seg/det models). Replace ``init``.
        mask_rois (int, optional): Detectors: run the mask heads on the first ``mask_rois`` RoIs only (mmdet 2's
            ``forward_dummy`` convention of the papers' tables; :func:`pelk_mm.analysis.builder.limit_mask_rois`).

    Returns:
        dict: the dense analysis (``flops``, ``params``, ``rows``, ...) plus ``nonzero_flops``, ``nonzero_params``,
        ``slak_params`` (2-D/4-D non-zeros only), ``saved_macs`` and the sparsity settings.
    """
    model, codebase = build_counted_model(cfg, checkpoint, mask_rois)
    if backbone_only is None:
        backbone_only = codebase != 'mmpretrain'
    masks = None
    if sparsity is not None:
        masks = sparsify_(model, sparsity, init=init, layers=layers, seed=seed,
                          include=('backbone.', ) if backbone_only else (), densities=densities)
    shape = tuple(shape) if shape else DEFAULT_SHAPES[codebase]
    torch.manual_seed(seed)  # analyze_model draws its input with torch.randn: the same input below
    dense = analyze_model(model, codebase, shape)
    torch.manual_seed(seed)
    x = torch.randn(1, 3, int(shape[0]), int(shape[1]))
    forward, _ = analysed_forward(model, codebase, 'features' if dense['mode'] == FEATURES_MODE else 'model',
                                  x.shape[-2:])
    macs = count_nonzero_macs(model, lambda: forward(x))
    params = count_params(model)
    backbone_params = count_params(model.backbone) if hasattr(model, 'backbone') else None
    result = dict(dense)
    if densities is not None and sparsity is not None:
        init = 'given'
    result.update(codebase=codebase, sparsity=sparsity, init=init if sparsity is not None else None, layers=layers,
                  backbone_only=backbone_only, masked_tensors=len(masks) if masks is not None else None,
                  nonzero_flops=int(dense['flops']) - macs['saved'], saved_macs=macs['saved'],
                  counted_macs=macs, nonzero_params=params['nonzero'], slak_params=params['slak_nonzero'],
                  backbone_params=backbone_params)
    return result


def format_sparse_summary(result: Dict[str, object]) -> str:
    """A few lines for ``get_flops.py --sparsity``."""
    how = ('weights as loaded' if result['sparsity'] is None else
           f'{result["sparsity"]:.0%} simulated sparsity ({result["init"]} layer-wise densities, {result["layers"]} '
           f'2-D/4-D weights{" of the backbone" if result["backbone_only"] else ""})')
    lines = [
        f'non-zero-aware (SLaK/PeLK way), {how}:',
        f'  FLOPs (non-zero): {result["nonzero_flops"] / 1e9:.3f} G   (dense {result["flops"] / 1e9:.3f} G, zeros '
        f'save {result["saved_macs"] / 1e9:.3f} G)',
        f'  params (non-zero, all tensors): {result["nonzero_params"] / 1e6:.3f} M   '
        f'(SLaK counter, 2-D/4-D non-zeros only: {result["slak_params"] / 1e6:.3f} M; '
        f'dense {result["params"] / 1e6:.3f} M)',
    ]
    if result.get('backbone_params'):
        bp = result['backbone_params']
        lines.append(f'  backbone params: non-zero {bp["nonzero"] / 1e6:.3f} M of {bp["total"] / 1e6:.3f} M')
    return '\n'.join(lines)


def snip_densities_from_images(model: nn.Module, paths, size: int, sparsity: float, mean=None, std=None,
                               seed: int = 0) -> Dict[str, float]:
    """:func:`snip_densities_of` on a batch made of the images ``paths`` (resized to ``size``) with random labels
    (at initialisation the labels' meaning does not matter; SLaK uses one training batch)."""
    x = torch.cat([load_image(p, size, mean or IMAGENET_MEAN, std or IMAGENET_STD) for p in paths])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        num_classes = model(x[:1], mode='tensor').shape[-1]
    y = torch.randint(0, num_classes, (len(paths), ), generator=g)
    return snip_densities_of(model, x, y, sparsity)


def snip_densities_for_config(cfg, num_images: int, size: int, sparsity: float, seed: int = 0,
                              demo_root: str = 'data/demo') -> Dict[str, float]:
    """SNIP densities of a classifier config's model at a seeded initialisation, on ``num_images`` demo images.

    SNIP scores depend on the initial weights: ``seed`` fixes them (``torch.manual_seed`` before the model is
    built and initialised), so the same seed gives the same densities.

    Raises:
        pelk_mm.errors.LaunchError: the config's model is not an mmpretrain classifier.
    """
    torch.manual_seed(seed)
    model, codebase = build_counted_model(cfg)
    if codebase != 'mmpretrain':
        raise LaunchError('--sparse-init snip needs a classifier config; for seg/det pass the classifier\'s '
                          'densities with --sparse-densities')
    model.init_weights()
    return snip_densities_from_images(model, find_images(None, num_images, demo_root), size, sparsity)
