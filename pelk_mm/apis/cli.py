"""How ``tools/*.py`` run: a user error (:data:`pelk_mm.errors.USER_ERRORS`) is one line on stderr and an exit
status, with no traceback; anything else (a bug) keeps its traceback. See :mod:`pelk_mm.errors`."""
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
        print(format_user_error(err), file=sys.stderr, flush=True)
        return exit_code(err)
    return 0


def run_main(main: Callable[[], int], extra: Tuple[Type[BaseException], ...] = ()) -> int:
    """Call a tool's ``main()`` (the ``tools/analysis`` and ``tools/deploy`` scripts); user errors, and the
    ``extra`` types those tools raise with the offending path in the message (e.g. ``FileNotFoundError``), print as
    one line."""
    try:
        return main()
    except USER_ERRORS + tuple(extra) as err:
        print(format_user_error(err), file=sys.stderr, flush=True)
        return exit_code(err)
