"""The web page's jobs: one de-raining at a time, a bounded queue, a time limit per job (`mgid.derain.web`).

`JobQueue.slot` takes one of the slots (one running job, at most ``max_waiting`` waiting) or raises `QueueFull`
with a ``retry_after`` estimate; `JobQueue.run` runs a job alone under `mgid.derain.time_limit.time_limit` and
returns its result with the seconds it waited and ran. Details: docs/DEPLOY.md, "Design notes".
"""
from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from mgid.derain.time_limit import time_limit
from mgid.errors import InputError, MgidError

T = TypeVar("T")
#: Recent job durations kept for the Retry-After estimate.
_HISTORY = 8


class QueueFull(MgidError, RuntimeError):
    """Every slot is taken; ``retry_after``: seconds after which one is expected to be free."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobTiming:
    """Seconds a job waited for the network, and seconds it ran."""

    queued: float
    seconds: float


class CountedSlots:
    """At most ``limit`` holders at once, taken without waiting, with the number taken now.

    Args:
        limit: Holders at once (>= 1).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)
        self._guard = threading.Lock()
        self._taken = 0

    @property
    def taken(self) -> int:
        """Slots held now."""
        return self._taken

    def try_take(self) -> bool:
        """Take a slot if one is free (then `give` it back); False at once when none is."""
        if not self._free.acquire(blocking=False):
            return False
        with self._guard:
            self._taken += 1
        return True

    def give(self) -> None:
        """Give back a slot `try_take` took."""
        with self._guard:
            self._taken -= 1
        self._free.release()


class JobQueue:
    """One running job, at most ``max_waiting`` waiting, each limited to ``job_seconds`` (None: no limit)."""

    def __init__(self, max_waiting: int, job_seconds: float | None) -> None:
        if max_waiting < 0:
            raise InputError(f"the queue holds >= 0 waiting jobs, got {max_waiting}")
        if job_seconds is not None and not job_seconds > 0:
            raise InputError(f"the time limit of a job must be positive seconds (or None), got {job_seconds}")
        self.max_waiting, self.job_seconds = max_waiting, job_seconds
        self._slots = CountedSlots(max_waiting + 1)
        self._network = threading.Lock()
        self._guard = threading.Lock()  # the recent job times
        self._recent: collections.deque[float] = collections.deque(maxlen=_HISTORY)

    @property
    def taken(self) -> int:
        """Slots taken now (the running job and the waiting ones)."""
        return self._slots.taken

    def retry_after(self) -> int:
        """Seconds until a slot is expected to be free: the jobs holding slots times the mean recent job time
        (the time limit, or 60 s, before any job has finished); at least 1."""
        with self._guard:
            mean = sum(self._recent) / len(self._recent) if self._recent else (self.job_seconds or 60.0)
        return max(1, math.ceil(mean * max(self._slots.taken, 1)))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the block; `QueueFull` at once when none is free."""
        if not self._slots.try_take():
            raise QueueFull(f"the server is busy: {self.max_waiting + 1} photos are being de-rained or waiting; "
                            f"try again in a moment", self.retry_after())
        try:
            yield
        finally:
            self._slots.give()

    def run(self, job: Callable[[], T]) -> tuple[T, JobTiming]:
        """Wait for the network, run ``job`` under the time limit; (its result, how long it waited and ran).
        Raises what ``job`` raises, `mgid.derain.time_limit.TimeLimitExceeded` among them."""
        arrived = time.perf_counter()
        with self._network:
            start = time.perf_counter()
            try:
                with time_limit(self.job_seconds):
                    result = job()
            finally:
                took = time.perf_counter() - start
                with self._guard:
                    self._recent.append(took)
        return result, JobTiming(start - arrived, took)
