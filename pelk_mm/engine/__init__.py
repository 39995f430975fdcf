"""Training-time components, registered in pelk_mm's registries (``locations=['pelk_mm.engine']``).

Every submodule is imported here so that the lazy registry import finds all of them.
"""
from .optimizers import *  # noqa: F401,F403
from .hooks import *  # noqa: F401,F403
