"""timm entry points (``timm.create_model('pelk_t', ...)``, :mod:`pelk_mm.timm`): the classifier equals the
mmpretrain model of the configs, ``features_only`` equals the mmseg / mmdet backbone, checkpoints of ``tools/train.py``
load, and ``pretrained=True`` without weights names the config to train."""
import copy

import pytest
import timm
import torch
from mmengine.runner import save_checkpoint

import pelk_mm.timm  # noqa: F401  (registers the models)
from pelk_mm.errors import CheckpointLoadError, MissingWeightsError
from pelk_mm.models import PeLK

ARCH = dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 48], kernel_sizes=[13, 11, 9, 5], center_sizes=[5, 5, 3, 3])


def perturbed(state: dict) -> dict:
    return {k: (v + 0.01 * i if v.is_floating_point() else v) for i, (k, v) in enumerate(state.items())}


def test_registered_names():
    assert timm.list_models('pelk*') == ['pelk_b', 'pelk_b101', 'pelk_s', 'pelk_t', 'pelk_t101', 'pelk_t151']
    cfg = timm.models.get_pretrained_cfg('pelk_t')
    assert cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224) and cfg.classifier == 'head.fc'
    assert not cfg.url and not cfg.hf_hub_id  # no weights are published; none is made up


def test_full_size_features_only():
    """PeLK-T as timm's feature extractor: four maps at strides 4-32 with the paper's widths, no classifier."""
    torch.manual_seed(0)
    f = timm.create_model('pelk_t', features_only=True)
    assert f.feature_info.channels() == [124, 249, 499, 998]
    assert f.feature_info.reduction() == [4, 8, 16, 32]
    assert isinstance(f.model.head.fc, torch.nn.Identity)
    assert f.model.backbone.kernel_sizes == [51, 49, 47, 13]


def test_classifier_equals_the_mmpretrain_model(tmp_path):
    """A checkpoint of the mmpretrain classifier (as tools/train.py writes it) loads into the timm model, whose
    logits are the mmpretrain model's."""
    from mmpretrain import get_model
    mm = get_model('pelk-demo_in1k', backbone=dict(arch=copy.deepcopy(ARCH)), head=dict(in_channels=48)).eval()
    state = perturbed(mm.state_dict())
    mm.load_state_dict(state)
    path = str(tmp_path / 'epoch_24.pth')
    save_checkpoint({'state_dict': state, 'meta': {'dataset_meta': {'classes': list('abcdef')}}}, path)
    tm = timm.create_model('pelk_t', arch=copy.deepcopy(ARCH), num_classes=6, pretrained=True,
                           pretrained_cfg_overlay=dict(file=path)).eval()
    for k, v in tm.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), mm(x, mode='tensor'), rtol=1e-5, atol=1e-5)
        assert tm.forward_head(tm.forward_features(x), pre_logits=True).shape == (2, 48)
    tm.reset_classifier(3)
    assert tm(x).shape == (2, 3)


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 3), (-1, )])
def test_features_only_equals_the_dense_prediction_backbone(out_indices):
    """``features_only`` gives the maps of ``PeLK(out_indices, gap_before_final_norm=False)``, the backbone the mmseg
    and mmdet configs build (a LayerNorm per output)."""
    torch.manual_seed(0)
    f = timm.create_model('pelk_t', arch=copy.deepcopy(ARCH), features_only=True, out_indices=out_indices).eval()
    take = [i % 4 for i in out_indices]
    assert f.feature_info.channels() == [ARCH['channels'][i] for i in take]
    assert f.feature_info.reduction() == [4 * 2 ** i for i in take]
    ref = PeLK(arch=copy.deepcopy(ARCH), out_indices=take, gap_before_final_norm=False).eval()
    state = perturbed(f.model.backbone.state_dict())
    f.model.backbone.load_state_dict(state)
    ref.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = f(x), ref(x)
    assert len(ours) == len(theirs) == len(take)
    for a, b in zip(ours, theirs):
        assert a.is_contiguous()
        torch.testing.assert_close(a, b)


def test_dense_backbone_loads_a_classification_checkpoint(tmp_path):
    """The per-output norms of the dense backbone are not in an ImageNet checkpoint; everything else is loaded."""
    cls = timm.create_model('pelk_t', arch=copy.deepcopy(ARCH))
    state = perturbed(cls.state_dict())
    path = str(tmp_path / 'cls.pth')
    save_checkpoint({'state_dict': state}, path)
    f = timm.create_model('pelk_t', arch=copy.deepcopy(ARCH), features_only=True, pretrained=True,
                          pretrained_cfg_overlay=dict(file=path))
    got = f.model.state_dict()
    assert torch.equal(got['backbone.stages.2.1.token_mixer.conv.weight'],
                       state['backbone.stages.2.1.token_mixer.conv.weight'])
    assert torch.equal(got['backbone.norm3.weight'], state['backbone.norm3.weight'])
    assert torch.equal(got['backbone.norm0.weight'], torch.ones(16))  # new, as in the mmseg / mmdet models


def test_a_checkpoint_of_another_arch_is_one_line(tmp_path):
    other = timm.create_model('pelk_t', arch=dict(ARCH, channels=[8, 16, 24, 32]))
    path = str(tmp_path / 'other.pth')
    save_checkpoint({'state_dict': other.state_dict()}, path)
    with pytest.raises(CheckpointLoadError, match=r'does not fit timm model pelk_t: .* have another shape'):
        timm.create_model('pelk_t', arch=copy.deepcopy(ARCH), pretrained=True, pretrained_cfg_overlay=dict(file=path))


@pytest.mark.parametrize('name, config', [('pelk_t', 'configs/pelk_t_in1k.py'),
                                          ('pelk_t151', 'configs/ablations/table7_kernel_size/'
                                           'pelk_t_k151_224_in1k_120e.py')])
def test_pretrained_true_without_weights_names_the_config_to_train(name, config):
    with pytest.raises(MissingWeightsError) as err:
        timm.create_model(name, pretrained=True)
    message = str(err.value)
    assert message.startswith(f'timm model {name} has no published weights (pretrained=True;')
    assert f'`python tools/train.py {config}`' in message and "pretrained_cfg_overlay=dict(file='work_dirs/" in message
