# What every PeLK run adds to its codebase's runtime (mmpretrain/mmseg/mmdet `_base_/default_runtime.py`, which
# each config lists next to this file): the pelk_mm hooks, as named pieces that configs compose `custom_hooks`
# from. mmengine replaces lists on inheritance, so a config that needs another list spells it as one line from
# these pieces, e.g. the ImageNet recipe
#   custom_hooks = [_base_.ema_hook, *_base_.pelk_hooks, _base_.sparsity_hook]
# and a variant changes one piece there: `dict(_base_.ema_hook, momentum=2e-2)`. Only `custom_hooks` is built;
# the pieces are inputs to it.
#
# Checkpoints: a config that starts from an ImageNet-1K PeLK model reads it where tools/train.py writes it when
# training that ImageNet config, `work_dirs/<ImageNet config name>/epoch_300.pth` (e.g.
# `work_dirs/pelk_t_in1k/epoch_300.pth` for configs/pelk_t_in1k.py), in a top-level `checkpoint_file` variable.
# Elsewhere: --cfg-options model.backbone.init_cfg.checkpoint=/path/to.pth (model.init_cfg.checkpoint for the
# ImageNet 384 fine-tuning configs).

# an exponential moving average of the weights is evaluated and saved (horizon ~1 / momentum iterations)
ema_hook = dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')

# SLaK's dynamic sparsity, which PeLK keeps: 40 % of the 2-D/4-D weights are zero, SNIP initialisation, magnitude
# pruning + random regrowth every 2000 iterations with a cosine-decayed prune rate from 0.5 (PeLK-T's schedule;
# SLaK's S/B recipe updates every 100 iterations from 0.3)
sparsity_hook = dict(type='pelk_mm.DynamicSparsityHook', sparsity=0.4, init='snip', update_interval=2000,
                     prune_rate=0.5, growth='random')

# the hooks every run has
pelk_hooks = [
    dict(type='pelk_mm.ResumeStateHook'),                          # bit-exact --resume (RNG states, safe rotation)
    dict(type='pelk_mm.NonFiniteGuardHook', max_consecutive=5),    # skip NaN/inf steps, stop after 5 in a row
    dict(type='pelk_mm.BNStatsSyncHook'),                          # same BN statistics on every rank (val = test)
]
custom_hooks = pelk_hooks  # segmentation and detection; the ImageNet configs add EMA and dynamic sparsity

# Collective timeout (seconds) of the process group, the `env_cfg.dist_cfg.timeout` of the task configs: a rank that
# waits longer than this for the others in a collective fails the run with an error instead of hanging for torch's
# default 30 minutes (a rank that died without its process exiting, a deadlock). The longest wait of a healthy run
# is the other ranks waiting for rank 0, which alone writes a checkpoint (about 1.5 GB with EMA and AdamW state for
# PeLK-B, under a minute) and, in mmdet, computes the COCO box + mask metrics (a few minutes on a slow CPU): 15
# minutes leaves room for both on a slow disk and a busy node. Raise it for a slower step on rank 0.
dist_timeout = 900
