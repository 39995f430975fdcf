"""Bad data gets one line naming the file (and the line), exit status 2, no traceback: unreadable images when a
worker hits them, malformed ImageNet-format annotation lists before anything is built."""
import shutil

import pytest
from mmengine.config import Config

from pelk_mm.apis.check_data import check_label_lists
from pelk_mm.errors import DataFileError


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
    """The demo ImageNet-format data (6 classes) in a scratch folder, and the tiny classifier's config on it."""
    from pelk_mm.datasets import make_demo_data
    root = tmp_path_factory.mktemp('data')
    make_demo_data('imagenet', str(root))
    return root / 'imagenet'


def _copy(imagenet, tmp_path):
    data = tmp_path / 'imagenet'
    shutil.copytree(imagenet, data)
    return data


def _cfg(data):
    return Config(dict(train_dataloader=dict(dataset=dict(type='ImageNet', data_root=str(data), split='train',
                                                          ann_file='meta/train.txt', classes=[str(i) for i in range(6)]))))


@pytest.mark.parametrize('line, expected', [
    ('n90000001/n90000001_0000.JPEG', 'has no label'),
    ('n90000001/n90000001_0000.JPEG cat', "label 'cat' is not an integer"),
    ('n90000001/n90000001_0000.JPEG 99', 'label 99 is outside [0, 6) (6 classes)'),
    ('n90000001/n90000001_0000.JPEG,3', 'has no label'),
])
def test_malformed_label_line_names_file_and_line(imagenet, tmp_path, line, expected):
    data = _copy(imagenet, tmp_path)
    ann = data / 'meta/train.txt'
    lines = ann.read_text().splitlines()
    lines[2] = line
    ann.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DataFileError) as err:
        check_label_lists(_cfg(data), 'train', ['train_dataloader'])
    msg = str(err.value)
    assert str(ann) in msg and 'line 3' in msg and expected in msg and 'Fix:' in msg and '\n' not in msg


def test_empty_label_list(imagenet, tmp_path):
    data = _copy(imagenet, tmp_path)
    (data / 'meta/train.txt').write_text('')
    with pytest.raises(DataFileError, match='lists no images'):
        check_label_lists(_cfg(data), 'train', ['train_dataloader'])
    check_label_lists(_cfg(imagenet), 'train', ['train_dataloader'])  # the intact list passes


@pytest.mark.parametrize('content', [b'', b'not an image at all', 'truncated'])
def test_unreadable_image_names_the_file(imagenet, tmp_path, content):
    import pelk_mm  # noqa: F401  (patches LoadImageFromFile)
    from mmcv.transforms import LoadImageFromFile
    path = tmp_path / 'bad.JPEG'
    src = next((imagenet / 'train').rglob('*.JPEG')).read_bytes()
    path.write_bytes(src[:len(src) // 8] if content == 'truncated' else content)
    load = LoadImageFromFile()
    if content == 'truncated':
        try:  # a decoder may return the part it could read: then the image must be there, not garbage
            out = load(dict(img_path=str(path)))
            assert out['img'].shape[2] == 3
            return
        except DataFileError as err:
            assert str(path) in str(err)
            return
    with pytest.raises(DataFileError) as err:
        load(dict(img_path=str(path)))
    assert f"cannot read image '{path}'" in str(err.value) and '\n' not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize('workers', [0, 2])
def test_train_with_an_empty_image_stops_with_one_line(imagenet, tmp_path, rel, workers):
    cwd = tmp_path
    (cwd / 'data/demo').mkdir(parents=True)
    data = cwd / 'data/demo/imagenet'
    shutil.copytree(imagenet, data)
    bad = sorted((data / 'train').rglob('*.JPEG'))[5]
    bad.write_bytes(b'')
    r = rel.train(rel.REPO / 'tests/data/configs/tiny_pelk_cls_demo.py', cwd / 'work', cwd,
                  ['train_cfg.max_epochs=1', f'train_dataloader.num_workers={workers}',
                   'train_dataloader.sampler.shuffle=False'])
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.stdout + r.stderr)[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and f"cannot read image '{bad.relative_to(cwd)}'" in lines[0], r.stderr[-3000:]


@pytest.mark.slow
def test_train_with_a_bad_label_line_stops_before_building(imagenet, tmp_path, rel):
    cwd = tmp_path
    (cwd / 'data/demo').mkdir(parents=True)
    data = cwd / 'data/demo/imagenet'
    shutil.copytree(imagenet, data)
    ann = data / 'meta/train.txt'
    ann.write_text(ann.read_text().replace(' 0\n', ' cat\n', 1))
    r = rel.train(rel.REPO / 'tests/data/configs/tiny_pelk_cls_demo.py', cwd / 'work', cwd, ['train_cfg.max_epochs=1'])
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.stdout + r.stderr)[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and "line 1: label 'cat' is not an integer" in lines[0], r.stderr[-3000:]
    assert not list((cwd / 'work').glob('*/*.log'))  # before the Runner was built


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    from pelk_mm.datasets import make_demo_data
    root = tmp_path_factory.mktemp('coco_data')
    make_demo_data('coco', str(root))
    return root / 'coco'


@pytest.mark.parametrize('edit, expected', [
    (lambda d: d.pop('categories'), "it has no 'categories' list"),
    (lambda d: d.pop('images'), "it has no 'images' list"),
    (lambda d: d['annotations'][1].pop('bbox'), "annotations[1] has no 'bbox'"),
    (lambda d: d['annotations'][0].update(bbox=[1, 2, 3]), 'not [x, y, width, height]'),
])
def test_malformed_coco_json_names_file_and_entry(coco, tmp_path, edit, expected):
    import json

    from pelk_mm.apis.check_data import check_coco_files
    src = coco / 'annotations/instances_train2017.json'
    data = json.loads(src.read_text())
    edit(data)
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps(data))
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type='CocoDataset', data_root='', ann_file=str(path)))))
    with pytest.raises(DataFileError) as err:
        check_coco_files(cfg, 'train', ['train_dataloader'])
    assert str(path) in str(err.value) and expected in str(err.value) and '\n' not in str(err.value)
    cfg.train_dataloader.dataset.ann_file = str(src)
    check_coco_files(cfg, 'train', ['train_dataloader'])  # the intact file passes
