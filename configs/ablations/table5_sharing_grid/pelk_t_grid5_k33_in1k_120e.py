# Paper Table 5 row 5: half grid [8, 4, 2, 1, 1, 1] (PeLK's exponential grid (Eq. 2), 5x5 centre); params 0.11x of the
# dense 33x33; reported top-1 81.4.
# PeLK-T, 120 epochs, no dynamic sparsity, no KPE. Stages 1-3 use the 33x33 kernel with this grid (the paper
# says only "on a 33x33 kernel"; stage 4 keeps its default 13x13 grid, an assumption).
_base_ = ['../_base_/pelk_t_in1k_120e_nosparse.py']

half_grid = [8, 4, 2, 1, 1, 1]
model = dict(backbone=dict(kernel_sizes=[33, 33, 33, 13], half_grids=[half_grid, half_grid, half_grid, None],
                           kpe_mode=None))
