# Paper Table 6: central fine-grained region 7x7 (51x51 half grid [8,8,4,2,1,1,1,1], centre = 1.88% of the kernel);
# reported top-1 81.6. PeLK-T 51-49-47-13, KPE on, 120 epochs, PeLK defaults otherwise (40 % sparsity).
# The centre size applies to every stage (grids of Eq. 2 with r_c = (c - 1) / 2).
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(center_sizes=[7, 7, 7, 7]))
