# Kernel-wise positional embedding ablation (paper §4.2, Fig. 3): kpe_mode='weight' (weight-additive w + h
# (re-implementation variant)).
# PeLK-T 51-49-47-13, 120 epochs, 40 % sparsity. The paper reports no top-1 for KPE on/off;
# Table 6 (KPE on) vs Table 5 (KPE off) use different kernels.
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(kpe_mode='weight'))
