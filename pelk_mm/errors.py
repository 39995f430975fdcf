"""Exceptions about the user's files that any layer may raise (torch only, no imports of the package)."""
from __future__ import annotations

__all__ = ['DataFileError', 'DiskFullError']


class DataFileError(ValueError):
    """A data file the run reads (an image, an annotation list) is unreadable or malformed; ``str(err)`` is one
    line naming the file (and the line) and the fix."""


class DiskFullError(OSError):
    """A write failed because the disk is full (``ENOSPC``); ``str(err)`` is one line naming the path, the free
    space and the fix. The file that was being replaced is intact."""

    def __str__(self) -> str:
        return self.strerror or 'no space left on device'
