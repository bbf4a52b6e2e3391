"""Drive one Trio run, step by step, from a synchronous Hypothesis state machine.

A :class:`TrioHost` runs ``trio.run`` on a thread of its own with a frozen
:class:`trio.testing.MockClock` (rate 0, no autojump): virtual time moves only
when a rule says so, :data:`STEP` seconds at a time, so every example replays
the same way. Each :meth:`TrioHost.call` runs an async function in the run,
then waits until every task is blocked, so rules and invariants always see a
settled state.

Threads are made deterministic the same way: a task that "blocks in a
thread" (:meth:`Gate.block`) sits in a real worker thread, ignoring
cancellation like any ``trio.to_thread.run_sync`` call, until the clock
next moves on. So a cancellation can land while it is in its thread (at a
deadline, or an abort between two rules), and it then costs one step of
virtual time, never a wall-clock race.

Every call has a wall-clock limit too: a stop that never ends (a respawn
loop, say) fails the example instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
import trio.testing

T = TypeVar("T")

#: How far the clock moves in one step: a power of two, so sums are exact.
STEP = 0.125

#: Real seconds any single call may take before the example fails.
REAL_LIMIT = 20.0


class Gate:
    """Worker threads that return once the virtual clock has moved on."""

    def __init__(self) -> None:
        self._blocked: list[tuple[threading.Event, trio.Event]] = []

    async def block(self) -> None:
        """Sit in a worker thread (not abandoned on cancel) until the next step."""
        go, returned = threading.Event(), trio.Event()
        self._blocked.append((go, returned))
        try:
            await trio.to_thread.run_sync(go.wait, REAL_LIMIT)
        finally:
            returned.set()

    async def release(self) -> None:
        """Let every thread blocked so far return, and wait until they have."""
        blocked, self._blocked = self._blocked, []
        for go, _ in blocked:
            go.set()
        for _, returned in blocked:
            await returned.wait()

    def release_now(self) -> None:
        """Let every blocked thread return (from any thread, at teardown)."""
        for go, _ in self._blocked:
            go.set()


class TrioHost:
    """A Trio run on its own thread, driven by calls from the test's thread.

    ``body(host)`` is the run's main task; ``host.nursery`` (open around it)
    takes helper tasks. The run ends at :meth:`close`.
    """

    def __init__(self, body: Callable[[TrioHost], Awaitable[None]]) -> None:
        self.clock = trio.testing.MockClock()
        self.gate = Gate()
        self.nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._started = threading.Event()
        self._cancel_all: trio.CancelScope | None = None
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(body,), daemon=True)
        self._thread.start()
        if not self._started.wait(REAL_LIMIT):  # pragma: no cover
            raise AssertionError("the Trio run did not start")
        if self.crash is not None:  # pragma: no cover
            raise self.crash

    def _run(self, body: Callable[[TrioHost], Awaitable[None]]) -> None:
        try:
            trio.run(self._main, body, clock=self.clock)
        except BaseException as exc:  # pragma: no cover - reported by close()
            self.crash = exc
        finally:
            self._started.set()

    async def _main(self, body: Callable[[TrioHost], Awaitable[None]]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._cancel_all:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._started.set()
                await body(self)
                # The run (and calls into it) outlive the body until close().
                await trio.sleep_forever()

    def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` in the run, let it settle; its result or error."""
        assert self._token is not None
        box: list[outcome.Outcome[T]] = []
        done = threading.Event()

        async def runner() -> None:
            result = await outcome.acapture(async_fn, *args)
            if isinstance(result, outcome.Value):
                result = await outcome.acapture(self._settle_then, result.value)
            box.append(result)
            done.set()

        self._token.run_sync_soon(trio.lowlevel.spawn_system_task, runner)
        if not done.wait(REAL_LIMIT):
            raise AssertionError(
                f"{getattr(async_fn, '__name__', async_fn)} still running after "
                f"{REAL_LIMIT:g}s of real time: a stop that never ends?"
            )
        return box[0].unwrap()

    async def _settle_then(self, value: T) -> T:
        await self.settle()
        return value

    async def settle(self) -> None:
        """Return once every task is blocked (threads included) at this instant."""
        await trio.testing.wait_all_tasks_blocked()

    async def advance(self, seconds: float, until: Callable[[], bool] | None = None) -> float:
        """Move the clock ``seconds`` on, a step at a time, or until ``until()``.

        After each step, the threads blocked before it return, and every task
        settles. Returns the virtual time that passed.
        """
        start = trio.current_time()
        while True:
            await self.settle()
            elapsed = trio.current_time() - start
            if until is not None and until():
                return elapsed
            if elapsed >= seconds:
                return elapsed
            self.clock.jump(STEP)
            await self.gate.release()

    def close(self) -> None:
        """End the run (cancelling whatever is left) and join its thread."""
        self.gate.release_now()
        if self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._cancel)
        self._thread.join(REAL_LIMIT)
        assert not self._thread.is_alive(), "the Trio run did not end"
        if self.crash is not None:
            raise self.crash

    def _cancel(self) -> None:
        if self._cancel_all is not None:
            self._cancel_all.cancel()


class Records(logging.Handler):
    """Keeps every record a logger writes (the machines check them all)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
