"""The forward pass that the analyses run: dense FLOPs, non-zero MACs and throughput all measure this one.

``part='model'``: a classifier's backbone + neck + head, a segmentor's tensor-mode forward (backbone + neck +
decode head), a detector's tensor-mode ``_forward`` with one dummy data sample (backbone + neck + heads, no
post-processing). ``part='features'``: ``extract_feat`` (backbone + neck); a classifier keeps its head.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['FORWARD_PARTS', 'FEATURES_MODE', 'analysed_forward', 'det_data_samples']

FORWARD_PARTS = ('model', 'features')
#: what ``part='features'`` runs, as the analyses report it
FEATURES_MODE = 'backbone + neck (extract_feat)'
CLS_MODE = 'backbone + neck + head (extract_feat + head)'
SEG_MODE = ('EncoderDecoder tensor-mode forward (backbone + neck + decode head; the auxiliary head is '
            'training-only)')
DET_MODE = 'whole detector (_forward: backbone + neck + heads, no post-processing)'


def det_data_samples(h: int, w: int) -> list:
    """One ``DetDataSample`` with the meta information of an ``h x w`` image (no annotations)."""
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1., 1.), img_id=0)
    return [DetDataSample(metainfo=meta)]


def analysed_forward(model: nn.Module, codebase: str, part: str = 'model',
                     input_shape: Optional[Sequence[int]] = None) -> Tuple[Callable[[torch.Tensor], Any], str]:
    """The analysed forward of ``model`` and what it runs.

    Args:
        model (nn.Module): A model of ``codebase`` (:func:`pelk_mm.analysis.builder.build_model`).
        codebase (str): ``'mmpretrain'``, ``'mmseg'`` or ``'mmdet'``.
        part (str): ``'model'`` or ``'features'`` (see the module docstring).
        input_shape (Sequence[int], optional): ``(H, W)`` of the input; needed for a detector's ``part='model'``
            (the dummy data sample's image size).

    Returns:
        tuple: ``(forward, mode)``: ``forward(x)`` runs the part on an image batch ``x``; ``mode`` describes it.
    """
    if part not in FORWARD_PARTS:
        raise ValueError(f'part must be one of {FORWARD_PARTS}, got {part!r}')
    if codebase == 'mmpretrain' and hasattr(model, 'extract_feat'):
        def cls_forward(x):
            feats = model.extract_feat(x)
            return model.head(feats) if getattr(model, 'with_head', False) else feats
        return cls_forward, CLS_MODE
    if part == 'features':
        if hasattr(model, 'extract_feat'):
            return (lambda x: model.extract_feat(x)), FEATURES_MODE
        return (lambda x: model(x)), 'forward'
    if codebase == 'mmdet':
        if input_shape is None:
            raise ValueError('a detector\'s analysed forward needs input_shape=(H, W) for its data sample')
        samples = det_data_samples(int(input_shape[0]), int(input_shape[1]))
        mode = DET_MODE
        if getattr(model, 'analysis_mask_rois', None):
            mode += f'; mask heads on the first {model.analysis_mask_rois} RoIs (mmdet 2 forward_dummy)'
        return (lambda x: model._forward(x, copy.deepcopy(samples))), mode
    if codebase == 'mmseg':
        return (lambda x: model(x, mode='tensor')), SEG_MODE
    raise ValueError(f'no analysed forward for a {codebase} model ({type(model).__name__})')
