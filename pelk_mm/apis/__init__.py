"""Launcher logic shared by ``tools/train.py`` / ``tools/test.py`` (dispatch on ``default_scope``), and the
missing-data check."""
from .check_data import MissingDataError, check_data_paths, find_missing_data
from .launch import (CODEBASES, LaunchError, amp_device_available, check_launcher, build_runner, build_test_parser,
                     build_train_parser, get_codebase, load_config, merge_test_args, merge_train_args,
                     parse_test_args, parse_train_args, prepare_data, register_codebase, resolve_amp, test,
                     test_main, train, train_main)

__all__ = [
    'MissingDataError', 'check_data_paths', 'find_missing_data', 'CODEBASES', 'LaunchError', 'check_launcher',
    'amp_device_available', 'build_runner', 'build_test_parser', 'build_train_parser', 'get_codebase',
    'load_config', 'merge_test_args', 'merge_train_args', 'parse_test_args', 'parse_train_args', 'prepare_data',
    'register_codebase', 'resolve_amp', 'test', 'test_main', 'train', 'train_main'
]
