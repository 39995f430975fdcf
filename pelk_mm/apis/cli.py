"""How ``tools/*.py`` run: a user error (:data:`pelk_mm.errors.USER_ERRORS`) is one line on stderr and an exit
status, with no traceback; anything else (a bug) keeps its traceback. See :mod:`pelk_mm.errors`.

An error that carries ``lines`` (the data checks of :mod:`pelk_mm.apis.check_data` find several kinds of problems
in one pass) is printed as one ``error:`` line per entry."""
from __future__ import annotations

import sys
from typing import Callable, Tuple, Type

from pelk_mm.errors import USER_ERRORS, exit_code, format_user_error

__all__ = ['run_cli', 'run_main']


def run_cli(fn: Callable, args) -> int:
    """Run ``fn(args)``; print a user error as one line on stderr and return its exit status (0 on success)."""
    try:
        fn(args)
    except USER_ERRORS as err:
        _print_user_error(err)
        return exit_code(err)
    return 0


def _print_user_error(err: BaseException) -> None:
    lines = getattr(err, 'lines', None)
    if isinstance(lines, (list, tuple)) and lines and all(isinstance(line, str) for line in lines):
        text = '\n'.join(f'error: {" ".join(line.split())}' for line in lines)
    else:
        text = format_user_error(err)
    print(text, file=sys.stderr, flush=True)


def run_main(main: Callable[[], int], extra: Tuple[Type[BaseException], ...] = ()) -> int:
    """Call a tool's ``main()`` (the ``tools/analysis`` and ``tools/deploy`` scripts); user errors, and the
    ``extra`` types those tools raise with the offending path in the message (e.g. ``FileNotFoundError``), print as
    one line."""
    try:
        return main()
    except USER_ERRORS + tuple(extra) as err:
        _print_user_error(err)
        return exit_code(err)
