# Paper Table 6: central fine-grained region 1x1 (51x51 half grid [11,8,4,2,1], centre = 0.04% of the kernel);
# reported top-1 80.8. PeLK-T 51-49-47-13, KPE on, 120 epochs, PeLK defaults otherwise (40 % sparsity).
# The centre size applies to every stage (grids of Eq. 2 with r_c = (c - 1) / 2).
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(center_sizes=[1, 1, 1, 1]))
