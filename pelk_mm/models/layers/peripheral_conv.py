"""PeLK's large-kernel token mixer: depthwise peripheral convolution (+ BN, + small-kernel branch, + KPE)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from pelk_mm.ops import expand_kernel, peripheral_conv2d, peripheral_grid
from .kernel_position_embedding import KPE_MODES, kpe_input_term


def _fuse_bn(kernel: torch.Tensor, bn: Optional[nn.Module]):
    """Fold an eval-mode BatchNorm into ``kernel`` ``(C, 1, k, k)``; returns ``(kernel, bias, scale)``."""
    if bn is None:
        ones = kernel.new_ones(kernel.shape[0])
        return kernel, kernel.new_zeros(kernel.shape[0]), ones
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale, scale


class PeripheralConv2d(BaseModule):
    """Depthwise peripheral convolution with its BatchNorm and an optional parallel small-kernel branch.

    ``y = BN(PeriConv(x) [+ KPE term]) + BN_s(DWConv_s(x))``. The ``K x K`` kernel is parameterised by a
    ``k' x k'`` weight shared over an axis-symmetric sharing grid (fine centre, exponentially wider periphery),
    so a 51x51 kernel with a 5x5 centre has 13x13 = 169 parameters per channel instead of 2601.

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

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``; ``kpe``: ``(C, K, K)`` when ``kpe_mode`` is set.
    """

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
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f'channels must be a positive int, got channels={channels!r}')
        self.grid = peripheral_grid(kernel_size, center_size, base, half_grid)
        if small_kernel is not None:
            if not isinstance(small_kernel, int) or small_kernel < 1 or small_kernel % 2 == 0 \
                    or small_kernel > kernel_size:
                raise ValueError(f'small_kernel must be None or an odd int <= kernel_size={kernel_size}, '
                                 f'got small_kernel={small_kernel!r}')
        if kpe_mode is not None and kpe_mode not in KPE_MODES:
            raise ValueError(f'kpe_mode must be one of {KPE_MODES} or None, got kpe_mode={kpe_mode!r}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.center_size = center_size
        self.small_kernel = small_kernel
        self.kpe_mode = kpe_mode
        self.conv_impl = conv_impl
        self.deployed = False

        k = len(self.grid)
        self.weight = nn.Parameter(torch.empty(channels, 1, k, k))
        trunc_normal_(self.weight, std=0.02)
        self.norm = build_norm_layer(norm_cfg, channels)[1] if norm_cfg else None
        if small_kernel is not None:
            self.small_conv = nn.Conv2d(channels, channels, small_kernel, padding=small_kernel // 2,
                                        groups=channels, bias=False)
            self.small_norm = build_norm_layer(norm_cfg, channels)[1] if norm_cfg else None
        self._kpe_cache = None

    # ------------------------------------------------------------------ structure
    @property
    def num_params_per_channel(self) -> int:
        return len(self.grid) ** 2

    def dense_weight(self) -> torch.Tensor:
        """The dense ``(C, 1, K, K)`` kernel the shared weights stand for."""
        return expand_kernel(self.weight, self.grid)

    def extra_repr(self) -> str:
        k = len(self.grid)
        dense = self.kernel_size ** 2
        return (f'channels={self.channels}, kernel_size={self.kernel_size}, grid={list(self.grid)}, '
                f'params_per_channel={k}x{k}={k * k} (dense {dense}, {100 * (1 - k * k / dense):.1f}% fewer), '
                f'small_kernel={self.small_kernel}, kpe_mode={self.kpe_mode}, conv_impl={self.conv_impl!r}'
                + (', deployed' if self.deployed else ''))

    # ------------------------------------------------------------------ forward
    def _kpe_term(self, kernel: torch.Tensor, kpe: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Input-independent KPE contribution ``(1 or N, C, H or 1, W or 1)`` for the dense kernel ``kernel``."""
        v = kernel.squeeze(1) * kpe.to(kernel.dtype)
        if self.kpe_mode == 'bias':
            return v.sum((-2, -1)).reshape(1, -1, 1, 1)
        return kpe_input_term(v, x.shape[-2], x.shape[-1])

    def _cached_kpe_term(self, kernel_fn, kpe: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Compute once per spatial size when nothing can change it (no autograd, eval mode)."""
        cacheable = not torch.is_grad_enabled() and not self.training
        if not cacheable:
            self._kpe_cache = None
            return self._kpe_term(kernel_fn(), kpe, x)
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype, self.weight._version if not self.deployed else -1,
               kpe._version, id(kpe))
        if self._kpe_cache is None or self._kpe_cache[0] != key:
            self._kpe_cache = (key, self._kpe_term(kernel_fn(), kpe, x).to(x.dtype))
        return self._kpe_cache[1]

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kpe_mode is not None and kpe is None and not self.deployed:
            raise ValueError(f'{type(self).__name__} has kpe_mode={self.kpe_mode!r} but was called without the '
                             f'stage embedding: pass kpe=<(C, K, K) tensor> or build it with kpe_mode=None')
        if self.deployed:
            return self._forward_deploy(x)
        if self.kpe_mode == 'weight':
            dense = self.dense_weight() + kpe.unsqueeze(1).to(self.weight.dtype)
            y = F.conv2d(x, dense.to(x.dtype), padding=self.kernel_size // 2, groups=self.channels)
        else:
            y = peripheral_conv2d(x, self.weight, self.grid, self.conv_impl)
            if self.kpe_mode is not None:
                y = y + self._cached_kpe_term(self.dense_weight, kpe, x).to(y.dtype)
        if self.norm is not None:
            y = self.norm(y)
        if self.small_kernel is not None:
            s = self.small_conv(x)
            y = y + (self.small_norm(s) if self.small_norm is not None else s)
        return y

    def _forward_deploy(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lk_reparam(x)
        if self.kpe_mode == 'input':
            key = (x.shape[-2], x.shape[-1], x.device, x.dtype)
            if self._kpe_cache is None or self._kpe_cache[0] != key:
                term = kpe_input_term(self.kpe_kernel, x.shape[-2], x.shape[-1]).to(x.dtype)
                self._kpe_cache = (key, term)
            y = y + self._kpe_cache[1]
        return y

    # ------------------------------------------------------------------ deploy
    @torch.no_grad()
    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        """Fold BN, the small branch and (where exact) the KPE into one plain depthwise ``nn.Conv2d`` with bias.

        The border-aware ``'input'`` KPE term depends on the feature-map size, so it is kept as a ``(C, K, K)``
        buffer and applied as a per-size cached additive map.
        """
        if self.deployed:
            return
        if self.kpe_mode is not None and kpe is None:
            raise ValueError(f'switch_to_deploy of a module with kpe_mode={self.kpe_mode!r} needs the stage '
                             f'embedding: call switch_to_deploy(kpe=<(C, K, K) tensor>)')
        dense = self.dense_weight()
        if self.kpe_mode == 'weight':
            dense = dense + kpe.unsqueeze(1)
        kernel, bias, scale = _fuse_bn(dense, self.norm)
        if self.kpe_mode == 'bias':
            bias = bias + scale * (self.dense_weight().squeeze(1) * kpe).sum((-2, -1))
        elif self.kpe_mode == 'input':
            self.register_buffer('kpe_kernel', scale.reshape(-1, 1, 1) * self.dense_weight().squeeze(1) * kpe)
        if self.small_kernel is not None:
            s_kernel, s_bias, _ = _fuse_bn(self.small_conv.weight, self.small_norm)
            pad = (self.kernel_size - self.small_kernel) // 2
            kernel = kernel + F.pad(s_kernel, [pad] * 4)
            bias = bias + s_bias
            del self.small_conv
            if self.small_norm is not None:
                del self.small_norm
        self.lk_reparam = nn.Conv2d(self.channels, self.channels, self.kernel_size,
                                    padding=self.kernel_size // 2, groups=self.channels, bias=True)
        self.lk_reparam.weight.copy_(kernel)
        self.lk_reparam.bias.copy_(bias)
        self.lk_reparam.to(self.weight.device)
        del self.weight
        if self.norm is not None:
            del self.norm
        self._kpe_cache = None
        self.deployed = True


class DenseLargeKernelConv2d(PeripheralConv2d):
    """Plain dense ``K x K`` depthwise kernel (RepLKNet/"dense" in the paper's dense-vs-stripe study): the same
    module with an all-unshared grid, so BN, the small-kernel branch, KPE and deploy behave identically."""

    def __init__(self, channels: int, kernel_size: int, center_size: int = 5, base: int = 2,
                 half_grid: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(channels, kernel_size, center_size=kernel_size, base=base, half_grid=None, **kwargs)


#: Large-kernel conv forms selectable with ``conv_type`` (PeLK's dense-vs-stripe study); other modules add theirs.
CONV_TYPES = {'peripheral': PeripheralConv2d, 'dense': DenseLargeKernelConv2d}


class PartialPeripheralConv(BaseModule):
    """Partial peripheral convolution (PeLK Eq. 4-6): the first ``int(conv_ratio * C)`` channels go through a
    :class:`PeripheralConv2d`, the rest pass unchanged (identity), then the two parts are concatenated.

    Args:
        channels (int): Channels ``C`` of the input and output.
        conv_ratio (float): Fraction of channels convolved, in ``(0, 1]``. Defaults to 3/8.
        conv_type (str): Large-kernel form, a key of :data:`CONV_TYPES`: ``'peripheral'`` (default) or
            ``'dense'`` (and ``'stripe'`` when registered).
        **conv_kwargs: Passed to the conv class.

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``; ``kpe``: ``(int(conv_ratio * C), K, K)``.
    """

    def __init__(self, channels: int, conv_ratio: float = 3 / 8, conv_type: str = 'peripheral', init_cfg=None,
                 **conv_kwargs):
        super().__init__(init_cfg=init_cfg)
        if conv_type not in CONV_TYPES:
            raise ValueError(f'conv_type must be one of {sorted(CONV_TYPES)}, got conv_type={conv_type!r}')
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
        self.conv = CONV_TYPES[conv_type](conv_channels, **conv_kwargs)

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.conv_channels == self.channels:
            return self.conv(x, kpe)
        x_conv, x_id = torch.split(x, [self.conv_channels, self.channels - self.conv_channels], dim=1)
        return torch.cat([self.conv(x_conv, kpe), x_id], dim=1)

    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        self.conv.switch_to_deploy(kpe)

    def extra_repr(self) -> str:
        return f'channels={self.channels}, conv_channels={self.conv_channels}, conv_type={self.conv_type!r}'
