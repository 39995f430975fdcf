"""DynamicSparsityHook with a tiny model in a real mmengine Runner: density, prune-and-grow, checkpoints, EMA,
fixed masks; plus the mask arithmetic it is built on."""
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.hooks import EMAHook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

from pelk_mm.checkpoint import load_checkpoint_file  # what the project writes loads without opt-in
from pelk_mm.engine.hooks import DynamicSparsityHook
from pelk_mm.registry import HOOKS
from pelk_mm.engine.sparsity import (cosine_prune_rate, erk_densities, pack_mask, prune_and_grow, random_mask,
                                     snip_densities, sparsifiable_params, unpack_mask)


class TinyNet(BaseModel):
    """conv(3->16) -> conv(16->32) -> GAP -> linear(32->4); 2-D/4-D weights: 432 + 4608 + 128 values."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 4)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        x = F.relu(self.conv1(inputs))
        x = F.relu(self.bn(self.conv2(x)))
        logits = self.fc(x.mean((2, 3)))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, data_samples))
        return logits


class TinyData(Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], data_samples=self.y[i])


def make_runner(work_dir, hook_cfg, max_iters=8, ema=False, model=None, resume=False, load_from=None,
                ckpt_interval=4):
    custom_hooks = [dict(type='pelk_mm.DynamicSparsityHook', **hook_cfg)]
    if ema:
        custom_hooks.append(dict(type='EMAHook', momentum=0.5, priority='ABOVE_NORMAL'))
    torch.manual_seed(0)
    return Runner(
        model=model if model is not None else TinyNet(),
        work_dir=str(work_dir),
        train_dataloader=dict(dataset=TinyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate'), batch_size=8, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.05, weight_decay=0.)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        custom_hooks=custom_hooks,
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=ckpt_interval, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=100)),
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        default_scope='mmengine',
        experiment_name=f'exp_{osp.basename(str(work_dir))}_{int(resume)}')


def get_hook(runner):
    hooks = [h for h in runner.hooks if isinstance(h, DynamicSparsityHook)]
    assert len(hooks) == 1
    return hooks[0]


def masked_weights(runner):
    return {n: p for n, p in runner.model.named_parameters() if p.dim() in (2, 4)}


# ------------------------------------------------------------------ mask arithmetic
def test_registered_in_pelk_mm_hooks():
    assert HOOKS.get('DynamicSparsityHook') is DynamicSparsityHook
    assert isinstance(HOOKS.build(dict(type='pelk_mm.DynamicSparsityHook', init='erk')), DynamicSparsityHook)


@pytest.mark.parametrize('kwargs, message', [
    (dict(sparsity=1.0), 'sparsity must be a number in \\[0, 1\\)'),
    (dict(sparsity=-0.1), 'sparsity'),
    (dict(init='grasp'), "init must be one of \\['snip', 'erk', 'uniform'\\]"),
    (dict(growth='momentum_neuron'), 'growth'),
    (dict(layers='mlp'), 'layers'),
    (dict(update_interval=0), 'update_interval'),
    (dict(prune_rate=1.5), 'prune_rate'),
    (dict(prune_rate=0.1, eta_min=0.2), 'eta_min'),
    (dict(stop_iter=10, stop_fraction=0.5), 'at most one'),
    (dict(stop_fraction=1.5), 'stop_fraction'),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicSparsityHook(**kwargs)


def test_erk_densities_hit_target_and_cap_at_one():
    shapes = {'a': (16, 3, 3, 3), 'b': (256, 256), 'c': (4, 2)}
    d = erk_densities(shapes, 0.6)
    n = {k: math.prod(s) for k, s in shapes.items()}
    assert sum(d[k] * n[k] for k in shapes) / sum(n.values()) == pytest.approx(0.6)
    assert d['c'] == 1.0 and 0 < d['b'] < d['a'] <= 1


def test_snip_densities_keep_global_top_k():
    scores = {'a': torch.tensor([5., 4., 3., 2.]), 'b': torch.tensor([1., 0.5, 0.25, 0.])}
    assert snip_densities(scores, 0.5) == {'a': 1.0, 'b': 0.0}
    assert snip_densities(scores, 0.75) == {'a': 1.0, 'b': 0.5}


def test_prune_and_grow_keeps_count_and_prunes_smallest():
    g = torch.Generator().manual_seed(0)
    w = torch.arange(1., 101.).view(10, 10)
    mask = random_mask((10, 10), 0.5, generator=g)
    w = w * mask
    new, n = prune_and_grow(w, mask, 0.2, 'random', generator=g)
    assert n == 10 and int(new.sum()) == int(mask.sum()) == 50
    pruned = mask & ~new
    smallest_active = torch.sort(w[mask])[0][:10]
    assert set(w[pruned].tolist()) <= set(smallest_active.tolist())
    assert (new != mask).any()
    # gradient growth picks the largest-|grad| inactive positions
    score = torch.zeros(10, 10)
    inactive = (~mask).nonzero()[:3]
    for i, (r, c) in enumerate(inactive.tolist()):
        score[r, c] = 10. + i
    new, n = prune_and_grow(w, mask, 0.06, 'gradient', score)
    assert n == 3 and all(new[r, c] for r, c in inactive.tolist())


def test_cosine_rate_and_pack_roundtrip():
    assert cosine_prune_rate(0, 100, 0.5) == pytest.approx(0.5)
    assert cosine_prune_rate(50, 100, 0.5) == pytest.approx((0.5 + 0.005) / 2)
    assert cosine_prune_rate(100, 100, 0.5) == pytest.approx(0.005)
    m = torch.rand(7, 3, 5) > 0.3
    assert torch.equal(unpack_mask(pack_mask(m)), m)


def test_large_kernel_selection_on_pelk():
    from pelk_mm.models import PeLK
    arch = dict(depths=[1, 1], channels=[16, 24], kernel_sizes=[13, 9])
    names = list(sparsifiable_params(PeLK(arch=arch), 'large_kernel'))
    assert names == ['stages.0.0.token_mixer.conv.weight', 'stages.1.0.token_mixer.conv.weight']
    stripe = PeLK(arch=arch, conv_type='stripe', kpe_mode=None)
    assert sorted(sparsifiable_params(stripe, 'large_kernel')) == sorted(
        f'stages.{i}.0.token_mixer.conv.conv_{a}.weight' for i in (0, 1) for a in 'hw')
    all_names = sparsifiable_params(PeLK(arch=arch), 'all')
    assert 'stages.0.kpe' not in all_names and 'stages.0.0.token_mixer.conv.small_conv.weight' in all_names


# ------------------------------------------------------------------ in a Runner
@pytest.mark.parametrize('init', ['snip', 'erk', 'uniform'])
def test_density_reached_and_weights_masked(tmp_path, init):
    runner = make_runner(tmp_path / init, dict(sparsity=0.4, init=init, update_interval=100), max_iters=3)
    runner.train()
    hook = get_hook(runner)
    weights = masked_weights(runner)
    total = sum(p.numel() for p in weights.values())
    nonzero = sum(int((p != 0).sum()) for p in weights.values())
    # layers left dense (density >= 0.99 after allocation) count in full, so the overall density is >= target
    assert 0.58 <= nonzero / total <= 0.62 + (0.05 if init != 'uniform' else 0)
    for name, mask in hook.masks.items():
        assert (weights[name][~mask] == 0).all()
    if init == 'uniform':
        assert hook.density() == pytest.approx(0.6, abs=2e-3)


def test_prune_and_grow_keeps_density_and_changes_mask(tmp_path):
    runner = make_runner(tmp_path, dict(sparsity=0.4, init='uniform', update_interval=2, prune_rate=0.5,
                                        seed=1), max_iters=3)
    hook = get_hook(runner)
    snapshots = []
    orig = hook.after_train_iter

    def spy(runner_, batch_idx, data_batch=None, outputs=None):
        orig(runner_, batch_idx, data_batch, outputs)
        snapshots.append({n: m.clone() for n, m in hook.masks.items()})

    hook.after_train_iter = spy
    runner.train()
    assert hook.num_updates == 1  # iteration 2 only (3 is the last)
    before, after = snapshots[0], snapshots[1]
    for name in before:
        assert int(after[name].sum()) == int(before[name].sum())
    assert any((after[n] != before[n]).any() for n in before)
    assert runner.message_hub.get_scalar('train/sparsity_density').current() == pytest.approx(0.6, abs=2e-3)


def test_gradient_growth_runs(tmp_path):
    runner = make_runner(tmp_path, dict(sparsity=0.4, init='uniform', update_interval=2, growth='gradient'),
                         max_iters=3)
    runner.train()
    hook = get_hook(runner)
    assert hook.num_updates == 1 and hook.density() == pytest.approx(0.6, abs=2e-3)


def test_stop_iter_freezes_topology(tmp_path):
    runner = make_runner(tmp_path, dict(sparsity=0.4, init='uniform', update_interval=1, stop_iter=2),
                         max_iters=5)
    runner.train()
    assert get_hook(runner).num_updates == 2


def test_masks_persist_through_save_and_resume(tmp_path):
    cfg = dict(sparsity=0.4, init='uniform', update_interval=2, prune_rate=0.5)
    runner = make_runner(tmp_path, cfg, max_iters=4, ckpt_interval=4)
    runner.train()
    saved = {n: m.clone() for n, m in get_hook(runner).masks.items()}
    ckpt = load_checkpoint_file(str(osp.join(tmp_path, 'iter_4.pth')), map_location='cpu')
    assert set(ckpt['sparsity']['masks']) == set(saved)

    resumed = make_runner(tmp_path, dict(cfg, seed=123), max_iters=5, resume=True, ckpt_interval=100)
    resumed.train()  # one more iteration (5 = last: no update), masks must be the saved ones
    hook = get_hook(resumed)
    assert resumed.iter == 5 and set(hook.masks) == set(saved)
    for n in saved:
        assert torch.equal(hook.masks[n].cpu(), saved[n].cpu())
        assert (dict(resumed.model.named_parameters())[n][~saved[n]] == 0).all()


def test_ema_model_is_masked(tmp_path):
    runner = make_runner(tmp_path, dict(sparsity=0.4, init='uniform', update_interval=2), max_iters=3, ema=True)
    runner.train()
    hook = get_hook(runner)
    ema = [h for h in runner.hooks if isinstance(h, EMAHook)][0].ema_model.module
    ema_params = dict(ema.named_parameters())
    for name, mask in hook.masks.items():
        assert (ema_params[name][~mask] == 0).all()
        assert (ema_params[name][mask] != 0).any()


def test_fixed_mask_keeps_pretrained_zeros(tmp_path):
    model = TinyNet()
    with torch.no_grad():
        zeros = {}
        for n, p in model.named_parameters():
            if p.dim() in (2, 4):
                zeros[n] = torch.rand(p.shape) < 0.4
                p[zeros[n]] = 0
        model.bn.weight.fill_(1.)
    runner = make_runner(tmp_path, dict(fixed_mask=True, include=['conv', 'fc']), max_iters=4, model=model)
    runner.train()
    hook = get_hook(runner)
    assert set(hook.masks) == set(zeros) and hook.num_updates == 0
    params = dict(runner.model.named_parameters())
    for n, z in zeros.items():
        assert torch.equal(hook.masks[n].cpu(), ~z)
        assert (params[n][z] == 0).all()
        assert (params[n][~z] != 0).all()  # trained weights moved but kept their support
