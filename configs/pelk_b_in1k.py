# PeLK-B on ImageNet-1K: depths 3-3-27-3, widths 166-332-665-1331, drop path 0.5.
_base_ = './pelk_t_in1k.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.5), head=dict(in_channels=1331))
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
    dict(type='pelk_mm.ResumeStateHook'),
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),
    dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip', update_interval=100, prune_rate=0.3,
         growth='random'),
]
