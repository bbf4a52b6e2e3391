"""Hostile things for the edge-case tests: code a careless or unlucky user writes.

Shared by the regression tests and the state machines of every component.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from trio_monitor import Panic, TaskFailure


class UnprintableError(Exception):
    """An exception whose ``__str__`` and ``__repr__`` both raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


async def raise_unprintable() -> None:
    raise UnprintableError


def assert_reported_readably(failure: TaskFailure, record: logging.LogRecord) -> None:
    """``failure`` and its log ``record`` describe an UnprintableError readably."""
    reason = failure.reason
    assert isinstance(reason, Panic)
    assert isinstance(reason.exception, UnprintableError)
    assert reason.message == "<unprintable UnprintableError>"
    assert "UnprintableError" in record.getMessage()
    # The whole record, traceback included, formats: logging is not broken.
    assert "UnprintableError" in logging.Formatter().format(record)


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


async def sleep_in_thread() -> None:
    """Block in a worker thread that ignores cancellation (not abandoned)."""
    await trio.to_thread.run_sync(time.sleep, THREAD_SLEEP)


async def run_misbehaving(
    how: Misbehaviour,
    seconds: float,
    *,
    on_cancel: Callable[[], object] | None = None,
    block: Callable[[], Awaitable[None]] = sleep_in_thread,
) -> None:
    """Sleep ``seconds`` (``math.inf``: for ever), misbehaving as ``how`` says.

    Returns normally if the sleep ends on its own (and raises from its
    ``finally`` for the ``RAISE_*`` kinds, whatever the ending). ``on_cancel``
    is called when a Cancelled reaches it; ``block`` is the thread a
    BLOCK_IN_THREAD task sits in, at its start and half-way through.
    """
    try:
        if how is Misbehaviour.BLOCK_IN_THREAD:
            # In its thread at once, and again half-way through.
            await block()
            await trio.sleep(seconds / 2)
            await block()
            await trio.sleep(seconds / 2)
        else:
            await trio.sleep(seconds)
    except trio.Cancelled:
        if on_cancel is not None:
            on_cancel()
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


@attrs.define(eq=False)
class Track:
    """One test task's own account of what it did, in virtual time.

    ``run(block)`` is the task's body: it sleeps ``seconds`` misbehaving as
    ``how`` says (``block`` is its thread, see :func:`run_misbehaving`), then
    raises ``fails()`` if given.
    """

    how: Misbehaviour
    seconds: float
    fails: type[Exception] | None = None
    started_at: float | None = None
    #: When a Cancelled first reached the task's code.
    cancelled_at: float | None = None
    ended_at: float | None = None
    #: "returned", "raised" (an Exception: ``error``) or "cancelled".
    outcome: str | None = None
    error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.ended_at is None

    def _saw_cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = trio.current_time()

    async def run(self, block: Callable[[], Awaitable[None]] = sleep_in_thread) -> None:
        self.started_at = trio.current_time()
        try:
            await run_misbehaving(self.how, self.seconds, on_cancel=self._saw_cancel, block=block)
            if self.fails is not None:
                raise self.fails("own failure")
        except Exception as exc:
            self.outcome, self.error = "raised", exc
            raise
        except BaseException:
            self._saw_cancel()
            self.outcome = "cancelled"
            raise
        else:
            self.outcome = "returned"
        finally:
            self.ended_at = trio.current_time()
