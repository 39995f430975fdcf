# PeLK-S on ImageNet-1K: PeLK-T's recipe with depths 3-3-27-3, drop path 0.4 and SLaK's S/B dynamic sparsity
# schedule (update every 100 iterations, prune rate from 0.3).
_base_ = './pelk_t_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.4))
custom_hooks = [_base_.ema_hook, *_base_.pelk_hooks, dict(_base_.sparsity_hook, update_interval=100, prune_rate=0.3)]
