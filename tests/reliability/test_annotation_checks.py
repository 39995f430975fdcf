"""Annotations that mmdet / mmseg would train on silently wrong, or crash on mid-run naming no file, stop the run:
before anything is built with one line per kind of problem (count, first file, fix), and -- for what the bounded
pre-run sample did not read -- when the sample is loaded, with one line naming the file. Corrupted copies of the
COCO and ADE20K demo datasets (the real on-disk formats) are checked through the launcher's data check and the
real mmdet / mmseg datasets and pipelines."""
import copy
import json
import shutil

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from pelk_mm.apis.check_data import check_data_paths
from pelk_mm.config import register_codebase
from pelk_mm.errors import DataFileError

COCO_CLASSES = ('stop sign', 'sports ball', 'kite', 'tv')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    from pelk_mm.datasets import make_demo_data
    root = tmp_path_factory.mktemp('data')
    make_demo_data('coco', str(root), num_train=12, num_val=4)
    make_demo_data('ade20k', str(root), num_train=12, num_val=4)
    return root


@pytest.fixture
def coco(demo, tmp_path):
    """A scratch copy of the COCO demo, its parsed train json, and a function that writes the json back."""
    data = tmp_path / 'coco'
    shutil.copytree(demo / 'coco', data)
    path = data / 'annotations/instances_train2017.json'
    return data, json.loads(path.read_text()), lambda d: path.write_text(json.dumps(d))


@pytest.fixture
def ade(demo, tmp_path):
    data = tmp_path / 'ade'
    shutil.copytree(demo / 'ade/ADEChallengeData2016', data)
    return data


def _coco_cfg(data, pipeline=None, classes=COCO_CLASSES):
    register_codebase('mmdet')
    return Config(dict(default_scope='mmdet', train_dataloader=dict(dataset=dict(
        type='CocoDataset', data_root=str(data), ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'), metainfo=dict(classes=classes),
        pipeline=pipeline or [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                              dict(type='PackDetInputs')]))))


def _ade_cfg(data, pipeline=None):
    register_codebase('mmseg')
    return Config(dict(default_scope='mmseg', train_dataloader=dict(dataset=dict(
        type='ADE20KDataset', data_root=str(data),
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=pipeline or [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                              dict(type='PackSegInputs')]))))


def _refusal(cfg):
    with pytest.raises(DataFileError) as err:
        check_data_paths(cfg, 'train', ['train_dataloader'])
    return err.value


def _mask(data, k=3):
    return data / f'annotations/training/ADE_train_{k:08d}.png'


# ------------------------------------------------------------------------------------------------ COCO
def _dup_id(d, index=4):
    """Image ``index`` (and its boxes) get the id of image 2, as in a json merged from two sources."""
    old, new = d['images'][index]['id'], d['images'][2]['id']
    d['images'][index]['id'] = new
    for ann in d['annotations']:
        if ann['image_id'] == old:
            ann['image_id'] = new


def _negative_width(d):
    d['annotations'][3]['bbox'][2] = -12.5


def _unknown_category(d):
    d['annotations'][5]['category_id'] = 999


@pytest.mark.parametrize('edit, kind, first', [
    (_dup_id, 'images whose id an earlier image has', "images[4] '000000000005.jpg' has id 3 like "
                                                     "'000000000003.jpg'"),
    (_negative_width, 'boxes with a negative width or height (mmdet drops them silently): 1', 'annotations[3]'),
    (_unknown_category, 'annotations with a category_id that no category has (mmdet drops them silently): 1',
     'category_id 999'),
])
def test_coco_problem_is_one_line_with_count_and_first_entry(coco, edit, kind, first):
    data, d, write = coco
    edit(d)
    write(d)
    err = _refusal(_coco_cfg(data))
    assert len(err.lines) == 1, err.lines
    line = err.lines[0]
    assert 'train_dataloader.dataset.ann_file' in line and kind in line and first in line and 'Fix:' in line, line
    assert '\n' not in line


def test_coco_image_of_another_size_than_the_json(coco, demo):
    check_data_paths(_coco_cfg(demo / 'coco'), 'train', ['train_dataloader'])  # the intact demo passes
    data, d, write = coco
    img = data / 'train2017' / d['images'][7]['file_name']
    Image.open(img).resize((100, 60)).save(img)
    err = _refusal(_coco_cfg(data))
    assert len(err.lines) == 1
    assert 'images of another size than the json says (their boxes would be off): 1' in err.lines[0]
    assert f"'{img}' is 100x60, the json says 128x128" in err.lines[0]
    assert 'all 12 image headers were read' in err.lines[0]


def test_coco_several_kinds_give_one_line_each(coco):
    data, d, write = coco
    _dup_id(d)
    _dup_id(d, 6)
    _negative_width(d)
    _unknown_category(d)
    write(d)
    err = _refusal(_coco_cfg(data))
    assert len(err.lines) == 3 and str(err) == '\n'.join(err.lines), err.lines
    assert 'images whose id an earlier image has (mmdet would train the later file with the boxes of both): 2' \
        in err.lines[0]
    assert 'negative width or height' in err.lines[1] and 'category_id that no category has' in err.lines[2]


def test_coco_class_missing_from_the_categories(coco):
    data, _, _ = coco
    err = _refusal(_coco_cfg(data, classes=('stop sign', 'person', 'kite', 'tv')))
    assert "dataset classes without a category of that name in the file" in str(err) and "class 'person'" in str(err)


def test_only_the_first_process_of_a_machine_reads_the_files(coco, monkeypatch):
    data, d, write = coco
    _negative_width(d)
    write(d)
    monkeypatch.setenv('LOCAL_RANK', '1')
    check_data_paths(_coco_cfg(data), 'train', ['train_dataloader'])  # rank 1 waits for rank 0's verdict
    monkeypatch.setenv('LOCAL_RANK', '0')
    assert 'negative width or height' in str(_refusal(_coco_cfg(data)))


def test_coco_degenerate_boxes_are_a_warning_not_a_refusal(coco):
    from pelk_mm.datasets.annotations import coco_findings
    data, d, write = coco
    d['annotations'][0]['bbox'][3] = 0.5
    write(d)
    check_data_paths(_coco_cfg(data), 'train', ['train_dataloader'])  # trains
    found, _ = coco_findings(d, 'f', None)
    assert not found.lines(refuse=True)
    assert 'under 1 pixel wide or high' in found.lines(refuse=False)[0]


def test_coco_image_size_checked_when_loaded(coco, monkeypatch):
    """Beyond the pre-run sample (here: none read), the mmdet pipeline checks each image it loads."""
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    data, d, _ = coco
    img = data / 'train2017' / d['images'][7]['file_name']
    Image.open(img).resize((100, 60)).save(img)
    monkeypatch.setenv('PELK_MM_DATA_CHECK', '0')
    cfg = _coco_cfg(data)
    check_data_paths(cfg, 'train', ['train_dataloader'])  # no image read before the run
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    index = [i for i in range(len(dataset)) if dataset.get_data_info(i)['img_path'] == str(img)][0]
    dataset[index - 1]
    with pytest.raises(DataFileError) as err:
        dataset[index]
    assert f"image '{img}' is 100x60 but its annotation entry" in str(err.value) and 'says 128x128' in str(err.value)


# ------------------------------------------------------------------------------------------------ ADE20K
def test_ade_label_beyond_the_classes(ade, demo):
    check_data_paths(_ade_cfg(demo / 'ade/ADEChallengeData2016'), 'train', ['train_dataloader'])  # intact: passes
    mask = _mask(ade)
    values = np.array(Image.open(mask))
    values[:4, :4] = 200
    Image.fromarray(values).save(mask)
    err = _refusal(_ade_cfg(ade))
    assert len(err.lines) == 1
    assert 'masks with labels beyond the classes: 1' in err.lines[0] and f"'{mask}' holds 200" in err.lines[0]
    assert 'valid: 0..150 and 255 = ignore' in err.lines[0] and 'Fix:' in err.lines[0]


def test_ade_mask_size_and_missing_mask(ade):
    small = _mask(ade, 2)
    Image.open(small).resize((64, 32), Image.NEAREST).save(small)
    _mask(ade, 5).unlink()
    err = _refusal(_ade_cfg(ade))
    text = '\n'.join(err.lines)
    assert len(err.lines) == 2, text
    assert 'images without a mask file: 1' in text and 'ADE_train_00000005.png' in text
    assert f"masks of another size than their image: 1 (first: '{small}' is 64x32" in text
    # a pipeline that loads no masks needs none
    check_data_paths(_ade_cfg(ade, pipeline=[dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]),
                     'train', ['train_dataloader'])


def test_ade_sample_bound_says_what_was_read(ade, monkeypatch):
    from pelk_mm.datasets import annotations
    monkeypatch.setattr(annotations, 'MASK_SAMPLE', 3)
    monkeypatch.setattr(annotations, 'IMAGE_SAMPLE', 4)
    for k in range(1, 13):  # every mask is bad: the sample finds 3 of them
        values = np.array(Image.open(_mask(ade, k)))
        values[0, 0] = 180
        Image.fromarray(values).save(_mask(ade, k))
    err = _refusal(_ade_cfg(ade))
    assert 'masks with labels beyond the classes: 3 among 3 of 12 masks decoded' in err.lines[0], err.lines
    assert '4 of 12 image/mask sizes and 3 masks\' labels read; the rest is checked as each sample loads' \
        in err.lines[0]


@pytest.mark.parametrize('workers', [0, 1])
def test_ade_bad_mask_beyond_the_sample_names_the_file_when_loaded(ade, monkeypatch, workers):
    """A label beyond the classes crashes mmseg's loss (IndexError / CUDA assert) naming no file: the pipeline
    stops at the mask instead, also from a DataLoader worker."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from torch.utils.data import DataLoader
    init_default_scope('mmseg')
    mask = _mask(ade, 7)
    values = np.array(Image.open(mask))
    values[10:20, 10:20] = 200
    Image.fromarray(values).save(mask)
    monkeypatch.setenv('PELK_MM_DATA_CHECK', '0')
    cfg = _ade_cfg(ade)
    check_data_paths(cfg, 'train', ['train_dataloader'])  # no mask decoded before the run
    dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=list)
    with pytest.raises(DataFileError) as err:
        for _ in loader:
            pass
    from pelk_mm.errors import one_line
    msg = one_line(err.value)
    assert msg.startswith(f"mask '{mask}' holds value 200 (label 199 after reduce_zero_label), but the dataset has "
                          f"150 classes"), msg


@pytest.mark.slow
def test_seg_training_with_a_bad_mask_stops_with_one_line(demo, tmp_path, rel):
    """End to end, past the pre-run sample: tools/train.py on the segmentation demo stops at the bad mask with one
    line naming it (mmseg alone ends in the loss with IndexError: Target 199 is out of bounds)."""
    cwd = tmp_path
    data = cwd / 'data/demo/ade/ADEChallengeData2016'
    shutil.copytree(demo / 'ade/ADEChallengeData2016', data)
    for k in range(1, 13):
        mask = _mask(data, k)
        values = np.array(Image.open(mask))
        values[:, :] = 200
        Image.fromarray(values).save(mask)
    options = rel.SEG_SHRINK + ['train_dataloader.dataset.indices=4', 'val_dataloader.dataset.indices=1']
    r = rel.train(rel.REPO / 'configs/demo/pelk_demo_upernet_ade20k.py', cwd / 'work', cwd, options,
                  PELK_MM_DATA_CHECK='0')
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.stdout + r.stderr)[-3000:]
    assert len(lines) == 1 and 'holds value 200 (label 199 after reduce_zero_label)' in lines[0], r.stderr[-3000:]
    assert 'data/demo/ade/ADEChallengeData2016/annotations/training/ADE_train_' in lines[0]


@pytest.mark.slow
def test_det_training_with_broken_annotations_stops_before_building(demo, tmp_path, rel):
    cwd = tmp_path
    data = cwd / 'data/demo/coco'
    shutil.copytree(demo / 'coco', data)
    path = data / 'annotations/instances_train2017.json'
    d = json.loads(path.read_text())
    _dup_id(d)
    _negative_width(d)
    path.write_text(json.dumps(d))
    r = rel.train(rel.REPO / 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py', cwd / 'work', cwd,
                  ['train_cfg.max_epochs=1', 'param_scheduler.1.milestones=[]'])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert r.returncode == 2 and 'Traceback' not in r.stderr, (r.stdout + r.stderr)[-3000:]
    assert len(lines) == 2, r.stderr[-3000:]
    assert 'images whose id an earlier image has' in lines[0] and 'negative width or height' in lines[1]
    assert not list((cwd / 'work').glob('*/*.log'))  # before the Runner was built
