from .norm import LayerNorm2d
from .kernel_position_embedding import KPE_MODES, KernelPositionEmbedding, kpe_input_term
from .peripheral_conv import (CONV_TYPES, DenseLargeKernelConv2d, PartialPeripheralConv,
                              PeripheralConv2d)
from .stripe_conv import StripeConv2d  # noqa: F401  (registers conv_type='stripe')

__all__ = ['LayerNorm2d', 'KPE_MODES', 'KernelPositionEmbedding', 'kpe_input_term', 'PartialPeripheralConv', 'PeripheralConv2d',
           'CONV_TYPES', 'DenseLargeKernelConv2d']
