"""pelk_mm's registries: children of mmengine's roots under the scope ``pelk_mm``.

Configs of any OpenMMLab codebase build our modules by scoped name, e.g. ``type='pelk_mm.PeLK'`` or
``constructor='pelk_mm.LayerDecayOptimWrapperConstructor'``: mmengine imports ``pelk_mm.registry`` and the
``locations`` below on first use, so no PYTHONPATH or extra import is needed once pelk_mm is installed.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

from . import compat  # noqa: F401  (safe checkpoint loading for every entry point that builds pelk_mm modules)

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='pelk_mm', locations=['pelk_mm.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='pelk_mm', locations=['pelk_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='pelk_mm', locations=['pelk_mm.engine'])
