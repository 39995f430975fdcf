"""tools/analysis/get_flops.py: FLOPs with the peripheral conv counted as the dense K x K conv (+ KPE matmuls)."""
import importlib.util
import json

import pytest
from mmengine.config import Config

from pelk_mm.analysis.dense_complexity import analyze_config, broadcast_matmul_flop_jit

ARCH = dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 48], kernel_sizes=[9, 7, 5, 3], center_sizes=[3, 3, 3, 3])


def _hand_count(size):
    """Peripheral conv (dense) + KPE band matmuls per stage, by hand, for the tiny arch at size x size."""
    out = []
    for i, (c, k) in enumerate(zip(ARCH['channels'], ARCH['kernel_sizes'])):
        g = int(3 / 8 * c)
        h = w = size // 4 // 2 ** i
        conv = g * h * w * k * k
        kpe = g * h * k * k + g * h * k * w  # (H,K)@(g,K,K) then (g,H,K)@(K,W)
        out.append(conv + kpe)
    return out


def test_broadcast_matmul_handle():
    class V:
        def __init__(self, shape):
            self.shape = shape

        def isCompleteTensor(self):  # noqa: N802 - torch._C.Value API used by mmengine's get_shape
            return True

        def type(self):
            return self

        def sizes(self):
            return self.shape
    # (H,K) @ (C,K,K): mmengine's stock handle would give H*K*K, ignoring C
    assert broadcast_matmul_flop_jit([V([5, 3]), V([7, 3, 3])], []) == 7 * 5 * 3 * 3
    assert broadcast_matmul_flop_jit([V([7, 5, 3]), V([3, 4])], []) == 7 * 5 * 3 * 4
    assert broadcast_matmul_flop_jit([V([2, 3]), V([3, 4])], []) == 2 * 3 * 4


def test_peripheral_flops_match_hand_count(tools):
    cfg = Config.fromfile(str(tools.TINY_CLS))
    res = analyze_config(cfg, (64, 64))
    assert res['codebase'] == 'mmpretrain' and res['flops'] > 0
    hand = _hand_count(64)
    for i, expected in enumerate(hand):
        got = res['rows'][f'  stage {i}']['peripheral_conv_flops']
        assert got == pytest.approx(expected, rel=0.02), (i, got, expected)
    assert res['rows']['backbone']['flops'] < res['flops']
    assert sum(res['rows'][f'  stage {i}']['flops'] for i in range(4)) == pytest.approx(
        res['rows']['backbone']['flops'], rel=1e-6)
    # dense-equivalent params: each peripheral conv adds g * (K^2 - k'^2)
    from pelk_mm.ops import peripheral_grid
    extra = sum(int(3 / 8 * c) * (k * k - len(peripheral_grid(k, cs)) ** 2)
                for c, k, cs in zip(ARCH['channels'], ARCH['kernel_sizes'], ARCH['center_sizes']))
    assert extra > 0
    assert res['params_dense_equivalent'] - res['params'] == extra
    # FLOPs scale with the input area
    res2 = analyze_config(cfg, (128, 128))
    assert res2['flops'] == pytest.approx(4 * res['flops'], rel=0.15)


def _load_tool(path):
    spec = importlib.util.spec_from_file_location('_get_flops_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_json(tmp_path, tools, capsys):
    out = tmp_path / 'flops.json'
    tool = _load_tool(tools.REPO / 'tools/analysis/get_flops.py')  # in-process: the imports are already paid
    assert tool.main([str(tools.TINY_CLS), '--shape', '64', '--json', str(out)]) == 0
    stdout = capsys.readouterr().out
    assert 'params (dense-equivalent)' in stdout and 'stage 3' in stdout
    data = json.loads(out.read_text())
    assert tool.main([str(tmp_path / 'missing.py')]) == 2
    assert data['params_nonzero'] <= data['params'] and data['params_nonzero'] > 0.9 * data['params']
    # non-zero count of a (pretend) sparse checkpoint: zero half of the stage-0 peripheral weights
    import torch
    from pelk_mm.analysis.dense_complexity import build_counted_model
    model, _ = build_counted_model(Config.fromfile(str(tools.TINY_CLS)))
    w = model.backbone.stages[0][0].token_mixer.conv.weight
    with torch.no_grad():
        w.view(-1)[: w.numel() // 2] = 0
    ckpt = tmp_path / 'sparse.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    assert tool.main([str(tools.TINY_CLS), '--shape', '64', '--checkpoint', str(ckpt), '--json', str(out)]) == 0
    sparse = json.loads(out.read_text())
    assert sparse['params_nonzero'] == data['params_nonzero'] - w.numel() // 2
    assert sparse['flops'] == data['flops']
    with pytest.raises(SystemExit):
        tool.parse_args(['c.py', '--shape', '1', '2', '3'])
    assert tool.parse_args(['c.py', '--shape', '96']).shape == [96, 96]
    data = json.loads(out.read_text())
    assert data['input_shape'] == [1, 3, 64, 64] and data['flops'] > 0
    assert data['rows']['  stage 0']['peripheral_conv_flops'] == pytest.approx(_hand_count(64)[0], rel=0.02)


def test_mask_rois_limits_only_the_mask_heads(tools):
    """``mask_rois`` (mmdet 2 ``forward_dummy`` convention): each cascade stage's mask head sees ``n`` RoIs, its
    FLOPs are ``n`` x the FLOPs of one RoI (counted on the mask head alone); every other row is unchanged."""
    import torch
    from mmengine.analysis import FlopAnalyzer
    from mmengine.registry import MODELS

    cfg = Config.fromfile(str(tools.REPO / 'configs/demo/pelk_demo_cascade_mask_rcnn_coco.py'))
    n = 7
    full = analyze_config(cfg, (96, 128))
    limited = analyze_config(cfg, (96, 128), mask_rois=n)
    assert 'first 7 RoIs' in limited['mode'] and 'first' not in full['mode']
    for name in ('backbone', 'neck', 'rpn_head'):
        assert limited['rows'][name]['flops'] == full['rows'][name]['flops'] > 0
    mask_head = MODELS.build(cfg.model.roi_head.mask_head[0] if isinstance(cfg.model.roi_head.mask_head, list)
                             else cfg.model.roi_head.mask_head).eval()
    per_roi = FlopAnalyzer(mask_head, (torch.randn(1, cfg.width, 14, 14), )).total()
    stages = cfg.model.roi_head.num_stages
    saved = full['rows']['roi_head']['flops'] - limited['rows']['roi_head']['flops']
    proposals = saved // (stages * per_roi) + n  # RoIs the mask heads saw without the limit
    assert saved == stages * (proposals - n) * per_roi and proposals > n
    with pytest.raises(ValueError, match='mask_rois=5 applies to mmdet detectors'):
        analyze_config(Config.fromfile(str(tools.REPO / 'configs/demo/pelk_demo_in1k.py')), mask_rois=5)


def test_snip_counts_are_repeatable_and_follow_the_seed(tmp_path, tools, capsys):
    """SNIP densities depend on the initial weights: ``--seed`` fixes them, so two runs print the same counts."""
    tool = _load_tool(tools.REPO / 'tools/analysis/get_flops.py')
    runs = {}
    for name, seed in (('a', 0), ('b', 0), ('c', 1)):
        dens = tmp_path / f'{name}.json'
        args = [str(tools.TINY_CLS), '--shape', '64', '--sparsity', '0.4', '--sparse-init', 'snip',
                '--snip-images', '4', '--seed', str(seed), '--dump-densities', str(dens),
                '--json', str(tmp_path / f'{name}_flops.json')]
        assert tool.main(args) == 0
        runs[name] = (json.loads(dens.read_text()), json.loads((tmp_path / f'{name}_flops.json').read_text()))
    assert runs['a'] == runs['b']
    assert runs['a'][1]['sparse']['nonzero_flops'] < runs['a'][1]['flops']
    assert runs['a'][0] != runs['c'][0]  # another initialisation, other SNIP densities
