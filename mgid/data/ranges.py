"""Validation of the renderers' settings: one (low, high) range or one number, with messages naming the field.

`check_range` and `check_value` serve `RainConfig`, `LayerRainConfig` and `PerspectiveRainConfig`; each message
starts with ``<owner>.<field>`` (e.g. ``RainConfig.density_range``) and says what is wrong.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from mgid.errors import InputError


def check_range(owner: str, name: str, r: Sequence[float], lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``r`` is a finite (low, high) pair with low <= high, low >= ``lo`` (> with
    ``lo_open``) and high <= ``hi`` (None: no bound)."""
    if len(r) != 2:
        raise InputError(f"{owner}.{name} must be a (low, high) pair, got {r!r}")
    a, b = float(r[0]), float(r[1])
    if not (math.isfinite(a) and math.isfinite(b)):
        raise InputError(f"{owner}.{name} must be finite, got {r!r}")
    if a > b:
        raise InputError(f"{owner}.{name}: lower bound {a} is above upper bound {b}")
    if lo is not None and (a <= lo if lo_open else a < lo):
        raise InputError(f"{owner}.{name}: {a} is below the allowed minimum {lo}{' (exclusive)' if lo_open else ''}")
    if hi is not None and b > hi:
        raise InputError(f"{owner}.{name}: {b} is above the allowed maximum {hi}")


def check_value(owner: str, name: str, v: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``v`` is finite and lies in the interval from ``lo`` to ``hi`` (None: unbounded;
    ``lo_open`` / ``hi_open`` exclude the bound); the message writes the interval."""
    v = float(v)
    bad = not math.isfinite(v)
    bad |= lo is not None and (v <= lo if lo_open else v < lo)
    bad |= hi is not None and (v >= hi if hi_open else v > hi)
    if bad:
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        interval = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
        raise InputError(f"{owner}.{name} must lie in {interval}, got {v}")
