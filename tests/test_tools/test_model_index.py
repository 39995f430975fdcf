"""The model index (``model-index.yml`` + ``configs/**/metafile.yml``): up to date with the configs, one entry per
config, readable by mmpretrain's ``ModelHub`` (``get_model``, ``list_models``, ``inference_model``) and by the mmseg
and mmdet inferencers; a name without published weights is one line naming the config to train."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

import pelk_mm  # noqa: F401  (connects the index)
from pelk_mm import model_zoo
from pelk_mm.errors import MissingWeightsError, ModelIndexError

REPO = model_zoo.REPO_ROOT
DUMPS = osp.join(REPO, 'tests', 'data', 'config_dumps')


def dumped_config(config_rel: str) -> dict:
    """The merged dict of a config, as ``tests/test_config_recipes.py`` checks it against the config."""
    rel = osp.relpath(osp.join(REPO, config_rel), osp.join(REPO, 'configs'))
    with open(osp.join(DUMPS, osp.splitext(rel)[0] + '.json')) as f:
        return json.load(f)


def perturbed(model: torch.nn.Module) -> dict:
    """A state dict unlike any fresh initialisation: every float entry + 0.01 * its index."""
    state = model.state_dict()
    return {k: (v + 0.01 * i if v.is_floating_point() else v) for i, (k, v) in enumerate(state.items())}


@pytest.fixture
def image(tmp_path):
    path = tmp_path / 'demo.png'
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (72, 80, 3), dtype=np.uint8)).save(path)
    return str(path)


# --------------------------------------------------------------------------------------------------- the files
def test_index_files_are_up_to_date():
    """``tools/update_model_index.py --check`` in a test: the files equal what the configs give (read from the
    recorded config dumps, which test_config_recipes.py checks against the configs)."""
    expected = model_zoo.build_metafiles(dumped_config)
    on_disk = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', '**', 'metafile.yml'),
                                                              recursive=True))
    assert sorted(expected) == sorted(on_disk + ['model-index.yml'])
    for rel, text in expected.items():
        with open(osp.join(REPO, rel)) as f:
            assert f.read() == text, f'{rel} is out of date: run python tools/update_model_index.py'


def test_every_config_has_one_entry_and_every_entry_a_config():
    entries = model_zoo.model_entries()
    configs = model_zoo.indexed_configs()
    assert len(configs) == 58 and 'configs/pelk_t_in1k.py' in configs and 'configs/_base_/default_runtime.py' \
        not in configs and 'configs/ablations/_base_/pelk_t_in1k_120e.py' in configs
    assert sorted(e.config_rel for e in entries.values()) == configs
    for name, entry in entries.items():
        assert osp.isfile(entry.config), name
        assert name == model_zoo.model_name(entry.config) and name.startswith('pelk-')
        assert entry.weights is None  # no PeLK weights are published; no URL is made up
        assert entry.codebase == dumped_config(entry.config_rel)['default_scope']
    assert entries['pelk-t_in1k'].checkpoint == 'work_dirs/pelk_t_in1k/epoch_300.pth'
    assert entries['pelk-t_upernet_ade20k'].checkpoint == 'work_dirs/pelk_t_upernet_ade20k/iter_160000.pth'
    assert entries['pelk-t_cascade_mask_rcnn_coco'].tasks == ('Object Detection', 'Instance Segmentation')
    assert model_zoo.model_name('configs/ablations/table1_conv_form/dense_k7_sparse_in1k_120e.py') == \
        'pelk-dense_k7_sparse_in1k_120e'


def test_modelindex_reads_the_index_without_errors():
    """The files are in the format of mmpretrain's (and mim's) ``modelindex`` reader, with no check error."""
    from modelindex.load_model_index import load
    index = load(model_zoo.INDEX_FILE)
    index.build_models_with_collections()
    assert len(index.models) == len(model_zoo.model_entries())
    assert [e for e in index.check(silent=True) if e] == []


def test_unknown_and_misspelt_names():
    with pytest.raises(ModelIndexError, match=r"no model 'pelk-t_in1kk' \(did you mean 'pelk-t_in1k'\?\)"):
        model_zoo.get_entry('pelk-t_in1kk')
    with pytest.raises(ModelIndexError, match='pelk-t_in1k is an mmpretrain model .* use it with mmpretrain'):
        model_zoo.get_entry('pelk-t_in1k', 'mmdet')
    assert model_zoo.list_models('*upernet*') == [
        'pelk-b101_upernet_ade20k', 'pelk-b_upernet_ade20k', 'pelk-demo_upernet_ade20k', 'pelk-s_upernet_ade20k',
        'pelk-t_upernet_ade20k']


# --------------------------------------------------------------------------------------------------- mmpretrain
def test_mmpretrain_lists_the_classification_models():
    from mmpretrain import list_models
    names = list_models('*pelk*')
    assert names == model_zoo.list_models(codebase='mmpretrain') and len(names) == 48
    assert 'pelk-t_in1k' in names and 'pelk-b101_in1k_384' in names
    assert not any('upernet' in n or 'rcnn' in n for n in names)  # mmpretrain cannot build those
    assert list_models('pelk', task='Image Classification') == names


@pytest.mark.parametrize('call', ['get_model', 'inference_model', 'ImageClassificationInferencer'])
def test_pretrained_true_without_weights_names_the_config_to_train(call, image):
    """mmpretrain would warn and use random weights; the index's answer is one line naming the config."""
    import mmpretrain
    with pytest.raises(MissingWeightsError) as err:
        if call == 'get_model':
            mmpretrain.get_model('pelk-t_in1k', pretrained=True)
        elif call == 'inference_model':
            mmpretrain.inference_model('pelk-t_in1k', image)
        else:
            mmpretrain.ImageClassificationInferencer('pelk-t_in1k')
    assert str(err.value) == (
        'pelk-t_in1k has no published weights (pretrained=True; no PeLK weights are released): train them with '
        '`python tools/train.py configs/pelk_t_in1k.py`, which writes work_dirs/pelk_t_in1k/epoch_300.pth, and pass '
        "pretrained='work_dirs/pelk_t_in1k/epoch_300.pth', or pretrained=False for randomly initialised weights")


def test_get_model_and_inference_model_load_a_local_checkpoint(tmp_path, image):
    """``pretrained='file.pth'``: the checkpoint a training run writes (mmengine's format, with dataset_meta) is
    loaded exactly, and ``inference_model`` by name predicts with it."""
    from mmengine.runner import save_checkpoint
    from mmpretrain import get_model, inference_model
    model = get_model('pelk-demo_in1k')
    assert type(model.backbone).__name__ == 'PeLK' and model._metainfo.name == 'pelk-demo_in1k'
    classes = [f'shape{i}' for i in range(6)]
    state = perturbed(model)
    ckpt = str(tmp_path / 'epoch_24.pth')
    save_checkpoint({'state_dict': state, 'meta': {'dataset_meta': {'classes': classes}}}, ckpt)
    loaded = get_model('pelk-demo_in1k', pretrained=ckpt)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded._dataset_meta['classes'] == classes  # what get_model keeps for the inferencer
    result = inference_model('pelk-demo_in1k', image, pretrained=ckpt)
    assert result['pred_class'] in classes and len(result['pred_scores']) == 6
    again = inference_model(loaded, image)  # the loaded model carries its index entry (for the task)
    assert again['pred_class'] == result['pred_class']
    np.testing.assert_allclose(again['pred_scores'], result['pred_scores'], rtol=1e-5)


# --------------------------------------------------------------------------------------------------- inferencers
@pytest.fixture(scope='module')
def seg_checkpoint(tmp_path_factory):
    from mmengine.runner import save_checkpoint
    from mmseg.apis import init_model
    model = init_model(osp.join(REPO, 'configs/demo/pelk_demo_upernet_ade20k.py'), device='cpu')
    path = str(tmp_path_factory.mktemp('seg') / 'iter_300.pth')
    save_checkpoint({'state_dict': perturbed(model)}, path)
    return path


def test_mmseg_inferencer_takes_a_pelk_name(seg_checkpoint, image):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer('pelk-demo_upernet_ade20k', weights=seg_checkpoint, device='cpu')
    assert type(inferencer.model.backbone).__name__ == 'PeLK'
    state = torch.load(seg_checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert torch.equal(inferencer.model.state_dict()['backbone.stages.0.kpe'], state['backbone.stages.0.kpe'])
    out = inferencer(image, return_datasamples=True)
    assert tuple(out.pred_sem_seg.data.shape) == (1, 72, 80)


@pytest.mark.parametrize('name, error, message', [
    ('pelk-demo_upernet_ade20k', MissingWeightsError,
     r"no published weights \(no weights= given; .*pass weights='work_dirs/pelk_demo_upernet_ade20k/iter_300.pth'$"),
    ('pelk-t_in1k', ModelIndexError, 'is an mmpretrain model .* not an mmseg one'),
    ('pelk-demo_upernet_ade2k', ModelIndexError, r"did you mean 'pelk-demo_upernet_ade20k'"),
])
def test_mmseg_inferencer_names_without_weights_or_of_another_codebase(name, error, message):
    from mmseg.apis import MMSegInferencer
    with pytest.raises(error, match=message):
        MMSegInferencer(name, device='cpu')


def test_mmseg_inferencer_keeps_its_own_names():
    """Names that are not PeLK's still go to mmseg's own index."""
    from mmseg.apis import MMSegInferencer
    with pytest.raises(ValueError, match='Cannot find model: no-such-model in mmseg'):
        MMSegInferencer('no-such-model', device='cpu')


def test_mmdet_inferencer_takes_a_pelk_name(tmp_path, image):
    from mmdet.apis import DetInferencer, init_detector
    from mmengine.runner import save_checkpoint
    model = init_detector(osp.join(REPO, 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py'), device='cpu')
    path = str(tmp_path / 'epoch_12.pth')
    save_checkpoint({'state_dict': perturbed(model), 'meta': {'dataset_meta': model.dataset_meta}}, path)
    inferencer = DetInferencer('pelk-demo_cascade_mask_rcnn_coco', weights=path, device='cpu', show_progress=False)
    assert type(inferencer.model.backbone).__name__ == 'PeLK'
    out = inferencer(image, return_datasamples=True)
    assert 'predictions' in out and len(out['predictions']) == 1
    with pytest.raises(MissingWeightsError, match='pelk_demo_cascade_mask_rcnn_coco/epoch_12.pth'):
        DetInferencer('pelk-demo_cascade_mask_rcnn_coco', device='cpu')


def test_import_pelk_mm_first(tools):
    """In a fresh interpreter, ``import pelk_mm`` before mmpretrain, mmseg and timm (with mmengine not loaded yet)
    connects the index to each of them when it is imported, and imports none of them itself."""
    script = '''
import sys
import pelk_mm
assert not {'mmengine', 'mmpretrain', 'mmseg', 'timm'} & set(sys.modules), sorted(sys.modules)
from mmpretrain import list_models
from mmengine.infer import BaseInferencer
import timm
print(len(list_models('pelk')), BaseInferencer._load_model_from_metafile.__name__,
      getattr(BaseInferencer._load_model_from_metafile, '_pelk_mm', False), timm.list_models('pelk_t*'))
'''
    r = tools.run([tools.PY, '-c', script], tools.REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "48 _load_model_from_metafile True ['pelk_t', 'pelk_t101', 'pelk_t151']"
