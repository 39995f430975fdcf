# The 120-epoch ablation base without dynamic sparsity (dense training): paper Table 5 and the "w/o" rows of Table 1.
_base_ = ['./pelk_t_in1k_120e.py']

custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
    dict(type='pelk_mm.ResumeStateHook'),
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),
    dict(type='pelk_mm.BNStatsSyncHook'),
]
