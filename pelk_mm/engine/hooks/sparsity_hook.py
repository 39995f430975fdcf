"""SLaK-style dynamic sparsity (PeLK trains at 40 % sparsity, "all hyper-parameters the same as SLaK") as an mmengine
hook.

Lifecycle inside :meth:`mmengine.runner.Runner.train`::

    before_run (EMAHook builds its EMA copy) -> init weights -> load_from / resume  [after_load_checkpoint: masks
    restored] -> before_train [masks built: SNIP / ERK / uniform, or from the pretrained zeros in fixed-mask mode;
    broadcast from rank 0; applied] -> every iteration: optimizer step -> after_train_iter [masks applied to the
    weights, the optimizer states and the EMA model; every ``update_interval`` iterations: prune and grow,
    broadcast, apply] -> before_save_checkpoint [masks saved, bit-packed, under ``checkpoint['sparsity']``].
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.dist import broadcast, get_rank, is_distributed
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper

from pelk_mm.errors import check_int
from pelk_mm.registry import HOOKS
from pelk_mm.engine.sparsity import (GROWTH_MODES, SPARSE_INITS, apply_masks, build_masks, check_choice,
                                     check_sparsity, cosine_prune_rate, erk_densities, overall_density, pack_mask,
                                     prune_and_grow, snip_densities, snip_scores, sparsifiable_params,
                                     uniform_densities, unpack_mask)

OPTIMIZER_STATE_KEYS = ('momentum_buffer', 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq')


@HOOKS.register_module()
class DynamicSparsityHook(Hook):
    """Dynamic sparse training as in SLaK (and PeLK): masked 2-D/4-D weights with periodic prune-and-grow.

    Config example (PeLK-T, SLaK's README flags ``--sparsity 0.4 --sparse_init snip --growth random
    -u 2000 --prune_rate 0.5``)::

        custom_hooks = [dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip',
                             update_interval=2000, prune_rate=0.5, growth='random')]

    Downstream fine-tuning with the pretrained topology kept fixed (SLaK's seg/det backbones)::

        custom_hooks = [dict(type='pelk_mm.DynamicSparsityHook', fixed_mask=True, include=['backbone.'])]

    Args:
        sparsity (float): Target fraction of zeros over the masked weights, in ``[0, 1)``. Defaults to 0.4.
        init (str): Initial layer-wise allocation: ``'snip'`` (SLaK's default: one training batch, connection
            sensitivity ``|w * dL/dw|``, global top-k gives each layer's density, masks are then drawn at random
            with those densities), ``'erk'`` (Erdos-Renyi-Kernel) or ``'uniform'``. Defaults to ``'snip'``.
        layers (str): ``'all'`` 2-D/4-D weights (SLaK default) or ``'large_kernel'`` only (SLaK ``--only-L``).
        include (Sequence[str]): If given, only parameter names containing one of these substrings are masked
            (e.g. ``['backbone.']`` downstream).
        exclude (Sequence[str]): Parameter names containing one of these substrings are never masked.
        update_interval (int): Prune and grow every this many training iterations (SLaK ``-u``; 100 by default,
            2000 in SLaK's PeLK-T-sized run). Defaults to 100.
        prune_rate (float): Initial prune rate in ``(0, 1)``, cosine-decayed over the whole run to ``eta_min``
            (SLaK: 0.3 default, 0.5 for T). Defaults to 0.3.
        eta_min (float): Final prune rate. Defaults to 0.005.
        growth (str): Regrowth: ``'random'`` (SLaK default), ``'gradient'`` (largest ``|grad|`` of the last
            optimizer step) or ``'momentum'`` (largest Adam ``m / sqrt(v)`` or SGD momentum). Defaults to
            ``'random'``.
        stop_iter (int, optional): No topology update after this iteration (1-based count of finished
            iterations); the masks stay fixed for the rest of training.
        stop_fraction (float, optional): Same as a fraction of the run's ``max_iters``. At most one of
            ``stop_iter``/``stop_fraction``; with neither, updates continue to the end as in SLaK.
        fixed_mask (bool): Downstream mode: the masks are the pretrained non-zeros (``weight != 0``) of the selected
            weights and never change; ``sparsity``, ``init`` and the update options are not used. Weights without
            zeros stay dense. Defaults to False.
        mask_optimizer_states (bool): Also zero the optimizer state (SGD momentum, Adam moments) of inactive
            weights after each step, as SLaK does for momentum. Defaults to True.
        mask_ema (bool): Also mask the EMA model of an :class:`mmengine.hooks.EMAHook` (SLaK masks its EMA
            weights). Keep this hook's priority lower than the EMAHook's (default ``'NORMAL'`` vs the EMAHook's
            ``'ABOVE_NORMAL'`` in our configs) so that the EMA is masked after it is updated. Defaults to True.
        seed (int, optional): Seed of the mask RNG. ``None`` uses torch's global RNG (seeded by the runner's
            ``randomness`` config). Masks are made on rank 0 and broadcast either way.
        verbose (bool): Log every layer's density at initialisation. Defaults to False.
    """

    priority = 'NORMAL'

    def __init__(self,
                 sparsity: float = 0.4,
                 init: str = 'snip',
                 layers: str = 'all',
                 include: Sequence[str] = (),
                 exclude: Sequence[str] = (),
                 update_interval: int = 100,
                 prune_rate: float = 0.3,
                 eta_min: float = 0.005,
                 growth: str = 'random',
                 stop_iter: Optional[int] = None,
                 stop_fraction: Optional[float] = None,
                 fixed_mask: bool = False,
                 mask_optimizer_states: bool = True,
                 mask_ema: bool = True,
                 seed: Optional[int] = None,
                 verbose: bool = False):
        self.sparsity = check_sparsity(sparsity)
        self.init = check_choice(init, SPARSE_INITS, 'init')
        self.layers = layers
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.update_interval = check_int('update_interval', update_interval,
                                         why='iterations between prune-and-grow steps')
        for name, value in (('prune_rate', prune_rate), ('eta_min', eta_min)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f'{name} must be a number in [0, 1), got {name}={value!r}')
        if eta_min > prune_rate:
            raise ValueError(f'eta_min={eta_min} must not exceed prune_rate={prune_rate} (cosine decay goes down)')
        self.prune_rate = float(prune_rate)
        self.eta_min = float(eta_min)
        self.growth = check_choice(growth, GROWTH_MODES, 'growth')
        if stop_iter is not None and stop_fraction is not None:
            raise ValueError(f'give at most one of stop_iter={stop_iter!r} and stop_fraction={stop_fraction!r}')
        if stop_iter is not None:
            check_int('stop_iter', stop_iter, minimum=0)
        if stop_fraction is not None and (isinstance(stop_fraction, bool) or not isinstance(stop_fraction, (int, float))
                                          or not 0 <= stop_fraction <= 1):
            raise ValueError(f'stop_fraction must be a number in [0, 1], got stop_fraction={stop_fraction!r}')
        self.stop_iter = stop_iter
        self.stop_fraction = stop_fraction
        self.fixed_mask = bool(fixed_mask)
        self.mask_optimizer_states = mask_optimizer_states
        self.mask_ema = mask_ema
        self.seed = seed
        self.verbose = verbose
        # layer selection is validated here, not at before_train
        check_choice(layers, ('all', 'large_kernel'), 'layers')

        self.masks: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
        self._params: Dict[str, nn.Parameter] = {}
        self._loaded_masks: Optional[Dict[str, dict]] = None
        self._grad_scores: Dict[str, torch.Tensor] = {}
        self._capture_grads = False
        self._optim_handles = []
        self.num_updates = 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _unwrap(model: nn.Module) -> nn.Module:
        return model.module if is_model_wrapper(model) else model

    def _select_params(self, model: nn.Module) -> 'OrderedDict[str, nn.Parameter]':
        params = sparsifiable_params(model, self.layers, self.exclude)
        if self.include:
            params = OrderedDict((n, p) for n, p in params.items() if any(s in n for s in self.include))
        if not self.fixed_mask:  # frozen weights get no gradient: SNIP cannot score them and they never change
            params = OrderedDict((n, p) for n, p in params.items() if p.requires_grad)
        return params

    def _generator(self) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed + self.num_updates)
        return g

    def _optimizers(self, runner):
        wrapper = getattr(runner, 'optim_wrapper', None)
        if wrapper is None:
            return []
        if hasattr(wrapper, 'optimizer'):
            return [wrapper.optimizer]
        return [w.optimizer for w in wrapper.values()]  # OptimWrapperDict

    def _ema_models(self, runner):
        if not self.mask_ema:
            return []
        return [h.ema_model.module for h in runner.hooks
                if isinstance(h, EMAHook) and getattr(h, 'ema_model', None) is not None]

    def _broadcast(self) -> None:
        """Rank 0's masks everywhere (the only collective; every rank holds the same names in the same order)."""
        if not is_distributed():
            return
        for name, mask in self.masks.items():
            buf = mask.to(torch.uint8)
            broadcast(buf, src=0)
            self.masks[name] = buf.bool()

    def _stop_iter(self, runner) -> int:
        if self.stop_iter is not None:
            return self.stop_iter
        if self.stop_fraction is not None:
            return int(self.stop_fraction * runner.max_iters)
        return runner.max_iters

    def current_prune_rate(self, runner, step: Optional[int] = None) -> float:
        """Cosine-decayed prune rate after ``step`` finished iterations (default: now)."""
        step = runner.iter + 1 if step is None else step
        return cosine_prune_rate(step, runner.max_iters, self.prune_rate, self.eta_min)

    def is_update_step(self, runner, step: int) -> bool:
        return (not self.fixed_mask and step % self.update_interval == 0 and step <= self._stop_iter(runner)
                and step < runner.max_iters)

    def density(self) -> float:
        """Active fraction over the currently masked weights."""
        return overall_density(self.masks)

    # ------------------------------------------------------------------ mask construction
    def _snip_scores(self, runner, model: nn.Module, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``|w * dL/dw|`` from one training batch, computed on a copy (:func:`~pelk_mm.engine.sparsity.snip_scores`:
        the real model's BN statistics and gradients are untouched)."""
        data_batch = next(iter(runner.train_dataloader))

        def loss_fn(net: nn.Module) -> torch.Tensor:
            data = net.data_preprocessor(data_batch, True)
            losses = net(**data, mode='loss') if isinstance(data, dict) else net(*data, mode='loss')
            loss, _ = net.parse_losses(losses)
            return loss

        return snip_scores(model, loss_fn, names)

    def _initial_masks(self, runner, model: nn.Module) -> 'OrderedDict[str, torch.Tensor]':
        params = self._params
        if self.fixed_mask:
            masks = OrderedDict((n, p.detach() != 0) for n, p in params.items())
            return OrderedDict((n, m) for n, m in masks.items() if not bool(m.all()))
        density = 1.0 - self.sparsity
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        if self.init == 'uniform':
            densities = uniform_densities(shapes, density)
        elif self.init == 'erk':
            densities = erk_densities(shapes, density)
        else:
            densities = snip_densities(self._snip_scores(runner, model, list(params)), density)
        if self.verbose:
            for n, d in densities.items():
                runner.logger.info(f'[sparsity] {n} {tuple(params[n].shape)}: density {d:.4f}')
        return build_masks(densities, params, generator=self._generator())

    def _masks_from_checkpoint(self, runner) -> 'OrderedDict[str, torch.Tensor]':
        masks = OrderedDict()
        for name, packed in self._loaded_masks.items():
            p = self._params.get(name)
            if p is None:
                runner.logger.warning(f'[sparsity] checkpoint mask {name!r} matches no selected parameter; ignored')
                continue
            if tuple(packed['shape']) != tuple(p.shape):
                runner.logger.warning(f'[sparsity] checkpoint mask {name!r} has shape {tuple(packed["shape"])} '
                                      f'but the parameter has {tuple(p.shape)}; ignored')
                continue
            masks[name] = unpack_mask(packed, device=p.device)
        return masks

    # ------------------------------------------------------------------ applying
    @torch.no_grad()
    def apply(self, runner) -> None:
        """Zero the inactive weights of the model, their optimizer states and the EMA model."""
        apply_masks(self._params, self.masks)
        if self.mask_optimizer_states:
            for optimizer in self._optimizers(runner):
                for name, mask in self.masks.items():
                    state = optimizer.state.get(self._params[name])
                    if not state:
                        continue
                    for key in OPTIMIZER_STATE_KEYS:
                        buf = state.get(key)
                        if torch.is_tensor(buf) and buf.shape == mask.shape:
                            buf.mul_(mask.to(buf.dtype))
        for ema in self._ema_models(runner):
            apply_masks(dict(ema.named_parameters()), self.masks)

    def _register_grad_capture(self, runner) -> None:
        """Keep ``|grad|`` of the masked weights from the optimizer step of an update iteration (mmengine zeroes
        the gradients right after the step, before any hook sees them)."""
        if self.fixed_mask or self.growth != 'gradient':
            return
        name_of = {id(p): n for n, p in self._params.items()}

        def pre_step(optimizer, args, kwargs):
            if not self._capture_grads:
                return
            for group in optimizer.param_groups:
                for p in group['params']:
                    n = name_of.get(id(p))
                    if n is not None and n in self.masks and p.grad is not None:
                        self._grad_scores[n] = p.grad.detach().abs().clone()

        for optimizer in self._optimizers(runner):
            self._optim_handles.append(optimizer.register_step_pre_hook(pre_step))

    def _growth_score(self, runner, name: str) -> Optional[torch.Tensor]:
        if self.growth == 'gradient':
            return self._grad_scores.get(name)
        if self.growth == 'momentum':
            for optimizer in self._optimizers(runner):
                state = optimizer.state.get(self._params[name]) or {}
                if 'exp_avg' in state:
                    return state['exp_avg'] / (state['exp_avg_sq'].sqrt() + 1e-8)
                if 'momentum_buffer' in state:
                    return state['momentum_buffer']
        return None

    # ------------------------------------------------------------------ hook API
    def before_train(self, runner) -> None:
        model = self._unwrap(runner.model)
        self._params = self._select_params(model)
        if not self._params:
            raise ValueError(f'DynamicSparsityHook selected no parameter to mask (layers={self.layers!r}, '
                             f'include={list(self.include)}, exclude={list(self.exclude)})')
        if self._loaded_masks is not None:
            self.masks = self._masks_from_checkpoint(runner)
            source = 'checkpoint'
        else:
            self.masks = self._initial_masks(runner, model)
            source = 'pretrained non-zeros' if self.fixed_mask else f'{self.init} init'
        self._broadcast()
        self.apply(runner)
        self._register_grad_capture(runner)
        total = sum(p.numel() for p in self._params.values())
        masked = sum(m.numel() for m in self.masks.values())
        runner.logger.info(
            f'[sparsity] masks from {source}: {len(self.masks)} of {len(self._params)} selected weights masked '
            f'({masked / 1e6:.2f}M of {total / 1e6:.2f}M values), density of the selected weights '
            f'{overall_density(self.masks, self._params):.4f}'
            + ('' if self.fixed_mask else
               f'; prune-and-grow every {self.update_interval} iters until iter {self._stop_iter(runner)}, '
               f'prune rate {self.prune_rate} -> {self.eta_min} (cosine), growth {self.growth!r}'))
        if self.fixed_mask and not self.masks:
            runner.logger.warning('[sparsity] fixed_mask=True but the selected weights contain no zeros: nothing is '
                                  'masked (load the sparse pretrained weights before training starts)')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._capture_grads = self.growth == 'gradient' and self.is_update_step(runner, runner.iter + 1)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.masks:
            return
        self.apply(runner)
        step = runner.iter + 1
        if not self.is_update_step(runner, step):
            return
        rate = self.current_prune_rate(runner, step)
        generator = self._generator()
        changed = 0
        for name, mask in self.masks.items():
            score = self._growth_score(runner, name)
            growth = self.growth if score is not None else 'random'
            new_mask, _ = prune_and_grow(self._params[name], mask, rate, growth, score, generator)
            changed += int((new_mask != mask).sum())
            self.masks[name] = new_mask
        self._grad_scores.clear()
        self._capture_grads = False
        self.num_updates += 1
        self._broadcast()
        self.apply(runner)
        density = overall_density(self.masks, self._params)  # un-masked (dense) selected layers included
        runner.message_hub.update_scalar('train/sparsity_prune_rate', rate)
        runner.message_hub.update_scalar('train/sparsity_density', density)
        runner.logger.info(f'[sparsity] iter {step}: prune-and-grow #{self.num_updates} with prune rate {rate:.4f}, '
                           f'{changed} mask entries changed; density {self.density():.4f} of the masked weights, '
                           f'{density:.4f} of all selected weights')

    def after_train(self, runner) -> None:
        for handle in self._optim_handles:
            handle.remove()
        self._optim_handles = []

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.masks:
            return
        checkpoint['sparsity'] = dict(
            masks={n: pack_mask(m) for n, m in self.masks.items()},
            num_updates=self.num_updates,
            fixed_mask=self.fixed_mask,
            sparsity=self.sparsity,
            init=self.init)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('sparsity')
        if not state:
            return
        self._loaded_masks = state['masks']
        self.num_updates = int(state.get('num_updates', 0))
        if get_rank() == 0:
            runner.logger.info(f'[sparsity] {len(self._loaded_masks)} masks found in the checkpoint; they replace '
                               f'the initial allocation')
