from .peripheral_conv import (available_impls, dense_peripheral_conv2d, peripheral_conv2d, register_impl,
                              resolve_impl)
from .sharing_grid import (expand_kernel, full_grid_from_half, grid_bounds, grid_index, peripheral_grid,
                           peripheral_half_grid)

__all__ = [
    'available_impls', 'dense_peripheral_conv2d', 'peripheral_conv2d', 'register_impl', 'resolve_impl',
    'expand_kernel', 'full_grid_from_half', 'grid_bounds', 'grid_index', 'peripheral_grid', 'peripheral_half_grid'
]
