"""PeLK backbone (Chen et al., CVPR 2024): a 4-stage ConvNeXt/SLaK-style ConvNet whose token mixer is a partial
peripheral convolution. The API mirrors ``mmpretrain.models.ConvNeXt`` so that stock mmpretrain / mmseg / mmdet
configs only swap the backbone ``type``.
"""
from __future__ import annotations

import contextlib
import copy
from itertools import chain
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.model.weight_init import trunc_normal_
from torch.nn.modules.batchnorm import _BatchNorm

from pelk_mm.errors import ConfigValidationError, check_int
from pelk_mm.registry import MODELS
from ..layers import KPE_MODES, DropPath, LayerNorm2d, PartialPeripheralConv, conv_form_class
from ..layers.conv_form import form_args_of


@contextlib.contextmanager
def _keep_bn_running_stats(module: nn.Module):
    """Let the BatchNorms of ``module`` run (batch statistics in train mode) but restore their running statistics
    and counters on exit: the recomputation of an activation-checkpointed block must not count the batch twice."""
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(bns, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _grad_in_canonical_strides(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` with the plain contiguous strides of its shape, when it is contiguous with other strides.

    A parameter with a size-1 dimension, such as a depthwise conv weight ``(C, 1, k, k)``, whose conv sees
    channels-last activations (:class:`LayerNorm2d` hands those out, and the blocks keep them) gets its gradient in
    channels-last strides ``(k*k, 1, k, 1)``: the memory order of the parameter's ``(k*k, k*k, k, 1)``, only the
    stride of the size-1 dimension differs. Autograd keeps such a gradient as it is, but DDP compares strides exactly
    and warns "Grad strides do not match bucket view strides". Re-striding the view costs nothing.
    """
    if grad.layout != torch.strided or not grad.is_contiguous():
        return grad
    strides, step = [], 1
    for size in reversed(grad.shape):
        strides.append(step)
        step *= max(size, 1)
    strides = tuple(reversed(strides))
    return grad if grad.stride() == strides else grad.as_strided(grad.shape, strides)


def _canonical_grad_strides(module: nn.Module) -> None:
    """Give every parameter of ``module`` with a size-1 dimension the :func:`_grad_in_canonical_strides` hook
    (parameters without one get their gradients in their own layout from autograd)."""
    for param in module.parameters():
        hooks = getattr(param, '_backward_hooks', None) or {}
        if param.requires_grad and param.dim() > 1 and 1 in param.shape and \
                _grad_in_canonical_strides not in hooks.values():
            param.register_hook(_grad_in_canonical_strides)


class PeLKBlock(BaseModule):
    """One PeLK block: partial peripheral conv -> LN -> Linear(4C) -> GELU -> Linear(C) -> layer scale -> drop path,
    with a residual connection (SLaK/ConvNeXt block with PeLK's token mixer).

    Args:
        channels (int): Block width ``C``.
        kernel_size (int): Peripheral kernel size ``K``.
        mlp_ratio (float): Hidden width of the MLP as a multiple of ``C``. Defaults to 4.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Init of the per-channel layer scale; ``0`` disables it. Defaults to 1e-6.
        with_cp (bool): Activation checkpointing: the block's activations are recomputed in the backward pass
            (non-reentrant ``torch.utils.checkpoint``); BatchNorm running statistics are updated once per forward,
            as without it. Defaults to False.
        **mixer_kwargs: ``conv_ratio``, ``conv_type`` and the conv form's arguments (see
            :class:`~pelk_mm.models.layers.PartialPeripheralConv`).

    Shapes:
        x: ``(N, C, H, W)`` -> ``(N, C, H, W)``; ``kpe``: the stage embedding ``(g, K, K)`` or ``None``.
    """

    def __init__(self, channels: int, kernel_size: int, mlp_ratio: float = 4., drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6, with_cp: bool = False, init_cfg=None, **mixer_kwargs):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.token_mixer = PartialPeripheralConv(channels, kernel_size=kernel_size, **mixer_kwargs)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        hidden = int(mlp_ratio * channels)
        self.pointwise_conv1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.pointwise_conv2 = nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(channels)) \
            if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def _forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor]) -> torch.Tensor:
        shortcut = x
        x = self.token_mixer(x, kpe)
        x = x.permute(0, 2, 3, 1)
        x = self.pointwise_conv2(self.act(self.pointwise_conv1(self.norm(x))))
        if self.gamma is not None:
            x = x * self.gamma
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)

    def forward(self, x: torch.Tensor, kpe: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            # the recomputation in backward sees the same batch: it must not update BN running stats again
            return cp.checkpoint(self._forward, x, kpe, use_reentrant=False,
                                 context_fn=lambda: (contextlib.nullcontext(), _keep_bn_running_stats(self)))
        return self._forward(x, kpe)


class PeLKStage(Sequential):
    """The blocks of one stage plus the kernel-wise positional embedding they share (``kpe``, ``(g, K, K)``)."""

    def __init__(self, blocks: Sequence[PeLKBlock], kpe_shape: Optional[Sequence[int]] = None,
                 kpe_std: float = 0.02):
        super().__init__(*blocks)
        if kpe_shape is not None:
            self.kpe = nn.Parameter(torch.empty(*kpe_shape))
            trunc_normal_(self.kpe, std=kpe_std)
        else:
            self.kpe = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = block(x, self.kpe)
        return x


@MODELS.register_module()
class PeLK(BaseModule):
    """PeLK backbone.

    A ConvNeXt-style network (4x4/4 stem, LN + 2x2/2 downsampling) whose blocks use partial peripheral
    convolution. Widths include SLaK's 1.3x width factor. Architectures (``arch``):

    ===========  ==============  ======================  =================  ============
    arch         depths          channels                kernel sizes       centre
    ===========  ==============  ======================  =================  ============
    tiny / t     3, 3, 9, 3      124, 249, 499, 998      51, 49, 47, 13     5x5
    small / s    3, 3, 27, 3     124, 249, 499, 998      51, 49, 47, 13     5x5
    base / b     3, 3, 27, 3     166, 332, 665, 1331     51, 49, 47, 13     5x5
    tiny-101     3, 3, 9, 3      124, 249, 499, 998      101, 69, 67, 13    7x7
    base-101     3, 3, 27, 3     166, 332, 665, 1331     101, 69, 67, 13    7x7
    tiny-151     3, 3, 9, 3      124, 249, 499, 998      151, 89, 87, 13    5x5
    ===========  ==============  ======================  =================  ============

    A dict arch needs ``depths``, ``channels`` and ``kernel_sizes`` (``center_sizes`` defaults to 5 per stage).
    ``kernel_sizes`` / ``center_sizes`` override the arch's per stage, so an ablation changes one line
    (``backbone=dict(center_sizes=[1, 1, 1, 1])``) instead of re-spelling the arch.

    Args:
        arch (str | dict): Architecture name or dict. Defaults to ``'tiny'``.
        kernel_sizes (Sequence[int], optional): Per-stage kernel sizes replacing the arch's. Defaults to None.
        center_sizes (Sequence[int], optional): Per-stage sizes of the unshared centre replacing the arch's.
            Defaults to None.
        in_channels (int): Input image channels. Defaults to 3.
        stem_patch_size (int): Stem conv kernel and stride. Defaults to 4.
        base (int): Peripheral grid growth base. Defaults to 2.
        half_grids (list, optional): Per-stage explicit half grids (ablations); ``None`` entries use Eq. 2.
        conv_ratio (float): Fraction of channels that go through the peripheral conv. Defaults to 3/8.
        conv_type (str): Large-kernel conv form, a name registered in ``MODELS`` (see
            :mod:`pelk_mm.models.layers.conv_form`): ``'peripheral'`` (PeLK), ``'dense'`` (plain K x K),
            ``'stripe'`` (SLaK's K x 5 + 5 x K) or a user's form. Defaults to ``'peripheral'``.
        conv_cfg (dict, optional): The form's own arguments, e.g. ``dict(stripe_width=7)`` for ``'stripe'``; a
            ``type`` key is the same as ``conv_type``. ``center_sizes`` (from the arch), ``base``, ``half_grids``
            and ``conv_impl`` go to the forms that take them; setting one (``center_sizes`` as an override) for a
            form without it is an error. Defaults to None.
        small_kernel (int, optional): Parallel small depthwise conv + BN (re-param branch). Defaults to 5.
        kpe_mode (str, optional): Kernel-wise positional embedding: ``'input'`` (Eq. 3), ``'bias'``,
            ``'weight'`` or ``None``. One embedding per stage, shared by its blocks. Defaults to ``'input'``.
        kpe_std (float): Truncated-normal std of the embedding. Defaults to 0.02.
        conv_norm_cfg (dict, optional): Norm inside the large-kernel branch. Defaults to ``dict(type='BN')``.
        conv_impl (str): Peripheral conv implementation (``'auto'``, ``'dense'``, ...). Defaults to ``'auto'``.
        mlp_ratio (float): MLP expansion. Defaults to 4.
        drop_path_rate (float): Stochastic depth, linear in depth from 0. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        out_indices (int | Sequence[int]): Stages to output; negative counts from the end. Defaults to -1.
        frozen_stages (int): Freeze the stem/downsampling and blocks of the first ``frozen_stages`` stages.
        gap_before_final_norm (bool): Pool then norm each output to ``(N, C)`` (classification); ``False`` gives
            normalised ``(N, C, H, W)`` maps (dense prediction). Defaults to True.
        norm_eval (bool): Keep BatchNorm layers in eval mode during training. Defaults to False.
        with_cp (bool): Activation checkpointing in every block. Defaults to False.
        deploy (bool): Build the deploy form of every large-kernel conv directly (mmpretrain's RepVGG/RepLKNet
            convention), to load a checkpoint written by :meth:`switch_to_deploy` (``tools/deploy/
            convert_to_deploy.py`` or mmpretrain's ``reparameterize_model.py``) strictly. The stages keep their
            embedding only for ``kpe_mode='input'`` (the other modes fold it). Loading a checkpoint of the other
            form raises :class:`~pelk_mm.errors.DeployFormError`. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation, e.g. ``dict(type='Pretrained',
            checkpoint=..., prefix='backbone.')``.
    """
    arch_settings = {
        'tiny': dict(depths=[3, 3, 9, 3], channels=[124, 249, 499, 998], kernel_sizes=[51, 49, 47, 13],
                     center_sizes=[5, 5, 5, 5]),
        'small': dict(depths=[3, 3, 27, 3], channels=[124, 249, 499, 998], kernel_sizes=[51, 49, 47, 13],
                      center_sizes=[5, 5, 5, 5]),
        'base': dict(depths=[3, 3, 27, 3], channels=[166, 332, 665, 1331], kernel_sizes=[51, 49, 47, 13],
                     center_sizes=[5, 5, 5, 5]),
        'tiny-101': dict(depths=[3, 3, 9, 3], channels=[124, 249, 499, 998], kernel_sizes=[101, 69, 67, 13],
                         center_sizes=[7, 7, 7, 7]),
        'base-101': dict(depths=[3, 3, 27, 3], channels=[166, 332, 665, 1331], kernel_sizes=[101, 69, 67, 13],
                         center_sizes=[7, 7, 7, 7]),
        'tiny-151': dict(depths=[3, 3, 9, 3], channels=[124, 249, 499, 998], kernel_sizes=[151, 89, 87, 13],
                         center_sizes=[5, 5, 5, 5]),
    }
    #: conv form arguments the backbone sets itself -> the PeLK argument they come from
    _BACKBONE_FORM_ARGS = {'channels': 'arch', 'kernel_size': 'kernel_sizes', 'center_size': 'center_sizes',
                           'half_grid': 'half_grids', 'base': 'base', 'conv_impl': 'conv_impl',
                           'small_kernel': 'small_kernel', 'kpe_mode': 'kpe_mode', 'norm_cfg': 'conv_norm_cfg',
                           'deploy': 'deploy'}
    arch_aliases = {'t': 'tiny', 's': 'small', 'b': 'base', 't-101': 'tiny-101', 'b-101': 'base-101'}

    def __init__(self,
                 arch='tiny',
                 kernel_sizes: Optional[Sequence[int]] = None,
                 center_sizes: Optional[Sequence[int]] = None,
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 base: int = 2,
                 half_grids: Optional[Sequence] = None,
                 conv_ratio: float = 3 / 8,
                 conv_type: str = 'peripheral',
                 conv_cfg: Optional[dict] = None,
                 small_kernel: Optional[int] = 5,
                 kpe_mode: Optional[str] = 'input',
                 kpe_std: float = 0.02,
                 conv_norm_cfg: Optional[dict] = dict(type='BN'),
                 conv_impl: str = 'auto',
                 mlp_ratio: float = 4.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 out_indices=-1,
                 frozen_stages: int = 0,
                 gap_before_final_norm: bool = True,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 deploy: bool = False,
                 init_cfg=[
                     dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
                     dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
                 ]):
        super().__init__(init_cfg=init_cfg)
        arch = self.resolve_arch(arch, kernel_sizes, center_sizes)
        self.arch = arch
        self.depths = list(arch['depths'])
        self.channels = list(arch['channels'])
        self.kernel_sizes = list(arch['kernel_sizes'])
        self.center_sizes = list(arch['center_sizes'])
        self.num_stages = len(self.depths)
        if half_grids is None:
            half_grids = [None] * self.num_stages
        if len(half_grids) != self.num_stages:
            raise ValueError(f'half_grids needs one entry (a half grid or None) per stage ({self.num_stages}), '
                             f'got {len(half_grids)}: {half_grids!r}')
        if kpe_mode is not None and kpe_mode not in KPE_MODES:
            raise ValueError(f'kpe_mode must be one of {KPE_MODES} or None, got kpe_mode={kpe_mode!r}')

        if isinstance(layer_scale_init_value, bool) or not isinstance(layer_scale_init_value, (int, float)) \
                or not layer_scale_init_value >= 0:
            raise ConfigValidationError(
                f'layer_scale_init_value must be a number >= 0 (0 disables the layer scale; PeLK uses 1e-6), got '
                f'layer_scale_init_value={layer_scale_init_value!r}', 'model.backbone.layer_scale_init_value')
        self.out_indices = self._parse_out_indices(out_indices)
        if not isinstance(frozen_stages, int) or not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be an int in [0, {self.num_stages}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.norm_eval = norm_eval
        if not isinstance(deploy, bool):
            raise ValueError(f'deploy must be True or False, got deploy={deploy!r}')
        self.deploy = deploy
        self.kpe_mode = kpe_mode
        if conv_cfg is not None and not isinstance(conv_cfg, dict):
            raise ValueError(f"conv_cfg must be None or a dict of the conv form's own arguments (e.g. "
                             f"dict(type='stripe', stripe_width=7)), got conv_cfg={conv_cfg!r}")
        conv_cfg = dict(conv_cfg or {})
        conv_type = conv_cfg.pop('type', conv_type)
        for key, own in self._BACKBONE_FORM_ARGS.items():
            if key in conv_cfg:
                raise ValueError(f'conv_cfg sets {key}={conv_cfg[key]!r}, which the backbone sets for every block '
                                 f'from its own argument: pass {own}=... to PeLK instead')
        conv_form_class(conv_type)  # a bad name fails here, once, not in every block
        self.conv_type = conv_type

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.downsample_layers = ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_channels, self.channels[0], kernel_size=stem_patch_size, stride=stem_patch_size),
            LayerNorm2d(self.channels[0])))
        self.stages = ModuleList()
        block_idx = 0
        for i in range(self.num_stages):
            channels, depth = self.channels[i], self.depths[i]
            if i > 0:
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm2d(self.channels[i - 1]),
                    nn.Conv2d(self.channels[i - 1], channels, kernel_size=2, stride=2)))
            # NOTE: a form gets only the arguments it takes; a setting the user made for another form is an error,
            # the arch's default centre sizes are not (they describe the peripheral grid of the arch)
            form_args = form_args_of(conv_type, dict(
                center_size=(self.center_sizes[i], None if center_sizes is None else f'center_sizes={center_sizes}'),
                base=(base, None if base == 2 else f'base={base}'),
                half_grid=(half_grids[i], None if half_grids[i] is None else f'half_grids={half_grids}'),
                conv_impl=(conv_impl, None if conv_impl == 'auto' else f'conv_impl={conv_impl!r}')))
            mixer = dict(conv_ratio=conv_ratio, conv_type=conv_type, small_kernel=small_kernel, kpe_mode=kpe_mode,
                         norm_cfg=copy.deepcopy(conv_norm_cfg), deploy=deploy, **form_args, **conv_cfg)
            blocks = [
                PeLKBlock(channels, self.kernel_sizes[i], mlp_ratio=mlp_ratio, drop_path_rate=dpr[block_idx + j],
                          layer_scale_init_value=layer_scale_init_value, with_cp=with_cp, **mixer)
                for j in range(depth)
            ]
            block_idx += depth
            kpe_shape = None
            if kpe_mode is not None and (kpe_mode == 'input' or not deploy):
                g = blocks[0].token_mixer.conv_channels
                kpe_shape = (g, self.kernel_sizes[i], self.kernel_sizes[i])
            self.stages.append(PeLKStage(blocks, kpe_shape, kpe_std))
            if i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(channels))
        _canonical_grad_strides(self)
        self._freeze_stages()

    # ------------------------------------------------------------------ argument parsing
    @classmethod
    def resolve_arch(cls, arch='tiny', kernel_sizes: Optional[Sequence[int]] = None,
                     center_sizes: Optional[Sequence[int]] = None) -> dict:
        """The checked arch dict (``depths``, ``channels``, ``kernel_sizes``, ``center_sizes``) that ``arch`` and
        the per-stage overrides describe."""
        arch = cls._parse_arch(arch)
        for key, value in (('kernel_sizes', kernel_sizes), ('center_sizes', center_sizes)):
            if value is not None:
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise ValueError(f'{key} must be a list with one entry per stage, got {key}={value!r}')
                arch[key] = list(value)
        return cls._parse_arch(arch)

    @classmethod
    def _parse_arch(cls, arch) -> dict:
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_settings:
                raise ValueError(f'unknown PeLK arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings) + sorted(cls.arch_aliases)} or pass a dict with '
                                 f'depths, channels and kernel_sizes')
            return copy.deepcopy(cls.arch_settings[name])
        if not isinstance(arch, dict):
            raise ValueError(f'arch must be a str or a dict, got {type(arch).__name__}: {arch!r}')
        missing = {'depths', 'channels', 'kernel_sizes'} - set(arch)
        if missing:
            raise ValueError(f'arch dict is missing {sorted(missing)} (needs depths, channels, kernel_sizes and '
                             f'optionally center_sizes), got keys {sorted(arch)}')
        arch = dict(arch)
        n = len(arch['depths'])
        arch.setdefault('center_sizes', [5] * n)
        for key in ('channels', 'kernel_sizes', 'center_sizes'):
            if len(arch[key]) != n:
                raise ValueError(f'arch[{key!r}]={list(arch[key])} has {len(arch[key])} entries but '
                                 f'arch["depths"]={list(arch["depths"])} has {n}: give one per stage')
        for i, (k, c) in enumerate(zip(arch['kernel_sizes'], arch['center_sizes'])):
            check_int(f'arch kernel_sizes[{i}]', k, odd=True)
            if c > k:
                raise ValueError(f'arch center_sizes[{i}]={c} is larger than kernel_sizes[{i}]={k}; '
                                 f'the kernel must contain its central fine region')
        return arch

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, Sequence):
            raise ValueError(f'out_indices must be an int or a sequence of ints, got {out_indices!r}')
        parsed = []
        for index in out_indices:
            if not isinstance(index, int) or not -self.num_stages <= index < self.num_stages:
                raise ValueError(f'out_indices entry {index!r} is out of range for {self.num_stages} stages '
                                 f'(valid: {-self.num_stages} ... {self.num_stages - 1})')
            if index % self.num_stages in parsed:
                raise ConfigValidationError(
                    f'out_indices={list(out_indices)!r} lists stage {index % self.num_stages} twice (negative '
                    f'indices count from the end of the {self.num_stages} stages); list each stage once',
                    'model.backbone.out_indices')
            parsed.append(index % self.num_stages)
        return parsed

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> tuple:
        outs = []
        for i, stage in enumerate(self.stages):
            x = self.downsample_layers[i](x)
            x = stage(x)
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean([-2, -1])))
                else:
                    # LayerNorm2d returns a channels-last-strided view and the necks' convs keep that format;
                    # hand out plain NCHW maps, as mmpretrain's ConvNeXt does (mmcv's RoIAlign misreads
                    # channels-last input: see pelk_mm.compat).
                    outs.append(norm(x).contiguous())
        return tuple(outs)

    # ------------------------------------------------------------------ training state
    def _freeze_stages(self):
        for i in range(self.frozen_stages):
            modules = (self.downsample_layers[i], self.stages[i])
            for m in modules:
                m.eval()
            for param in chain(*(m.parameters() for m in modules)):
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def switch_to_deploy(self):
        """Convert every large-kernel conv to its deploy form in place (BNs folded into the shared weights and a
        bias, the small kernel into the centre cells, see :class:`~pelk_mm.models.layers.PeripheralConv2d`); the
        result has the modules and state-dict keys of ``PeLK(..., deploy=True)``. Eval-mode outputs are unchanged.
        """
        if self.deploy:
            return
        for stage in self.stages:
            for block in stage:
                block.token_mixer.switch_to_deploy(stage.kpe.detach() if stage.kpe is not None else None)
            if self.kpe_mode != 'input':
                stage.kpe = None
        self.deploy = True
        _canonical_grad_strides(self)  # the deploy form's new parameters
        self._freeze_stages()

    # ------------------------------------------------------------------ layer-wise lr decay
    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Layer id for layer-wise lr decay, ConvNeXt's scheme (``12`` ids when stage 3 is deep, else ``6``).

        Returns:
            tuple[int, int]: ``(layer_id, num_layers)``.
        """
        max_layer_id = 12 if self.depths[-2] > 9 else 6
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2  # e.g. the head
        name = param_name[len(prefix):]
        parts = name.split('.')
        if name.startswith('downsample_layers'):
            stage_id = int(parts[1])
            layer_id = {0: 0, 1: 2, 2: 3}.get(stage_id, max_layer_id)
        elif name.startswith('stages'):
            stage_id = int(parts[1])
            block_id = int(parts[2]) if parts[2].isdigit() else 0  # the stage's kpe goes with its first block
            if stage_id in (0, 1):
                layer_id = stage_id + 1
            elif stage_id == 2:
                layer_id = min(3 + block_id // 3, max_layer_id - 1)
            else:
                layer_id = max_layer_id
        else:  # output norms
            layer_id = max_layer_id + 1
        return layer_id, max_layer_id + 2
