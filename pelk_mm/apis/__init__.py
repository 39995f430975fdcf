"""The launcher behind ``tools/``: command lines, config and data checks, and ``tools/train.py`` / ``tools/test.py``
for mmpretrain, mmseg and mmdet configs (dispatched on ``default_scope``)."""
from pelk_mm.config import CODEBASES, get_codebase, load_config, register_codebase

from .check_data import check_data_paths, find_missing_data
from .launch import (amp_device_available, build_runner, build_test_parser, build_train_parser, check_launcher,
                     merge_test_args, merge_train_args, parse_test_args, parse_train_args, prepare_data, resolve_amp,
                     test, test_main, train, train_main)

__all__ = [
    'check_data_paths', 'find_missing_data', 'CODEBASES', 'check_launcher',
    'amp_device_available', 'build_runner', 'build_test_parser', 'build_train_parser', 'get_codebase',
    'load_config', 'merge_test_args', 'merge_train_args', 'parse_test_args', 'parse_train_args', 'prepare_data',
    'register_codebase', 'resolve_amp', 'test', 'test_main', 'train', 'train_main'
]
