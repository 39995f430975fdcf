"""Shared helpers of the analysis tools (``tools/analysis/{visualize_erf,visualize_kernels,benchmark_throughput}``):
build a config's model (optionally with a checkpoint), find images, load them normalised."""
from __future__ import annotations

import copy
import glob
import importlib
import os.path as osp
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
#: ImageNet mean/std on the 0-255 scale (mmpretrain's data_preprocessor defaults)
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def load_cfg(config: str, cfg_options: Optional[dict] = None):
    """The config with ``--cfg-options`` merged, as ``tools/train.py`` loads it: a missing or broken file or options
    that do not fit raise :class:`pelk_mm.apis.LaunchError` with one line naming the file / option."""
    from pelk_mm.config import load_config, merge_cfg_options
    cfg = load_config(config)
    if cfg_options:
        merge_cfg_options(cfg, cfg_options)
    return cfg


def build_model(cfg, checkpoint: Optional[str] = None, device: str = 'cpu',
                backbone_overrides: Optional[dict] = None) -> Tuple[nn.Module, str]:
    """Build ``cfg.model`` in its codebase's scope (no pretrained download; SyncBN reverted), load ``checkpoint``
    (strictly for the weights the model has), move to ``device`` and switch to eval mode.

    Returns:
        tuple: ``(model, codebase)``.
    """
    import pelk_mm  # noqa: F401  (registers pelk_mm.PeLK, compat patches)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from pelk_mm.config import get_codebase, register_codebase
    codebase = get_codebase(cfg)
    register_codebase(codebase)
    init_default_scope(codebase)
    model_cfg = copy.deepcopy(cfg.model)
    backbone = model_cfg.get('backbone', None)
    if backbone is not None:
        if checkpoint is not None or (backbone.get('init_cfg') or {}).get('type') == 'Pretrained':
            backbone['init_cfg'] = None
        if backbone_overrides:
            backbone.update(backbone_overrides)
    registry = importlib.import_module(f'{codebase}.registry')
    model = registry.MODELS.build(model_cfg)
    if hasattr(model, 'init_weights') and checkpoint is None:
        model.init_weights()
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
        from pelk_mm.models import check_model_checkpoint
        check_model_checkpoint(model, checkpoint)
        load_checkpoint(model, checkpoint, map_location='cpu', strict=False, logger='current')
    return model.to(device).eval(), codebase


def get_backbone(model: nn.Module) -> nn.Module:
    return model.backbone if hasattr(model, 'backbone') else model


def norm_params(cfg) -> Tuple[Sequence[float], Sequence[float]]:
    """Mean/std (0-255 scale) of the config's data preprocessor, ImageNet's if it has none."""
    pre = cfg.get('data_preprocessor', None) or cfg.model.get('data_preprocessor', None) or {}
    return tuple(pre.get('mean', IMAGENET_MEAN)), tuple(pre.get('std', IMAGENET_STD))


def find_images(source: Optional[str], num: int, demo_root: str = 'data/demo') -> List[str]:
    """Up to ``num`` image paths (sorted) from the folder ``source`` (searched recursively), or, with
    ``source=None``, from the demo ImageNet validation split (generated on first use)."""
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
