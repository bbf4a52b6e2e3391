"""Readings that are too costly to redo on every request once the database is big.

Counting a million rows takes SQLite over a second, and decoding the newest
thousand finished jobs for the chart tens of milliseconds; the pages poll
every two seconds, from every open browser. A :class:`Cached` reading is
reused while it is younger than the age its value allows (small values:
never reused; big ones: a few seconds, and the page says so).

While the app's lifespan runs (it does under ``trio-monitor dashboard`` and
any ASGI server that sends lifespan events), :func:`refresh_in_background`
re-reads costly values before they expire, so that no request waits for
one; requests meanwhile get the last reading. Without it (an app mounted
in another one gets no lifespan events) the request that finds a reading
expired redoes it, one request at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

__all__ = ["Cached", "refresh_in_background"]

logger = logging.getLogger("trio_monitor.dashboard")

T = TypeVar("T")

#: Background refreshes stop when nobody asked for a reading for this long.
IDLE_AFTER = 60.0
#: The background task looks this often whether a reading is due.
TICK = 0.5
#: It re-reads at this fraction of the allowed age, so requests never see it expire.
EARLY = 0.8


class Cached(Generic[T]):
    """``read()``, reused while younger than ``max_age(value)`` seconds (Trio's clock)."""

    def __init__(self, read: Callable[[], Awaitable[T]], max_age: Callable[[T], float]) -> None:
        self._read = read
        self._max_age = max_age
        self._lock = trio.Lock()
        self._value: T | None = None
        self._read_at = -math.inf
        self._asked_at = -math.inf
        #: True while a background task keeps this reading fresh.
        self.refreshed_in_background = False
        #: How many times ``read`` ran (for tests and statistics).
        self.reads = 0

    async def get(self) -> tuple[T, bool]:
        """The value, and whether it is a reused reading."""
        self._asked_at = trio.current_time()
        fresh = self._fresh()
        if fresh is not None:
            return fresh, True
        async with self._lock:  # one read at a time; the others then reuse it
            fresh = self._fresh()
            if fresh is not None:
                return fresh, True
            return await self._reread(), False

    def _fresh(self) -> T | None:
        value = self._value
        if value is None:
            return None
        allowed = self._max_age(value)
        if self.refreshed_in_background:
            allowed *= 2  # the refresher is on it: a slow read must not cost a request
        return value if trio.current_time() - self._read_at < allowed else None

    async def refresh_if_due(self) -> None:
        """Re-read a costly value that is about to expire, if someone asked for it lately."""
        now = trio.current_time()
        value = self._value
        if value is None or now - self._asked_at > IDLE_AFTER:
            return
        max_age = self._max_age(value)
        if max_age > 0 and now - self._read_at >= EARLY * max_age:
            async with self._lock:
                await self._reread()

    async def _reread(self) -> T:
        value = await self._read()
        self._value, self._read_at = value, trio.current_time()
        self.reads += 1
        return value


async def refresh_in_background(
    readings: Sequence[Cached[Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``readings`` fresh until cancelled; a failing read is logged and retried.

    Use ``await nursery.start(refresh_in_background, readings)``: once it
    returns, requests may rely on the refresher.
    """
    for reading in readings:
        reading.refreshed_in_background = True
    task_status.started()
    try:
        while True:
            for reading in readings:
                try:
                    await reading.refresh_if_due()
                except Exception:
                    logger.exception("dashboard: a background refresh failed; retrying")
            await trio.sleep(TICK)
    finally:
        for reading in readings:
            reading.refreshed_in_background = False
