"""pelk_mm: PeLK (peripheral large-kernel ConvNets, CVPR 2024) for mmpretrain, mmsegmentation and mmdetection.

``import pelk_mm`` from an OpenMMLab entry point (``custom_imports=dict(imports=['pelk_mm'])``, where mmengine is
already loaded) registers the backbone (``pelk_mm.PeLK``, and ``PeLK`` for the configs of every codebase) and
installs the safe checkpoint loaders (:mod:`pelk_mm.compat`); so does anything that touches ``pelk_mm.registry``
(mmengine imports it for every ``pelk_mm.*`` type). ``import pelk_mm.ops``
in a process without mmengine loads torch only: the operator package runs on a bare GPU machine.

``import pelk_mm`` also connects the model index (``model-index.yml``, :mod:`pelk_mm.model_zoo`) to mmpretrain's
``get_model`` / ``list_models``, mmengine's inferencers and timm, each when that package is (or gets) imported.
"""
import sys

from .version import __version__

if 'mmengine' in sys.modules:
    from . import compat  # noqa: F401  (safe checkpoint loading, atomic writes: before any checkpoint is read)
    from . import models  # noqa: F401  (registers pelk_mm.PeLK)

from .model_zoo import install as _install_model_names

_install_model_names()  # model names for mmpretrain / the inferencers / timm, on their import (imports none of them)

__all__ = ['__version__']
