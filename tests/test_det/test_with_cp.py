"""Activation checkpointing (``with_cp=True``, set in the T config's backbone) recomputes each block in the backward
pass; it must not change what the backbone computes or the gradients it produces.

The recomputation runs the large-kernel branch's BNs a second time in train mode; their running statistics and
counters must still take exactly one update per iteration (restored around the recomputation), i.e. all buffers
stay bit-identical to a run without checkpointing, in train-mode and in eval-mode BN (``norm_eval=True``).
"""
from __future__ import annotations

import copy

import pytest
import torch


def _t_backbones(load_det_config, **overrides):
    """The T config's backbone built twice from identical weights: with_cp False and True."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    cfg = load_det_config('t')
    bb_cfg = copy.deepcopy(cfg.model.backbone)
    bb_cfg.init_cfg = None
    bb_cfg.update(overrides)
    assert bb_cfg.with_cp is True
    torch.manual_seed(0)
    with_cp = revert_sync_batchnorm(MODELS.build(bb_cfg))
    # randomise BN affine/running stats and layer scales so that every term of the block matters
    with torch.no_grad():
        for name, t in list(with_cp.named_parameters()) + list(with_cp.named_buffers()):
            if t.dtype.is_floating_point and ('norm' in name or 'gamma' in name):
                t.copy_(torch.rand_like(t) + 0.5)
    without_cp = copy.deepcopy(with_cp)
    for stage in without_cp.stages:
        for block in stage:
            block.with_cp = False
    return with_cp, without_cp


def _run(model, x, seed):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # same drop-path draws (checkpoint restores the RNG state for the recomputation)
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return outs, grads, x.grad


def _assert_same(a, b, what):
    outs_a, grads_a, xg_a = a
    outs_b, grads_b, xg_b = b
    for i, (oa, ob) in enumerate(zip(outs_a, outs_b)):
        torch.testing.assert_close(oa, ob, rtol=1e-5, atol=1e-5, msg=f'{what}: output {i} differs')
    torch.testing.assert_close(xg_a, xg_b, rtol=1e-5, atol=1e-6, msg=f'{what}: input gradient differs')
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6,
                                   msg=f'{what}: gradient of {name} differs')


@pytest.mark.parametrize('norm_eval', [False, True], ids=['train-bn', 'eval-bn'])
def test_with_cp_same_outputs_and_grads(load_det_config, norm_eval):
    with_cp, without_cp = _t_backbones(load_det_config, norm_eval=norm_eval)
    with_cp.train()
    without_cp.train()
    # drop path of the config (0.4) is active in train mode
    assert max(b.drop_path.drop_prob for s in with_cp.stages for b in s if hasattr(b.drop_path, 'drop_prob')) > 0
    x = torch.randn(2, 3, 64, 64)
    ref = _run(without_cp, x, seed=1)
    got = _run(with_cp, x, seed=1)
    _assert_same(ref, got, f'norm_eval={norm_eval}')

    bufs_ref = dict(without_cp.named_buffers())
    bufs_cp = dict(with_cp.named_buffers())
    bn_running = [n for n in bufs_ref if n.endswith('running_mean')]
    assert bn_running, 'the large-kernel branch has BatchNorms'
    counts = {int(bufs_ref[n.replace('running_mean', 'num_batches_tracked')]) for n in bn_running}
    assert counts == ({0} if norm_eval else {1})  # one update per forward in train mode, none with norm_eval
    for name in bufs_ref:  # ... and exactly the same update with checkpointing
        torch.testing.assert_close(bufs_cp[name], bufs_ref[name], rtol=0, atol=0, msg=f'buffer {name} differs')
    if not norm_eval:  # the running stats did move (the comparison above is not vacuous)
        fresh = dict(_t_backbones(load_det_config, norm_eval=norm_eval)[1].named_buffers())
        assert not torch.equal(fresh[bn_running[0]], bufs_ref[bn_running[0]])
    # the comparison is sensitive: another drop-path draw gives another result
    torch.manual_seed(2)
    with torch.no_grad():
        other = copy.deepcopy(without_cp)(x)
    assert not torch.allclose(ref[0][-1], other[-1], atol=1e-4)


def test_with_cp_eval_forward_identical(load_det_config):
    """In eval mode (no grad) checkpointing is bypassed: identical outputs, buffers untouched."""
    with_cp, without_cp = _t_backbones(load_det_config)
    with_cp.eval()
    without_cp.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(with_cp(x), without_cp(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
