"""The task monitor: spawn long-lived or one-shot tasks and hear about failures."""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, TypeVarTuple

import attrs
import trio

from ._broadcast import Broadcaster, publish_or_log
from ._core import FINITE, INFINITE, FailurePolicy, SupervisedNursery, TaskState, open_component
from ._failures import TaskFailure, TaskInfo
from ._validate import check_str, shown

__all__ = ["MonitorStatistics", "TaskHandle", "TaskMonitor", "open_monitor"]

logger = logging.getLogger("trio_monitor.monitor")

PosArgs = TypeVarTuple("PosArgs")


@attrs.frozen
class MonitorStatistics:
    """A snapshot of a :class:`TaskMonitor`.

    Attributes:
      active_tasks (int): Tasks spawned and not finished yet.
      subscribers (int): Open subscriptions; one whose receive channel was
        closed no longer counts, even before the next failure.
      dropped_failures (int): Reports a full subscriber buffer had no room
        for, summed over subscribers.
    """

    active_tasks: int
    subscribers: int
    dropped_failures: int


def _abort_dropped(state: TaskState, token: trio.lowlevel.TrioToken) -> None:
    # Runs from a finalizer: during GC, on any thread, maybe after the run.
    # Only the flag is set here (a plain store); the cancel itself must run
    # in the Trio thread.
    if state.done:
        return
    state.aborted = True
    with suppress(trio.RunFinishedError):
        token.run_sync_soon(state.abort)


class TaskHandle:
    """Controls one task spawned by a :class:`TaskMonitor`.

    Dropping a handle does nothing to its task unless :meth:`abort_on_drop`
    was called. An aborted task is never reported as a failure, whatever it
    does while it is being cancelled.

    ``with handle:`` aborts the task when the block exits.
    """

    __slots__ = ("__weakref__", "_finalizer", "_state", "_token")

    def __init__(self, state: TaskState, token: trio.lowlevel.TrioToken) -> None:
        self._state = state
        self._token = token
        self._finalizer: weakref.finalize[..., Any] | None = None

    @property
    def info(self) -> TaskInfo:
        """The task's :class:`TaskInfo` (id and name)."""
        return self._state.info

    def abort(self) -> None:
        """Cancel the task; it will not be reported.

        Returns at once; use :meth:`wait` to know when it has exited. Safe to
        call more than once and after the task finished. Call it from the
        Trio thread (from another one: ``trio.from_thread.run_sync(handle.abort)``).
        """
        if not self._state.done:
            self._state.abort()

    def is_finished(self) -> bool:
        """Whether the task has exited, whatever the outcome."""
        return self._state.done

    async def wait(self) -> None:
        """Wait until the task has exited, whatever the outcome.

        This never raises the task's exception: failures go to subscribers.
        """
        await self._state.wait()

    def abort_on_drop(self) -> TaskHandle:
        """Make the task stop when this handle is garbage-collected.

        Returns the same handle, so that ``h = monitor.spawn_...(...).abort_on_drop()``
        reads naturally. The drop may happen during garbage collection on any
        thread: the task is marked aborted at once (no report from then on)
        and its cancellation is scheduled through the run's
        :class:`trio.lowlevel.TrioToken`. After the run has ended a drop does
        nothing.
        """
        if self._finalizer is None:
            finalizer = weakref.finalize(self, _abort_dropped, self._state, self._token)
            finalizer.atexit = False
            self._finalizer = finalizer
        return self

    def __enter__(self) -> TaskHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    def __repr__(self) -> str:
        status = "finished" if self._state.done else "running"
        return f"<TaskHandle {self._state.name!r} id={self._state.id} {status}>"


def _error_types(
    errors: type[Exception] | tuple[type[Exception], ...],
) -> tuple[type[Exception], ...]:
    types = (errors,) if isinstance(errors, type) else errors
    if not isinstance(types, tuple) or not all(
        isinstance(t, type) and issubclass(t, Exception) for t in types
    ):
        raise TypeError(
            "errors must be an Exception subclass or a tuple of them, not "
            f"{shown(errors)} (BaseExceptions such as trio.Cancelled are never treated as errors)"
        )
    return types


class TaskMonitor:
    """Spawns supervised tasks and broadcasts their failures.

    Get one from :func:`open_monitor`. Spawning is synchronous, like
    :meth:`trio.Nursery.start_soon`: the task starts at the next scheduling
    point. Like ``start_soon``, every ``spawn_*`` method checks ``async_fn``
    at once, so a coroutine object, a synchronous function or wrong
    arguments raise :exc:`TypeError` in the spawning code. (A plain ``async
    def`` function whose arguments bind is called when its task starts: the
    call cannot fail then, and no coroutine waits in memory meanwhile. Any
    other callable is called at spawn, as ``start_soon`` does.) While the
    monitor's block is ending, a spawn is born aborted: the task never runs
    and is not reported, and a warning is logged (so that a task respawning
    itself in its ``finally`` cannot keep the block from exiting). After the
    block has exited, spawning raises :exc:`RuntimeError`.
    """

    def __init__(
        self, supervisor: SupervisedNursery, broadcaster: Broadcaster[TaskFailure]
    ) -> None:
        self._supervisor = supervisor
        self._broadcaster = broadcaster
        self._token = trio.lowlevel.current_trio_token()

    def subscribe(
        self, max_buffer_size: int | float = 64
    ) -> trio.MemoryReceiveChannel[TaskFailure]:
        """A new receive channel that gets every failure reported from now on.

        Each subscriber has its own buffer of ``max_buffer_size`` reports
        (``math.inf`` for unbounded). A subscriber that falls behind misses
        the overflow (counted in ``statistics().dropped_failures``); the
        failing task never waits for it. Close the channel to unsubscribe.
        When the monitor closes, the channel ends and ``async for`` finishes.

        Raises:
          TypeError: ``max_buffer_size`` is neither an int nor ``math.inf``.
          ValueError: ``max_buffer_size`` is negative.
        """
        return self._broadcaster.subscribe(max_buffer_size)

    def _spawn(
        self,
        name: str,
        async_fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        policy: FailurePolicy,
    ) -> TaskHandle:
        if type(name) is not str:
            check_str("task name", name, allow_empty=True)
        return TaskHandle(self._supervisor.spawn(name, async_fn, args, policy), self._token)

    def spawn_infinite(
        self,
        name: str,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
    ) -> TaskHandle:
        """Spawn a task that should run until it is aborted.

        Returning is reported as :class:`EarlyTermination`; raising an
        :class:`Exception` as :class:`Panic`.
        """
        return self._spawn(name, async_fn, args, INFINITE)

    def spawn_finite(
        self,
        name: str,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
    ) -> TaskHandle:
        """Spawn a one-shot task. Returning is success; raising is a :class:`Panic`."""
        return self._spawn(name, async_fn, args, FINITE)

    def spawn_fallible(
        self,
        name: str,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
        errors: type[Exception] | tuple[type[Exception], ...] = (Exception,),
    ) -> TaskHandle:
        """Spawn a one-shot task that may fail in expected ways.

        Raising an instance of ``errors`` is reported as :class:`Error`, any
        other :class:`Exception` as :class:`Panic`; returning is success.
        """
        policy = FailurePolicy(runs_forever=False, errors=_error_types(errors))
        return self._spawn(name, async_fn, args, policy)

    def active_tasks(self) -> list[TaskInfo]:
        """The tasks spawned and not finished yet, oldest first."""
        return [state.info for state in self._supervisor.tasks.values()]

    def statistics(self) -> MonitorStatistics:
        """Counts of active tasks, subscribers and dropped reports."""
        return MonitorStatistics(
            active_tasks=len(self._supervisor.tasks),
            subscribers=self._broadcaster.subscribers,
            dropped_failures=self._broadcaster.dropped,
        )


@asynccontextmanager
async def open_monitor() -> AsyncGenerator[TaskMonitor, None]:
    """Open a :class:`TaskMonitor` whose tasks live inside this block.

    When the block ends (normally, by an exception or by cancellation) every
    task still running is aborted, without a report, and the block exits once
    they are gone; every subscription then ends. Tasks spawned meanwhile are
    born aborted (see :class:`TaskMonitor`). An exception from the block
    propagates as itself.
    """
    broadcaster: Broadcaster[TaskFailure] = Broadcaster()
    async with open_component(
        lambda supervisor: TaskMonitor(supervisor, broadcaster),
        lambda failure: publish_or_log(broadcaster, failure, logger),
        on_close=lambda _monitor: broadcaster.close(),
        logger=logger,
    ) as monitor:
        yield monitor
