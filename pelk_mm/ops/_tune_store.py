"""Where autotuning choices outlive the process: one small JSON file per device model, torch and triton version.

Both tuners use it: the implementation choice of ``peripheral_conv2d(..., 'auto')`` and the launch variant of the
Triton kernels. Files live under ``$PELK_MM_CACHE`` (default ``~/.cache/pelk_mm``, where the set-up caches its
wheels) in ``autotune/``; a file that cannot be read counts as empty and a file that cannot be written is skipped
(the choice is then re-timed by the next process).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import tempfile
from typing import Dict, Optional

import torch

logger = logging.getLogger(__name__)

_LOADED: Dict[str, Dict[str, str]] = {}  # file -> {key text: choice}


def env_switch(name: str, on: str, off: str, unset: str) -> Optional[bool]:
    """A tuning switch from the environment: True (1/true/yes/on), False (0/false/no/off), None when unset; any
    other value is refused in one line saying what each setting does (``on``/``off``/``unset``)."""
    value = os.environ.get(name, '').strip().lower()
    if value in ('0', 'false', 'no', 'off'):
        return False
    if value in ('1', 'true', 'yes', 'on'):
        return True
    if value:
        raise ValueError(f'${name}={os.environ[name]!r} is neither on nor off: set it to 1 ({on}), 0 ({off}) or '
                         f'unset it ({unset})')
    return None


def package_version(name: str) -> str:
    """Installed version of ``name``, ``'none'`` when it is not installed."""
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return 'none'


def cache_file(device: torch.device, kind: str = '') -> str:
    """The choices file of ``device`` (``kind`` tells the tuners' files apart, ``''`` for the implementation
    choice)."""
    root = os.environ.get('PELK_MM_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'pelk_mm')
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or device.type
    tag = f'{device.type}-{name}-torch{torch.__version__}-triton{package_version("triton")}'
    tag = re.sub(r'[^A-Za-z0-9._+-]+', '_', tag)
    return os.path.join(root, 'autotune', tag + (f'.{kind}' if kind else '') + '.json')


def key_text(key: tuple) -> str:
    """A tuning key as the text it is stored under."""
    return '|'.join(str(k) for k in key)


def load(path: str) -> Dict[str, str]:
    """The choices stored in ``path`` (read once per process; the dict is shared, :func:`save` writes it back)."""
    if path not in _LOADED:
        try:
            with open(path) as f:
                _LOADED[path] = {str(k): str(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError):
            _LOADED[path] = {}
    return _LOADED[path]


def save(path: str, choices: Dict[str, str]) -> None:
    """Write ``choices`` to ``path`` atomically (concurrent writers: the last complete file wins)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.autotune.', suffix='.tmp', dir=os.path.dirname(path))
        with os.fdopen(fd, 'w') as f:
            json.dump(choices, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as err:
        logger.debug('pelk_mm autotune: cannot write %s: %s', path, err)


def forget() -> None:
    """Drop what was read (the files are kept)."""
    _LOADED.clear()
