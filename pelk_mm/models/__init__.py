from .backbones import *  # noqa: F401,F403
from .checks import check_model_checkpoint  # noqa: F401
from .layers import *  # noqa: F401,F403
