# The 120-epoch ablation base without dynamic sparsity (dense training): paper Table 5 and the "w/o" rows of Table 1.
_base_ = ['./pelk_t_in1k_120e.py']

custom_hooks = [_base_.ema_hook, *_base_.pelk_hooks]
