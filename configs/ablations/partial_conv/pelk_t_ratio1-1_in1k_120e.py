# Partial peripheral conv (paper Eq. 4-6): conv_ratio=1/1 of the channels convolved (full conv, no identity part).
# PeLK-T 51-49-47-13, KPE on, 120 epochs, 40 % sparsity. No top-1 for other ratios is reported.
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(conv_ratio=1 / 1))
