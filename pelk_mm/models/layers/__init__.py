from .norm import LayerNorm2d
from .kernel_position_embedding import KPE_MODES, KernelPositionEmbedding, kpe_input_term
from .peripheral_conv import PartialPeripheralConv, PeripheralConv2d

__all__ = ['LayerNorm2d', 'KPE_MODES', 'KernelPositionEmbedding', 'kpe_input_term', 'PartialPeripheralConv', 'PeripheralConv2d']
