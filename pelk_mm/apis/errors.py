"""User-facing errors of ``tools/train.py`` / ``tools/test.py``: one line on stderr and an exit status, no traceback.

Errors the user can fix by changing the command line, the config, the data or a checkpoint are printed as
``error: <message>``; anything else (a bug) keeps its traceback. Exit status: 2 for configuration, data and
checkpoint errors, 3 when training was stopped by :class:`pelk_mm.NonFiniteGuardHook`.

mmengine's registry re-raises errors from inside a build as ``type(err)('class `X` in file: ...')``, so the
classes below may arrive with that prefix; :func:`format_user_error` keeps the first line only.
"""
from __future__ import annotations

import sys
from typing import Callable, Tuple, Type

__all__ = ['user_error_types', 'one_line', 'format_user_error', 'exit_code', 'run_cli', 'run_main']


def user_error_types() -> Tuple[Type[BaseException], ...]:
    """Exception classes shown as one line (imported lazily: this module must stay cheap to import)."""
    from pelk_mm.checkpoint import CheckpointLoadError
    from pelk_mm.engine.hooks.non_finite_guard_hook import NonFiniteTrainingError

    from pelk_mm.errors import DataFileError, DiskFullError
    from pelk_mm.models.layers.peripheral_conv import DeployFormError

    from .check_data import MissingDataError
    from .launch import LaunchError
    from .validate import ConfigValidationError
    return (LaunchError, MissingDataError, ConfigValidationError, CheckpointLoadError, NonFiniteTrainingError,
            DataFileError, DiskFullError, DeployFormError)


def one_line(err: BaseException, with_type: bool = False) -> str:
    """The message of ``err`` on one line (its lines joined); ``with_type`` prefixes the exception class."""
    lines = [part.strip() for part in str(err).splitlines() if part.strip()]
    if any(line.startswith('Original Traceback') for line in lines):
        # re-raised from a DataLoader worker: the worker's own message is the last line, after "module.Class: "
        last = lines[-1]
        prefix = f'{type(err).__module__}.{type(err).__qualname__}: '
        lines = [last[len(prefix):] if last.startswith(prefix) else last.split(': ', 1)[-1]]
    text = ' '.join(lines)
    if not text:
        return type(err).__name__
    return f'{type(err).__name__}: {text}' if with_type else text


def format_user_error(err: BaseException) -> str:
    """``error: <the message on one line>``."""
    return f'error: {one_line(err)}'


def exit_code(err: BaseException) -> int:
    from pelk_mm.engine.hooks.non_finite_guard_hook import NonFiniteTrainingError
    return 3 if isinstance(err, NonFiniteTrainingError) else 2


def run_cli(fn: Callable, args) -> int:
    """Run ``fn(args)``; print a user error as one line on stderr and return its exit status (0 on success)."""
    try:
        fn(args)
    except user_error_types() as err:
        print(format_user_error(err), file=sys.stderr, flush=True)
        return exit_code(err)
    return 0


def run_main(main: Callable[[], int], extra: Tuple[Type[BaseException], ...] = ()) -> int:
    """Call a tool's ``main()`` (the ``tools/analysis`` scripts); user errors, and the ``extra`` types those tools
    raise with the offending path in the message (e.g. ``FileNotFoundError``), print as one line."""
    try:
        return main()
    except user_error_types() + tuple(extra) as err:
        print(format_user_error(err), file=sys.stderr, flush=True)
        return exit_code(err)
