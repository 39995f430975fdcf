"""The demo data generators write the real on-disk formats, and the stock dataset classes load them."""
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from mmengine.registry import DefaultScope
from PIL import Image

from pelk_mm.datasets import (ADE20K_DEMO_CLASSES, COCO_DEMO_CATEGORY_IDS, COCO_DEMO_CLASSES, IMAGENET_DEMO_CLASSES,
                              demo_data_dir, ensure_demo_data, is_complete, make_demo_data)

# COCO 2017 category ids of the 80 classes, in mmdet CocoDataset's class order
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
            33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,
            61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob('*')):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_layout(demo_root):
    root = Path(demo_data_dir('imagenet', str(demo_root)))
    train = (root / 'meta' / 'train.txt').read_text().split('\n')[:-1]
    val = (root / 'meta' / 'val.txt').read_text().split('\n')[:-1]
    assert len(train) == 6 * 48 and len(val) == 6 * 12
    for line in train + val:
        rel, label = line.rsplit(' ', 1)
        assert 0 <= int(label) < 6
    rel, label = train[0].rsplit(' ', 1)
    wnid = rel.split('/')[0]
    assert rel == f'{wnid}/{wnid}_0000.JPEG' and (root / 'train' / rel).is_file()
    assert all((root / 'val' / line.rsplit(' ', 1)[0]).is_file() for line in val)
    assert val[0].startswith('ILSVRC2012_val_00000001.JPEG ')
    # val interleaves the classes and is balanced
    labels = [int(line.rsplit(' ', 1)[1]) for line in val]
    assert np.bincount(labels).tolist() == [12] * 6 and labels[:6] != sorted(labels[:6])
    with Image.open(root / 'train' / rel) as im:
        assert im.format == 'JPEG' and im.mode == 'RGB' and im.size == (64, 64)


def test_imagenet_loads_with_mmpretrain(demo_root):
    from mmpretrain.datasets import CustomDataset, ImageNet
    root = demo_data_dir('imagenet', str(demo_root))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        train = ImageNet(data_root=root, split='train', metainfo=dict(classes=IMAGENET_DEMO_CLASSES),
                         pipeline=pipeline)
        val = ImageNet(data_root=root, split='val', metainfo=dict(classes=IMAGENET_DEMO_CLASSES), pipeline=pipeline)
    assert len(train) == 288 and len(val) == 72
    assert sorted(set(train.get_gt_labels().tolist())) == list(range(6))
    sample = val[0]
    assert tuple(sample['inputs'].shape) == (3, 64, 64)
    assert int(sample['data_samples'].gt_label) == int(
        (Path(root) / 'meta' / 'val.txt').read_text().split('\n')[0].rsplit(' ', 1)[1])
    # folder scan (no ann_file): classes = the 6 class folders, same labels as meta/train.txt
    scan = CustomDataset(data_root=root, data_prefix='train', pipeline=[])
    assert len(scan) == 288 and len(scan.CLASSES) == 6
    assert scan.get_gt_labels().tolist() == train.get_gt_labels().tolist()


def test_imagenet_is_learnable_signal(demo_root):
    """Class = shape/colour: the mean colour of the central region alone separates most classes."""
    root = Path(demo_data_dir('imagenet', str(demo_root)))
    feats, labels = [], []
    for line in (root / 'meta' / 'train.txt').read_text().split('\n')[:-1]:
        rel, label = line.rsplit(' ', 1)
        img = np.asarray(Image.open(root / 'train' / rel), dtype=np.float32)
        feats.append(img[24:40, 24:40].reshape(-1, 3).mean(0))
        labels.append(int(label))
    feats, labels = np.stack(feats), np.array(labels)
    centroids = np.stack([feats[labels == c].mean(0) for c in range(6)])
    pred = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == labels).mean() > 0.6  # nearest-centroid on 3 numbers; a conv net does far better


# ------------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_layout_and_mmseg_loading(demo_root):
    from mmseg.datasets import ADE20KDataset
    root = Path(demo_data_dir('ade20k', str(demo_root)))
    assert root.parts[-2:] == ('ade', 'ADEChallengeData2016')
    imgs = sorted((root / 'images' / 'training').glob('*.jpg'))
    anns = sorted((root / 'annotations' / 'training').glob('*.png'))
    assert len(imgs) == len(anns) == 40 and imgs[0].name == 'ADE_train_00000001.jpg'
    assert len(list((root / 'images' / 'validation').glob('*.jpg'))) == 10
    values = set()
    for a in anns:
        with Image.open(a) as im:
            assert im.mode == 'L'
            values |= set(np.unique(np.asarray(im)).tolist())
    assert values <= {0} | set(ADE20K_DEMO_CLASSES.values()) and len(values) >= 5

    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = ADE20KDataset(data_root=str(root),
                           data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                           pipeline=[dict(type='LoadImageFromFile'),
                                     dict(type='LoadAnnotations', reduce_zero_label=True)])
    assert len(ds) == 40
    classes = [c.strip() if isinstance(c, str) else c for c in ds.metainfo['classes']]
    for name, value in ADE20K_DEMO_CLASSES.items():
        assert classes[value - 1] == name  # PNG value v -> label v-1 with reduce_zero_label
    seen = set()
    for i in range(len(ds)):
        seg = ds[i]['gt_seg_map']
        assert seg.shape == (128, 128)
        seen |= set(np.unique(seg).tolist())
    assert seen <= {255} | {v - 1 for v in ADE20K_DEMO_CLASSES.values()}
    assert {v - 1 for v in ADE20K_DEMO_CLASSES.values()} <= seen and 255 in seen  # 0 ("other") -> ignore


# ------------------------------------------------------------------------------------------------- COCO
def test_coco_json_format(demo_root):
    from mmdet.datasets import CocoDataset
    root = Path(demo_data_dir('coco', str(demo_root)))
    coco = json.loads((root / 'annotations' / 'instances_train2017.json').read_text())
    assert set(coco) >= {'images', 'annotations', 'categories', 'info', 'licenses'}
    names80 = CocoDataset.METAINFO['classes']
    for cat in coco['categories']:
        assert cat['name'] in names80 and cat['id'] == COCO_IDS[names80.index(cat['name'])]
        assert COCO_DEMO_CATEGORY_IDS[cat['name']] == cat['id']
    img_ids = {im['id'] for im in coco['images']}
    assert len(img_ids) == 60 and all((root / 'train2017' / im['file_name']).is_file() for im in coco['images'])
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations']) >= 60
    from pycocotools import mask as mask_utils
    for a in coco['annotations']:
        assert a['image_id'] in img_ids and a['iscrowd'] == 0
        x, y, w, h = a['bbox']
        assert w > 1 and h > 1 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        assert isinstance(a['segmentation'], list) and len(a['segmentation'][0]) >= 6
        rle = mask_utils.merge(mask_utils.frPyObjects(a['segmentation'], 128, 128))
        assert abs(float(mask_utils.area(rle)) - a['area']) / a['area'] < 0.15
        bx, by, bw, bh = mask_utils.toBbox(rle).tolist()
        assert abs(bx - x) <= 1.5 and abs(by - y) <= 1.5 and abs(bw - w) <= 2 and abs(bh - h) <= 2


def test_coco_loads_with_mmdet(demo_root):
    from mmdet.datasets import CocoDataset
    root = demo_data_dir('coco', str(demo_root))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                dict(type='PackDetInputs')]
    for split, n in (('train', 60), ('val', 16)):
        with DefaultScope.overwrite_default_scope('mmdet'):
            ds = CocoDataset(data_root=root, ann_file=f'annotations/instances_{split}2017.json',
                             data_prefix=dict(img=f'{split}2017/'), metainfo=dict(classes=COCO_DEMO_CLASSES),
                             filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=pipeline)
        assert len(ds) == n
        labels = set()
        for i in range(len(ds)):
            inst = ds[i]['data_samples'].gt_instances
            assert len(inst) >= 1 and inst.masks.masks.shape[1:] == (128, 128)
            masks = inst.masks.masks
            for box, m in zip(inst.bboxes.tensor.numpy(), masks):
                ys, xs = np.nonzero(m)
                assert abs(xs.min() - box[0]) <= 2 and abs(ys.min() - box[1]) <= 2
            labels |= set(inst.labels.tolist())
        assert labels <= set(range(len(COCO_DEMO_CLASSES)))
    assert labels == set(range(len(COCO_DEMO_CLASSES))) or len(labels) >= 3


# ------------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize('kind', ['imagenet', 'ade20k', 'coco'])
def test_deterministic_and_seeded(tmp_path, kind):
    small = dict(imagenet=dict(num_train_per_class=3, num_val_per_class=2), ade20k=dict(num_train=3, num_val=2),
                 coco=dict(num_train=4, num_val=2))[kind]
    a = make_demo_data(kind, str(tmp_path / 'a'), seed=3, **small)
    b = make_demo_data(kind, str(tmp_path / 'b'), seed=3, **small)
    c = make_demo_data(kind, str(tmp_path / 'c'), seed=4, **small)
    assert _tree_hash(Path(a)) == _tree_hash(Path(b))
    assert _tree_hash(Path(a)) != _tree_hash(Path(c))


def test_idempotent_force_and_refuses_foreign_data(tmp_path):
    small = dict(num_train=2, num_val=1)
    target = Path(make_demo_data('coco', str(tmp_path), **small))
    stamp = (target / 'demo_meta.json').stat().st_mtime_ns
    logs = []
    make_demo_data('coco', str(tmp_path), logger=logs.append, **small)
    assert (target / 'demo_meta.json').stat().st_mtime_ns == stamp and 'already present' in logs[0]
    make_demo_data('coco', str(tmp_path), force=True, seed=1, **small)
    assert json.loads((target / 'demo_meta.json').read_text())['seed'] == 1
    assert not [p for p in tmp_path.iterdir() if '.tmp.' in p.name or '.old.' in p.name]  # no leftovers
    real = tmp_path / 'other' / 'coco'
    real.mkdir(parents=True)
    (real / 'mine.txt').write_text('real data')
    with pytest.raises(FileExistsError, match='not a complete pelk_mm demo dataset'):
        make_demo_data('coco', str(tmp_path / 'other'), **small)
    assert (real / 'mine.txt').read_text() == 'real data'


def test_concurrent_callers_generate_once(tmp_path):
    logs, errors = [], []

    def worker():
        try:
            make_demo_data('ade20k', str(tmp_path), logger=logs.append, num_train=2, num_val=1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum('wrote demo' in m for m in logs) == 1 and sum('already present' in m for m in logs) == 2
    assert is_complete('ade20k', str(tmp_path))


def test_ensure_demo_data_from_config(tmp_path):
    from mmengine.config import Config
    assert ensure_demo_data(Config(dict(model=dict()))) is None
    cfg = Config(dict(demo_data=dict(kind='coco', root=str(tmp_path / 'r'), seed=0)))
    out = ensure_demo_data(cfg)
    assert out == demo_data_dir('coco', str(tmp_path / 'r')) and is_complete('coco', str(tmp_path / 'r'))
    with pytest.raises(ValueError, match="kind='imagenet'"):
        ensure_demo_data(Config(dict(demo_data=dict(root='x'))))
    with pytest.raises(ValueError, match='unknown demo data kind'):
        ensure_demo_data('cityscapes')


def test_cli_all(tmp_path, tools):
    r = tools.run([tools.PY, tools.REPO / 'tools/dataset_converters/make_demo_data.py', 'all', '--root', tmp_path / 'd',
                  '--seed', '1'], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    for kind in ('imagenet', 'ade20k', 'coco'):
        assert is_complete(kind, str(tmp_path / 'd'))
    assert r.stdout.count('wrote demo') == 3
    assert 'seed 1' in r.stdout
    logs = []
    make_demo_data('coco', str(tmp_path / 'd'), seed=1, logger=logs.append)
    assert 'already present' in logs[0]
    assert os.path.isfile(tmp_path / 'd' / 'imagenet' / 'meta' / 'val.txt')
