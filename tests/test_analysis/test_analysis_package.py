"""pelk_mm.analysis: the one builder, the one analysed forward (dense FLOPs, non-zero MACs and throughput run the
same one), deploy-form dense-equivalent parameters, SNIP scoring shared with the sparsity hook, and the layering
(analysis and deploy import nothing of the launcher)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pelk_mm.analysis.builder import build_model, load_cfg
from pelk_mm.analysis.dense_complexity import dense_equivalent_extra_params
from pelk_mm.analysis.forward import analysed_forward
from pelk_mm.models.layers import DenseLargeKernelConv2d, PeripheralConv2d

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_builder_options(tiny_config, tiny_checkpoint):
    cfg = load_cfg(tiny_config)
    torch.manual_seed(0)
    model, codebase = build_model(cfg, conv_impl='dense', init_weights=False)
    assert codebase == 'mmpretrain' and not model.training
    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    assert convs and all(m.conv_impl == 'dense' for m in convs)
    # the checkpoint's weights replace the initialisation (its stage-0 first row of cells is zero)
    loaded, _ = build_model(cfg, tiny_checkpoint)
    assert bool((loaded.backbone.stages[0][0].token_mixer.conv.weight[:, :, 0, :] == 0).all())
    deployed, _ = build_model(cfg, deploy=True)
    assert all(m.deployed for m in deployed.modules() if isinstance(m, PeripheralConv2d))
    with pytest.raises(ValueError, match='mask_rois=3 applies to mmdet detectors'):
        build_model(cfg, mask_rois=3)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        build_model(cfg, tiny_checkpoint + '.missing')


def test_one_forward_for_flops_macs_and_throughput(tiny_config, monkeypatch):
    """The dense FLOP trace, the non-zero MAC count and the throughput benchmark call the same forward."""
    import pelk_mm.analysis.dense_complexity as dense
    import pelk_mm.analysis.nonzero_complexity as nonzero
    import pelk_mm.analysis.throughput as throughput
    calls = []

    def spy(model, codebase, part='model', input_shape=None):
        calls.append(part)
        return analysed_forward(model, codebase, part, input_shape)

    for module in (dense, nonzero, throughput):
        monkeypatch.setattr(module, 'analysed_forward', spy)
    cfg = load_cfg(tiny_config)
    res = nonzero.analyze_config_sparse(cfg, shape=(64, 64), sparsity=None)
    assert calls == ['model', 'model']
    # a dense model: the MACs the dispatch counter sees are the conv/linear part of the traced FLOPs
    assert 0 < res['counted_macs']['dense'] <= res['flops'] and res['nonzero_flops'] == res['flops']
    model, codebase = build_model(cfg)
    throughput.benchmark(model, codebase, 1, (32, 32), 0, 1, 'cpu')
    assert calls[-1] == 'features'
    fwd, mode = analysed_forward(model, codebase, 'features')
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fwd(x), model.head(model.extract_feat(x)))
    assert 'head' in mode
    with pytest.raises(ValueError, match='part must be one of'):
        analysed_forward(model, codebase, 'head')


@pytest.mark.parametrize('kpe_mode', ['input', 'bias', None])
def test_dense_equivalent_counts_deployed_convs(kpe_mode):
    """Deployed: what a deployed dense K x K conv has more than the deployed peripheral conv; train form unchanged."""
    torch.manual_seed(0)
    kw = dict(channels=4, kernel_size=13, small_kernel=5, kpe_mode=kpe_mode)
    periph = nn.Sequential(PeripheralConv2d(center_size=5, **kw)).eval()
    dense = nn.Sequential(DenseLargeKernelConv2d(**kw)).eval()
    k = len(periph[0].grid)
    assert dense_equivalent_extra_params(periph) == {'0': 4 * (13 ** 2 - k * k)}
    for m in (periph, dense):
        m[0].switch_to_deploy(torch.zeros(4, 13, 13) if kpe_mode else None)
    extra = dense_equivalent_extra_params(periph)['0']
    assert extra > 0 and dense_equivalent_extra_params(dense) == {'0': 0}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(periph) + extra == count(dense)


def test_snip_scores_leave_the_model_untouched():
    from pelk_mm.engine.sparsity import snip_scores
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 0, 1])
    net(x)
    net.eval()
    stats = net[1].running_mean.clone()
    names = ['0.weight', '3.weight']
    scores = snip_scores(net, lambda m: F.cross_entropy(m(x), y), names)
    assert not net.training and torch.equal(net[1].running_mean, stats)
    assert all(p.grad is None for p in net.parameters())
    net.train()
    F.cross_entropy(net(x), y).backward()
    for n in names:
        p = dict(net.named_parameters())[n]
        assert torch.equal(scores[n], (p.detach() * p.grad).abs())


def test_analysis_and_deploy_do_not_import_the_launcher():
    code = ('import sys; import pelk_mm.analysis, pelk_mm.analysis.erf, pelk_mm.analysis.kernels, '
            'pelk_mm.analysis.throughput, pelk_mm.deploy, pelk_mm.engine.sparsity; '
            'bad = sorted(m for m in sys.modules if m.startswith("pelk_mm.apis")); print(bad); '
            'sys.exit(1 if bad else 0)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
