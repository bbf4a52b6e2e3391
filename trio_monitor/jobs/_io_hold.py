"""The storage I/O hook that keeps a test clock from running ahead of a thread.

:class:`trio.testing.MockClock` with ``autojump_threshold=0`` jumps virtual
time whenever every task is blocked. A task waiting for a storage thread
(SQLite's connection thread, a PostgreSQL call) is blocked too, so the clock
would jump to the next deadline while the database is still working: a
server's poll loop would then see a job "time out" that never had the time
to start, and virtual time would race ahead of real I/O.

Each backend's thread hop wraps its wait in ``with io_in_flight():``. When
nothing is installed (every real run) that costs one global read. When a
test installs a :class:`HoldAutojump` for its Trio run
(:func:`trio_monitor.testing.open_test_server` does), the first call in
flight raises the clock's ``autojump_threshold`` to infinity and the last
one to finish puts it back: Trio's run loop then sleeps until the thread
reports (the report wakes it), and autojumps resume only once every call is
back in a Trio task. Virtual time thus advances only while the program is
really waiting on time, never on I/O.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from types import TracebackType

import trio
from trio.testing import MockClock

__all__ = ["HoldAutojump", "io_in_flight"]


class _NoHold(AbstractContextManager[None]):
    """The hook when no test clock listens: does nothing."""

    __slots__ = ()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_NO_HOLD = _NoHold()
#: Installed holds in this process: the fast path needs no run-local lookup.
_installed = 0
_HOLD: trio.lowlevel.RunVar[HoldAutojump | None] = trio.lowlevel.RunVar(
    "trio_monitor.io_hold", default=None
)


def io_in_flight() -> AbstractContextManager[None]:
    """Wrap a wait for a storage thread: ``with io_in_flight(): await ...``."""
    if not _installed:
        return _NO_HOLD
    hold = _HOLD.get()
    return _NO_HOLD if hold is None else hold


class HoldAutojump(AbstractContextManager[None]):
    """Holds a :class:`~trio.testing.MockClock`'s autojump while storage I/O is in flight.

    :meth:`install` it for the current Trio run (it is then the context
    manager :func:`io_in_flight` returns); :meth:`uninstall` when done.
    Installing twice in one run nests (the outer hold stays).
    """

    __slots__ = ("_clock", "_depth", "_in_flight", "_saved")

    def __init__(self, clock: MockClock) -> None:
        self._clock = clock
        self._in_flight = 0
        self._saved = clock.autojump_threshold
        self._depth = 0

    @staticmethod
    def install() -> HoldAutojump | None:
        """Install a hold for this run if its clock is a MockClock; return it (else None)."""
        global _installed
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, MockClock):
            return None
        hold = _HOLD.get()
        if hold is None:
            hold = HoldAutojump(clock)
            _HOLD.set(hold)
            _installed += 1
        hold._depth += 1
        return hold

    def uninstall(self) -> None:
        """Undo one :meth:`install`; the last one removes the hold."""
        global _installed
        self._depth -= 1
        if self._depth == 0:
            _HOLD.set(None)
            _installed -= 1

    @property
    def in_flight(self) -> int:
        """Storage calls waiting for a thread right now."""
        return self._in_flight

    def __enter__(self) -> None:
        if self._in_flight == 0:
            self._saved = self._clock.autojump_threshold
            self._clock.autojump_threshold = math.inf
        self._in_flight += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._clock.autojump_threshold = self._saved
