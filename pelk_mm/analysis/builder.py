"""The model and the inputs every analysis works on: a config's model built for analysis, its backbone, images.

:func:`build_model` builds ``cfg.model`` in its codebase's scope (mmpretrain / mmseg / mmdet) without downloading
pretrained weights, reverts SyncBN, optionally builds the deploy form, switches the peripheral convs to one
implementation, limits the RoIs of a detector's mask heads, loads a checkpoint (checked by
:func:`pelk_mm.models.check_model_checkpoint`, read by the safe loader) and returns the model in eval mode on a
device. :func:`find_images` / :func:`load_image` / :func:`norm_params` give normalised input images.
"""
from __future__ import annotations

import copy
import glob
import importlib
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ['IMAGE_EXTS', 'IMAGENET_MEAN', 'IMAGENET_STD', 'load_cfg', 'is_pelk_backbone', 'build_model',
           'load_weights', 'set_conv_impl', 'limit_mask_rois', 'get_backbone', 'norm_params', 'find_images',
           'load_image']

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
#: ImageNet mean/std on the 0-255 scale (mmpretrain's data_preprocessor defaults)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_cfg(config: str, cfg_options: Optional[dict] = None):
    """The config with ``--cfg-options`` merged, as ``tools/train.py`` loads it.

    Raises:
        pelk_mm.errors.LaunchError: a missing or broken file, or options that do not fit (one line naming the
            file / option).
    """
    from pelk_mm.config import load_config, merge_cfg_options
    cfg = load_config(config)
    if cfg_options:
        merge_cfg_options(cfg, cfg_options)
    return cfg


def is_pelk_backbone(backbone_cfg) -> bool:
    """Whether a backbone config builds ``pelk_mm.PeLK`` (or a type named after it)."""
    return backbone_cfg is not None and 'PeLK' in str(backbone_cfg.get('type', ''))


def build_model(cfg, checkpoint: Optional[str] = None, device: str = 'cpu', *, deploy: Optional[bool] = None,
                conv_impl: Optional[str] = None, init_weights: bool = True, backbone_init_cfg: bool = True,
                mask_rois: Optional[int] = None, checkpoint_logger: str = 'current') -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` for analysis.

    The backbone's ``init_cfg`` is dropped when it is ``Pretrained`` (no download), when ``checkpoint`` replaces
    the weights, or with ``backbone_init_cfg=False``; SyncBN is reverted to BN; the model ends in eval mode on
    ``device``.

    Args:
        cfg: The loaded config (:func:`load_cfg`).
        checkpoint (str, optional): Weights to load (non-strictly, after :func:`load_weights`' checks).
        device (str): Where the model ends up.
        deploy (bool, optional): Build a PeLK backbone in deploy (``True``) or train (``False``) form; ``None``
            keeps the config's setting.
        conv_impl (str, optional): Implementation of every peripheral conv (``'dense'``: the expanded ``K x K``
            kernel + ``F.conv2d``, what a jit trace counts as a real convolution); ``None`` keeps the config's.
        init_weights (bool): Run ``model.init_weights()`` when no checkpoint is given (the config's initialisation);
            ``False`` keeps the constructors' weights.
        backbone_init_cfg (bool): Keep the backbone's own ``init_cfg`` (if not ``Pretrained``); ``False`` drops it,
            so that initialising the model runs the model-level ``init_cfg`` only.
        mask_rois (int, optional): mmdet only: feed the first ``mask_rois`` RoIs to the mask heads
            (:func:`limit_mask_rois`).
        checkpoint_logger (str): mmengine logger of the checkpoint loading (``'silent'`` prints nothing).

    Returns:
        tuple: ``(model, codebase)``.

    Raises:
        ValueError: ``mask_rois`` for a model that is not an mmdet detector with mask heads.
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    import pelk_mm  # noqa: F401  (registers pelk_mm.PeLK, compat patches)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    from pelk_mm.config import get_codebase, register_codebase
    codebase = get_codebase(cfg)
    register_codebase(codebase)
    init_default_scope(codebase)
    if mask_rois is not None and codebase != 'mmdet':
        raise ValueError(f'mask_rois={mask_rois} applies to mmdet detectors, not to a {codebase} model')
    model_cfg = copy.deepcopy(cfg.model)
    backbone = model_cfg.get('backbone', None)
    if backbone is not None:
        if (checkpoint is not None or not backbone_init_cfg
                or (backbone.get('init_cfg') or {}).get('type') == 'Pretrained'):
            backbone['init_cfg'] = None
        if deploy is not None:
            backbone['deploy'] = deploy
        if conv_impl is not None and is_pelk_backbone(backbone):
            backbone['conv_impl'] = conv_impl
    registry = importlib.import_module(f'{codebase}.registry')
    model = registry.MODELS.build(model_cfg)
    if init_weights and checkpoint is None and hasattr(model, 'init_weights'):
        model.init_weights()
    model = revert_sync_batchnorm(model)
    if conv_impl is not None:
        set_conv_impl(model, conv_impl)
    if mask_rois is not None:
        limit_mask_rois(model, mask_rois)
    if checkpoint is not None:
        load_weights(model, checkpoint, checkpoint_logger)
    return model.to(device).eval(), codebase


def load_weights(model: nn.Module, checkpoint: str, logger: str = 'current') -> None:
    """Load a checkpoint's ``state_dict`` into ``model`` (e.g. a sparse-trained model, for the non-zero count).

    A checkpoint of the other deploy form, or one that lacks weights of the model, holds them in another shape or
    holds non-finite values, is refused in one line (:func:`pelk_mm.models.check_model_checkpoint`); the file is
    read by pelk_mm's safe loader (mmengine's loaders are patched by :mod:`pelk_mm.compat`).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
    """
    from mmengine.runner import load_checkpoint

    from pelk_mm.models import check_model_checkpoint
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
    check_model_checkpoint(model, checkpoint)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=False, logger=logger)


def set_conv_impl(model: nn.Module, impl: str) -> int:
    """Set ``conv_impl=impl`` on every peripheral conv of ``model``. Returns how many there are."""
    from pelk_mm.models.layers import PeripheralConv2d
    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    for m in convs:
        m.conv_impl = impl
    return len(convs)


def limit_mask_rois(model: nn.Module, num_rois: int) -> None:
    """Feed only the first ``num_rois`` RoIs to the mask head(s) of an mmdet two-stage detector.

    mmdet 3's tensor-mode ``_forward`` runs every mask head on all RPN proposals (1000 per image); mmdet 2's
    ``forward_dummy``, which produced the FLOPs of the Swin/ConvNeXt/PeLK detection tables, sent 1000 proposals
    through the bbox heads but only the first 100 through the mask heads. ``num_rois=100`` reproduces that
    convention in one traced run (for analysis only: the other RoIs get zero mask logits). Works for
    ``StandardRoIHead`` and ``CascadeRoIHead`` (one mask head per stage). Sets ``model.analysis_mask_rois``.
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
    model.analysis_mask_rois = num_rois


def get_backbone(model: nn.Module) -> nn.Module:
    """``model.backbone``, or ``model`` itself if it has none."""
    return model.backbone if hasattr(model, 'backbone') else model


def norm_params(cfg) -> Tuple[Sequence[float], Sequence[float]]:
    """Mean/std (0-255 scale) of the config's data preprocessor, ImageNet's if it has none."""
    pre = cfg.get('data_preprocessor', None) or cfg.model.get('data_preprocessor', None) or {}
    return tuple(pre.get('mean', IMAGENET_MEAN)), tuple(pre.get('std', IMAGENET_STD))


def find_images(source: Optional[str], num: int, demo_root: str = 'data/demo') -> List[str]:
    """Up to ``num`` image paths (sorted) from the folder ``source`` (searched recursively), or, with
    ``source=None``, from the demo ImageNet validation split (generated on first use).

    Raises:
        FileNotFoundError: the folder does not exist or holds no image.
    """
    if source is None:
        from pelk_mm.datasets.demo_data import ensure_demo_data
        folder = ensure_demo_data('imagenet', root=demo_root)
        source = osp.join(folder, 'val')
    if not osp.isdir(source):
        raise FileNotFoundError(f'image folder {source!r} does not exist')
    paths = sorted(p for p in glob.glob(osp.join(source, '**', '*'), recursive=True)
                   if p.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTS)}) under {source!r}')
    return paths[:num]


def load_image(path: str, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image resized (bicubic) to ``size x size`` and normalised: ``(1, 3, size, size)`` float32."""
    from PIL import Image
    img = Image.open(path).convert('RGB').resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)
