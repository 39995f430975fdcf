# Base of PeLK's analysis/ablation runs (paper §3-§5.4): PeLK-T, the real ImageNet-1K recipe of
# configs/pelk_t_in1k.py (SLaK/ConvNeXt), shortened to SLaK's 120-epoch ablation schedule (20 warm-up epochs kept;
# the cosine schedule's end follows max_epochs), with the PeLK defaults: KPE on (kpe_mode='input'), EMA and SLaK's
# dynamic sparsity (40 %, SNIP init, random regrowth, cosine prune rate 0.5 -> 0.005 every 2000 iterations), all
# as in configs/pelk_t_in1k.py.
_base_ = ['../../pelk_t_in1k.py']

train_cfg = dict(max_epochs=120)
