"""PeLK's large-kernel token mixer: depthwise peripheral convolution (+ BN, + small-kernel branch, + KPE)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from pelk_mm.errors import DeployFormError, check_int
from pelk_mm.ops import expand_kernel, grid_bounds, peripheral_conv2d, peripheral_grid
from pelk_mm.registry import MODELS
from .conv_form import LargeKernelConv, build_conv_form
from .kernel_position_embedding import KPE_MODES, blocked_kpe_input_term
from .norm import build_norm


def _fuse_bn(kernel: torch.Tensor, bn: Optional[nn.Module]):
    """Fold an eval-mode BatchNorm into ``kernel`` ``(C, 1, kh, kw)``; returns ``(kernel, bias, scale)``.

    The fold is computed in float64 (a BN's ``1 / sqrt(var + eps)`` loses digits in half precision); the results
    are float64, callers cast them back to the module's dtype.
    """
    kernel = kernel.double()
    if bn is None:
        ones = kernel.new_ones(kernel.shape[0])
        return kernel, kernel.new_zeros(kernel.shape[0]), ones
    std = (bn.running_var.double() + bn.eps).sqrt()
    scale = bn.weight.double() / std
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias.double() - bn.running_mean.double() * scale, scale


def check_state_dict_form(module: nn.Module, state_dict: dict, prefix: str, train_key: str, deploy_key: str,
                          deployed: bool) -> None:
    """Raise :class:`DeployFormError` when ``state_dict`` holds the other form of ``module`` at ``prefix``.

    Args:
        train_key (str): A key only the train form has (e.g. ``'weight'``), relative to ``prefix``.
        deploy_key (str): A key only the deploy form has (e.g. ``'reparam_weight'``).
        deployed (bool): The form of ``module``.
    """
    name = prefix[:-1] or type(module).__name__
    has_train, has_deploy = prefix + train_key in state_dict, prefix + deploy_key in state_dict
    fix_convert = 'convert the train-form checkpoint with `python tools/deploy/convert_to_deploy.py CONFIG CKPT OUT`'
    if prefix + 'lk_reparam.weight' in state_dict:
        raise DeployFormError(
            f'checkpoint holds a dense-folded deploy form of {name} ({prefix}lk_reparam.weight, one K x K conv), '
            f'which pelk_mm does not build; load the train-form checkpoint (deploy=False) or {fix_convert}')
    if deployed and has_train and not has_deploy:
        raise DeployFormError(
            f'checkpoint holds the train form of {name} ({prefix}{train_key}, with its BatchNorms and small-kernel '
            f'branch) but the model is built in deploy form (deploy=True); build it with deploy=False, or '
            f'{fix_convert} and load that')
    if not deployed and has_deploy and not has_train:
        raise DeployFormError(
            f'checkpoint holds the deploy form of {name} ({prefix}{deploy_key}, written by switch_to_deploy or '
            f'tools/deploy/convert_to_deploy.py) but the model is built in train form (deploy=False); build it with '
            f'deploy=True (e.g. --cfg-options model.backbone.deploy=True), or load the train-form checkpoint it '
            f'was converted from')


def centre_cell_start(grid: Sequence[int], small_kernel: int) -> Optional[int]:
    """Index of the cell at offset ``-(small_kernel // 2)`` if every offset of a centred ``small_kernel`` kernel lies
    in a width-1 cell of ``grid`` (so the small kernel folds exactly into ``small_kernel`` consecutive unshared
    cells), else ``None``."""
    r = small_kernel // 2
    first = None
    for i, (lo, hi) in enumerate(grid_bounds(grid)):
        if hi < -r or lo > r:
            continue
        if lo != hi:
            return None
        first = i if first is None else first
    return first


class DeployFormMixin:
    """The switch between train and deploy form shared by the large-kernel mixers.

    A subclass names ``FORM_KEYS`` (a state-dict key only its train form has, one only its deploy form has) and
    ``TRAIN_MODULES`` (what the deploy form drops), and implements ``_build_deploy_form()``.
    """

    FORM_KEYS: Tuple[str, str]
    TRAIN_MODULES: Tuple[str, ...]

    def _become_deployed(self, values: Dict[str, torch.Tensor], ref: torch.Tensor) -> None:
        """Drop the train-form modules, build the deploy form and set its parameters to ``values``, on the device
        and in the dtype of ``ref`` (a train-form weight)."""
        for name in self.TRAIN_MODULES:
            if hasattr(self, name):
                delattr(self, name)
        self._build_deploy_form()
        self.to(device=ref.device)
        for name, value in values.items():
            self.get_parameter(name).data = value.to(device=ref.device, dtype=ref.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        check_state_dict_form(self, state_dict, prefix, *self.FORM_KEYS, self.deployed)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


@MODELS.register_module(name=['PeripheralConv2d', 'peripheral'])
class PeripheralConv2d(DeployFormMixin, LargeKernelConv):
    """Depthwise peripheral convolution with its BatchNorm and an optional parallel small-kernel branch.

    ``y = BN(PeriConv(x) [+ KPE term]) + BN_s(DWConv_s(x))``. The ``K x K`` kernel is parameterised by a
    ``k' x k'`` weight shared over an axis-symmetric sharing grid (fine centre, exponentially wider periphery),
    so a 51x51 kernel with a 5x5 centre has 13x13 = 169 parameters per channel instead of 2601.

    **Deploy form** (``deploy=True``, or :meth:`switch_to_deploy` on a trained module) keeps the block-shared
    structure: ``y = PeriConv_{w'}(x) + b [+ KPE term]``, run by :func:`~pelk_mm.ops.peripheral_conv2d` (the fast
    kernels), with

    * both BatchNorms folded into ``w'`` (``reparam_weight``, ``(C, 1, k', k')``) and the bias ``b``
      (``reparam_bias``);
    * the small-kernel branch added to the unshared centre cells of ``w'`` when ``small_kernel`` fits in width-1
      cells of the grid (``small_kernel <= center_size`` for PeLK's grids; always for ``DenseLargeKernelConv2d``).
      Otherwise it stays a separate ``small_reparam`` depthwise conv (its BN folded), since adding it to a shared
      cell would change the other taps of that cell;
    * ``kpe_mode='input'``: the border-aware KPE term stays a per-size additive map, computed at every forward from
      ``reparam_kpe_weight`` (``w`` scaled by the BN, ``(C, 1, k', k')``) and the stage's embedding, which the
      deployed backbone keeps; ``'bias'`` folds into ``b``; ``'weight'`` (which breaks the sharing) becomes one
      dense ``(C, 1, K, K)`` ``reparam_weight`` run by ``F.conv2d``, as the train form runs it.

    The KPE term is never cached (see :mod:`~pelk_mm.models.layers.kernel_position_embedding`), so the output is
    that of the current weights whatever changed them.

    Args:
        channels (int): Input = output channels (depthwise).
        kernel_size (int): Odd dense kernel size ``K`` (3 ... 101 and beyond). Stride 1, "same" padding.
        center_size (int): Side of the unshared central region. Defaults to 5 (PeLK; 7 for PeLK-101).
        base (int): Growth base of the peripheral cells. Defaults to 2.
        half_grid (Sequence[int], optional): Explicit half grid (outer -> centre, centre cell ``1`` last) for
            ablations (paper Table 5); overrides ``center_size``/``base``.
        small_kernel (int, optional): Size of the parallel depthwise conv + BN that re-parameterisation merges into
            the kernel centre (SLaK/RepLKNet). ``None`` disables it. Defaults to 5.
        kpe_mode (str, optional): How the stage's kernel-wise positional embedding enters (see
            :mod:`~pelk_mm.models.layers.kernel_position_embedding`): ``'input'`` (Eq. 3), ``'bias'``,
            ``'weight'`` or ``None`` (no KPE). Defaults to ``'input'``.
        norm_cfg (dict, optional): Norm after each branch. Defaults to ``dict(type='BN')``; ``None`` for none.
        conv_impl (str): Peripheral conv implementation, see :func:`pelk_mm.ops.peripheral_conv2d`.
        deploy (bool): Build the deploy form directly (to load a converted checkpoint). Defaults to False.

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``; ``kpe``: ``(C, K, K)`` when ``kpe_mode`` is set (train form) or
        is ``'input'`` (deploy form).
    """

    #: ``(key only the train form has, key only the deploy form has)``, relative to the module's prefix
    FORM_KEYS = ('weight', 'reparam_weight')
    TRAIN_MODULES = ('weight', 'norm', 'small_conv', 'small_norm')

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 center_size: int = 5,
                 base: int = 2,
                 half_grid: Optional[Sequence[int]] = None,
                 small_kernel: Optional[int] = 5,
                 kpe_mode: Optional[str] = 'input',
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 conv_impl: str = 'auto',
                 deploy: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('channels', channels)
        self.grid = peripheral_grid(kernel_size, center_size, base, half_grid)
        if small_kernel is not None:
            check_int('small_kernel', small_kernel, odd=True, maximum=kernel_size, maximum_name='kernel_size',
                      why='or None for no small-kernel branch')
        if kpe_mode is not None and kpe_mode not in KPE_MODES:
            raise ValueError(f'kpe_mode must be one of {KPE_MODES} or None, got kpe_mode={kpe_mode!r}')
        if not isinstance(deploy, bool):
            raise ValueError(f'deploy must be True or False, got deploy={deploy!r}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.center_size = center_size
        self.small_kernel = small_kernel
        self.kpe_mode = kpe_mode
        self.conv_impl = conv_impl
        self.deployed = False
        # NOTE: structure only (grid, small kernel, KPE mode), fixed at construction: kept so that the deployed
        # forward does not walk the grid at every call.
        self._deploy_grid = (1, ) * kernel_size if kpe_mode == 'weight' else tuple(self.grid)
        self._small_fold_start = None if small_kernel is None else centre_cell_start(self._deploy_grid, small_kernel)

        k = len(self.grid)
        if deploy:
            self._build_deploy_form()
            trunc_normal_(self.reparam_weight, std=0.02)
            if self.kpe_mode == 'input':
                trunc_normal_(self.reparam_kpe_weight, std=0.02)
            return
        self.weight = nn.Parameter(torch.empty(channels, 1, k, k))
        trunc_normal_(self.weight, std=0.02)
        self.norm = build_norm(norm_cfg, channels)
        if small_kernel is not None:
            self.small_conv = nn.Conv2d(channels, channels, small_kernel, padding=small_kernel // 2,
                                        groups=channels, bias=False)
            self.small_norm = build_norm(norm_cfg, channels)

    # ------------------------------------------------------------------ structure
    @property
    def num_params_per_channel(self) -> int:
        return len(self.grid) ** 2

    @property
    def deploy_grid(self) -> Tuple[int, ...]:
        """Sharing grid of the deploy-form weight: the module's grid, or all-unshared for ``kpe_mode='weight'``."""
        return self._deploy_grid

    @property
    def small_folded(self) -> bool:
        """Whether deploy folds the small-kernel branch into the centre cells (see the class docstring)."""
        return self._small_fold_start is not None

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(C, 1, K, K)`` kernel the shared weights stand for (deploy form: BNs and a folded small
        branch included)."""
        if not self.deployed:
            return expand_kernel(self.weight, self.grid)
        dense = expand_kernel(self.reparam_weight, self.deploy_grid)
        if self.small_kernel is not None and not self.small_folded:
            pad = (self.kernel_size - self.small_kernel) // 2
            dense = dense + F.pad(self.small_reparam.weight, [pad] * 4)
        return dense

    def extra_repr(self) -> str:
        k = len(self.grid)
        dense = self.kernel_size ** 2
        text = (f'channels={self.channels}, kernel_size={self.kernel_size}, grid={list(self.grid)}, '
                f'params_per_channel={k}x{k}={k * k} (dense {dense}, {100 * (1 - k * k / dense):.1f}% fewer), '
                f'small_kernel={self.small_kernel}, kpe_mode={self.kpe_mode}, conv_impl={self.conv_impl!r}')
        if self.deployed:
            small = '' if self.small_kernel is None else \
                (', small kernel in the centre cells' if self.small_folded else ', small kernel kept')
            text += f', deployed{small}'
        return text

    # ------------------------------------------------------------------ forward
    def _kpe_term(self, weight: torch.Tensor, kpe: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Input-independent KPE contribution of the shared weights ``weight`` ``(C, 1, k', k')``: ``(1, C, 1, 1)``
        for ``'bias'``, ``(1, C, H, W)`` for ``'input'``."""
        kpe = kpe.to(weight.dtype)
        if self.kpe_mode == 'bias':
            return (expand_kernel(weight, self.grid).squeeze(1) * kpe).sum((-2, -1)).reshape(1, -1, 1, 1)
        # NOTE: taps at offsets |o| >= H (W) only ever see padding, so the kernel and the embedding are cropped to
        # the map first: the same term at a fraction of the cost on maps smaller than the kernel.
        return blocked_kpe_input_term(weight, kpe, self.grid, height, width)

    def _check_kpe(self, kpe: Optional[torch.Tensor]) -> None:
        needs = self.kpe_mode == 'input' if self.deployed else self.kpe_mode is not None
        if needs and kpe is None:
            form = 'deployed ' if self.deployed else ''
            raise ValueError(f'{form}{type(self).__name__} has kpe_mode={self.kpe_mode!r} but was called without the '
                             f'stage embedding: pass kpe=<(C, K, K) tensor> or build it with kpe_mode=None')

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_kpe(kpe)
        if self.deployed:
            return self._forward_deploy(x, kpe)
        if self.kpe_mode == 'weight':
            dense = self.dense_weight() + kpe.unsqueeze(1).to(self.weight.dtype)
            y = F.conv2d(x, dense.to(x.dtype), padding=self.kernel_size // 2, groups=self.channels)
        else:
            y = peripheral_conv2d(x, self.weight, self.grid, self.conv_impl)
            if self.kpe_mode is not None:
                y = y + self._kpe_term(self.weight, kpe, x.shape[-2], x.shape[-1]).to(y.dtype)
        if self.norm is not None:
            y = self.norm(y)
        if self.small_kernel is not None:
            s = self.small_conv(x)
            y = y + (self.small_norm(s) if self.small_norm is not None else s)
        return y

    def _forward_deploy(self, x: torch.Tensor, kpe: Optional[torch.Tensor]) -> torch.Tensor:
        if self.kpe_mode == 'weight':
            y = F.conv2d(x, self.reparam_weight.to(x.dtype), padding=self.kernel_size // 2, groups=self.channels)
        else:
            y = peripheral_conv2d(x, self.reparam_weight, self.deploy_grid, self.conv_impl)
        # NOTE: bias and KPE term are summed at map size (C, H, W) first, so the batch-sized output sees one add.
        shift = self.reparam_bias.reshape(1, -1, 1, 1)
        if self.kpe_mode == 'input':
            shift = shift + self._kpe_term(self.reparam_kpe_weight, kpe, x.shape[-2], x.shape[-1])
        y = y + shift.to(y.dtype)
        if self.small_kernel is not None and not self.small_folded:
            y = y + self.small_reparam(x)
        return y

    # ------------------------------------------------------------------ deploy
    def _build_deploy_form(self) -> None:
        """Create the (uninitialised) deploy-form parameters and mark the module deployed."""
        c, k = self.channels, len(self.deploy_grid)
        self.reparam_weight = nn.Parameter(torch.empty(c, 1, k, k))
        self.reparam_bias = nn.Parameter(torch.zeros(c))
        if self.kpe_mode == 'input':
            kk = len(self.grid)
            self.reparam_kpe_weight = nn.Parameter(torch.empty(c, 1, kk, kk))
        if self.small_kernel is not None and not self.small_folded:
            self.small_reparam = nn.Conv2d(c, c, self.small_kernel, padding=self.small_kernel // 2, groups=c,
                                           bias=False)
        self.deployed = True

    @torch.no_grad()
    def reparameterized(self, kpe: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The deploy-form tensors of the current (eval-mode) train-form weights, in float64:
        ``reparam_weight``, ``reparam_bias``, ``reparam_kpe_weight`` (``kpe_mode='input'``) and
        ``small_reparam.weight`` (small branch not folded)."""
        if self.kpe_mode is not None and kpe is None:
            raise ValueError(f'switch_to_deploy of a module with kpe_mode={self.kpe_mode!r} needs the stage '
                             f'embedding: call switch_to_deploy(kpe=<(C, K, K) tensor>)')
        w = self.weight.double()
        if self.kpe_mode == 'weight':
            w = expand_kernel(w, self.grid) + kpe.double().unsqueeze(1)
        weight, bias, scale = _fuse_bn(w, self.norm)
        out = {}
        if self.kpe_mode == 'bias':
            bias = bias + scale * (expand_kernel(self.weight.double(), self.grid).squeeze(1) * kpe.double()).sum(
                (-2, -1))
        elif self.kpe_mode == 'input':
            out['reparam_kpe_weight'] = self.weight.double() * scale.reshape(-1, 1, 1, 1)
        if self.small_kernel is not None:
            s_weight, s_bias, _ = _fuse_bn(self.small_conv.weight, self.small_norm)
            bias = bias + s_bias
            first = self._small_fold_start
            if first is not None:
                sk = self.small_kernel
                weight = weight.clone()
                weight[:, :, first:first + sk, first:first + sk] += s_weight
            else:
                out['small_reparam.weight'] = s_weight
        out['reparam_weight'] = weight
        out['reparam_bias'] = bias
        return out

    @torch.no_grad()
    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        """Convert in place to the deploy form (see the class docstring); outputs equal the eval-mode train form.

        Args:
            kpe (Tensor, optional): The stage embedding ``(C, K, K)``, needed when ``kpe_mode`` is set. With
                ``kpe_mode='input'`` the deployed module still takes it at every forward.
        """
        if self.deployed:
            return
        self._become_deployed(self.reparameterized(kpe), self.weight)


@MODELS.register_module(name=['DenseLargeKernelConv2d', 'dense'])
class DenseLargeKernelConv2d(PeripheralConv2d):
    """Plain dense ``K x K`` depthwise kernel (RepLKNet/"dense" in the paper's dense-vs-stripe study): the module of
    :class:`PeripheralConv2d` with an all-unshared grid, so BN, the small-kernel branch, KPE and deploy behave
    identically. It has no peripheral grid, so it takes no ``center_size``, ``base`` or ``half_grid``."""

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 small_kernel: Optional[int] = 5,
                 kpe_mode: Optional[str] = 'input',
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 conv_impl: str = 'auto',
                 deploy: bool = False,
                 init_cfg=None):
        super().__init__(channels, kernel_size, center_size=kernel_size, small_kernel=small_kernel,
                         kpe_mode=kpe_mode, norm_cfg=norm_cfg, conv_impl=conv_impl, deploy=deploy, init_cfg=init_cfg)


class PartialPeripheralConv(BaseModule):
    """Partial peripheral convolution (PeLK Eq. 4-6): the first ``int(conv_ratio * C)`` channels go through a
    :class:`PeripheralConv2d`, the rest pass unchanged (identity), then the two parts are concatenated.

    Args:
        channels (int): Channels ``C`` of the input and output.
        conv_ratio (float): Fraction of channels convolved, in ``(0, 1]``. Defaults to 3/8.
        conv_type (str): Registered large-kernel conv form (see :mod:`~pelk_mm.models.layers.conv_form`):
            ``'peripheral'`` (default), ``'dense'``, ``'stripe'`` or a user's form.
        **conv_kwargs: The form's arguments (``kernel_size`` and the form's own); an argument the form does not
            take raises ``ValueError`` naming both.

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``; ``kpe``: ``(int(conv_ratio * C), K, K)``.
    """

    def __init__(self, channels: int, conv_ratio: float = 3 / 8, conv_type: str = 'peripheral', init_cfg=None,
                 **conv_kwargs):
        super().__init__(init_cfg=init_cfg)
        if isinstance(conv_ratio, bool) or not isinstance(conv_ratio, (int, float)) \
                or not 0 < conv_ratio <= 1:
            raise ValueError(f'conv_ratio must be a number in (0, 1] (fraction of channels that go through the '
                             f'peripheral conv), got conv_ratio={conv_ratio!r}')
        conv_channels = int(conv_ratio * channels)
        if conv_channels < 1:
            raise ValueError(f'conv_ratio={conv_ratio} of channels={channels} convolves no channel; '
                             f'raise conv_ratio to at least {1 / channels:.4f}')
        self.channels = channels
        self.conv_channels = conv_channels
        self.conv_type = conv_type
        self.conv = build_conv_form(conv_type, conv_channels, **conv_kwargs)

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.conv_channels == self.channels:
            return self.conv(x, kpe)
        x_conv, x_id = torch.split(x, [self.conv_channels, self.channels - self.conv_channels], dim=1)
        return torch.cat([self.conv(x_conv, kpe), x_id], dim=1)

    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        self.conv.switch_to_deploy(kpe)

    def extra_repr(self) -> str:
        return f'channels={self.channels}, conv_channels={self.conv_channels}, conv_type={self.conv_type!r}'
