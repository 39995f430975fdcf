from .conv_form import COMMON_ARGS, LargeKernelConv, build_conv_form, conv_form_args, conv_form_class, conv_forms
from .kernel_position_embedding import KPE_MODES, blocked_kpe_input_term
from .norm import DropPath, LayerNorm2d, build_norm
from .peripheral_conv import DenseLargeKernelConv2d, DeployFormMixin, PartialPeripheralConv, PeripheralConv2d
from .stripe_conv import StripeConv2d

__all__ = [
    'COMMON_ARGS', 'LargeKernelConv', 'build_conv_form', 'conv_form_args', 'conv_form_class', 'conv_forms', 'KPE_MODES',
    'blocked_kpe_input_term', 'DropPath', 'LayerNorm2d', 'build_norm', 'DenseLargeKernelConv2d',
    'DeployFormMixin', 'PartialPeripheralConv', 'PeripheralConv2d', 'StripeConv2d'
]
