"""The launchers' console leaves out the tables pelk_mm itself logs at INFO (the log file keeps them)."""
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper

from pelk_mm.apis.console import quiet_console
from pelk_mm.models.backbones.pelk import PeLK


class _Segmentor(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = PeLK(arch=dict(depths=[1, 1, 1, 1], channels=[16, 24, 32, 48], kernel_sizes=[9, 7, 5, 5],
                                       center_sizes=[3, 3, 3, 3]))
        self.decode_head = nn.Linear(4, 4)


def test_layer_decay_groups_table_goes_to_the_log_file_only(tmp_path, capsys):
    logger = MMLogger.get_instance('pelk_mm_console_tables', log_file=str(tmp_path / 'run.log'))
    quiet_console(logger)
    build_optim_wrapper(_Segmentor(), dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='pelk_mm.LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6)))
    for handler in logger.handlers:
        handler.flush()
    logged = (tmp_path / 'run.log').read_text()
    assert 'LayerDecayOptimWrapperConstructor: stage_wise' in logged and 'layer_0_decay: lr=' in logged
    console = capsys.readouterr()
    assert 'LayerDecayOptimWrapperConstructor' not in console.out + console.err
    assert 'layer_0_decay' not in console.out + console.err
