"""The base of the errors mgid raises on purpose.

Every exception class of the package derives from `MgidError` and, where a builtin says what kind of error it is,
from that builtin too (``class CheckpointError(MgidError, ValueError)``), so ``except ValueError`` keeps working and
``except MgidError`` catches exactly what mgid itself raised (bad input, files, settings, limits) and nothing a
library or a bug raised.
"""
from __future__ import annotations


class MgidError(Exception):
    """Base of every exception class mgid defines."""
