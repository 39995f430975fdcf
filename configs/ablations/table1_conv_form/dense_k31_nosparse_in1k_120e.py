# Dense vs stripe (paper §3, Table 1 / Fig. 2): RepLK-style dense KxK kernels 31-29-27-13, without 40 % dynamic
# sparsity;
# Fig. 2 kernel-size sweep (only ADE20K mIoU plotted; no top-1 reported).
# SLaK framework: every channel convolved (conv_ratio=1), no KPE, 5x5 re-param branch on.
_base_ = ['../_base_/pelk_t_in1k_120e_nosparse.py']

model = dict(backbone=dict(kernel_sizes=[31, 29, 27, 13], conv_type='dense', conv_ratio=1.0, kpe_mode=None))
