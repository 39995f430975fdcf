"""pelk_mm: PeLK (peripheral large-kernel ConvNets, CVPR 2024) for mmpretrain, mmsegmentation and mmdetection."""
from . import compat  # noqa: F401  (modern-torch fixes for the OpenMMLab stack; must run first)
from . import models  # noqa: F401  (registers pelk_mm.PeLK)
from .version import __version__

__all__ = ['__version__']
