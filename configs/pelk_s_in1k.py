# PeLK-S on ImageNet-1K: PeLK-T's recipe with depths 3-3-27-3 and drop path 0.4.
_base_ = './pelk_t_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4))
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
    dict(type='pelk_mm.ResumeStateHook'),
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),
    dict(type='pelk_mm.BNStatsSyncHook'),
    dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip', update_interval=100, prune_rate=0.3,
         growth='random'),
]
