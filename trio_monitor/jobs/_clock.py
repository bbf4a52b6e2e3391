"""The job server's wall clock: UTC read at the moment it is needed.

Every timestamp the server persists (claims, due times, TTLs, heartbeats)
and every due-time comparison uses :data:`WallClock`, a callable returning
an aware UTC :class:`~datetime.datetime`. The default reads the system clock
each time, so a clock step (an NTP correction, a resumed laptop) is followed
at once instead of being carried along from the start.

Liveness never compares wall times across servers: a peer is judged by
whether its heartbeat *changes*, timed on this process's monotonic Trio
clock (see :mod:`trio_monitor.jobs._liveness`). A clock step therefore never
makes a live server look dead.

For tests under :class:`trio.testing.MockClock`, inject a
:class:`TrioWallClock`: wall time that advances with
:func:`trio.current_time`, and that a test can :meth:`~TrioWallClock.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from ._model import utcnow

__all__ = ["TrioWallClock", "WallClock", "check_clock", "trio_time_of"]

#: A wall clock: returns the current time as an aware UTC datetime.
WallClock = Callable[[], datetime]


def check_clock(clock: WallClock) -> WallClock:
    """``clock`` if it is a zero-argument callable returning an aware datetime."""
    if not callable(clock):
        raise TypeError(f"clock must be a callable returning an aware UTC datetime, not {clock!r}")
    return clock


def trio_time_of(clock: WallClock, when: datetime) -> float:
    """The :func:`trio.current_time` at which ``clock()`` should reach ``when``.

    Used only to decide how long to sleep; the due check itself reads the
    clock again, so a step in between costs at most one extra poll.
    """
    return trio.current_time() + (when - clock()).total_seconds()


class TrioWallClock:
    """Wall-clock UTC time that advances with :func:`trio.current_time`.

    Pass it as ``JobServer(..., clock=TrioWallClock())`` in tests that run
    under :class:`trio.testing.MockClock`: delays, retries, TTLs and
    heartbeats then follow virtual time. :meth:`step` moves it like an NTP
    correction would, to test that nothing depends on wall time being
    steady.

    Args:
      start: The wall time at the moment of the first call (default: the
        real time then).
    """

    __slots__ = ("_anchor", "_offset", "_start")

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError(f"start must be timezone-aware (UTC), not naive {start!r}")
        self._start = start
        self._anchor: tuple[object, datetime, float] | None = None
        self._offset = timedelta(0)

    def __call__(self) -> datetime:
        token = trio.lowlevel.current_trio_token()
        if self._anchor is None or self._anchor[0] is not token:
            # Anchored once per Trio run: trio.current_time() is per run.
            wall = self._start if self._start is not None else utcnow()
            self._anchor = (token, wall, trio.current_time())
        _, wall, mono = self._anchor
        return wall + self._offset + timedelta(seconds=trio.current_time() - mono)

    def step(self, seconds: float) -> None:
        """Jump the clock by ``seconds`` (negative: back), as a clock correction does."""
        self._offset += timedelta(seconds=seconds)
