"""Task-level ONNX export of PeLK models (behind ``tools/deploy/export_onnx.py --output``) and its parity check on
the codebases' own validation pipelines.

One graph per task, standard ONNX operators only (the peripheral conv lowers itself, :mod:`pelk_mm.ops`; NMS is
``NonMaxSuppression``, RoI pooling ``RoiAlign``, mask pasting ``GridSample``), built by the TorchScript-based
exporter; the spatial size of the input is fixed at export (the peripheral conv's export forms are written for one
map size), the batch is dynamic where the task allows:

* ``classifier`` (mmpretrain): ``input (B, 3, H, W) -> logits (B, classes)`` (:func:`pelk_mm.deploy.exportable`).
* ``segmentor`` (mmseg ``EncoderDecoder``): ``input (B, 3, H, W) -> seg_logits (B, classes, H, W)``: mmseg's
  ``encode_decode`` (backbone, neck, decode head, bilinear resize to the input). Whole-image inference exports the
  image size; slide inference (``test_cfg.mode='slide'``) exports the crop size and runs mmseg's sliding-window loop
  in Python over the graph (:func:`seg_logits`), so the tiles and the overlap averaging are mmseg's.
* ``detector`` (mmdet two-stage detector with an ``RPNHead`` and a ``CascadeRoIHead`` or ``StandardRoIHead``):
  ``input (1, 3, H, W), img_shape (2,), scale_factor (2,), ori_shape (2,) -> dets (N, 5), labels (N,),
  masks (N, ori_h, ori_w)``. :class:`DetectorExport` is a compact re-statement of mmdet 3's test path, in tensors:
  RPN top-k per level + NMS, the cascade stages with class-specific (or agnostic) regression of the predicted
  class, stage-averaged class scores, multi-class NMS, the stage-averaged mask of the predicted class pasted at the
  original image size. mmdet's own ``predict`` keeps Python lists, ``InstanceData`` and mmcv ops whose ONNX
  symbolics are missing (``nms``) or off by half a pixel at opset >= 16 (``RoIAlign``), hence this module.

:func:`evaluate_onnx` runs the config's validation set through PyTorch (the model's ``test_step``) and through
onnxruntime (the same preprocessed batches, the codebase's own post-processing), and scores both with the config's
evaluator (mmpretrain ``Accuracy``, mmseg ``IoUMetric``, mmdet ``CocoMetric``).
"""
from __future__ import annotations

import contextlib
import copy
import os
import os.path as osp
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from pelk_mm.deploy import conv_form, exportable, require_onnxruntime
from pelk_mm.errors import DeployError

__all__ = ['TASK_OUTPUTS', 'OUTPUTS', 'default_output', 'SegmentorExport', 'DetectorExport', 'task_module',
           'default_shape', 'export_task', 'ort_session', 'seg_logits', 'OrtPredictor', 'runner_data_preprocessor',
           'evaluate_onnx', 'check_task_onnx', 'det_meta_inputs', 'ExportableAdaptiveAvgPool2d', 'exportable_pooling',
           'quiet_mmengine', 'mmdeploy_fixes', 'mmdeploy_export']

#: the task graph of each codebase (``tools/deploy/export_onnx.py``'s default ``--output``)
TASK_OUTPUTS = {'mmpretrain': 'classifier', 'mmseg': 'segmentor', 'mmdet': 'detector'}
#: every ``--output``: the three task graphs and the backbone's feature maps
OUTPUTS = ('classifier', 'segmentor', 'detector', 'backbone')


def default_output(codebase: str) -> str:
    return TASK_OUTPUTS.get(codebase, 'backbone')


# ------------------------------------------------------------------------------------------------------ segmentor
def _pool_matrix(size: int, out: int) -> torch.Tensor:
    """``(out, size)`` averaging weights of adaptive average pooling: row ``i`` averages
    ``[floor(i * size / out), ceil((i + 1) * size / out))``, PyTorch's bins."""
    m = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class ExportableAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that, under export or tracing, is written as two ``MatMul`` with constant
    bin-averaging matrices. PyTorch's ONNX symbolic only takes output sizes that divide the input (UperNet's
    pyramid pooling of 1, 2, 3, 6 bins on a 16 x 16 or 2 x 2 map does not); eager calls run the PyTorch op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pelk_mm.ops import is_export_trace
        if not is_export_trace():
            return super().forward(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size, ) * 2
        out_h, out_w = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
        rows = _pool_matrix(h, out_h).to(x)
        cols = _pool_matrix(w, out_w).to(x).t()
        return torch.matmul(torch.matmul(rows, x), cols)


def exportable_pooling(model: nn.Module) -> int:
    """Turn every ``nn.AdaptiveAvgPool2d`` of ``model`` into :class:`ExportableAdaptiveAvgPool2d` (same eager
    output); returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is nn.AdaptiveAvgPool2d:
            m.__class__ = ExportableAdaptiveAvgPool2d
            n += 1
    return n


class SegmentorExport(nn.Module):
    """An mmseg ``EncoderDecoder`` as ``image -> seg_logits`` at the image's size (mmseg's ``encode_decode``: the
    decode head's logits resized bilinearly to the input, before softmax / argmax)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not (hasattr(model, 'encode_decode') and hasattr(model, 'decode_head')):
            raise DeployError(f'{type(model).__name__} is not an mmseg EncoderDecoder (no encode_decode); export '
                              f'its backbone with --output backbone')
        exportable_pooling(model)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: a torch.Size img_shape is what mmseg's slide inference passes: the logits are resized to it
        return self.model.encode_decode(x, [dict(img_shape=torch.Size(x.shape[2:]))])


# ------------------------------------------------------------------------------------------------------- detector
def _clip(boxes: torch.Tensor, img_shape: torch.Tensor) -> torch.Tensor:
    """``boxes[..., 0::2]`` into ``[0, w]``, ``boxes[..., 1::2]`` into ``[0, h]`` (mmdet's ``clamp_(min=0,
    max=...)`` with ``img_shape = (h, w)`` a tensor)."""
    hw = img_shape.to(boxes.dtype)
    limit = torch.stack([hw[1], hw[0], hw[1], hw[0]])
    return torch.minimum(boxes.clamp(min=0), limit)


def _delta2bbox(rois: torch.Tensor, deltas: torch.Tensor, coder, img_shape: torch.Tensor) -> torch.Tensor:
    """mmdet's ``delta2bbox`` (``DeltaXYWHBBoxCoder.decode``) for ``rois (N, 4)`` and ``deltas (N, 4 * k)``, the
    border clip done with tensor bounds; returns ``(N, 4 * k)``."""
    import numpy as np
    num, k = deltas.shape[0], deltas.shape[1] // 4
    deltas = deltas.reshape(-1, 4)
    denorm = deltas * deltas.new_tensor(coder.stds).view(1, -1) + deltas.new_tensor(coder.means).view(1, -1)
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    rois_ = rois.repeat(1, k).reshape(-1, 4)
    pxy = (rois_[:, :2] + rois_[:, 2:]) * 0.5
    pwh = rois_[:, 2:] - rois_[:, :2]
    dxy_wh = pwh * dxy
    max_ratio = float(np.abs(np.log(16 / 1000)))  # mmdet's wh_ratio_clip default
    if coder.add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=coder.ctr_clamp, min=-coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=max_ratio)
    else:
        dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if coder.clip_border:
        boxes = _clip(boxes, img_shape)
    return boxes.reshape(num, -1)


def _batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float,
                 max_num: int) -> torch.Tensor:
    """mmcv's ``batched_nms`` (classes kept apart by offsetting each class by ``max coordinate + 1``), with
    torchvision's ``nms`` (ONNX ``NonMaxSuppression``); returns the kept indices, best score first."""
    from torchvision.ops import nms
    # NOTE: the 0 makes the max of an empty set defined (ONNX ReduceMax of nothing is not); boxes are clipped
    # to >= 0, so the offsets are mmcv's
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes.dtype) * (top + 1)
    keep = nms(boxes + offsets[:, None], scores, iou)
    return keep[:max_num] if max_num > 0 else keep


def _roi_features(extractor, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
    """mmdet's ``SingleRoIExtractor`` with torchvision's ``roi_align`` (ONNX ``RoiAlign``, half-pixel
    coordinates): each RoI is pooled from the level ``map_roi_levels`` assigns it."""
    from torchvision.ops import roi_align
    feats = feats[:extractor.num_inputs]
    levels = extractor.map_roi_levels(rois, len(feats))
    out = None
    for i, (feat, layer) in enumerate(zip(feats, extractor.roi_layers)):
        pooled = roi_align(feat, rois, layer.output_size, layer.spatial_scale, layer.sampling_ratio,
                           aligned=layer.aligned)
        if len(feats) == 1:
            return pooled
        # NOTE: every level pools every RoI and the level of each RoI is selected: one static graph, the same
        # numbers as mmdet's per-level gather
        out = pooled if out is None else torch.where((levels == i)[:, None, None, None], pooled, out)
    return out


def _paste_masks(masks: torch.Tensor, boxes: torch.Tensor, ori_shape: torch.Tensor) -> torch.Tensor:
    """mmdet's ``_do_paste_mask`` over the whole ``ori_shape`` canvas: ``masks (N, M, M)`` in ``boxes (N, 4)`` ->
    ``(N, h, w)`` probabilities (grid_sample, zero outside). Binarised at 0.5 this equals mmdet's CPU paste, which
    only samples a box's neighbourhood: farther pixels get less than half of a border cell there."""
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(ori_shape[0]).to(torch.float32) + 0.5
    img_x = torch.arange(ori_shape[1]).to(torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)  # mmdet: a zero-width box
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    n = masks.shape[0]
    gx = img_x[:, None, :].expand(n, img_y.shape[1], img_x.shape[1])
    gy = img_y[:, :, None].expand(n, img_y.shape[1], img_x.shape[1])
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None].to(torch.float32), grid, align_corners=False)[:, 0]


class DetectorExport(nn.Module):
    """An mmdet two-stage detector (``RPNHead`` + ``CascadeRoIHead`` or ``StandardRoIHead``, ``DeltaXYWHBBoxCoder``
    boxes, optional ``FCNMaskHead``) as ``(image, img_shape, scale_factor, ori_shape) -> (dets, labels, masks)``,
    computing what mmdet 3's ``predict(..., rescale=True)`` computes for one image:

    * ``input (1, 3, H, W)``: the normalised, padded image (``DetDataPreProcessor``'s output);
    * ``img_shape (2,)`` int64 ``(h, w)``: the resized image inside the padding (boxes are clipped to it);
    * ``scale_factor (2,)`` float32 ``(w_scale, h_scale)``: resized / original size (boxes are divided by it);
    * ``ori_shape (2,)`` int64 ``(h, w)``: the original image (the masks' canvas);
    * ``dets (N, 5)``: ``x1, y1, x2, y2, score`` in original-image pixels, best first; ``labels (N,)`` int64;
      ``masks (N, h, w)`` bool (a model without a mask head returns ``(N, 0, 0)``).

    The cascade follows ``CascadeRoIHead._refine_roi``: each stage but the last regresses every RoI by the deltas
    of its argmax class (class-specific heads: the 4 deltas of that class, as ``regress_by_class``); the class
    scores are the stages' logits averaged, then softmax; the last stage's deltas decode one box per class;
    ``multiclass_nms`` keeps ``score > score_thr`` and runs one class-offset NMS; the masks are the stages' sigmoid
    masks averaged, the channel of the detected class, pasted and thresholded at ``mask_thr_binary``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self._check(model)
        self.model = model
        self.rpn_cfg = model.test_cfg.rpn
        self.rcnn_cfg = model.test_cfg.rcnn
        roi_head = model.roi_head
        self.cascade = hasattr(roi_head, 'num_stages')
        as_list = (lambda m: list(m) if isinstance(m, nn.ModuleList) else [m])
        self.bbox_heads = as_list(roi_head.bbox_head)
        self.bbox_extractors = as_list(roi_head.bbox_roi_extractor)
        self.with_mask = bool(getattr(roi_head, 'with_mask', False))
        if self.with_mask:
            self.mask_heads = as_list(roi_head.mask_head)
            self.mask_extractors = (as_list(roi_head.mask_roi_extractor) if not roi_head.share_roi_extractor
                                    else self.bbox_extractors)

    @staticmethod
    def _check(model: nn.Module) -> None:
        name = type(model).__name__
        problems = []
        rpn, roi = getattr(model, 'rpn_head', None), getattr(model, 'roi_head', None)
        if rpn is None or roi is None:
            raise DeployError(f'{name} is not a two-stage mmdet detector (rpn_head + roi_head); export its backbone '
                              f'with --output backbone')
        if type(rpn).__name__ != 'RPNHead' or not rpn.use_sigmoid_cls:
            problems.append(f'rpn_head is {type(rpn).__name__} (the export covers RPNHead with sigmoid scores)')
        if type(roi).__name__ not in ('CascadeRoIHead', 'StandardRoIHead'):
            problems.append(f'roi_head is {type(roi).__name__} (the export covers CascadeRoIHead, StandardRoIHead)')
        heads = roi.bbox_head if isinstance(roi.bbox_head, nn.ModuleList) else [roi.bbox_head]
        for head in [rpn] + list(heads):
            coder = type(head.bbox_coder).__name__
            if coder != 'DeltaXYWHBBoxCoder':
                problems.append(f'{type(head).__name__} decodes boxes with {coder} (the export covers '
                                f'DeltaXYWHBBoxCoder)')
        for head in heads:
            if getattr(head, 'custom_cls_channels', False) or getattr(head, 'custom_activation', False):
                problems.append(f'{type(head).__name__} has a custom classification loss activation')
        for extractor in ([roi.bbox_roi_extractor] if not isinstance(roi.bbox_roi_extractor, nn.ModuleList)
                          else list(roi.bbox_roi_extractor)):
            if any(getattr(layer, 'pool_mode', 'avg') != 'avg' or type(layer).__name__ != 'RoIAlign'
                   for layer in extractor.roi_layers):
                problems.append('the RoI extractor is not an average RoIAlign')
        if getattr(roi, 'with_mask', False):
            mask_heads = roi.mask_head if isinstance(roi.mask_head, nn.ModuleList) else [roi.mask_head]
            if any(type(h).__name__ != 'FCNMaskHead' for h in mask_heads):
                problems.append('the mask head is not an FCNMaskHead')
        if model.test_cfg is None or model.test_cfg.get('rpn') is None or model.test_cfg.get('rcnn') is None:
            problems.append('model.test_cfg has no rpn / rcnn section')
        elif model.test_cfg.rcnn.get('nms', {}).get('type', 'nms') != 'nms':
            problems.append(f'test_cfg.rcnn.nms.type={model.test_cfg.rcnn.nms.type!r} (the export runs plain nms)')
        if problems:
            raise DeployError(f'{name} cannot be exported as a detector graph: {"; ".join(problems)}; export its '
                              f'backbone with --output backbone')

    # ---------------------------------------------------------------------------------------------------- RPN
    def _proposals(self, feats, img_shape: torch.Tensor) -> torch.Tensor:
        rpn, cfg = self.model.rpn_head, self.rpn_cfg
        cls_scores, bbox_preds = rpn(feats)
        sizes = [c.shape[-2:] for c in cls_scores]
        priors = rpn.prior_generator.grid_priors(sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device)
        nms_pre = cfg.get('nms_pre', -1)
        all_scores, all_deltas, all_priors, all_levels = [], [], [], []
        for level, (cls, reg, prior) in enumerate(zip(cls_scores, bbox_preds, priors)):
            scores = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
            deltas = reg[0].permute(1, 2, 0).reshape(-1, 4)
            if 0 < nms_pre < scores.shape[0]:  # static: the map sizes are fixed in the graph
                scores, inds = scores.topk(nms_pre)
                deltas, prior = deltas[inds], prior[inds]
            all_scores.append(scores)
            all_deltas.append(deltas)
            all_priors.append(prior)
            all_levels.append(torch.full_like(scores, level, dtype=torch.long))
        scores, levels = torch.cat(all_scores), torch.cat(all_levels)
        boxes = _delta2bbox(torch.cat(all_priors), torch.cat(all_deltas), rpn.bbox_coder, img_shape)
        if cfg.get('min_bbox_size', -1) >= 0:
            w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = _batched_nms(boxes, scores, levels, cfg.nms.iou_threshold, cfg.max_per_img)
        return boxes[keep]

    # ------------------------------------------------------------------------------------------------ RoI head
    def _bbox_forward(self, stage: int, feats, rois: torch.Tensor):
        return self.bbox_heads[stage](_roi_features(self.bbox_extractors[stage], feats, rois))

    def _class_deltas(self, head, bbox_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if head.reg_class_agnostic:
            return bbox_pred
        inds = (labels * 4)[:, None] + torch.arange(4, device=labels.device)[None]
        return torch.gather(bbox_pred, 1, inds)

    def _detect(self, feats, proposals: torch.Tensor, img_shape: torch.Tensor):
        rois = torch.cat([proposals.new_zeros(proposals.shape[0], 1), proposals], dim=1)
        stage_scores = []
        for stage in range(len(self.bbox_heads)):
            cls_score, bbox_pred = self._bbox_forward(stage, feats, rois)
            stage_scores.append(cls_score)
            if stage < len(self.bbox_heads) - 1:
                head = self.bbox_heads[stage]
                labels = cls_score[:, :-1].argmax(dim=1)
                boxes = _delta2bbox(rois[:, 1:], self._class_deltas(head, bbox_pred, labels), head.bbox_coder,
                                    img_shape)
                rois = torch.cat([rois[:, :1], boxes], dim=1)
        cls_score = sum(stage_scores) / float(len(stage_scores))
        head, cfg = self.bbox_heads[-1], self.rcnn_cfg
        scores = F.softmax(cls_score, dim=-1)
        num_classes = scores.shape[1] - 1
        boxes = _delta2bbox(rois[:, 1:], bbox_pred, head.bbox_coder, img_shape)  # (R, 4 * classes) or (R, 4)
        if head.reg_class_agnostic:
            boxes = boxes[:, None].expand(-1, num_classes, 4)
        boxes = boxes.reshape(-1, 4)
        scores = scores[:, :-1].reshape(-1)
        labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand(rois.shape[0], -1).reshape(-1)
        valid = scores > cfg.score_thr
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        keep = _batched_nms(boxes, scores, labels, cfg.nms.iou_threshold, cfg.max_per_img)
        return boxes[keep], scores[keep], labels[keep]

    def _masks(self, feats, boxes: torch.Tensor, labels: torch.Tensor, scaled: torch.Tensor,
               ori_shape: torch.Tensor) -> torch.Tensor:
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        stages = range(len(self.mask_heads)) if self.cascade else [0]
        probs = [self.mask_heads[s](_roi_features(self.mask_extractors[s], feats, rois)).sigmoid() for s in stages]
        probs = torch.stack(probs).mean(dim=0)
        if not self.mask_heads[-1].class_agnostic:
            probs = probs[torch.arange(probs.shape[0], device=probs.device), labels]
        else:
            probs = probs[:, 0]
        return _paste_masks(probs, scaled, ori_shape) >= self.rcnn_cfg.mask_thr_binary

    def forward(self, x: torch.Tensor, img_shape: torch.Tensor, scale_factor: torch.Tensor,
                ori_shape: torch.Tensor):
        feats = self.model.extract_feat(x)
        proposals = self._proposals(feats, img_shape)
        boxes, scores, labels = self._detect(feats, proposals, img_shape)
        scale = scale_factor.to(boxes.dtype).repeat(2)
        if self.with_mask:
            scaled = boxes / scale  # mmdet's FCNMaskHead: bboxes /= scale_factor
            masks = self._masks(feats, boxes, labels, scaled, ori_shape)
        else:
            scaled = boxes * (1 / scale)  # mmdet's BBoxHead: scale_boxes(bboxes, 1 / scale_factor)
            masks = torch.zeros(boxes.shape[0], 0, 0, dtype=torch.bool, device=boxes.device)
        return torch.cat([scaled, scores[:, None]], dim=1), labels, masks


def det_meta_inputs(meta: dict) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(img_shape, scale_factor, ori_shape)`` inputs of the detector graph from an mmdet data sample's
    ``metainfo``."""
    return (torch.tensor(meta['img_shape'][:2], dtype=torch.int64),
            torch.tensor(meta.get('scale_factor', (1.0, 1.0))[:2], dtype=torch.float32),
            torch.tensor(meta['ori_shape'][:2], dtype=torch.int64))


# ----------------------------------------------------------------------------------------------------- export
def task_module(model: nn.Module, output: str) -> nn.Module:
    """The module to export for ``output`` (one of :data:`OUTPUTS`), in eval mode."""
    if output == 'segmentor':
        return SegmentorExport(model).eval()
    if output == 'detector':
        return DetectorExport(model).eval()
    if output in ('classifier', 'backbone'):
        return exportable(model, output)
    raise DeployError(f'output must be one of {", ".join(OUTPUTS)}, got {output!r}')


def default_shape(cfg, output: str) -> Optional[Tuple[int, int]]:
    """The input size a task graph gets without ``--shape``: 224 x 224 for a classifier or backbone, the slide
    crop for a slide-inference segmentor, ``None`` (the size must be given) otherwise."""
    if output in ('classifier', 'backbone'):
        return (224, 224)
    test_cfg = cfg.model.get('test_cfg', None) or {}
    if output == 'segmentor' and test_cfg.get('mode', 'whole') == 'slide':
        return tuple(int(s) for s in test_cfg['crop_size'])
    return None


def _io_spec(output: str, module: nn.Module, shape: Tuple[int, int]):
    """``(example inputs, input names, output names, dynamic axes)`` of a task graph."""
    h, w = shape
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if output == 'detector':
        inputs = (x, torch.tensor([h, w]), torch.tensor([1.0, 1.0]), torch.tensor([h, w]))
        dets = {0: 'num_dets'}
        return (inputs, ['input', 'img_shape', 'scale_factor', 'ori_shape'], ['dets', 'labels', 'masks'],
                {'dets': dets, 'labels': dets, 'masks': {0: 'num_dets', 1: 'ori_height', 2: 'ori_width'}})
    if output == 'backbone':
        with torch.no_grad():
            n = len(module(x))
        names = [f'feat{i}' for i in range(n)]
    else:
        names = ['logits' if output == 'classifier' else 'seg_logits']
    return (x, ), ['input'], names, {n: {0: 'batch'} for n in ['input'] + names}


def export_task(module: nn.Module, path: str, output: str, shape: Sequence[int], form: str = 'structured',
                opset: int = 17) -> Tuple[List[str], List[str]]:
    """Export a :func:`task_module` to ``path`` (TorchScript-based exporter, standard operators only) for
    ``H x W`` inputs; returns ``(input names, output names)``."""
    from pelk_mm.deploy import _check_shape
    if opset < 16:
        raise DeployError(f'opset {opset} is too old for the task graphs: RoiAlign with half-pixel coordinates and '
                          f'GridSample need opset >= 16 (use --opset 17)')
    shape = _check_shape(shape)
    inputs, in_names, out_names, axes = _io_spec(output, module, shape)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with torch.no_grad(), conv_form(module, form), warnings.catch_warnings():
        # the tracer warns that shapes become constants: intended (the spatial size is fixed at export)
        warnings.simplefilter('ignore')
        torch.onnx.export(module, inputs, path, dynamo=False, input_names=in_names, output_names=out_names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    return in_names, out_names


# ------------------------------------------------------------------------------------------------ onnxruntime
def ort_session(path: str, threads: int = 1):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads whose idle workers sleep."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # NOTE: spinning idle workers would steal the cores of the PyTorch model timed or run next to the session
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def _graph_hw(sess) -> Tuple[int, int]:
    shape = sess.get_inputs()[0].shape
    return int(shape[2]), int(shape[3])


def seg_logits(run: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, test_cfg,
               num_classes: int) -> torch.Tensor:
    """mmseg's ``EncoderDecoder.inference`` with ``run`` (image -> logits at the image size, e.g. an onnxruntime
    session of the ``segmentor`` graph) in place of ``encode_decode``: whole-image (one call) or slide inference
    (mmseg's tiles of ``test_cfg.crop_size`` every ``test_cfg.stride``, logits summed and divided by the count of
    tiles covering each pixel)."""
    if test_cfg.get('mode', 'whole') != 'slide':
        return run(inputs)
    h_stride, w_stride = test_cfg['stride']
    h_crop, w_crop = test_cfg['crop_size']
    b, _, h_img, w_img = inputs.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = inputs.new_zeros((b, num_classes, h_img, w_img))
    count = inputs.new_zeros((b, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += run(inputs[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


class OrtPredictor:
    """Predictions of an exported task graph in onnxruntime, as the codebase's data samples (what the model's
    ``test_step`` returns), post-processed by the codebase's own code.

    Args:
        path: the ``.onnx`` file of a ``classifier``, ``segmentor`` or ``detector`` graph.
        model: the PyTorch model of the same config (its head / post-processing and test settings are used;
            its weights are not).
        codebase: ``'mmpretrain'``, ``'mmseg'`` or ``'mmdet'``.
        threads: onnxruntime intra-op threads.
    """

    def __init__(self, path: str, model: nn.Module, codebase: str, threads: int = 1):
        if codebase not in TASK_OUTPUTS:
            raise DeployError(f'no task graph for codebase {codebase!r}; one of {sorted(TASK_OUTPUTS)}')
        self.sess = ort_session(path, threads)
        self.model, self.codebase = model, codebase
        self.hw = _graph_hw(self.sess)
        self.in_names = [i.name for i in self.sess.get_inputs()]

    def _run(self, *arrays: torch.Tensor) -> List[torch.Tensor]:
        feed = {n: a.contiguous().numpy() for n, a in zip(self.in_names, arrays)}
        return [torch.from_numpy(o) for o in self.sess.run(None, feed)]

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.hw:
            return x
        if h > self.hw[0] or w > self.hw[1]:
            raise DeployError(f'an input of {h}x{w} does not fit the graph\'s fixed {self.hw[0]}x{self.hw[1]}; '
                              f'export with --shape {h} {w} (or larger)')
        if self.codebase != 'mmdet':
            raise DeployError(f'an input of {h}x{w} is not the graph\'s fixed {self.hw[0]}x{self.hw[1]}; export '
                              f'with --shape {h} {w}')
        # NOTE: the detector's images are padded bottom-right with 0 (DetDataPreProcessor's pad value after
        # normalisation); img_shape keeps the boxes inside the image
        return F.pad(x, (0, self.hw[1] - w, 0, self.hw[0] - h))

    def predict(self, inputs: torch.Tensor, data_samples: list) -> list:
        """``inputs`` and ``data_samples`` as the model's data preprocessor returns them."""
        if self.codebase == 'mmpretrain':
            logits = self._run(self._image(inputs))[0]
            return self.model.head._get_predictions(logits, data_samples)
        if self.codebase == 'mmseg':
            test_cfg = self.model.test_cfg
            if test_cfg.get('mode', 'whole') == 'slide':
                hw = tuple(int(s) for s in test_cfg['crop_size'])
                if hw != self.hw:
                    raise DeployError(f'the graph takes {self.hw[0]}x{self.hw[1]} inputs, the config slides '
                                      f'{hw[0]}x{hw[1]} crops; export with --shape {hw[0]} {hw[1]}')
                if min(inputs.shape[-2:]) < min(hw):
                    raise DeployError(f'an image of {tuple(inputs.shape[-2:])} is smaller than the slide crop {hw}')
            logits = seg_logits(lambda t: self._run(self._image(t))[0], inputs, test_cfg,
                                self.model.out_channels)
            return self.model.postprocess_result(logits, data_samples)
        from mmengine.structures import InstanceData
        for i, sample in enumerate(data_samples):
            dets, labels, masks = self._run(self._image(inputs[i:i + 1]), *det_meta_inputs(sample.metainfo))
            pred = InstanceData(metainfo=sample.metainfo)
            pred.bboxes, pred.scores, pred.labels = dets[:, :4], dets[:, 4], labels
            if masks.shape[1] > 0:
                pred.masks = masks.bool()
            sample.pred_instances = pred
        return data_samples


def _val_loader_and_evaluators(cfg):
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    loader_cfg.num_workers = 0  # one process: the PyTorch and onnxruntime runs see the same batches
    loader_cfg.persistent_workers = False
    loader = Runner.build_dataloader(loader_cfg)
    evaluators = []
    for _ in range(2):
        metrics = copy.deepcopy(cfg.val_evaluator)
        evaluator = Evaluator(metrics) if not (isinstance(metrics, dict) and 'metrics' in metrics) \
            else Evaluator(**metrics)
        evaluator.dataset_meta = loader.dataset.metainfo
        evaluators.append(evaluator)
    return loader, evaluators


#: warnings a codebase gives while building a model that neither an export nor a conversion can act on (mmseg's
#: heads call its own deprecated ``build_loss``; the loss's ``avg_non_ignore`` notice concerns training only)
_BUILD_WARNINGS = (r'``build_loss`` would be deprecated', r'Default ``avg_non_ignore`` is False')


@contextlib.contextmanager
def quiet_mmengine():
    """Within the block, the current mmengine logger shows warnings and errors only, and the codebases' build-time
    notices of :data:`_BUILD_WARNINGS` are not shown: the init-weight reports of model building, the checkpoint
    loader's notice and CocoMetric's tables stay out of a tool's one-line output."""
    import logging

    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in _BUILD_WARNINGS:
                warnings.filterwarnings('ignore', message=message)
            yield
    finally:
        logger.setLevel(level)


def runner_data_preprocessor(cfg, model: nn.Module, codebase: str) -> nn.Module:
    """Give ``model`` the data preprocessor mmengine's Runner gives it: a config's top-level ``data_preprocessor``
    (mmpretrain configs keep mean/std and ``num_classes`` there) when ``cfg.model`` names none. Returns the
    model."""
    top = cfg.get('data_preprocessor', None)
    if top is None or cfg.model.get('data_preprocessor', None) is not None:
        return model
    import importlib
    registry = importlib.import_module(f'{codebase}.registry')
    pre = copy.deepcopy(dict(top))
    # NOTE: the type each codebase's model class defaults to when its config gives none
    pre.setdefault('type', {'mmpretrain': 'ClsDataPreprocessor', 'mmseg': 'SegDataPreProcessor',
                            'mmdet': 'DetDataPreprocessor'}[codebase])
    model.data_preprocessor = registry.MODELS.build(pre)
    return model


def evaluate_onnx(cfg, model: nn.Module, codebase: str, path: str, threads: int = 1,
                  max_batches: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Score ``model`` (PyTorch, its ``test_step``) and the task graph ``path`` (onnxruntime,
    :class:`OrtPredictor`) on the config's validation set with the config's evaluator.

    ``model`` gets the Runner's data preprocessor (:func:`runner_data_preprocessor`).

    Returns:
        dict: ``{'pytorch': metrics, 'onnxruntime': metrics}`` as the evaluator names them (e.g.
        ``accuracy/top1``, ``mIoU``, ``coco/bbox_mAP``).
    """
    runner_data_preprocessor(cfg, model, codebase)
    predictor = OrtPredictor(path, model, codebase, threads)
    loader, (ev_torch, ev_ort) = _val_loader_and_evaluators(cfg)
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            ort_batch = copy.deepcopy(batch)
            ev_torch.process(data_samples=model.test_step(batch), data_batch=batch)
            data = model.data_preprocessor(ort_batch, False)
            ev_ort.process(data_samples=predictor.predict(data['inputs'], data['data_samples']), data_batch=ort_batch)
    n = len(loader.dataset) if max_batches is None else min(len(loader.dataset), max_batches * loader.batch_size)
    with quiet_mmengine():
        return dict(pytorch=ev_torch.evaluate(n), onnxruntime=ev_ort.evaluate(n))


def check_task_onnx(path: str, module: nn.Module, output: str, shape: Sequence[int], threads: int = 1,
                    seed: int = 0) -> Dict[str, float]:
    """Run the task graph in onnxruntime and ``module`` in PyTorch on one random input (batch 2 where the batch is
    dynamic, else the graph's) and compare: ``{'max_rel_err': ...}`` for tensor outputs; for a detector
    ``num_dets`` (PyTorch), ``num_dets_ort``, ``max_box_err`` (pixels), ``labels_equal`` and ``mask_iou`` (1.0
    when both are empty)."""
    sess = ort_session(path, threads)
    h, w = shape
    g = torch.Generator().manual_seed(seed)
    if output != 'detector':
        batch = sess.get_inputs()[0].shape[0]
        x = torch.randn(batch if isinstance(batch, int) else 2, 3, h, w, generator=g)
        got = [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]
        with torch.no_grad():
            ref = module(x)
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        err = max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
                  for a, b in zip(got, ref))
        return dict(max_rel_err=err)
    inputs = (torch.randn(1, 3, h, w, generator=g), torch.tensor([h, w]), torch.tensor([1.0, 1.0]),
              torch.tensor([h, w]))
    names = [i.name for i in sess.get_inputs()]
    got = [torch.from_numpy(o) for o in sess.run(None, {n: a.numpy() for n, a in zip(names, inputs)})]
    with torch.no_grad():
        ref = module(*inputs)
    out = dict(num_dets=float(ref[0].shape[0]), num_dets_ort=float(got[0].shape[0]))
    if ref[0].shape == got[0].shape:
        out['max_box_err'] = float((ref[0] - got[0]).abs().max()) if ref[0].numel() else 0.0
        out['labels_equal'] = float(torch.equal(ref[1], got[1]))
        inter = (ref[2] & got[2].bool()).sum().item()
        union = (ref[2] | got[2].bool()).sum().item()
        out['mask_iou'] = inter / union if union else 1.0
    return out


# ------------------------------------------------------------------------------------------------------- mmdeploy
#: the mmdeploy releases :func:`mmdeploy_fixes` was written against
MMDEPLOY_VERSIONS = ('1.3.',)
MMDEPLOY_INSTALL = 'pip install --no-deps mmdeploy==1.3.1 aenum multiprocess dill'


def _mmdeploy():
    try:
        import mmdeploy
    except ImportError as err:
        raise DeployError(f'mmdeploy is not installed ({err}); it is an optional extra: {MMDEPLOY_INSTALL} '
                          f'(--no-deps: its protobuf<=3.20.2 pin would break onnx)') from err
    if not mmdeploy.__version__.startswith(MMDEPLOY_VERSIONS):
        raise DeployError(f'mmdeploy {mmdeploy.__version__} is untested with pelk_mm; the route is written for '
                          f'mmdeploy 1.3.x ({MMDEPLOY_INSTALL})')
    return mmdeploy


@contextlib.contextmanager
def mmdeploy_fixes():
    """Within the block, mmdeploy 1.3's ONNX export works on torch 2.x (each fix applies only where the torch in
    use lacks what mmdeploy expects, and is undone on exit):

    * ``torch.onnx.export`` is called with ``dynamo=False``: mmdeploy's export runs through its function and
      symbolic rewriters, which only the TorchScript-based exporter applies, and calls ``torch.onnx.export``
      without ``dynamo``, whose default became ``True`` in torch 2.9;
    * ``torch.onnx.symbolic_opset9._cast_Long`` (removed in torch 2.x), which mmdeploy's mmcv ``RoIAlign``
      symbolic imports, is restored as a ``Cast`` to int64;
    * ``F.adaptive_avg_pool2d`` is exported exactly (:class:`ExportableAdaptiveAvgPool2d`'s bins, as an
      onnxruntime-backend rewriter, which mmdeploy prefers to its default one): mmdeploy's default rewrite pools
      ``floor(size / bins)``-wide windows with that stride, which covers only part of the map when the bins do not
      divide it (UperNet's 3 and 6 bins on a 16 x 16 map) and fails with a zero stride when the map is smaller than
      the bins (6 bins on the demo's 2 x 2 map).
    """
    import functools
    import inspect

    import torch.onnx.symbolic_opset9 as opset9
    restore = []
    export = torch.onnx.export
    param = inspect.signature(export).parameters.get('dynamo')
    if param is not None and param.default is not False:
        torch.onnx.export = functools.wraps(export)(functools.partial(export, dynamo=False))
        restore.append(lambda: setattr(torch.onnx, 'export', export))
    if not hasattr(opset9, '_cast_Long'):
        def _cast_long(g, value, non_blocking=False):
            return g.op('Cast', value, to_i=7)  # onnx TensorProto.INT64

        opset9._cast_Long = _cast_long
        restore.append(lambda: delattr(opset9, '_cast_Long'))
    from mmdeploy.core import FUNCTION_REWRITER

    def _exact_adaptive_avg_pool2d(input, output_size):
        return ExportableAdaptiveAvgPool2d(output_size).forward(input)

    FUNCTION_REWRITER.register_rewriter('torch.nn.functional.adaptive_avg_pool2d',
                                        backend='onnxruntime')(_exact_adaptive_avg_pool2d)
    restore.append(lambda: FUNCTION_REWRITER._registry.remove_record(_exact_adaptive_avg_pool2d))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def mmdeploy_export(config: str, checkpoint: str, path: str, shape: Sequence[int], cfg_options=None,
                    opset: int = 17) -> str:
    """Export an mmseg segmentor with mmdeploy 1.3 (``mmdeploy.apis.torch2onnx``, onnxruntime backend, static
    ``H x W``, ``with_argmax=False``, within :func:`mmdeploy_fixes`): ``input (1, 3, H, W) -> output (1, classes,
    H, W)`` logits, the graph :class:`OrtPredictor` runs (slide inference as for pelk_mm's own graph). The
    peripheral conv is written in its dense export form: under ``torch2onnx`` the structured form's grouped
    ``1 x 1`` contraction fails with "convolution for kernel of unknown shape". Returns ``path``.

    Raises:
        DeployError: mmdeploy missing or of another release, or a config that is not an mmseg one (mmdeploy's
            Cascade R-CNN export asserts class-agnostic box regression in every stage but the last, which the
            PeLK detection configs do not have: their detector graph is pelk_mm's own, :class:`DetectorExport`).
    """
    from mmengine.config import Config

    from pelk_mm.config import get_codebase
    _mmdeploy()
    from mmdeploy.apis import torch2onnx
    h, w = (int(s) for s in shape)
    model_cfg = Config.fromfile(config)
    if cfg_options:
        model_cfg.merge_from_dict(cfg_options)
    codebase = get_codebase(model_cfg, config)
    if codebase != 'mmseg':
        raise DeployError(f'the mmdeploy route covers mmseg segmentors; {config} is a {codebase} config: export '
                          f'it with tools/deploy/export_onnx.py (pelk_mm\'s own graph)')
    deploy_cfg = Config(dict(
        onnx_config=dict(type='onnx', export_params=True, keep_initializers_as_inputs=False, opset_version=opset,
                         save_file=osp.basename(path), input_names=['input'], output_names=['output'],
                         input_shape=[w, h], optimize=False),
        codebase_config=dict(type='mmseg', task='Segmentation', with_argmax=False),
        backend_config=dict(type='onnxruntime')))
    import numpy as np
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    from pelk_mm.ops import export_conv_form
    with mmdeploy_fixes(), export_conv_form('dense'), warnings.catch_warnings(), quiet_mmengine():
        warnings.simplefilter('ignore')
        torch2onnx(image, osp.dirname(osp.abspath(path)), osp.basename(path), deploy_cfg, model_cfg, checkpoint,
                   device='cpu')
    return path
