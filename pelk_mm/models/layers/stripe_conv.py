"""SLaK's stripe large kernel: ``K x s`` + ``s x K`` depthwise convs (+ a small ``s x s`` branch), for PeLK's
dense-vs-stripe study (paper Table 1, Fig. 2).

SLaK (Liu et al., ICLR 2023) decomposes a ``K x K`` depthwise kernel into two parallel rectangular kernels of
short side ``s = 5``, each followed by its own BatchNorm, plus the RepLKNet-style small ``5 x 5`` conv + BN. All
branches are depthwise, stride 1 and "same"-padded, so at deploy time the BNs fold into the stripes and a bias
and the small kernel folds into the centre of the ``K x s`` stripe: two convs of ``2 K s`` taps per pixel
instead of the ``K x K`` kernel they sum to.

``conv_type='stripe'`` selects it in :class:`~pelk_mm.models.layers.PartialPeripheralConv` and in
:class:`~pelk_mm.models.backbones.PeLK`; ``conv_cfg=dict(stripe_width=...)`` sets its short side.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from pelk_mm.errors import check_int
from pelk_mm.registry import MODELS
from .conv_form import LargeKernelConv
from .norm import build_norm
from .peripheral_conv import DeployFormMixin, _fuse_bn


@MODELS.register_module(name=['StripeConv2d', 'stripe'])
class StripeConv2d(DeployFormMixin, LargeKernelConv):
    """Depthwise stripe large kernel (SLaK): ``BN(DW_{K x s}(x)) + BN(DW_{s x K}(x)) [+ BN(DW_{k_s x k_s}(x))]``.

    Per channel it has ``2 * K * s`` large-kernel parameters instead of ``K * K`` (7 -> 51 grows them 7.3x,
    against 53.1x for a dense kernel; paper Fig. 2).

    It has no sharing grid (no ``center_size``, ``base``, ``half_grid``) and runs plain ``nn.Conv2d`` (no
    ``conv_impl``). The kernel-wise positional embedding is not supported (``kpe_mode`` must be ``None``): SLaK, which Table 1 evaluates, has none, and
    Eq. 3 needs one kernel per BN while the stripe form has one BN per branch. Build the backbone with
    ``conv_type='stripe', kpe_mode=None``.

    Args:
        channels (int): Input = output channels (depthwise).
        kernel_size (int): Odd long side ``K`` of the stripes.
        stripe_width (int): Odd short side ``s`` of the stripes, ``<= K``. Defaults to 5 (SLaK).
        small_kernel (int, optional): Side of the parallel square conv + BN (re-parameterisation branch).
            ``None`` disables it. Defaults to 5.
        kpe_mode (str, optional): Must be ``None`` (see above).
        norm_cfg (dict, optional): Norm after each branch. Defaults to ``dict(type='BN')``; ``None`` for none.
        deploy (bool): Build the deploy form directly (to load a converted checkpoint): ``conv_h_reparam``
            (``K x s`` with the bias, the small kernel folded into its centre when ``small_kernel <= s``, else kept
            as ``small_reparam``) and ``conv_w_reparam`` (``s x K``). Defaults to False.

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``.
    """

    #: ``(key only the train form has, key only the deploy form has)``, relative to the module's prefix
    FORM_KEYS = ('conv_h.weight', 'conv_h_reparam.weight')
    TRAIN_MODULES = ('conv_h', 'norm_h', 'conv_w', 'norm_w', 'small_conv', 'small_norm')

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 stripe_width: int = 5,
                 small_kernel: Optional[int] = 5,
                 kpe_mode: Optional[str] = None,
                 norm_cfg: Optional[dict] = dict(type='BN'),
                 deploy: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        check_int('channels', channels)
        check_int('kernel_size', kernel_size, odd=True)
        check_int('stripe_width', stripe_width, odd=True, maximum=kernel_size, maximum_name='kernel_size')
        if small_kernel is not None:
            check_int('small_kernel', small_kernel, odd=True, maximum=kernel_size, maximum_name='kernel_size')
        if kpe_mode is not None:
            raise ValueError(f'the stripe kernel (conv_type="stripe") has no kernel-wise positional embedding, got '
                             f'kpe_mode={kpe_mode!r}; build it with kpe_mode=None (SLaK, paper Table 1, has none)')
        self.channels = channels
        self.kernel_size = kernel_size
        self.stripe_width = stripe_width
        self.small_kernel = small_kernel
        self.kpe_mode = None
        self.deployed = False

        if deploy:
            self._build_deploy_form()
            return
        k, s = kernel_size, stripe_width
        self.conv_h = nn.Conv2d(channels, channels, (k, s), padding=(k // 2, s // 2), groups=channels, bias=False)
        self.norm_h = build_norm(norm_cfg, channels)
        self.conv_w = nn.Conv2d(channels, channels, (s, k), padding=(s // 2, k // 2), groups=channels, bias=False)
        self.norm_w = build_norm(norm_cfg, channels)
        if small_kernel is not None:
            self.small_conv = nn.Conv2d(channels, channels, small_kernel, padding=small_kernel // 2,
                                        groups=channels, bias=False)
            self.small_norm = build_norm(norm_cfg, channels)

    # ------------------------------------------------------------------ structure
    @property
    def num_params_per_channel(self) -> int:
        """Large-kernel parameters per channel (the two stripes, without the small branch): ``2 K s``."""
        return 2 * self.kernel_size * self.stripe_width

    def _pad_to_square(self, kernel: torch.Tensor) -> torch.Tensor:
        """Zero-pad a centred ``(C, 1, kh, kw)`` kernel to ``(C, 1, K, K)``."""
        ph = (self.kernel_size - kernel.shape[-2]) // 2
        pw = (self.kernel_size - kernel.shape[-1]) // 2
        return F.pad(kernel, [pw, pw, ph, ph])

    @property
    def small_folded(self) -> bool:
        """Whether deploy folds the small kernel into the centre of the ``K x s`` stripe (``small_kernel <= s``)."""
        return self.small_kernel is not None and self.small_kernel <= self.stripe_width

    def dense_weight(self) -> torch.Tensor:
        """The ``(C, 1, K, K)`` cross-shaped kernel of the two stripes (train form: raw weights, before their BNs;
        deploy form: BNs and the small kernel included)."""
        if self.deployed:
            dense = self._pad_to_square(self.conv_h_reparam.weight) + self._pad_to_square(self.conv_w_reparam.weight)
            if self.small_kernel is not None and not self.small_folded:
                dense = dense + self._pad_to_square(self.small_reparam.weight)
            return dense
        return self._pad_to_square(self.conv_h.weight) + self._pad_to_square(self.conv_w.weight)

    def extra_repr(self) -> str:
        k, s = self.kernel_size, self.stripe_width
        return (f'channels={self.channels}, kernel_size={k}, stripes={k}x{s}+{s}x{k}, '
                f'params_per_channel={2 * k * s} (dense {k * k}), small_kernel={self.small_kernel}'
                + (', deployed' if self.deployed else ''))

    # ------------------------------------------------------------------ forward
    @staticmethod
    def _branch(conv: nn.Module, norm: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
        y = conv(x)
        return norm(y) if norm is not None else y

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        if kpe is not None:
            raise ValueError('StripeConv2d got a kernel-wise positional embedding but supports none; build the '
                             'backbone with kpe_mode=None for conv_type="stripe"')
        if self.deployed:
            y = self.conv_h_reparam(x) + self.conv_w_reparam(x)
            if self.small_kernel is not None and not self.small_folded:
                y = y + self.small_reparam(x)
            return y
        y = self._branch(self.conv_h, self.norm_h, x) + self._branch(self.conv_w, self.norm_w, x)
        if self.small_kernel is not None:
            y = y + self._branch(self.small_conv, self.small_norm, x)
        return y

    # ------------------------------------------------------------------ deploy
    def _build_deploy_form(self) -> None:
        """Create the (default-initialised) deploy-form convs and mark the module deployed."""
        c, k, s = self.channels, self.kernel_size, self.stripe_width
        self.conv_h_reparam = nn.Conv2d(c, c, (k, s), padding=(k // 2, s // 2), groups=c, bias=True)
        self.conv_w_reparam = nn.Conv2d(c, c, (s, k), padding=(s // 2, k // 2), groups=c, bias=False)
        if self.small_kernel is not None and not self.small_folded:
            self.small_reparam = nn.Conv2d(c, c, self.small_kernel, padding=self.small_kernel // 2, groups=c,
                                           bias=False)
        self.deployed = True

    @torch.no_grad()
    def merged_kernel(self):
        """Eval-mode equivalent ``(kernel (C, 1, K, K), bias (C,))`` of all branches with their BNs folded."""
        kernel, bias = None, None
        branches = [(self.conv_h, self.norm_h), (self.conv_w, self.norm_w)]
        if self.small_kernel is not None:
            branches.append((self.small_conv, self.small_norm))
        for conv, norm in branches:
            k, b, _ = _fuse_bn(conv.weight, norm)
            k = self._pad_to_square(k)
            kernel = k if kernel is None else kernel + k
            bias = b if bias is None else bias + b
        return kernel.to(self.conv_h.weight.dtype), bias.to(self.conv_h.weight.dtype)

    @torch.no_grad()
    def reparameterized(self) -> dict:
        """The deploy-form tensors (float64) of the current eval-mode weights, keyed by parameter name."""
        h, bias, _ = _fuse_bn(self.conv_h.weight, self.norm_h)
        w, b_w, _ = _fuse_bn(self.conv_w.weight, self.norm_w)
        bias = bias + b_w
        out = {'conv_w_reparam.weight': w}
        if self.small_kernel is not None:
            sk, b_s, _ = _fuse_bn(self.small_conv.weight, self.small_norm)
            bias = bias + b_s
            if self.small_folded:
                ph = (self.kernel_size - self.small_kernel) // 2
                pw = (self.stripe_width - self.small_kernel) // 2
                h = h + F.pad(sk, [pw, pw, ph, ph])
            else:
                out['small_reparam.weight'] = sk
        out['conv_h_reparam.weight'] = h
        out['conv_h_reparam.bias'] = bias
        return out

    @torch.no_grad()
    def switch_to_deploy(self, kpe: Optional[torch.Tensor] = None) -> None:
        """Fold the BNs into the two stripes and a bias, and the small kernel into the ``K x s`` stripe's centre
        (kept as its own conv when ``small_kernel > stripe_width``), in place; dtype and device are kept."""
        if self.deployed:
            return
        if kpe is not None:
            raise ValueError('StripeConv2d.switch_to_deploy got a kernel-wise positional embedding but the stripe '
                             'kernel supports none (kpe_mode=None)')
        self._become_deployed(self.reparameterized(), self.conv_h.weight)

