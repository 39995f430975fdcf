"""Exceptions about the user's files that any layer may raise (torch only, no imports of the package)."""
from __future__ import annotations

__all__ = ['DataFileError']


class DataFileError(ValueError):
    """A data file the run reads (an image, an annotation list) is unreadable or malformed; ``str(err)`` is one
    line naming the file (and the line) and the fix."""
