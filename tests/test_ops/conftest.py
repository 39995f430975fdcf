"""Test setup for the ops: Triton interpreter mode, and ``pelk_mm.ops`` importable without the OpenMMLab stack.

Triton's interpreter (``TRITON_INTERPRET=1``) only works if the variable is set before triton is first imported
(``torch._dynamo`` imports it), so on machines without CUDA it is set here, at collection time.


``import pelk_mm`` pulls mmengine/mmcv; the ops only need torch. If the full package cannot be imported, register a
bare ``pelk_mm`` package object pointing at the source folder so ``pelk_mm.ops`` loads without ``pelk_mm/__init__``.
"""
import importlib
import os
import sys
import types

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ensure_ops_importable() -> None:
    try:
        importlib.import_module('pelk_mm')
    except Exception:  # noqa: BLE001 - mmengine/mmcv missing or broken: the ops do not need them
        for name in [n for n in sys.modules if n == 'pelk_mm' or n.startswith('pelk_mm.')]:
            del sys.modules[name]
        pkg = types.ModuleType('pelk_mm')
        pkg.__path__ = [os.path.join(_ROOT, 'pelk_mm')]
        sys.modules['pelk_mm'] = pkg


if 'triton' not in sys.modules:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault('TRITON_INTERPRET', '1')

if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
_ensure_ops_importable()
