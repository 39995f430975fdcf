# Paper Table 7: PeLK-151 (151-89-87-13) at 224x224; reported top-1 81.2.
# PeLK-T widths/depths (the table does not name the size; PeLK-T assumed), KPE on, 120 epochs, 40 % sparsity.
_base_ = ['../_base_/pelk_t_in1k_120e.py']

model = dict(backbone=dict(arch='tiny-151'))
