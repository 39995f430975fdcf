"""pelk_mm: PeLK (peripheral large-kernel ConvNets, CVPR 2024) for mmpretrain, mmsegmentation and mmdetection.

``import pelk_mm`` from an OpenMMLab entry point (``custom_imports=dict(imports=['pelk_mm'])``, where mmengine is
already loaded) registers ``pelk_mm.PeLK`` and installs the safe checkpoint loaders (:mod:`pelk_mm.compat`); so does
anything that touches ``pelk_mm.registry`` (mmengine imports it for every ``pelk_mm.*`` type). ``import pelk_mm.ops``
in a process without mmengine loads torch only: the operator package runs on a bare GPU machine.
"""
import sys

from .version import __version__

if 'mmengine' in sys.modules:
    from . import compat  # noqa: F401  (safe checkpoint loading, atomic writes: before any checkpoint is read)
    from . import models  # noqa: F401  (registers pelk_mm.PeLK)

__all__ = ['__version__']
