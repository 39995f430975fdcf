# Paper Table 6: central fine-grained region 3x3 (51x51 half grid [10,8,4,2,1,1], centre = 0.35% of the kernel);
# reported top-1 81.1. PeLK-T 51-49-47-13, KPE on, 120 epochs, PeLK defaults otherwise (40 % sparsity).
# The centre size applies to every stage (grids of Eq. 2 with r_c = (c - 1) / 2).
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(center_sizes=[3, 3, 3, 3]))
