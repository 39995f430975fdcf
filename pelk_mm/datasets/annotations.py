"""Content checks of COCO and semantic-segmentation (ADE20K-style) annotations, at a bounded cost.

mmdet and mmseg train on several kinds of broken annotations without a word: a duplicated COCO image id merges two
images' boxes, boxes with a negative size or an unknown ``category_id`` are dropped, an image whose real size is
not the json's trains with boxes in the wrong frame, and a mask of another size than its image, or with labels
beyond the classes, trains (or crashes mid-run in the loss, naming no file). The functions here find them before
training and describe each *kind* of problem in one line: how many, the first file, the fix.

What is covered, and what it costs (``PELK_MM_DATA_CHECK=all`` lifts the sample bounds, ``PELK_MM_DATA_CHECK=N``
sets them to N files):

* COCO json: every image and annotation entry (a pass over the parsed file: about a second for train2017's 860k
  annotations); image files: a header read (size, EXIF orientation) of at most :data:`IMAGE_SAMPLE` images, evenly
  spread over the file -- every image of val2017-sized sets is read.
* Segmentation: every image's mask file is looked up (one folder listing); the header sizes of at most
  :data:`IMAGE_SAMPLE` image/mask pairs and the labels of at most :data:`MASK_SAMPLE` decoded masks, evenly spread.
  During training :mod:`pelk_mm.datasets.guards` checks every loaded sample's mask size and labels (and every
  COCO image's size), so a problem outside the sample stops the run with one line naming the file.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['IMAGE_SAMPLE', 'MASK_SAMPLE', 'Findings', 'spread', 'sample_bound', 'image_size',
           'coco_findings', 'list_seg_pairs', 'seg_findings']

#: image headers read per dataset (evenly spread); mask files decoded per segmentation dataset
IMAGE_SAMPLE = 2000
MASK_SAMPLE = 200
#: the environment switch that checks every file instead of a sample
FULL_CHECK_ENV = 'PELK_MM_DATA_CHECK'


def sample_bound(bound: int) -> Optional[int]:
    """How many files to read: ``bound``; no bound (None) with ``PELK_MM_DATA_CHECK=all``; N with
    ``PELK_MM_DATA_CHECK=N`` (0 reads none: the per-sample checks during the run still apply)."""
    value = os.environ.get(FULL_CHECK_ENV, '').strip().lower()
    if value == 'all':
        return None
    return int(value) if value.isdigit() else bound


def spread(n: int, k: Optional[int]) -> List[int]:
    """Indices of ``k`` items evenly spread over ``range(n)`` (first and last included); all when ``n <= k``."""
    if k is None or n <= k:
        return list(range(n))
    if k <= 1:
        return [0][:k]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


class Findings:
    """Problems grouped by kind: a count and the first example of each, in the order first seen."""

    def __init__(self, where: str):
        self.where = where
        self._kinds: Dict[str, list] = {}

    def add(self, kind: str, example: str, fix: str, refuse: bool = True) -> None:
        entry = self._kinds.setdefault(kind, [0, example, fix, refuse])
        entry[0] += 1

    def count(self, kind: str) -> int:
        return self._kinds.get(kind, [0])[0]

    def lines(self, refuse: bool = True, scope: Optional[Dict[str, str]] = None) -> List[str]:
        """One line per kind: ``<where>: <kind>: <count>[ <scope>] (first: <example>). Fix: <fix>``."""
        out = []
        for kind, (count, example, fix, is_refusal) in self._kinds.items():
            if is_refusal != refuse:
                continue
            extra = f' {scope[kind]}' if scope and kind in scope else ''
            out.append(f'{self.where}: {kind}: {count}{extra} (first: {example}). Fix: {fix}')
        return out


def image_size(path: str) -> Tuple[int, int, bool]:
    """``(width, height, rotated)`` from an image file's header (Pillow reads only the header); ``rotated`` when
    its EXIF orientation turns it by 90 degrees (decoders that honour EXIF then swap width and height)."""
    from PIL import Image
    with Image.open(path) as im:
        width, height = im.size
        rotated = False
        if im.format in ('JPEG', 'MPO', 'TIFF'):  # NOTE: Pillow's PNG getexif decodes the whole image
            try:
                rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
            except Exception:  # noqa: BLE001 - a broken EXIF block: the decoder ignores it too
                rotated = False
    return width, height, rotated


# --------------------------------------------------------------------------------------------------- COCO
def coco_findings(data: dict, where: str, image_dir: Optional[str], classes: Optional[Sequence[str]] = None,
                  sample: Optional[int] = IMAGE_SAMPLE) -> Tuple[Findings, str]:
    """Problems of a parsed COCO instances file (the structure -- lists and required keys -- is checked first by
    the caller). Returns the findings and a sentence on which image files were read.

    Refused: duplicated image or annotation ids, annotations of images or categories the file does not list,
    boxes with a negative width or height, dataset classes without a category of that name, image files that are
    missing or whose size differs from the json's ``width``/``height``. Warned: boxes mmdet drops as degenerate
    (under 1 pixel, ``area`` <= 0) or wholly outside their image.
    """
    found = Findings(where)
    images: Dict[object, dict] = {}
    for i, img in enumerate(data['images']):
        first = images.get(img['id'], None)
        if first is not None:
            found.add('images whose id an earlier image has (mmdet would train the later file with the boxes of '
                      'both)', f'images[{i}] {img["file_name"]!r} has id {img["id"]!r} like '
                      f'{first["file_name"]!r}', 'give every image its own id (and its annotations that image_id)')
            continue
        images[img['id']] = img
    categories = {c['id'] for c in data['categories']}
    ann_ids = set()

    def name(i: int, ann: dict, img: Optional[dict]) -> str:  # built only for a problem: the loop is hot
        return f'annotations[{i}] (id {ann.get("id")!r}, image ' + \
            (f'{img["file_name"]!r})' if img is not None else f'id {ann["image_id"]!r})')

    for i, ann in enumerate(data['annotations']):
        img = images.get(ann['image_id'], None)
        if ann['id'] in ann_ids:
            found.add('annotations whose id an earlier annotation has', name(i, ann, img),
                      'give every annotation its own id')
        ann_ids.add(ann['id'])
        if img is None:
            found.add('annotations of an image_id that no image has (never trained)', name(i, ann, img),
                      'add the image to "images" or remove its annotations')
            continue
        if ann['category_id'] not in categories:
            found.add('annotations with a category_id that no category has (mmdet drops them silently)',
                      f'{name(i, ann, img)}: category_id {ann["category_id"]!r}',
                      f'use one of the category ids {sorted(categories)[:8]}{" ..." if len(categories) > 8 else ""} '
                      f'or add the category to "categories"')
        x, y, w, h = ann['bbox']  # four numbers: checked with the file's structure
        if w < 0 or h < 0:
            found.add('boxes with a negative width or height (mmdet drops them silently)',
                      f'{name(i, ann, img)}: bbox {ann["bbox"]}', 'write boxes as [x, y, width, height] with the '
                      'top-left corner first (COCO format, not [x1, y1, x2, y2] in the wrong order)')
            continue
        area = ann['area']
        if w < 1 or h < 1 or not isinstance(area, (int, float)) or area <= 0:
            found.add('boxes under 1 pixel wide or high or with area <= 0, which mmdet drops',
                      f'{name(i, ann, img)}: bbox {ann["bbox"]}, area {area!r}',
                      'remove them, or ignore this if they are meant to be skipped', refuse=False)
            continue
        width, height = img['width'], img['height']
        if min(x + w, width) - max(x, 0) <= 0 or min(y + h, height) - max(y, 0) <= 0:
            found.add('boxes wholly outside their image, which mmdet drops',
                      f'{name(i, ann, img)}: bbox {ann["bbox"]} in a {width}x{height} image',
                      'check the box coordinates and the image width/height', refuse=False)
    if classes:
        names = {c['name'] for c in data['categories']}
        for name in classes:
            if name not in names:
                found.add('dataset classes without a category of that name in the file (mmdet would shift the '
                          'labels of the following classes)', f'class {name!r}',
                          f'make the config\'s metainfo classes the category names of the file '
                          f'({", ".join(repr(c["name"]) for c in data["categories"][:4])} ...)')
    covered = ''
    if image_dir is not None:
        entries = list(images.values())
        picked = spread(len(entries), sample)
        for j in picked:
            img = entries[j]
            path = osp.join(image_dir, img['file_name'])
            try:
                width, height, rotated = image_size(path)
            except FileNotFoundError:
                found.add('image files that do not exist', repr(path), 'put the images in the data_prefix folder, or '
                          'point data_prefix.img at them')
                continue
            except Exception as err:  # noqa: BLE001 - any unreadable header
                found.add('image files that cannot be read', f'{path!r} ({type(err).__name__}: {err})',
                          'replace them with readable images')
                continue
            expected = (img.get('width'), img.get('height'))
            if (width, height) != expected and not (rotated and (height, width) == expected):
                found.add('images of another size than the json says (their boxes would be off)',
                          f'{path!r} is {width}x{height}, the json says {expected[0]}x{expected[1]} '
                          f'(id {img["id"]!r})', 'correct the width/height of those images in the json, or '
                          'replace the image files with the annotated ones')
        covered = (f'all {len(entries)} image headers were read' if len(picked) == len(entries) else
                   f'{len(picked)} of the {len(entries)} images (evenly spread) were read; set '
                   f'{FULL_CHECK_ENV}=all to read all')
    return found, covered


# --------------------------------------------------------------------------------------------------- segmentation
def list_seg_pairs(img_dir: str, ann_dir: str, img_suffix: str, seg_map_suffix: str,
                   names: Optional[Iterable[str]] = None) -> List[Tuple[str, str]]:
    """``(image path, mask path)`` of a segmentation dataset as mmseg's ``BaseSegDataset`` lists them: the images
    under ``img_dir`` ending in ``img_suffix`` (recursively, sorted), or the ``names`` of a split file."""
    if names is None:
        found = []
        for root, _, files in os.walk(img_dir):
            for f in files:
                if f.endswith(img_suffix):
                    found.append(osp.relpath(osp.join(root, f), img_dir))
        stems = [f[:-len(img_suffix)] for f in sorted(found)]
    else:
        stems = list(names)
    return [(osp.join(img_dir, s + img_suffix), osp.join(ann_dir, s + seg_map_suffix)) for s in stems]


def seg_findings(pairs: Sequence[Tuple[str, str]], where: str, raw_classes: Optional[int], reduce_zero_label: bool,
                 ignore_index: int = 255, check_masks: bool = True, header_sample: Optional[int] = IMAGE_SAMPLE,
                 mask_sample: Optional[int] = MASK_SAMPLE) -> Tuple[Findings, Dict[str, str], str]:
    """Problems of a segmentation dataset's image/mask pairs: masks that are missing (all images), whose size is
    not the image's (a header sample), that are not single-channel or hold labels beyond the classes (a decoded
    sample). Returns the findings, the sample note of each kind, and a sentence on what was covered.

    ``raw_classes`` is the number of classes the mask values index (before ``reduce_zero_label``): valid values
    are ``0 .. raw_classes`` with ``reduce_zero_label`` (0 is "other", ignored), else ``0 .. raw_classes - 1``,
    and the ignore value (255) in both cases.
    """
    from PIL import Image
    found = Findings(where)
    scope: Dict[str, str] = {}
    if not check_masks:
        return found, scope, ''
    present = []
    for img, mask in pairs:
        if osp.isfile(mask):
            present.append((img, mask))
        else:
            found.add('images without a mask file', f'{img!r} has no {mask!r}', 'put the masks next to their '
                      'images (same name, the seg_map_suffix) in data_prefix.seg_map_path, or remove those images')
    size_kind = 'masks of another size than their image'
    picked = spread(len(present), header_sample)
    for j in picked:
        img, mask = present[j]
        try:
            w, h, rotated = image_size(img)
            mw, mh, _ = image_size(mask)
        except Exception as err:  # noqa: BLE001 - any unreadable header
            found.add('image or mask files that cannot be read', f'{img!r} / {mask!r} ({type(err).__name__}: {err})',
                      'replace them with readable files')
            continue
        if (mw, mh) != (w, h) and not (rotated and (mw, mh) == (h, w)):
            found.add(size_kind, f'{mask!r} is {mw}x{mh}, {img!r} is {w}x{h}',
                      'give every image the mask of its own size (masks are not resized to their image)')
    if len(picked) < len(present):
        scope[size_kind] = f'among {len(picked)} of {len(present)} pairs checked'
    if raw_classes:
        valid_max = raw_classes if reduce_zero_label else raw_classes - 1
        label_kind = 'masks with labels beyond the classes'
        channel_kind = 'masks that are not single-channel class-index images'
        decoded = spread(len(present), mask_sample)
        for j in decoded:
            _, mask = present[j]
            try:
                with Image.open(mask) as im:
                    values = np.asarray(im)
            except Exception as err:  # noqa: BLE001 - reported like a header failure
                found.add('image or mask files that cannot be read', f'{mask!r} ({type(err).__name__}: {err})',
                          'replace them with readable files')
                continue
            if values.ndim != 2:
                found.add(channel_kind, f'{mask!r} has shape {values.shape}', 'save masks as single-channel '
                          '(mode L or P) PNGs holding one class index per pixel')
                continue
            bad = values[(values > valid_max) & (values != ignore_index) & (values != 255)]
            if bad.size:
                found.add(label_kind, f'{mask!r} holds {int(bad.max())} (valid: 0..{valid_max} and {ignore_index} '
                          f'= ignore{", with reduce_zero_label 0 = other" if reduce_zero_label else ""})',
                          f'map those pixels to a class in 0..{valid_max} or to {ignore_index} (ignore), or set '
                          f'the dataset classes / reduce_zero_label the masks were made for')
        if len(decoded) < len(present):
            for kind in (label_kind, channel_kind):
                scope[kind] = f'among {len(decoded)} of {len(present)} masks decoded'
    covered = ''
    if present:
        n_decoded = len(spread(len(present), mask_sample)) if raw_classes else 0
        covered = (f'mask files of all {len(pairs)} images looked up, {len(picked)} of {len(present)} image/mask '
                   f'sizes and {n_decoded} masks\' labels read')
    return found, scope, covered
