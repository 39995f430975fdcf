# Dense vs stripe (paper §3, Table 1 / Fig. 2): RepLK-style dense KxK kernels 51-49-47-13, without 40 % dynamic
# sparsity;
# paper Table 1 row "RepLK-51 w/o sparsity", reported top-1 81.6.
# SLaK framework: every channel convolved (conv_ratio=1), no KPE, 5x5 re-param branch on.
_base_ = ['../_base_/pelk_t_in1k_120e_nosparse.py']

model = dict(backbone=dict(kernel_sizes=[51, 49, 47, 13], conv_type='dense', conv_ratio=1.0, kpe_mode=None))
