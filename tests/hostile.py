"""Hostile things for the edge-case tests: code a careless or unlucky user writes.

Shared by the regression tests and the state machines of every component.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable

import trio


class UnprintableError(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class Misbehaviour(enum.Enum):
    """What a task does when it is cancelled (or, for ``FAIL_*``, on its own)."""

    #: Nothing odd: it lets its Cancelled through.
    POLITE = "polite"
    #: Raises an Exception from its ``finally`` (a connection reset on close).
    RAISE_IN_FINALLY = "raise_in_finally"
    #: Raises an UnprintableError from its ``finally``.
    RAISE_UNPRINTABLE_IN_FINALLY = "raise_unprintable_in_finally"
    #: Catches Cancelled and returns.
    SWALLOW_AND_RETURN = "swallow_and_return"
    #: Catches Cancelled and raises an Exception instead.
    SWALLOW_AND_RAISE = "swallow_and_raise"
    #: Sits in ``trio.to_thread.run_sync(time.sleep, ...)`` (not abandoned), so
    #: its cancellation waits for the thread.
    BLOCK_IN_THREAD = "block_in_thread"


#: How long a BLOCK_IN_THREAD task sleeps in its thread, real seconds.
THREAD_SLEEP = 0.01


async def run_misbehaving(how: Misbehaviour, seconds: float) -> None:
    """Sleep ``seconds`` (``math.inf``: for ever), misbehaving as ``how`` says.

    Returns normally if the sleep ends on its own.
    """
    if how is Misbehaviour.BLOCK_IN_THREAD:
        # Some Trio time passes first, so a cancellation can find it anywhere.
        await trio.sleep(min(seconds, 0.5))
        await trio.to_thread.run_sync(time.sleep, THREAD_SLEEP)
        await trio.sleep(max(seconds - 0.5, 0))
        return
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        if how is Misbehaviour.SWALLOW_AND_RETURN:
            return
        if how is Misbehaviour.SWALLOW_AND_RAISE:
            raise ConnectionResetError("cancelled, turned into an error") from None
        raise
    finally:
        if how is Misbehaviour.RAISE_IN_FINALLY:
            raise ConnectionResetError("reset while closing")
        if how is Misbehaviour.RAISE_UNPRINTABLE_IN_FINALLY:
            raise UnprintableError


def respawning(spawn: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    """A reconnect loop: an endless task that respawns itself from its ``finally``."""

    async def loop() -> None:
        try:
            await trio.sleep_forever()
        finally:
            spawn()

    return loop
