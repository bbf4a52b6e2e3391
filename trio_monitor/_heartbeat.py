"""Liveness: a supervised child says it is alive with :func:`heartbeat`.

Each run of a child started with a ``liveness_timeout`` gets a
:class:`Pulse`, bound to a context variable in the child's task; Trio copies
a task's context into the tasks it spawns, so ``heartbeat()`` works from any
task the child started too. A watchdog (:func:`wait_until_late`) sleeps until
the pulse is due and returns once it is late.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final

import trio

__all__ = ["Pulse", "bind", "heartbeat", "wait_until_late"]


class Pulse:
    """When the run last showed it was alive (Trio clock)."""

    __slots__ = ("last", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last = trio.current_time()


_PULSE: Final[ContextVar[Pulse | None]] = ContextVar("trio_monitor_pulse", default=None)


def bind(pulse: Pulse | None) -> None:
    """Make ``pulse`` the one :func:`heartbeat` beats in this task (and its children).

    Every child binds its own (None without a ``liveness_timeout``), so a
    supervisor nested in a child never beats for its parent's child.
    """
    _PULSE.set(pulse)


def heartbeat() -> None:
    """Tell the supervisor that the calling child is alive.

    A child started with ``liveness_timeout`` must call this at least that
    often, from its own task or any task it started; otherwise it is
    cancelled, reported as :class:`~trio_monitor.Hung` and restarted per its
    restart kind. Elsewhere (a child without ``liveness_timeout``, code not
    run by a supervisor) it does nothing, so shared code may call it freely.
    It is cheap (a context variable read and a clock read) and never blocks;
    call it from the Trio thread.
    """
    pulse = _PULSE.get()
    if pulse is not None:
        pulse.last = trio.current_time()


async def wait_until_late(pulse: Pulse) -> None:
    """Return once ``pulse`` has gone ``pulse.timeout`` seconds without a beat."""
    while True:
        due = pulse.last + pulse.timeout
        if trio.current_time() >= due:
            return
        await trio.sleep_until(due)
