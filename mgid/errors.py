"""The base of the errors mgid raises on purpose.

Every exception class of the package derives from `MgidError` and, where a builtin says what kind of error it is,
from that builtin too (``class CheckpointError(MgidError, ValueError)``), so ``except ValueError`` keeps working and
``except MgidError`` catches exactly what mgid itself raised (bad input, files, settings, limits) and nothing a
library or a bug raised. The command line reports `MgidError` and `OSError` in one line (exit code 2) and lets
anything else through as a traceback.
"""
from __future__ import annotations


class MgidError(Exception):
    """Base of every exception class mgid defines."""


class InputError(MgidError, ValueError):
    """A value mgid cannot use: an argument or setting out of range, a tensor of the wrong shape, dtype or device,
    a file whose content is not what it should be."""


class MissingDependencyError(MgidError, ModuleNotFoundError):
    """An optional package a feature needs is not installed; the message says which and how to install it."""
