"""Loading an OpenMMLab config and dispatching on its codebase, with one-line errors.

Used by the launcher (``tools/train.py``, ``tools/test.py``) and by the analysis and deployment tools alike: a
config of mmpretrain, mmseg or mmdet is recognised by its ``default_scope`` (:func:`get_codebase`), the codebase's
modules are registered (:func:`register_codebase`), and a missing file, a syntax error, a bad ``_base_`` or a
misspelt ``--cfg-options`` key is one :class:`~pelk_mm.errors.LaunchError` /
:class:`~pelk_mm.errors.ConfigValidationError` naming the file or key.
"""
from __future__ import annotations

import difflib
import importlib
import os.path as osp
import warnings
from typing import Iterable

from mmengine.config import Config

from .errors import ConfigValidationError, LaunchError, one_line

__all__ = ['CODEBASES', 'RUNNER_KEYS', 'get_codebase', 'register_codebase', 'load_config', 'merge_cfg_options',
           'check_option_keys', 'closest_name']

#: default_scope -> pip distribution that provides it
CODEBASES = {'mmpretrain': 'mmpretrain', 'mmseg': 'mmsegmentation', 'mmdet': 'mmdet'}

#: top-level keys that mmengine's ``Runner.from_cfg``, the codebases' tools and pelk_mm read (besides the
#: config's own variables)
RUNNER_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg', 'val_cfg', 'test_cfg',
    'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator', 'test_evaluator', 'default_hooks',
    'custom_hooks', 'data_preprocessor', 'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level',
    'visualizer', 'default_scope', 'randomness', 'experiment_name', 'cfg', 'runner_type', 'custom_imports',
    'model_wrapper_cfg', 'compile', 'tta_model', 'tta_pipeline', 'demo_data', 'load_from_mismatch'})


def get_codebase(cfg, config_name: str = '') -> str:
    """The codebase a config belongs to, from its ``default_scope``."""
    scope = cfg.get('default_scope', None)
    where = f'config {config_name} ' if config_name else 'the config '
    if scope is None:
        raise LaunchError(
            f'{where}has no `default_scope`, so pelk_mm\'s tools cannot tell whether it is an mmpretrain, mmseg or '
            f'mmdet config. Inherit the codebase\'s _base_/default_runtime.py or set '
            f'default_scope = \'mmpretrain\' | \'mmseg\' | \'mmdet\' in the config')
    if scope not in CODEBASES:
        raise LaunchError(
            f'{where}has default_scope={scope!r}; pelk_mm\'s tools support {sorted(CODEBASES)}. Set '
            f'default_scope to the codebase whose models/datasets the config uses')
    return scope


def register_codebase(scope: str) -> None:
    """Import the codebase and register all its modules (without touching the default scope)."""
    try:
        utils = importlib.import_module(f'{scope}.utils')
    except ImportError as err:
        raise LaunchError(
            f'the config has default_scope={scope!r} but {scope} cannot be imported ({err}). Install it with '
            f'`bash tools/setup.sh` or `pip install {CODEBASES[scope]}`') from err
    utils.register_all_modules(init_default_scope=False)


def load_config(path: str) -> Config:
    """``Config.fromfile`` with one clear error naming the file for a missing file, a syntax error, a missing
    ``_base_`` or an inheritance conflict (mmengine raises those from deep inside its parser)."""
    if not osp.isfile(path):
        raise LaunchError(f'config file {path!r} does not exist')
    try:
        with warnings.catch_warnings():
            # mmengine resolves `mmpretrain::`-style bases through pkg_resources (setuptools<81 is pinned for it),
            # which announces its own deprecation on every reload
            warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
            return Config.fromfile(path)
    except Exception as err:  # noqa: BLE001 - everything fromfile raises is a problem of the config files
        raise LaunchError(f'cannot load config {path!r}: {one_line(err, with_type=True)}') from err


def merge_cfg_options(cfg: Config, options: dict) -> None:
    """``cfg.merge_from_dict(options)`` with a one-line error naming the ``--cfg-options`` that do not fit (or whose
    top-level key the config does not have: a misspelling mmengine would add unused)."""
    check_option_keys(cfg, options)
    try:
        cfg.merge_from_dict(options)
    except Exception as err:  # noqa: BLE001 - a key/type conflict between the options and the config
        opts = ' '.join(f'{k}={v!r}' for k, v in options.items())
        raise LaunchError(f'--cfg-options {opts} cannot be merged into the config: '
                          f'{one_line(err, with_type=True)}') from err


def check_option_keys(cfg, options: dict) -> None:
    """``--cfg-options`` whose top-level key is neither in the config nor read by the Runner: a misspelling that
    mmengine would add as a new, unused key (``trian_cfg.max_epochs=1`` runs all epochs)."""
    known = set(cfg.keys()) | RUNNER_KEYS
    for option in options:
        top = option.split('.')[0]
        if top not in known:
            raise ConfigValidationError(
                f'config key `{top}`: --cfg-options {option}=...: the config has no key {top!r}'
                f'{closest_name(top, known)}, and mmengine would add it without using it. Fix: spell the key as the '
                f'config does', top)


def closest_name(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to a misspelt ``name``, else ``''``."""
    match = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ''
