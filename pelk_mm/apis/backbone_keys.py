"""Misspelt keys and names of a config's PeLK backbone, each named with the closest valid one (did you mean ...?).

:func:`check_backbone_keys` runs before the backbone is built (:func:`pelk_mm.apis.validate.build_backbone_meta`), so
``drop_path_rat=0.1`` is one line naming ``drop_path_rate`` instead of Python's ``unexpected keyword argument``
from inside mmengine's builder. It checks the backbone's own arguments, the keys of a dict ``arch``, the arch name,
the conv form (``conv_type`` / ``conv_cfg.type``), the keys of ``conv_cfg`` (the form's own arguments) and
``kpe_mode``. Values are left to the constructor's own checks.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Iterable, Optional

from pelk_mm.errors import ConfigValidationError

__all__ = ['check_backbone_keys', 'pelk_arguments']

#: keys of a backbone dict that are not constructor arguments (the registry reads them)
_REGISTRY_KEYS = frozenset({'type', '_scope_'})
#: keys of a dict ``arch`` (``PeLK.resolve_arch``)
ARCH_KEYS = ('depths', 'channels', 'kernel_sizes', 'center_sizes')


def pelk_arguments() -> list:
    """The keyword arguments of ``PeLK.__init__``, in signature order."""
    from pelk_mm.models import PeLK
    return [p.name for p in inspect.signature(PeLK.__init__).parameters.values()
            if p.name != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _fail(key: str, problem: str, fix: str):
    raise ConfigValidationError(f'config key `{key}`: {problem}. Fix: {fix}', key)


def _closest(name: str, valid: Iterable[str]) -> Optional[str]:
    """The valid name closest to ``name`` (as :func:`pelk_mm.config.closest_name` picks it), else ``None``."""
    match = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return match[0] if match else None


def _spell(key: str, what: str, name: str, valid: Iterable[str], listing: Optional[str] = None) -> None:
    """Fail for the unknown ``name`` (of ``what``) at ``key``, naming the closest of ``valid`` if one is close, else
    listing the choices (``listing``, or ``valid`` sorted)."""
    valid = sorted(valid)
    match = _closest(name, valid)
    if match:
        _fail(key, f'unknown {what} {name!r} (did you mean {match!r}?)', f'write {match!r}')
    _fail(key, f'unknown {what} {name!r}', f'use one of {listing or valid}')


def check_backbone_keys(backbone_cfg, key: str = 'model.backbone') -> None:
    """Raise :class:`~pelk_mm.errors.ConfigValidationError` (one line naming the closest valid spelling) for a key
    of the PeLK backbone config that PeLK (or its dict arch, or its conv form) does not take, or an unknown arch /
    conv form / KPE mode name. Other bad values are left to the constructor's checks."""
    if not hasattr(backbone_cfg, 'keys'):
        return
    from pelk_mm.models import PeLK
    from pelk_mm.models.layers import KPE_MODES
    from pelk_mm.models.layers.conv_form import LargeKernelConv, conv_form_args, conv_form_class, conv_forms
    from pelk_mm.registry import MODELS

    arguments = pelk_arguments()
    for name in backbone_cfg.keys():
        if name not in arguments and name not in _REGISTRY_KEYS:
            match = _closest(name, arguments)
            if match:
                _fail(f'{key}.{name}', f'PeLK takes no argument {name!r} (did you mean {match!r}?)',
                      f'rename it to {match}')
            _fail(f'{key}.{name}', f'PeLK takes no argument {name!r}', f'use the arguments of PeLK: {arguments}')

    arch = backbone_cfg.get('arch', 'tiny')
    if isinstance(arch, str):
        names = list(PeLK.arch_settings) + list(PeLK.arch_aliases)
        if arch.lower() not in names:
            _spell(f'{key}.arch', 'PeLK arch', arch, names,
                   f'{sorted(names)} or a dict with depths, channels, kernel_sizes (and center_sizes)')
    elif hasattr(arch, 'keys'):
        for name in arch.keys():
            if name not in ARCH_KEYS:
                match = _closest(name, ARCH_KEYS)
                _fail(f'{key}.arch.{name}', f'a PeLK arch dict has no key {name!r}'
                      + (f' (did you mean {match!r}?)' if match else ''),
                      f'rename it to {match}' if match else f'use the keys {list(ARCH_KEYS)}')

    conv_cfg = backbone_cfg.get('conv_cfg', None)
    conv_cfg = conv_cfg if hasattr(conv_cfg, 'keys') else {}
    conv_type = conv_cfg.get('type', backbone_cfg.get('conv_type', 'peripheral'))
    type_key = f'{key}.conv_cfg.type' if 'type' in conv_cfg else f'{key}.conv_type'
    form = None
    if isinstance(conv_type, str):
        try:
            form = conv_form_class(conv_type)
        except ValueError:
            names = [n for n, c in MODELS.module_dict.items() if isinstance(c, type) and issubclass(c, LargeKernelConv)]
            _spell(type_key, 'conv form', conv_type, names, str(conv_forms()))
    if form is not None:
        accepted = sorted(conv_form_args(form))
        for name in conv_cfg.keys():
            if name != 'type' and name not in accepted:
                match = _closest(name, accepted)
                _fail(f'{key}.conv_cfg.{name}', f'conv form {conv_type!r} ({form.__name__}) takes no argument '
                      f'{name!r}' + (f' (did you mean {match!r}?)' if match else ''),
                      f'rename it to {match}' if match else f'use its arguments {accepted}')

    kpe_mode = backbone_cfg.get('kpe_mode', 'input')
    if isinstance(kpe_mode, str) and kpe_mode not in KPE_MODES:
        _spell(f'{key}.kpe_mode', 'kpe_mode', kpe_mode, KPE_MODES, f'{list(KPE_MODES)} or None')
