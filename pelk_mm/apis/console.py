"""What the launcher's runs print: the progress, the results and the warnings; the rest goes to the log file only.

An mmengine Runner logs its whole environment, the merged config (hundreds of lines), the hook order, one line per
parameter group of the optimizer constructor, the experiment name at every epoch and per-class tables at every
validation, all at ``INFO`` to the console and to ``<work_dir>/<timestamp>/<timestamp>.log``. The launchers give
the console handler a :class:`ConsoleFilter` that keeps those records out of the terminal; the log file still holds
every one of them. ``--verbose`` (or ``PELK_MM_VERBOSE=1``) shows everything again.

The filter goes on through a subclass of the config's Runner class (:func:`quiet_runner_class`) whose
``build_logger`` adds it, so nothing of mmengine is patched and a config's own ``runner_type`` keeps working.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Optional

__all__ = ['VERBOSE_ENV', 'ConsoleFilter', 'verbose', 'quiet_console', 'quiet_runner_class', 'log_file_of',
           'final_metrics']

#: environment variable that turns the console filter off (``--verbose`` sets it)
VERBOSE_ENV = 'PELK_MM_VERBOSE'

#: ``INFO`` records whose message starts with one of these stay out of the console (they are in the log file)
_FILE_ONLY_PREFIXES = (
    'Config:',  # the merged config, hundreds of lines
    'Hooks will be executed in the following order',
    'paramwise_options -- ',  # one line per parameter group (layer-wise decay, no-decay norms)
    'LayerDecayOptimWrapperConstructor: ',  # pelk_mm's table of the layer-wise lr groups, a line per group
    'Exp name:',  # repeated at every epoch
    'The previous best checkpoint',  # save_best rotating its own file
    'Loads checkpoint by',  # mmengine's loader-name notice
    'Name of parameter - Initialization information',
    'Because batch augmentations are enabled',  # mmpretrain: Mixup/CutMix switch labels to one-hot
    'Distributed training is not used, all SyncBatchNorm',  # a non-distributed run has no SyncBN to revert
)
#: warnings mmengine gives about its own internals (its CheckpointHook builds a ``FileClient`` on every run);
#: nothing a user can change, so they go to the log file only
_INTERNAL_WARNINGS = (
    '"FileClient" will be deprecated',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)
#: ``INFO`` records matching this are the environment block mmengine prints first
_ENV_BLOCK = re.compile(r'^\s*-+\s*\n\s*System environment:', re.S)
#: mmseg's ``IoUMetric`` logs this header, then the table of every class as the next record
_TABLE_HEADER = 'per class results:'


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, '').strip().lower() not in ('', '0', 'false', 'no', 'off')


class ConsoleFilter(logging.Filter):
    """Drops the ``INFO`` (and lower) records that only mmengine's internals need, and mmengine's warnings about its
    own deprecated internals; every other warning and every error passes."""

    def __init__(self) -> None:
        super().__init__('pelk_mm.console')
        self._table_follows = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return record.levelno > logging.WARNING or not message.startswith(_INTERNAL_WARNINGS)
        if self._table_follows:
            self._table_follows = False
            if message.lstrip('\n').startswith('+'):
                return False
        if message.startswith(_TABLE_HEADER):
            self._table_follows = True
            return False
        return not (message.startswith(_FILE_ONLY_PREFIXES) or _ENV_BLOCK.match(message))


def quiet_console(logger: logging.Logger) -> logging.Logger:
    """Give ``logger``'s console handlers a :class:`ConsoleFilter` (once); file handlers are left as they are."""
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) and \
                not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    return logger


def quiet_runner_class(runner_cls: type) -> type:
    """``runner_cls`` unchanged when verbose, else a subclass whose logger keeps the console to what users need."""
    if verbose():
        return runner_cls

    class QuietConsoleRunner(runner_cls):
        def build_logger(self, *args, **kwargs):
            return quiet_console(super().build_logger(*args, **kwargs))

    QuietConsoleRunner.__name__ = QuietConsoleRunner.__qualname__ = runner_cls.__name__
    QuietConsoleRunner.__module__ = runner_cls.__module__
    return QuietConsoleRunner


def log_file_of(runner) -> Optional[str]:
    """The file the Runner's logger writes (``None`` if it has none, e.g. on ranks > 0)."""
    for handler in getattr(runner, 'logger', None).handlers if getattr(runner, 'logger', None) else ():
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def final_metrics(runner, prefix: str = 'val/') -> Dict[str, float]:
    """The last value of every metric the Runner's message hub holds under ``prefix`` (what validation logged last)."""
    out: Dict[str, float] = {}
    for key, buffer in runner.message_hub.log_scalars.items():
        if key.startswith(prefix) and not key.endswith(('time', 'data_time')):
            out[key[len(prefix):]] = float(buffer.current())
    return out
