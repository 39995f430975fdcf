# Paper Table 7: PeLK (51-49-47-13) at 224x224; reported top-1 81.6.
# PeLK-T widths/depths (the table does not name the size; PeLK-T assumed), KPE on, 120 epochs, 40 % sparsity.
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(arch='tiny'))
