"""pelk_mm's registries: children of mmengine's roots under the scope ``pelk_mm``.

Configs of any OpenMMLab codebase build our modules by scoped name, e.g. ``type='pelk_mm.PeLK'`` or
``constructor='pelk_mm.LayerDecayOptimWrapperConstructor'``: mmengine imports ``pelk_mm.registry`` and the
``locations`` below on first use, so no PYTHONPATH or extra import is needed once pelk_mm is installed.

The backbone is also found by its bare name, ``type='PeLK'`` (how SLaK / UniRepLKNet configs name their backbones),
in mmpretrain, mmseg and mmdet configs that import pelk_mm (``custom_imports=dict(imports=['pelk_mm'])``): the names
in :data:`UNSCOPED_MODELS` are registered in mmengine's root ``MODELS`` too, which every codebase's ``MODELS``
searches after its own entries. A codebase's own class of the same name therefore still wins in its configs.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

from . import compat  # noqa: F401  (safe checkpoint loading for every entry point that builds pelk_mm modules)

__all__ = ['MODELS', 'HOOKS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'UNSCOPED_MODELS']

#: pelk_mm models that configs of every codebase may name without the ``pelk_mm.`` scope
UNSCOPED_MODELS = frozenset({'PeLK'})


class _ModelRegistry(Registry):
    """pelk_mm's ``MODELS``: registering a class named in :data:`UNSCOPED_MODELS` also registers it in mmengine's
    root ``MODELS`` under its bare name (unless another package's class holds that name there)."""

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        super()._register_module(module, module_name, force)
        name = getattr(module, '__name__', None)
        if name not in UNSCOPED_MODELS:
            return
        # NOTE: a codebase registry looks up a bare name in its own entries first and then in its parents, so the
        # root entry is reached only where mmpretrain / mmseg / mmdet have no class of that name; a root entry of
        # another package is left alone (its configs keep working, ours name 'pelk_mm.PeLK')
        held = MMENGINE_MODELS.module_dict.get(name)
        if held is None or getattr(held, '__module__', '').split('.')[0] == 'pelk_mm':
            MMENGINE_MODELS.register_module(name=name, module=module, force=True)


MODELS = _ModelRegistry('model', parent=MMENGINE_MODELS, scope='pelk_mm', locations=['pelk_mm.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='pelk_mm', locations=['pelk_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='pelk_mm', locations=['pelk_mm.engine'])
