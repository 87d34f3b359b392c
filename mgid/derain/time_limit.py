"""A time limit on one de-raining, checked between tiles: ``with time_limit(120): derainer.derain(rgb)``.

The limit is cooperative: tiled inference calls `check_time_limit` before each tile, which raises
`TimeLimitExceeded` once the limit has passed; bound the tile size to keep the limit to within a tile's time. Each
thread has its own limit (a context variable). Details: docs/DEPLOY.md, "Design notes".
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mgid.errors import InputError, MgidError

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("mgid_time_limit", default=None)


class TimeLimitExceeded(MgidError, RuntimeError):
    """The de-raining ran past its time limit (raised between tiles)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within the block, `check_time_limit` raises once ``seconds`` have passed (None: no limit)."""
    if seconds is not None and not seconds > 0:
        raise InputError(f"a time limit must be positive seconds (or None), got {seconds!r}")
    token = _DEADLINE.set(None if seconds is None else (time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_time_limit() -> None:
    """Raise `TimeLimitExceeded` when the enclosing `time_limit` has run out; nothing otherwise."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline[0]:
        raise TimeLimitExceeded(f"de-raining ran past its time limit of {deadline[1]:g} s")
