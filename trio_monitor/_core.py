"""The supervision core shared by every component.

Three pieces, each used by all four components:

* :func:`capture` runs one body and turns its outcome into a value: it returns
  normally, or it raised an :class:`Exception` (isolated), or a
  :class:`BaseException` propagates untouched.
* :class:`SupervisedNursery` runs bodies as tasks in a nursery, each in its own
  cancel scope, remembers which ones were aborted on purpose, and reports a
  classified :class:`~trio_monitor.TaskFailure` unless they were.
* :func:`open_component` is the ``async with`` shell of a component: it owns
  the supervisor nursery, runs the component's graceful stop, aborts what is
  left, and re-raises the body's exception bare (never wrapped in an
  exception group, since supervised tasks never raise into the nursery).
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar, cast

import trio

from ._failures import EarlyTermination, Error, Panic, TaskFailure, TaskInfo, next_task_id

__all__ = [
    "FailurePolicy",
    "SupervisedNursery",
    "TaskState",
    "capture",
    "is_outer_cancelled",
    "open_component",
]

C = TypeVar("C")

AsyncFn = Callable[..., Awaitable[Any]]
Report = Callable[[TaskFailure], None]
# Sees each reported failure with the task's state (and so its ``meta``) first.
FailureHook = Callable[["TaskState", TaskFailure], None]


class FailurePolicy:
    """How to classify a task's outcome.

    ``runs_forever``: returning is an :class:`EarlyTermination`.
    ``errors``: exceptions reported as :class:`Error` rather than :class:`Panic`.
    """

    __slots__ = ("errors", "runs_forever")

    def __init__(self, *, runs_forever: bool, errors: tuple[type[Exception], ...] = ()) -> None:
        self.runs_forever = runs_forever
        self.errors = errors

    def classify(
        self, returned: bool, exc: Exception | None
    ) -> Panic | Error | EarlyTermination | None:
        """The failure reason for an outcome, or None if it is a success."""
        if exc is None:
            return EarlyTermination() if returned and self.runs_forever else None
        if self.errors and isinstance(exc, self.errors):
            return Error(str(exc), exc)
        return Panic.from_exception(exc)


FINITE: Final = FailurePolicy(runs_forever=False)
INFINITE: Final = FailurePolicy(runs_forever=True)


def is_outer_cancelled() -> bool:
    """Whether the current task sits inside a cancelled scope right now."""
    return trio.current_effective_deadline() == -math.inf


async def capture(async_fn: AsyncFn, args: tuple[Any, ...]) -> Exception | None:
    """Run ``async_fn(*args)``; return the :class:`Exception` it raised, or None.

    Exceptions are isolated; every other :class:`BaseException` propagates. A
    :class:`BaseExceptionGroup` that mixes both (a body's nursery hit by an
    outer cancellation while a child failed) is split: the non-``Exception``
    part propagates, and the ``Exception`` part is dropped, because the task
    is being stopped anyway and those errors must not escape into the
    supervisor's nursery.
    """
    try:
        await async_fn(*args)
    except Exception as exc:
        return exc
    except BaseExceptionGroup as group:
        _, others = group.split(Exception)
        assert others is not None  # an all-Exception group is an Exception
        raise others  # noqa: B904 - the group stays as its __context__
    return None


class TaskState:
    """The supervisor's record of one task. Internal; handles wrap it."""

    __slots__ = ("_done_event", "aborted", "done", "id", "meta", "name", "scope")

    def __init__(self, name: str, meta: object = None) -> None:
        self.id: int = next_task_id()
        self.name = name
        # What the component attaches to the task (the registry: kind, spawn time).
        self.meta = meta
        self.scope = trio.CancelScope()
        self.aborted = False
        self.done = False
        self._done_event: trio.Event | None = None

    @property
    def info(self) -> TaskInfo:
        return TaskInfo(self.id, self.name)

    def abort(self) -> None:
        """Cancel the task and mark it as intentionally stopped.

        The flag is set first and is a plain attribute store, so this is also
        safe from a finalizer: once it is set the task is never reported.
        """
        self.aborted = True
        self.scope.cancel()

    def mark_done(self) -> None:
        self.done = True
        if self._done_event is not None:
            self._done_event.set()

    async def wait(self) -> None:
        if self.done:
            await trio.lowlevel.checkpoint()
            return
        if self._done_event is None:
            self._done_event = trio.Event()
        await self._done_event.wait()


class SupervisedNursery:
    """Runs tasks in one nursery, each abortable, isolated and classified.

    ``report`` receives each failure of a task that was not stopped on
    purpose; it is called synchronously from the failing task, right as the
    task ends, so nothing can abort the task between its failure and its
    report. It must not block. ``on_failure``, if given, is called the same
    way just before ``report``, with the task's state too: a component logs
    there with its own per-task data (``TaskState.meta``).
    """

    __slots__ = ("_closing", "_idle", "_nursery", "_on_failure", "_report", "tasks")

    def __init__(
        self, nursery: trio.Nursery, report: Report, on_failure: FailureHook | None = None
    ) -> None:
        self._nursery = nursery
        self._report = report
        self._on_failure = on_failure
        self._closing = False
        self._idle: trio.Event | None = None
        self.tasks: dict[int, TaskState] = {}

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def nursery(self) -> trio.Nursery:
        return self._nursery

    def spawn(
        self,
        name: str,
        async_fn: AsyncFn,
        args: tuple[Any, ...],
        policy: FailurePolicy,
        meta: object = None,
    ) -> TaskState:
        if self._closing:
            raise RuntimeError(
                f"cannot spawn {name!r}: the component is closed; spawn inside its async with block"
            )
        state = TaskState(name, meta)
        self.tasks[state.id] = state
        self._nursery.start_soon(self._run, state, async_fn, args, policy, name=name)
        return state

    async def _run(
        self, state: TaskState, async_fn: AsyncFn, args: tuple[Any, ...], policy: FailurePolicy
    ) -> None:
        exc: Exception | None = None
        returned = False
        try:
            try:
                with state.scope:
                    # Aborted before its first step: the body never starts.
                    if not state.aborted:
                        exc = await capture(async_fn, args)
                        returned = exc is None
            except Exception as group:
                # What an exception group keeps once our own scope has taken
                # its Cancelled out of it.
                exc = group
        finally:
            self._forget(state)
        if state.aborted or self._closing:
            return
        reason = policy.classify(returned, exc)
        if reason is not None and not is_outer_cancelled():
            failure = TaskFailure(state.info, reason)
            if self._on_failure is not None:
                self._on_failure(state, failure)
            self._report(failure)

    def _forget(self, state: TaskState) -> None:
        del self.tasks[state.id]
        state.mark_done()
        if not self.tasks and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no task is left (tasks spawned meanwhile included)."""
        while self.tasks:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        await trio.lowlevel.checkpoint()

    # Not trio.fail_after: the timeout is when the graceful phase ends, not an error.
    async def join(self, timeout: float) -> int:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for every task, then abort the rest.

        Returns how many tasks had to be aborted, once they have all exited.
        """
        with trio.move_on_after(timeout):
            await self.wait_idle()
        aborted = 0
        while self.tasks:
            for state in list(self.tasks.values()):
                if not state.aborted:
                    state.abort()
                    aborted += 1
            await self.wait_idle()
        return aborted

    def close(self) -> None:
        """Stop everything still running, without reports; refuse new tasks."""
        self._closing = True
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_component(
    build: Callable[[SupervisedNursery], C],
    report: Report,
    *,
    graceful_stop: Callable[[C], Awaitable[None]] | None = None,
    on_close: Callable[[C], None] | None = None,
    on_failure: FailureHook | None = None,
) -> AsyncGenerator[C, None]:
    """The ``async with`` shell shared by all components.

    Failures go to ``on_failure`` (with the task's state), then ``report``:
    see :class:`SupervisedNursery`.

    When the body ends normally or with an :class:`Exception`, ``graceful_stop``
    runs (drains, joins with a deadline; it may raise the component's own
    error). On outer cancellation or another :class:`BaseException` nothing
    waits: every task is cancelled at once. Then everything left is aborted
    without reports, ``on_close`` runs, and the block exits once the tasks are
    gone.

    What propagates, in order: a non-``Cancelled`` BaseException from a task
    (``KeyboardInterrupt``...), else the body's exception, else a
    BaseException from the graceful stop, else its error; all bare.
    """
    body_error: BaseException | None = None
    stop_error: BaseException | None = None
    task_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            supervisor = SupervisedNursery(nursery, report, on_failure)
            component = build(supervisor)
            try:
                yield component
            except BaseException as exc:
                body_error = exc
            try:
                if graceful_stop is not None and (
                    body_error is None or isinstance(body_error, Exception)
                ):
                    await graceful_stop(component)
            except BaseException as exc:
                stop_error = exc
            finally:
                supervisor.close()
                if on_close is not None:
                    on_close(component)
    except BaseExceptionGroup as group:
        task_error = _unwrap(group)

    if task_error is not None and not isinstance(task_error, trio.Cancelled):
        raise task_error
    if stop_error is not None and not isinstance(stop_error, Exception):
        # Cancellation or KeyboardInterrupt during the graceful stop wins over
        # the body's error: it must never be swallowed.
        raise stop_error
    if body_error is not None:
        raise body_error
    if stop_error is not None:
        raise stop_error
    if task_error is not None:
        raise task_error


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(cast("BaseExceptionGroup[BaseException]", exc))
        else:
            yield exc


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """One exception for what the supervisor nursery raised.

    Supervised tasks only let non-``Exception`` BaseExceptions through, so the
    group holds ``Cancelled`` and perhaps ``KeyboardInterrupt``-like ones. The
    most serious one wins; the group stays reachable as its ``__context__``.
    """
    leaves = list(_leaves(group))
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            if len(leaves) > 1 and exc.__context__ is None:
                exc.__context__ = group
            return exc
    return leaves[0]
