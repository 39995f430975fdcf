"""Non-zero-aware parameter / MAC counting (pelk_mm.analysis.nonzero_complexity) against hand counts."""
import pytest
import torch
import torch.nn as nn

from pelk_mm.models.layers import PeripheralConv2d
from pelk_mm.analysis.nonzero_complexity import count_nonzero_macs, count_params, sparsify_


class ConvLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.dw(self.conv(x))
        return self.fc(x.permute(0, 2, 3, 1))  # channels-last linear, as in the PeLK block MLP


def test_hand_counted_macs_and_params():
    torch.manual_seed(0)
    m = ConvLinear()
    with torch.no_grad():
        m.conv.weight.view(-1)[:10] = 0
        m.dw.weight[1] = 0
        m.fc.weight[0, :3] = 0
    x = torch.randn(1, 2, 5, 5)
    res = count_nonzero_macs(m, lambda: m(x))
    hw = 25
    dense = hw * 72 + hw * 100 + hw * 12
    nonzero = hw * 62 + hw * 75 + hw * 9
    assert res['dense'] == dense and res['nonzero'] == nonzero and res['saved'] == dense - nonzero
    p = count_params(m)
    assert p['total'] == 72 + 4 + 100 + 12 + 3
    assert p['slak_nonzero'] == 62 + 75 + 9  # 2-D/4-D non-zeros only (SLaK's print_model_param_nums)
    assert p['nonzero'] == p['slak_nonzero'] + int((m.conv.bias != 0).sum()) + int((m.fc.bias != 0).sum())


def test_peripheral_cell_zero_removes_its_taps():
    torch.manual_seed(0)
    conv = PeripheralConv2d(3, 13, small_kernel=None, kpe_mode=None, norm_cfg=None, conv_impl='dense')
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 0  # a 2x2 corner cell of grid [2,2,1,1,1,1,1,2,2]
        conv.weight[1, 0, 4, 4] = 0  # the 1x1 centre cell
    x = torch.randn(2, 3, 6, 7)
    res = count_nonzero_macs(conv, lambda: conv(x))
    positions = 2 * 6 * 7
    assert res['dense'] == positions * 3 * 169
    assert res['saved'] == positions * (4 + 1)


def test_sparsify_uniform_and_erk():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.Conv2d(8, 16, 3), nn.LayerNorm(7))
    masks = sparsify_(m, 0.4, init='uniform')
    assert set(masks) == {'0.weight', '1.weight'}
    for name, mask in masks.items():
        w = dict(m.named_parameters())[name]
        assert int((w != 0).sum()) == int(mask.sum()) == round(0.6 * w.numel())
    m2 = nn.Sequential(nn.Linear(64, 128), nn.Linear(4, 4))
    sparsify_(m2, 0.4, init='erk')
    total = sum(p.numel() for p in m2.parameters() if p.dim() == 2)
    nz = sum(int((p != 0).sum()) for p in m2.parameters() if p.dim() == 2)
    assert nz / total == pytest.approx(0.6, abs=0.01)
    assert int((m2[1].weight != 0).sum()) == 16  # small layer kept dense by ERK
    with pytest.raises(ValueError, match='sparsity'):
        sparsify_(m, 1.2)
    with pytest.raises(ValueError, match='init'):
        sparsify_(m, 0.4, init='snip')  # needs data: only the hook does SNIP


def test_analyze_config_sparse_on_a_tiny_classifier(tmp_path):
    from mmengine.config import Config

    from pelk_mm.analysis.nonzero_complexity import analyze_config_sparse, format_sparse_summary
    path = tmp_path / 'tiny.py'
    path.write_text(
        "default_scope = 'mmpretrain'\n"
        "custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)\n"
        "model = dict(type='ImageClassifier', backbone=dict(type='pelk_mm.PeLK', arch=dict(depths=[1, 1, 1, 1], "
        "channels=[16, 24, 32, 40], kernel_sizes=[13, 11, 9, 7])), head=dict(type='LinearClsHead', num_classes=10, "
        "in_channels=40, loss=dict(type='CrossEntropyLoss')))\n")
    dense = analyze_config_sparse(Config.fromfile(str(path)), shape=(64, 64), sparsity=None)
    sparse = analyze_config_sparse(Config.fromfile(str(path)), shape=(64, 64), sparsity=0.4)
    assert dense['saved_macs'] == 0 and dense['nonzero_flops'] == dense['flops']
    assert sparse['flops'] == dense['flops']  # the dense count does not look at values
    # every conv/linear weight at density 0.6: their MACs shrink by 40 % (peripheral cells: in expectation)
    counted = sparse['counted_macs']
    assert counted['nonzero'] / counted['dense'] == pytest.approx(0.6, abs=0.03)
    assert sparse['slak_params'] == pytest.approx(0.6 * dense['slak_params'], rel=0.01)
    assert sparse['nonzero_flops'] < dense['flops']
    assert 'non-zero' in format_sparse_summary(sparse)
