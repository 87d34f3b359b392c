"""A time limit on one de-raining, checked between tiles: ``with time_limit(120): derainer.derain(rgb)``.

The network cannot be stopped in the middle of a pass, so the limit is cooperative: tiled inference
(`mgid.derain.tiling.tiled_rain`, both its statistics pass and its blending pass) calls `check_time_limit` before
each tile, which raises `TimeLimitExceeded` once the limit has passed. A caller that wants the limit kept to
within a tile's time bounds the tile size (``mgid web`` does). The limit lives in a context variable, so each
thread (each request of a threaded server) has its own and code that sets none pays one lookup per tile.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mgid.errors import MgidError

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("mgid_time_limit", default=None)


class TimeLimitExceeded(MgidError, RuntimeError):
    """The de-raining ran past its time limit (raised between tiles)."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Within the block, `check_time_limit` raises once ``seconds`` have passed (None: no limit)."""
    if seconds is not None and not seconds > 0:
        raise ValueError(f"a time limit must be positive seconds (or None), got {seconds!r}")
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
