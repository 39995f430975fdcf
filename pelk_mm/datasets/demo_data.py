"""Small deterministic synthetic datasets in the real on-disk formats of ImageNet, ADE20K and COCO.

They exist so that every config, launcher and test can run end to end on a laptop without downloading anything:
the files are read by the stock dataset classes (mmpretrain ``ImageNet``/``CustomDataset``, mmseg
``ADE20KDataset``, mmdet ``CocoDataset``) exactly as the real datasets are, and the labels are easy enough for a
tiny network to learn in a few CPU minutes (distinct shapes, colours and textures on noisy backgrounds).

Layouts (``root`` defaults to ``data/demo``)::

    <root>/imagenet/train/<wnid>/<wnid>_<k>.JPEG    class folders, as ILSVRC2012 train
    <root>/imagenet/val/ILSVRC2012_val_<k>.JPEG     flat, as ILSVRC2012 val
    <root>/imagenet/meta/{train,val}.txt            "relpath label" lines (mmpretrain ImageNet ann_file)
    <root>/imagenet/meta/classes.txt                one class name per line (label order)
    <root>/ade/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<k>.jpg
    <root>/ade/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<k>.png
                                                    uint8 class index: 0 = other/ignore, 1..150 = ADE classes
    <root>/coco/{train2017,val2017}/<12-digit id>.jpg
    <root>/coco/annotations/instances_{train,val}2017.json   bbox, area, iscrowd=0, polygon segmentation

Each dataset folder also holds ``demo_meta.json`` (kind, seed, counts, class names); its presence marks a
complete dataset. Generation is deterministic for a seed, idempotent (an existing dataset is kept unless
``force``), written into a temporary sibling folder and renamed into place, and guarded by a file lock so that
several processes (e.g. the ranks of ``tools/dist_train.sh``) can call :func:`ensure_demo_data` at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import os.path as osp
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'DEMO_KINDS', 'DEFAULT_ROOT', 'IMAGENET_DEMO_CLASSES', 'ADE20K_DEMO_CLASSES', 'COCO_DEMO_CLASSES',
    'COCO_DEMO_CATEGORY_IDS', 'demo_data_dir', 'make_imagenet_demo', 'make_ade20k_demo', 'make_coco_demo',
    'make_demo_data', 'ensure_demo_data', 'is_complete'
]

DEFAULT_ROOT = 'data/demo'
FORMAT_VERSION = 1
META_FILE = 'demo_meta.json'

# ----------------------------------------------------------------------------------------------- class tables
# ImageNet-style demo classes: (folder wnid, readable name). Label = position in this tuple.
IMAGENET_DEMO_WNIDS = ('n90000001', 'n90000002', 'n90000003', 'n90000004', 'n90000005', 'n90000006')
IMAGENET_DEMO_CLASSES = ('red disk', 'green square', 'blue triangle', 'yellow ring', 'magenta stripes',
                         'cyan cross')

# ADE20K demo classes: name -> value in the annotation PNG (1-based index into mmseg ADE20KDataset's 150 classes,
# so with reduce_zero_label=True the training label is value - 1 and the class name is METAINFO['classes'][v-1]).
ADE20K_DEMO_CLASSES = {'sky': 3, 'tree': 5, 'road': 7, 'grass': 10, 'car': 21}

# COCO demo classes: names from mmdet CocoDataset, ids as in COCO 2017.
COCO_DEMO_CLASSES = ('stop sign', 'sports ball', 'kite', 'tv')
COCO_DEMO_CATEGORY_IDS = {'stop sign': 13, 'sports ball': 37, 'kite': 38, 'tv': 72}
_COCO_SUPERCATEGORY = {'stop sign': 'outdoor', 'sports ball': 'sports', 'kite': 'sports', 'tv': 'electronic'}

_SUBDIR = {'imagenet': 'imagenet', 'ade20k': osp.join('ade', 'ADEChallengeData2016'), 'coco': 'coco'}
DEMO_KINDS = tuple(_SUBDIR)


def demo_data_dir(kind: str, root: str = DEFAULT_ROOT) -> str:
    """The folder a demo dataset of ``kind`` lives in (the ``data_root`` a config should use)."""
    if kind not in _SUBDIR:
        raise ValueError(f'unknown demo data kind {kind!r}; choose one of {DEMO_KINDS}')
    return osp.join(root, _SUBDIR[kind])


# ----------------------------------------------------------------------------------------------- drawing helpers
def _noise_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation noisy background with a smooth colour gradient: ``(h, w, 3)`` float RGB in [0, 255]."""
    base = rng.uniform(70, 170, size=3)
    tint = rng.uniform(-25, 25, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(rng.uniform(0, 2 * np.pi)) * xx / w + np.sin(rng.uniform(0, 2 * np.pi)) * yy / h)[..., None]
    img = base + tint * ramp + rng.normal(0, 18, size=(h, w, 3))
    return img


def _texture(rng: np.random.Generator, h: int, w: int, color: Sequence[float], kind: str) -> np.ndarray:
    """A full ``(h, w, 3)`` canvas of ``color`` with a texture (used through a mask)."""
    color = np.asarray(color, dtype=np.float64) + rng.uniform(-20, 20, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 'flat':
        pattern = np.zeros((h, w))
    elif kind == 'hstripes':
        period = rng.uniform(5, 8)
        pattern = 40 * np.sign(np.sin(2 * np.pi * yy / period + rng.uniform(0, 6)))
    elif kind == 'dstripes':
        period = rng.uniform(6, 10)
        pattern = 35 * np.sign(np.sin(2 * np.pi * (xx + yy) / period + rng.uniform(0, 6)))
    elif kind == 'checker':
        cell = int(rng.integers(4, 7))
        pattern = 35 * (((yy // cell) + (xx // cell)) % 2 * 2 - 1)
    elif kind == 'speckle':
        pattern = rng.normal(0, 30, size=(h, w))
    elif kind == 'gradient':
        pattern = 60 * (yy / max(h - 1, 1) - 0.5)
    else:
        raise ValueError(kind)
    return color + pattern[..., None] + rng.normal(0, 6, size=(h, w, 3))


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float) -> List[Tuple[float, float]]:
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


def _polygon_mask(h: int, w: int, polygons: Sequence[Sequence[Tuple[float, float]]],
                  holes: Sequence[Sequence[Tuple[float, float]]] = ()) -> np.ndarray:
    m = Image.new('L', (w, h), 0)
    draw = ImageDraw.Draw(m)
    for poly in polygons:
        draw.polygon([tuple(p) for p in poly], fill=1)
    for poly in holes:
        draw.polygon([tuple(p) for p in poly], fill=0)
    return np.asarray(m, dtype=bool)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save_jpg(img: np.ndarray, path: str) -> None:
    Image.fromarray(_to_uint8(img), 'RGB').save(path, format='JPEG', quality=90)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


# ----------------------------------------------------------------------------------------------- ImageNet
def _imagenet_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    h = w = size
    img = _noise_background(rng, h, w)
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    r = rng.uniform(0.22, 0.34) * size
    rot = rng.uniform(0, 2 * math.pi)
    holes = ()
    if label == 0:    # red disk
        polys, color, tex = [_regular_polygon(cx, cy, r, 32, 0)], (215, 40, 40), 'flat'
    elif label == 1:  # green square
        polys, color, tex = [_regular_polygon(cx, cy, r * 1.1, 4, rot)], (40, 190, 60), 'flat'
    elif label == 2:  # blue triangle
        polys, color, tex = [_regular_polygon(cx, cy, r * 1.2, 3, rot)], (40, 70, 220), 'flat'
    elif label == 3:  # yellow ring
        polys, color, tex = [_regular_polygon(cx, cy, r, 32, 0)], (230, 210, 40), 'flat'
        holes = [_regular_polygon(cx, cy, r * 0.55, 32, 0)]
    elif label == 4:  # magenta stripes
        polys, color, tex = [_regular_polygon(cx, cy, r * 1.2, 4, rot)], (200, 50, 200), 'hstripes'
    elif label == 5:  # cyan cross
        a, b = r, r * 0.35
        c, s = math.cos(rot), math.sin(rot)

        def rect(dx, dy):
            pts = [(-dx, -dy), (dx, -dy), (dx, dy), (-dx, dy)]
            return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
        polys, color, tex = [rect(a, b), rect(b, a)], (40, 210, 220), 'flat'
    else:
        raise ValueError(label)
    mask = _polygon_mask(h, w, polys, holes)
    img[mask] = _texture(rng, h, w, color, tex)[mask]
    return img


def make_imagenet_demo(out_dir: str, seed: int = 0, num_train_per_class: int = 48, num_val_per_class: int = 12,
                       size: int = 64) -> dict:
    """Write an ImageNet-format demo dataset into ``out_dir`` (which must not exist or be empty).

    ``train/<wnid>/<wnid>_<k>.JPEG`` class folders, flat ``val/ILSVRC2012_val_<k>.JPEG`` and ``meta/train.txt``
    / ``meta/val.txt`` with ``"<relpath> <label>"`` lines, plus ``meta/classes.txt`` (readable names, label
    order). Returns the dataset's meta dict.
    """
    os.makedirs(osp.join(out_dir, 'meta'), exist_ok=True)
    train_lines, val_lines = [], []
    for label, wnid in enumerate(IMAGENET_DEMO_WNIDS):
        os.makedirs(osp.join(out_dir, 'train', wnid), exist_ok=True)
        for k in range(num_train_per_class):
            rel = f'{wnid}/{wnid}_{k:04d}.JPEG'
            _save_jpg(_imagenet_image(_rng(seed, 1, label, k), label, size), osp.join(out_dir, 'train', rel))
            train_lines.append(f'{rel} {label}')
    os.makedirs(osp.join(out_dir, 'val'), exist_ok=True)
    # interleave the classes in val (as ILSVRC2012 val is), deterministic order
    order = _rng(seed, 2).permutation(len(IMAGENET_DEMO_WNIDS) * num_val_per_class)
    for idx, j in enumerate(order):
        label, k = divmod(int(j), num_val_per_class)
        name = f'ILSVRC2012_val_{idx + 1:08d}.JPEG'
        _save_jpg(_imagenet_image(_rng(seed, 3, label, k), label, size), osp.join(out_dir, 'val', name))
        val_lines.append(f'{name} {label}')
    for name, lines in (('train.txt', train_lines), ('val.txt', val_lines),
                        ('classes.txt', list(IMAGENET_DEMO_CLASSES))):
        with open(osp.join(out_dir, 'meta', name), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return dict(classes=list(IMAGENET_DEMO_CLASSES), wnids=list(IMAGENET_DEMO_WNIDS), image_size=[size, size],
                num_train=len(train_lines), num_val=len(val_lines))


# ----------------------------------------------------------------------------------------------- ADE20K
def _ade_sample(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: sky over grass with a road band, trees (green speckled disks) and cars (red rectangles);
    a few small 'other' blobs keep label 0 (ignored with reduce_zero_label)."""
    c = ADE20K_DEMO_CLASSES
    label = np.zeros((h, w), dtype=np.uint8)
    img = _noise_background(rng, h, w)
    horizon = int(rng.uniform(0.3, 0.5) * h)
    yy, xx = np.mgrid[0:h, 0:w]
    layers = []  # (mask, class, color, texture), painted in order
    layers.append((yy < horizon, c['sky'], (90, 150, 235), 'gradient'))
    layers.append((yy >= horizon, c['grass'], (60, 160, 50), 'speckle'))
    road_top = int(rng.uniform(0.62, 0.75) * h)
    road_h = int(rng.uniform(0.12, 0.2) * h)
    slope = rng.uniform(-0.15, 0.15)
    road = (yy >= road_top + slope * (xx - w / 2)) & (yy < road_top + road_h + slope * (xx - w / 2))
    layers.append((road, c['road'], (110, 110, 110), 'dstripes'))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.07, 0.13) * w
        cx, cy = rng.uniform(0.1, 0.9) * w, horizon + rng.uniform(-0.05, 0.1) * h
        layers.append((_polygon_mask(h, w, [_regular_polygon(cx, cy, r, 24, 0)]), c['tree'], (20, 90, 30),
                       'checker'))
    for _ in range(int(rng.integers(1, 3))):
        cw, ch = rng.uniform(0.12, 0.22) * w, rng.uniform(0.07, 0.11) * h
        cx, cy = rng.uniform(0.15, 0.85) * w, road_top + road_h / 2
        box = [(cx - cw / 2, cy - ch / 2), (cx + cw / 2, cy - ch / 2), (cx + cw / 2, cy + ch / 2),
               (cx - cw / 2, cy + ch / 2)]
        layers.append((_polygon_mask(h, w, [box]), c['car'], (220, 30, 30), 'flat'))
    for _ in range(int(rng.integers(0, 3))):  # unlabelled clutter
        r = rng.uniform(0.03, 0.06) * w
        cx, cy = rng.uniform(0, 1) * w, rng.uniform(0, 1) * h
        layers.append((_polygon_mask(h, w, [_regular_polygon(cx, cy, r, 5, rng.uniform(0, 6))]), 0,
                       (240, 240, 240), 'flat'))
    for mask, cls, color, tex in layers:
        img[mask] = _texture(rng, h, w, color, tex)[mask]
        label[mask] = cls
    return img, label


def make_ade20k_demo(out_dir: str, seed: int = 0, num_train: int = 40, num_val: int = 10,
                     size: Tuple[int, int] = (128, 128)) -> dict:
    """Write an ADEChallengeData2016-format demo dataset into ``out_dir``.

    ``images/{training,validation}/ADE_{train,val}_<k>.jpg`` and ``annotations/.../*.png`` (mode ``L``, value =
    1-based ADE20K class index, 0 = other). Returns the meta dict.
    """
    h, w = size
    splits = (('training', 'train', num_train, 1), ('validation', 'val', num_val, 2))
    for folder, tag, n, key in splits:
        os.makedirs(osp.join(out_dir, 'images', folder), exist_ok=True)
        os.makedirs(osp.join(out_dir, 'annotations', folder), exist_ok=True)
        for k in range(n):
            img, label = _ade_sample(_rng(seed, 10 + key, k), h, w)
            stem = f'ADE_{tag}_{k + 1:08d}'
            _save_jpg(img, osp.join(out_dir, 'images', folder, stem + '.jpg'))
            Image.fromarray(label, 'L').save(osp.join(out_dir, 'annotations', folder, stem + '.png'))
    return dict(classes=dict(ADE20K_DEMO_CLASSES), image_size=[h, w], num_train=num_train, num_val=num_val,
                label_semantics='PNG value v: 0 = other (ignored with reduce_zero_label=True), v in 1..150 = '
                                'ADE20K class v-1 of mmseg ADE20KDataset')


# ----------------------------------------------------------------------------------------------- COCO
def _coco_object(rng: np.random.Generator, name: str, cx: float, cy: float, r: float):
    """Polygon(s), colour and texture of one demo object."""
    rot = rng.uniform(0, 2 * math.pi)
    if name == 'stop sign':
        return [_regular_polygon(cx, cy, r, 8, math.pi / 8)], (210, 25, 35), 'flat'
    if name == 'sports ball':
        return [_regular_polygon(cx, cy, r, 24, 0)], (245, 140, 20), 'flat'
    if name == 'kite':
        pts = [(0, -1.2), (0.7, -0.1), (0, 1.2), (-0.7, -0.1)]
        c, s = math.cos(rot), math.sin(rot)
        return [[(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]], (40, 200, 220), 'dstripes'
    if name == 'tv':
        ww, hh = r * 1.3, r * 0.9
        return [[(cx - ww, cy - hh), (cx + ww, cy - hh), (cx + ww, cy + hh), (cx - ww, cy + hh)]], (35, 35, 45), \
            'hstripes'
    raise ValueError(name)


def _polygon_area(poly: Sequence[Tuple[float, float]]) -> float:
    x = np.array([p[0] for p in poly])
    y = np.array([p[1] for p in poly])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _coco_split(out_dir: str, seed: int, split: str, key: int, n: int, size: Tuple[int, int],
                img_id0: int, ann_id0: int) -> dict:
    h, w = size
    img_dir = osp.join(out_dir, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = ann_id0
    for k in range(n):
        rng = _rng(seed, 20 + key, k)
        img_id = img_id0 + k
        img = _noise_background(rng, h, w)
        placed: List[Tuple[float, float, float]] = []
        for _ in range(int(rng.integers(1, 5))):
            for _attempt in range(20):  # rejection-sample non-overlapping objects fully inside the image
                r = rng.uniform(0.09, 0.18) * min(h, w)
                cx, cy = rng.uniform(1.5 * r, w - 1.5 * r), rng.uniform(1.5 * r, h - 1.5 * r)
                if all(math.hypot(cx - px, cy - py) > 1.6 * (r + pr) for px, py, pr in placed):
                    break
            else:
                continue
            placed.append((cx, cy, r))
            name = COCO_DEMO_CLASSES[int(rng.integers(len(COCO_DEMO_CLASSES)))]
            polys, color, tex = _coco_object(rng, name, cx, cy, r)
            mask = _polygon_mask(h, w, polys)
            img[mask] = _texture(rng, h, w, color, tex)[mask]
            xs = [p[0] for poly in polys for p in poly]
            ys = [p[1] for poly in polys for p in poly]
            x0, y0 = max(min(xs), 0.), max(min(ys), 0.)
            x1, y1 = min(max(xs), float(w)), min(max(ys), float(h))
            annotations.append(dict(
                id=ann_id, image_id=img_id, category_id=COCO_DEMO_CATEGORY_IDS[name],
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                area=round(sum(_polygon_area(p) for p in polys), 2), iscrowd=0,
                segmentation=[[round(v, 2) for pt in poly for v in pt] for poly in polys]))
            ann_id += 1
        file_name = f'{img_id:012d}.jpg'
        _save_jpg(img, osp.join(img_dir, file_name))
        images.append(dict(id=img_id, file_name=file_name, height=h, width=w, license=1))
    categories = [dict(id=COCO_DEMO_CATEGORY_IDS[n], name=n, supercategory=_COCO_SUPERCATEGORY[n])
                  for n in COCO_DEMO_CLASSES]
    coco = dict(info=dict(description=f'pelk_mm synthetic COCO-format demo ({split}, seed {seed})',
                          version='1.0', year=2024),
                licenses=[dict(id=1, name='CC0', url='')], images=images, annotations=annotations,
                categories=categories)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    with open(osp.join(out_dir, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), annotations=len(annotations))


def make_coco_demo(out_dir: str, seed: int = 0, num_train: int = 60, num_val: int = 16,
                   size: Tuple[int, int] = (128, 128)) -> dict:
    """Write a COCO-2017-format instance dataset into ``out_dir`` (``train2017/``, ``val2017/``,
    ``annotations/instances_{train,val}2017.json`` with bbox, area, ``iscrowd=0`` and polygon masks)."""
    tr = _coco_split(out_dir, seed, 'train', 1, num_train, size, img_id0=1, ann_id0=1)
    va = _coco_split(out_dir, seed, 'val', 2, num_val, size, img_id0=100001, ann_id0=100001)
    return dict(classes=list(COCO_DEMO_CLASSES), category_ids=dict(COCO_DEMO_CATEGORY_IDS), image_size=list(size),
                num_train=tr['images'], num_val=va['images'], num_train_instances=tr['annotations'],
                num_val_instances=va['annotations'])


_MAKERS: Dict[str, Callable[..., dict]] = {
    'imagenet': make_imagenet_demo, 'ade20k': make_ade20k_demo, 'coco': make_coco_demo}


# ----------------------------------------------------------------------------------------------- orchestration
def is_complete(kind: str, root: str = DEFAULT_ROOT) -> bool:
    """Whether a finished demo dataset of ``kind`` is present under ``root``."""
    return osp.isfile(osp.join(demo_data_dir(kind, root), META_FILE))


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    with open(path, 'a') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def make_demo_data(kind: str, root: str = DEFAULT_ROOT, seed: int = 0, force: bool = False,
                   logger: Optional[Callable[[str], None]] = None, **size_kwargs) -> str:
    """Generate the demo dataset ``kind`` (``'imagenet'``, ``'ade20k'`` or ``'coco'``) under ``root``.

    Skips (and returns) an existing complete dataset unless ``force``. The data is written into a temporary
    sibling folder and renamed into place, under an exclusive file lock, so a killed run never leaves a partial
    dataset and concurrent callers generate it once. ``size_kwargs`` are passed to the ``make_*_demo`` function
    (e.g. ``num_train`` for quick tests). Returns the dataset folder.
    """
    if kind not in _MAKERS:
        raise ValueError(f'unknown demo data kind {kind!r}; choose one of {DEMO_KINDS} (or "all" on the CLI)')
    log = logger or (lambda msg: None)
    target = demo_data_dir(kind, root)
    parent = osp.dirname(osp.abspath(target))
    os.makedirs(parent, exist_ok=True)
    with _file_lock(osp.join(parent, f'.{osp.basename(target)}.lock')):
        if is_complete(kind, root) and not force:
            log(f'demo {kind} data already present in {target} (use --force to regenerate)')
            return target
        if osp.exists(target) and not force and os.listdir(target):
            raise FileExistsError(
                f'{target} exists but is not a complete pelk_mm demo dataset (no {META_FILE}); it may hold real '
                f'data. Move it away, or pass force=True / --force to replace it with demo data')
        t0 = time.time()
        tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(target)}.tmp.', dir=parent)
        try:
            meta = _MAKERS[kind](tmp, seed=seed, **size_kwargs)
            meta = dict(kind=kind, seed=seed, format_version=FORMAT_VERSION, generator='pelk_mm.datasets.demo_data',
                        **meta)
            with open(osp.join(tmp, META_FILE), 'w') as f:
                json.dump(meta, f, indent=2)
            if osp.exists(target):
                old = tempfile.mkdtemp(prefix=f'.{osp.basename(target)}.old.', dir=parent)
                os.rename(target, osp.join(old, 'data'))
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f'wrote demo {kind} data to {target} in {time.time() - t0:.1f}s '
            f'({meta.get("num_train")} train / {meta.get("num_val")} val images, seed {seed})')
    return target


def ensure_demo_data(cfg_or_kind: Union[str, dict, 'object'], root: Optional[str] = None,
                     logger: Optional[Callable[[str], None]] = None) -> Optional[str]:
    """Generate a demo dataset if it is missing.

    Args:
        cfg_or_kind: a kind (``'imagenet'``/``'ade20k'``/``'coco'``), or a config (``mmengine.Config`` or dict)
            whose top-level ``demo_data = dict(kind=..., root=..., seed=0)`` key says what to generate. A config
            without ``demo_data`` is left alone (returns ``None``).
        root: Where to put it; overrides ``demo_data.root``. Defaults to ``data/demo``.

    Returns:
        The dataset folder, or ``None`` when the config asks for no demo data.
    """
    seed = 0
    if isinstance(cfg_or_kind, str):
        kind = cfg_or_kind
    else:
        spec = cfg_or_kind.get('demo_data', None)
        if spec is None:
            return None
        if isinstance(spec, str):
            spec = dict(kind=spec)
        if not hasattr(spec, 'get') or 'kind' not in spec:
            raise ValueError(f"config key demo_data must be dict(kind='imagenet'|'ade20k'|'coco', root=..., "
                             f"seed=0), got {spec!r}")
        kind = spec['kind']
        seed = int(spec.get('seed', 0))
        root = root or spec.get('root', None)
    return make_demo_data(kind, root or DEFAULT_ROOT, seed=seed, logger=logger)
