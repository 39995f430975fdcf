# Base of PeLK's analysis/ablation runs (paper §3-§5.4): PeLK-T, the real ImageNet-1K recipe of
# configs/pelk_t_in1k.py (SLaK/ConvNeXt), shortened to SLaK's 120-epoch ablation schedule (20 warm-up epochs kept;
# the cosine schedule's end follows max_epochs), with the PeLK defaults: KPE on (kpe_mode='input') and SLaK's
# dynamic sparsity (40 %, SNIP init, random regrowth, cosine prune rate 0.5 -> 0.005 every 2000 iterations).
_base_ = ['../../pelk_t_in1k.py']

train_cfg = dict(max_epochs=120)

sparsity_hook = dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip', update_interval=2000,
                     prune_rate=0.5, growth='random')
# the real config's hooks (EMA, bit-exact resume, non-finite guard) plus dynamic sparsity
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
    dict(type='pelk_mm.ResumeStateHook'),
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),
    dict(type='pelk_mm.BNStatsSyncHook'),
    sparsity_hook,
]
