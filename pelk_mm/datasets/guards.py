"""Per-sample checks inside the mmseg and mmdet data pipelines: a mask or image that does not fit stops the run
with one line naming the file.

The checks before training (:mod:`pelk_mm.datasets.annotations`) read a bounded sample of a large dataset; these
cover every sample the run loads, at the cost of a comparison per sample:

* mmseg (``BaseSegDataset`` and its subclasses, e.g. ``ADE20KDataset``): right after ``LoadAnnotations``, the
  mask must have the loaded image's size and hold only the dataset's class indices or the ignore index. mmseg
  itself trains on a mask of another size (the loss resizes the logits to it) and fails on a label beyond the
  classes in the loss -- ``IndexError: Target 199 is out of bounds`` on CPU, a device-side assert on CUDA --
  naming no file; in evaluation such labels are silently dropped from the IoU.
* mmdet (``BaseDetDataset``, e.g. ``CocoDataset``): right after ``LoadImageFromFile``, the image must have the
  ``height``/``width`` its annotation file gives (the boxes are in that frame).

Both raise :class:`pelk_mm.errors.DataFileError`, which the launcher prints as one line (also from a DataLoader
worker). They are installed by :func:`install_data_guards` (the launcher's data checks call it) by wrapping the
dataset classes' ``__init__``: the check is inserted into the built pipeline, so nothing else of mmseg / mmdet
changes, the guard is picklable for spawned workers, and it shows in the pipeline's ``repr``.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional

import numpy as np

from pelk_mm.errors import DataFileError

__all__ = ['SegSampleCheck', 'DetImageSizeCheck', 'install_data_guards']

_INSTALLED: Dict[str, bool] = {}


def _type_name(transform) -> str:
    return type(transform).__name__


class SegSampleCheck:
    """The mask just loaded must match its image's size and hold only ``0 .. num_classes - 1`` or the ignore
    index (after mmseg's ``reduce_zero_label`` / ``label_map``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

    def __call__(self, results: dict) -> dict:
        seg = results.get('gt_seg_map', None)
        if seg is None:
            return results
        path = results.get('seg_map_path', None)
        if seg.ndim != 2:
            raise DataFileError(
                f'mask {path!r} has shape {tuple(seg.shape)}, not one class index per pixel. Fix: save masks as '
                f'single-channel (mode L or P) PNGs')
        shape = results.get('ori_shape', None)
        if shape is not None and tuple(seg.shape[:2]) != tuple(shape[:2]):
            raise DataFileError(
                f'mask {path!r} is {seg.shape[1]}x{seg.shape[0]} but its image {results.get("img_path")!r} is '
                f'{shape[1]}x{shape[0]} (width x height). Fix: give every image the mask of its own size')
        bad = seg[(seg >= self.num_classes) & (seg != self.ignore_index)]
        if bad.size:
            value = int(np.max(bad))
            held = (f'value {value + 1} (label {value} after reduce_zero_label)' if results.get('reduce_zero_label')
                    else f'label {value}')
            raise DataFileError(
                f'mask {path!r} holds {held}, but the dataset has {self.num_classes} classes (labels '
                f'0..{self.num_classes - 1}, {self.ignore_index} = ignore). Fix: map those pixels to a class or to '
                f'the ignore value, or use the classes / reduce_zero_label the masks were made for')
        return results

    def __repr__(self) -> str:
        return f'pelk_mm.SegSampleCheck(num_classes={self.num_classes}, ignore_index={self.ignore_index})'


class DetImageSizeCheck:
    """The image just loaded must have the ``height`` x ``width`` of its annotation entry."""

    def __call__(self, results: dict) -> dict:
        img = results.get('img', None)
        height, width = results.get('height', None), results.get('width', None)
        if img is None or height is None or width is None:
            return results
        if tuple(img.shape[:2]) != (height, width):
            raise DataFileError(
                f'image {results.get("img_path")!r} is {img.shape[1]}x{img.shape[0]} but its annotation entry '
                f'(img_id {results.get("img_id")!r}) says {width}x{height}, so its boxes and masks would be off. '
                f'Fix: correct that entry\'s width/height in the annotation file, or replace the image with the '
                f'annotated one')
        return results

    def __repr__(self) -> str:
        return 'pelk_mm.DetImageSizeCheck()'


def _insert_after(pipeline, after: str, check) -> None:
    """Put ``check`` after every top-level transform named ``after`` of a built ``Compose`` (once)."""
    transforms = getattr(pipeline, 'transforms', None)
    if not isinstance(transforms, list) or any(type(t) is type(check) for t in transforms):
        return
    for i in reversed(range(len(transforms))):
        if _type_name(transforms[i]) == after:
            transforms.insert(i + 1, check)


def _wrap_init(cls, install) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        install(self)  # the pipeline is built by now (mmengine's BaseDataset.__init__); inserting is idempotent

    cls.__init__ = __init__


def _seg_install(dataset) -> None:
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes', None)
    if classes:
        _insert_after(dataset.pipeline, 'LoadAnnotations',
                      SegSampleCheck(len(classes), getattr(dataset, 'ignore_index', 255)))


def _det_install(dataset) -> None:
    _insert_after(dataset.pipeline, 'LoadImageFromFile', DetImageSizeCheck())


def install_data_guards(codebase: Optional[str]) -> bool:
    """Install the per-sample checks of ``codebase`` ('mmseg' or 'mmdet'; others have none). Idempotent; returns
    whether a guard is installed (False when the codebase is not installed)."""
    if codebase not in ('mmseg', 'mmdet'):
        return False
    if _INSTALLED.get(codebase):
        return True
    try:
        if codebase == 'mmseg':
            from mmseg.datasets import BaseSegDataset as base
        else:
            from mmdet.datasets import BaseDetDataset as base
    except ImportError:
        return False
    _wrap_init(base, _seg_install if codebase == 'mmseg' else _det_install)
    _INSTALLED[codebase] = True
    return True
