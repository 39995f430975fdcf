"""Mask arithmetic of SLaK-style dynamic sparsity and SNIP connection sensitivities, used by
:class:`~pelk_mm.engine.hooks.DynamicSparsityHook` and by the non-zero complexity counter
(:mod:`pelk_mm.analysis.nonzero_complexity`).

SLaK masks every 2-D/4-D weight (``layers='all'``) or only the large kernels (``--only-L``), picks the per-layer
densities with SNIP (default), ERK or uniform, draws each layer's mask at random with its density, drops layers
whose density ends up >= 0.99, and every ``u`` steps prunes the ``ceil(rate * nnz)`` smallest-magnitude active
weights of each layer and regrows as many inactive ones (random or largest gradient), with ``rate`` cosine-decayed
from ``prune_rate`` to ``eta_min = 0.005``.

Masks here are ``bool`` tensors shaped like their weights (``True`` = active). Differences from SLaK's code, all
deliberate: masks are drawn with an exact number of active weights (SLaK draws Bernoulli, so its count is exact
only in expectation), and regrowth adds exactly as many weights as were pruned.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

SPARSE_INITS = ('snip', 'erk', 'uniform')
GROWTH_MODES = ('random', 'gradient', 'momentum')
LAYER_SETS = ('all', 'large_kernel')
#: Layers whose initial density reaches this are left dense (un-masked), as SLaK does.
DENSE_LAYER_THRESHOLD = 0.99


def check_sparsity(sparsity, name: str = 'sparsity') -> float:
    """Validate a sparsity in ``[0, 1)`` (fraction of zero weights) and return it as a float."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f'{name} must be a number in [0, 1) (fraction of masked weights; SLaK/PeLK use 0.4), '
                         f'got {name}={sparsity!r}')
    return float(sparsity)


def check_choice(value, choices: Sequence[str], name: str) -> str:
    """Validate that ``value`` is one of ``choices`` (case-insensitive) and return it lower-cased."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, got {name}={value!r}')
    return value.lower()


# --------------------------------------------------------------------------- which weights
def large_kernel_modules(model: nn.Module) -> Iterable[Tuple[str, nn.Module]]:
    """``(name, module)`` of every large-kernel conv form (:class:`~pelk_mm.models.layers.LargeKernelConv`)."""
    from pelk_mm.models.layers import LargeKernelConv  # local: avoid importing the models for pure mask maths
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LargeKernelConv)]


def sparsifiable_params(model: nn.Module, layers: str = 'all',
                        exclude: Sequence[str] = ()) -> 'OrderedDict[str, nn.Parameter]':
    """The weights dynamic sparsity masks, in ``named_parameters`` order.

    Args:
        model (nn.Module): The (unwrapped) model.
        layers (str): ``'all'``: every 2-D/4-D parameter (SLaK default: convs, linears, head); ``'large_kernel'``:
            only the large-kernel weights of the peripheral/dense/stripe convs (SLaK ``--only-L``; the parallel
            small-kernel branch is not a large kernel and stays dense).
        exclude (Sequence[str]): Parameter names containing any of these substrings are skipped.
    """
    layers = check_choice(layers, LAYER_SETS, 'layers')
    if layers == 'all':
        chosen = OrderedDict((n, p) for n, p in model.named_parameters() if p.dim() in (2, 4))
    else:
        lk_names = set()
        for mod_name, mod in large_kernel_modules(model):
            for n, p in mod.named_parameters():
                if p.dim() == 4 and not n.startswith(('small_conv', 'small_norm')):
                    lk_names.add(f'{mod_name}.{n}' if mod_name else n)
        chosen = OrderedDict((n, p) for n, p in model.named_parameters() if n in lk_names)
    return OrderedDict((n, p) for n, p in chosen.items() if not any(e in n for e in exclude))


# --------------------------------------------------------------------------- layer-wise densities
def uniform_densities(shapes: Mapping[str, Sequence[int]], density: float) -> Dict[str, float]:
    """Every layer at the same density."""
    return {name: float(density) for name in shapes}


def erk_densities(shapes: Mapping[str, Sequence[int]], density: float,
                  power_scale: float = 1.0) -> Dict[str, float]:
    """Erdos-Renyi-Kernel densities (SLaK/RigL): ``d_l = eps * (sum(shape) / prod(shape)) ** power_scale``, with
    ``eps`` solved so that the overall density is ``density``; layers that would exceed 1 are made dense and
    ``eps`` is solved again for the rest."""
    numel = {n: float(np.prod(s)) for n, s in shapes.items()}
    raw = {n: (float(np.sum(s)) / numel[n]) ** power_scale for n, s in shapes.items()}
    dense = set()
    while True:
        rhs = sum(numel[n] * density for n in shapes if n not in dense) \
            - sum(numel[n] * (1 - density) for n in dense)
        divisor = sum(raw[n] * numel[n] for n in shapes if n not in dense)
        if divisor == 0:
            break
        eps = rhs / divisor
        max_prob = max(raw[n] for n in shapes if n not in dense)
        if max_prob * eps > 1:
            dense.update(n for n in shapes if n not in dense and raw[n] == max_prob)
        else:
            break
    return {n: 1.0 if n in dense else float(eps * raw[n]) for n in shapes}


def snip_scores(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor],
                names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """SNIP connection sensitivities ``|w * dL/dw|`` of the parameters ``names`` for one loss.

    The loss is computed on a copy of ``model`` in train mode (BN batch statistics, as in training), so the model's
    BN statistics, gradients and mode are untouched. A parameter that gets no gradient scores zero.

    Args:
        model (nn.Module): The (unwrapped) model at its current weights.
        loss_fn (callable): ``loss_fn(net) -> scalar loss`` of one batch through ``net`` (the copy).
        names (Sequence[str]): Parameter names (as ``model.named_parameters`` gives them) to score.

    Returns:
        dict: ``{name: score tensor shaped like the parameter}`` in the order of ``names``.
    """
    net = copy.deepcopy(model)
    net.train()
    net.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss_fn(net).backward()
    params = dict(net.named_parameters())
    scores = {}
    for n in names:
        p = params[n]
        if p.grad is None:
            scores[n] = torch.zeros_like(p)
        else:
            scores[n] = (p.detach() * p.grad.detach()).abs()
    del net
    return scores


def snip_densities(scores: Mapping[str, torch.Tensor], density: float) -> Dict[str, float]:
    """SNIP layer-wise densities: keep the global top ``density`` fraction of the connection sensitivities
    ``|w * dL/dw|``; a layer's density is the fraction of its weights that made the cut (SLaK ``SNIP``)."""
    flat = torch.cat([s.detach().flatten().float().cpu() for s in scores.values()])
    keep = int(flat.numel() * density)
    if keep <= 0:
        return {n: 0.0 for n in scores}
    threshold = torch.topk(flat, keep, sorted=True).values[-1]
    return {n: float((s.detach().float().cpu() >= threshold).float().mean()) for n, s in scores.items()}


# --------------------------------------------------------------------------- masks
def random_mask(shape: Sequence[int], density: float, generator: Optional[torch.Generator] = None,
                device=None) -> torch.Tensor:
    """A ``bool`` mask with exactly ``round(density * numel)`` active entries at uniformly random positions."""
    numel = int(np.prod(shape))
    k = min(numel, max(0, int(round(density * numel))))
    mask = torch.zeros(numel, dtype=torch.bool)
    if k > 0:
        idx = torch.randperm(numel, generator=generator)[:k]
        mask[idx] = True
    return mask.view(*shape).to(device)


def cosine_prune_rate(step: int, total_steps: int, init_rate: float, eta_min: float = 0.005) -> float:
    """SLaK's ``CosineDecay``: ``eta_min + (init - eta_min) * (1 + cos(pi * step / total)) / 2``."""
    step = min(max(step, 0), total_steps)
    return eta_min + (init_rate - eta_min) * (1 + math.cos(math.pi * step / max(total_steps, 1))) / 2


def prune_and_grow(weight: torch.Tensor, mask: torch.Tensor, prune_rate: float, growth: str = 'random',
                   score: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, int]:
    """One SLaK topology update of one layer.

    Magnitude-prune ``n = ceil(prune_rate * nnz(mask))`` active weights, then regrow ``n`` inactive positions
    (the just-pruned ones included, as in SLaK): uniformly at random (``growth='random'``) or where ``score``
    (``|grad|``, or ``|m / sqrt(v)|`` of Adam for ``'momentum'``) is largest.

    Returns:
        tuple: the new ``bool`` mask (same shape and active count) and ``n``.
    """
    flat_mask = mask.flatten().bool()
    active = int(flat_mask.sum())
    inactive = flat_mask.numel() - active
    n = min(math.ceil(prune_rate * active), active)
    if n == 0 or inactive + n == 0:
        return mask.clone().bool(), 0
    magnitude = weight.detach().abs().flatten().float().clone()
    magnitude[~flat_mask] = float('inf')
    pruned = torch.topk(magnitude, n, largest=False).indices
    new_mask = flat_mask.clone()
    new_mask[pruned] = False
    candidates = (~new_mask).nonzero().flatten()
    if growth == 'random':
        perm = torch.randperm(candidates.numel(), generator=generator).to(candidates.device)
        grown = candidates[perm[:n]]
    else:
        if score is None:
            raise ValueError(f'growth={growth!r} needs a score tensor (|gradient| or Adam momentum) for the layer')
        s = score.detach().abs().flatten().float()[candidates]
        grown = candidates[torch.topk(s, n).indices]
    new_mask[grown] = True
    return new_mask.view_as(mask), n


def apply_masks(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the inactive weights in place: ``p *= mask`` for every name present in both."""
    with torch.no_grad():
        for name, mask in masks.items():
            p = params.get(name)
            if p is not None:
                p.mul_(mask.to(device=p.device, dtype=p.dtype))


def overall_density(masks: Mapping[str, torch.Tensor], params: Optional[Mapping[str, torch.Tensor]] = None
                    ) -> float:
    """Active fraction over the masked weights (plus the un-masked ``params``, counted dense, when given)."""
    active = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    if params is not None:
        for n, p in params.items():
            if n not in masks:
                active += p.numel()
                total += p.numel()
    return active / max(total, 1)


# --------------------------------------------------------------------------- checkpoint packing
def pack_mask(mask: torch.Tensor) -> dict:
    """Bit-pack a ``bool`` mask for a checkpoint (1 bit per weight)."""
    bits = np.packbits(mask.detach().flatten().cpu().numpy().astype(np.uint8))
    return dict(shape=list(mask.shape), bits=torch.from_numpy(bits))


def unpack_mask(packed: dict, device=None) -> torch.Tensor:
    """The ``bool`` mask of :func:`pack_mask`'s ``packed`` dict, on ``device``."""
    shape = [int(s) for s in packed['shape']]
    numel = int(np.prod(shape))
    bits = np.unpackbits(packed['bits'].cpu().numpy())[:numel].astype(bool)
    return torch.from_numpy(bits).view(*shape).to(device)


def build_masks(densities: Mapping[str, float], params: Mapping[str, torch.Tensor],
                generator: Optional[torch.Generator] = None,
                dense_threshold: float = DENSE_LAYER_THRESHOLD) -> 'OrderedDict[str, torch.Tensor]':
    """Random masks with the given per-layer densities; layers at ``>= dense_threshold`` stay un-masked."""
    masks = OrderedDict()
    for name, d in densities.items():
        if d >= dense_threshold:
            continue
        p = params[name]
        masks[name] = random_mask(p.shape, d, generator=generator, device=p.device)
    return masks
