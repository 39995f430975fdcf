from .peripheral_conv import (EXPORT_FORMS, autotune_cache, available_impls, clear_autotune_cache,
                              dense_peripheral_conv2d, export_conv_form, get_export_conv_form, is_export_trace,
                              peripheral_conv2d, register_impl, resolve_impl, set_autotune)
from .sharing_grid import (expand_kernel, full_grid_from_half, grid_bounds, grid_index, peripheral_grid,
                           peripheral_half_grid)

__all__ = [
    'available_impls', 'dense_peripheral_conv2d', 'peripheral_conv2d', 'register_impl', 'resolve_impl',
    'autotune_cache', 'clear_autotune_cache', 'set_autotune', 'EXPORT_FORMS', 'export_conv_form',
    'get_export_conv_form', 'is_export_trace', 'expand_kernel', 'full_grid_from_half', 'grid_bounds', 'grid_index',
    'peripheral_grid', 'peripheral_half_grid'
]
