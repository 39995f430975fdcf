"""Every exception class of pelk_mm, and how a user error is shown: one line, no traceback.

This module is the leaf of the package (standard library only): any layer may raise these, and the launcher's
:func:`pelk_mm.apis.cli.run_cli` catches exactly :data:`USER_ERRORS`. Each class is raised with a message that is
one line naming the offending value (file, config key, argument) and the fix.

Exit status of the tools: 2 for a user error, 3 when training was stopped by
:class:`~pelk_mm.engine.NonFiniteGuardHook` (:class:`NonFiniteTrainingError`).
"""
from __future__ import annotations

from typing import Optional, Tuple, Type

__all__ = [
    'LaunchError', 'ConfigValidationError', 'MissingDataError', 'DataFileError', 'DiskFullError',
    'CheckpointLoadError', 'CorruptCheckpointError', 'UnsafeCheckpointError', 'DeployFormError', 'DeployError',
    'NonFiniteTrainingError', 'ModelIndexError', 'MissingWeightsError', 'USER_ERRORS', 'one_line',
    'format_user_error', 'exit_code', 'check_int'
]


# --------------------------------------------------------------------------------------------------- launch, config
class LaunchError(RuntimeError):
    """A bad command line or config for the launcher; ``str(err)`` is the message shown to the user."""


class ConfigValidationError(ValueError):
    """A config value that cannot work. ``key`` is the dotted config key; ``str(err)`` is the one-line message."""

    def __init__(self, message: str, key: str = ''):
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return self.args[0]


# --------------------------------------------------------------------------------------------------- data, disk
class MissingDataError(FileNotFoundError):
    """A dataset path named in the config does not exist. ``str(err)`` is the user-facing paragraph."""

    def __init__(self, message: str, key: str, path: str):
        super().__init__(message)
        self.key = key
        self.path = path

    def __str__(self) -> str:
        return self.args[0]


class DataFileError(ValueError):
    """A data file the run reads (an image, an annotation list) is unreadable or malformed; ``str(err)`` is one
    line naming the file (and the line) and the fix."""


class DiskFullError(OSError):
    """A write failed because the disk is full (``ENOSPC``); ``str(err)`` is one line naming the path, the free
    space and the fix. The file that was being replaced is intact."""

    def __str__(self) -> str:
        return self.strerror or 'no space left on device'


# --------------------------------------------------------------------------------------------------- checkpoints
class CheckpointLoadError(RuntimeError):
    """A checkpoint exists but cannot be used (unreadable, damaged or refused); ``str(err)`` is one line."""


class CorruptCheckpointError(CheckpointLoadError):
    """The file is truncated, or a record's data do not match its stored CRC-32."""


class UnsafeCheckpointError(CheckpointLoadError):
    """Unpickling the file would call a global outside the safe allow-list (it could run code)."""


class DeployFormError(ValueError):
    """A checkpoint holds the other form of a re-parameterisable layer: train-form weights (shared weights, BNs,
    small-kernel branch) for a model built with ``deploy=True``, or deploy-form weights for a train-form model.
    ``str(err)`` is one line naming both forms and the fix."""


class DeployError(ValueError):
    """A bad input to the deployment tools (config, form, shape, missing package); ``str(err)`` is one line."""


# --------------------------------------------------------------------------------------------------- model index
class ModelIndexError(ValueError):
    """A model name that pelk_mm's model index (``model-index.yml``) does not hold, or holds for another codebase
    than the one asked; ``str(err)`` is one line naming the closest name or the right codebase."""


class MissingWeightsError(FileNotFoundError):
    """Weights asked for by model name (``pretrained=True``, an inferencer without ``weights``) that do not exist:
    no PeLK weights are published. ``str(err)`` is one line naming the config to train and the file it writes."""

    def __str__(self) -> str:
        return self.args[0]


# --------------------------------------------------------------------------------------------------- training
class NonFiniteTrainingError(RuntimeError):
    """Training stopped because of repeated non-finite losses/gradients (``str(err)`` is the one-line message)."""


#: what the tools print as one line (``error: ...``) with exit status 2 (3 for a non-finite stop)
USER_ERRORS: Tuple[Type[BaseException], ...] = (
    LaunchError, MissingDataError, ConfigValidationError, CheckpointLoadError, NonFiniteTrainingError,
    DataFileError, DiskFullError, DeployFormError, DeployError, ModelIndexError, MissingWeightsError)


def one_line(err: BaseException, with_type: bool = False) -> str:
    """The message of ``err`` on one line (its lines joined); ``with_type`` prefixes the exception class.

    mmengine's registry re-raises errors from inside a build as ``type(err)('class `X` in file: ...')`` and a
    DataLoader worker re-raises with the worker's traceback: both keep the original message, which is returned.
    """
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
    """3 for a training stopped by non-finite values, 2 for every other user error."""
    return 3 if isinstance(err, NonFiniteTrainingError) else 2


def check_int(name: str, value, minimum: int = 1, odd: bool = False, maximum: Optional[int] = None,
              maximum_name: str = '', why: str = '') -> int:
    """``value`` if it is an int (not a bool) ``>= minimum`` (odd when ``odd``, at most ``maximum``), else a
    ``ValueError`` of one line: ``<name> must be a positive [odd] int[ (why)], got <name>=<value>``."""
    kind = ('a positive ' if minimum == 1 else f'an ') + ('odd int' if odd else 'int') + \
        ('' if minimum == 1 else f' >= {minimum}')
    because = f' ({why})' if why else ''
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (odd and value % 2 == 0):
        raise ValueError(f'{name} must be {kind}{because}, got {name}={value!r}')
    if maximum is not None and value > maximum:
        raise ValueError(f'{name}={value} must not exceed {maximum_name or maximum}={maximum}{because}')
    return value
