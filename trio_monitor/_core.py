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

Two rules hold for every component because they live here:

* Spawning checks its callable at once, as :meth:`trio.Nursery.start_soon`
  does (:func:`coroutine_or_error`): a coroutine object or a synchronous
  function is a :class:`TypeError` in the spawning code, not a failure
  report later.
* Once a stop has begun cancelling tasks (the cancel phase of
  :meth:`SupervisedNursery.join`, or :meth:`SupervisedNursery.close`), a new
  spawn is *born aborted*: it never runs, is never reported, and is logged
  at WARNING. A task that respawns itself from its ``finally`` (a reconnect
  loop) therefore cannot keep a stop from ending.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import logging
import math
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypeGuard, TypeVar, cast

import trio

from ._failures import (
    EarlyTermination,
    Error,
    FailureReason,
    Panic,
    TaskFailure,
    TaskInfo,
    next_task_id,
)

__all__ = [
    "FailurePolicy",
    "SupervisedNursery",
    "TaskState",
    "callable_name",
    "capture",
    "coroutine_or_error",
    "deferred_call",
    "is_async_function",
    "is_outer_cancelled",
    "not_isolated",
    "open_component",
    "resume",
]

C = TypeVar("C")

AsyncFn = Callable[..., Awaitable[Any]]
AnyCoroutine = Coroutine[Any, Any, Any]
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
            return Error.from_exception(exc)
        return Panic.from_exception(exc)


_LOGGER: Final = logging.getLogger("trio_monitor")

FINITE: Final = FailurePolicy(runs_forever=False)
INFINITE: Final = FailurePolicy(runs_forever=True)


def callable_name(fn: object) -> str:
    """A name for ``fn`` in messages and reports; never raises.

    Its qualified name (looking through :func:`functools.partial`), else its
    type's name. Never its ``repr``, which user code may break.
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        name = getattr(fn, "__qualname__", None)
    except Exception:  # a hostile __getattr__
        name = None
    return name if isinstance(name, str) else type(fn).__name__


def _looks_foreign(value: object) -> bool:
    # Trio's own heuristic: asyncio generator-coroutines and futures, tornado
    # futures, twisted deferreds. Only used once something is already wrong.
    return (
        isinstance(value, collections.abc.Generator)
        or getattr(value, "_asyncio_future_blocking", None) is not None
        or type(value).__name__ in ("Future", "Deferred")
    )


def _is_coroutine(value: object) -> TypeGuard[AnyCoroutine]:
    return type(value) is types.CoroutineType or isinstance(value, collections.abc.Coroutine)


def coroutine_or_error(async_fn: Any, args: tuple[Any, ...]) -> AnyCoroutine:
    """Call ``async_fn(*args)`` and return the coroutine, or raise TypeError.

    What :meth:`trio.Nursery.start_soon` does before it starts a task, and so
    what every spawn entry point does: the call is made now, in the spawning
    code, so a mistake raises where it was made. A coroutine object (``spawn(
    name, job())`` instead of ``spawn(name, job)``), a synchronous function,
    an async generator function or an asyncio-style future is a
    :class:`TypeError` naming the mistake; an error raised by the call itself
    (wrong arguments, say) propagates as it is. A coroutine object passed by
    mistake is closed, so that Python does not warn that it was never awaited.

    A synchronous function *is* called (it is the only way to know what it
    returns), like Trio does. Whoever gets the coroutine must await it or
    ``close()`` it.
    """
    try:
        coro: object = async_fn(*args)
    except TypeError:
        # Find out whether the mistake is ours to name (the object is not a
        # function at all), or the call's own (wrong arguments...).
        if _is_coroutine(async_fn):
            async_fn.close()
            name = callable_name(async_fn)
            raise TypeError(
                f"expected an async function, but got the coroutine object {name}(...): "
                f"pass the function and its arguments separately, spawn(..., {name}, ...), "
                f"not spawn(..., {name}(...))"
            ) from None
        if not callable(async_fn):
            if _looks_foreign(async_fn):
                raise TypeError(
                    f"expected an async function, but got a {type(async_fn).__name__} "
                    "object: is it from asyncio or another library? Trio cannot await it"
                ) from None
            raise TypeError(
                f"expected an async function, not a {type(async_fn).__name__} object"
            ) from None
        raise
    if type(coro) is types.CoroutineType:  # the fast path: an async def function
        return cast(AnyCoroutine, coro)
    if _is_coroutine(coro):
        return coro
    name = callable_name(async_fn)
    if inspect.isasyncgen(coro):
        raise TypeError(
            f"expected an async function, but {name} is an async generator function; "
            "iterate it inside an async function instead"
        )
    if _looks_foreign(coro):
        raise TypeError(
            f"expected an async function, but {name} returned a {type(coro).__name__} "
            "object: is it from asyncio or another library? Trio cannot await it"
        )
    raise TypeError(
        f"expected an async function, but {name} is synchronous (it returned a "
        f"{type(coro).__name__}, not a coroutine); define it with async def"
    )


def is_async_function(fn: object) -> bool:
    """Whether ``fn`` is known, without calling it, to return a coroutine.

    True for ``async def`` functions and methods, and ``functools.partial``
    objects of them; False for anything else, although some of those (a
    callable object with an async ``__call__``, a sync wrapper returning a
    coroutine) are valid async functions: a False here means "call it with
    :func:`coroutine_or_error` to find out". It lets a caller that must not
    create the coroutine early (the runtime's queue) skip that on its fast
    path.
    """
    if type(fn) is types.FunctionType:
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


def deferred_call(async_fn: object, args: tuple[Any, ...]) -> bool:
    """Whether ``async_fn(*args)`` may wait until its task starts.

    True when ``async_fn`` is a plain ``async def`` function (calling it does
    nothing but create the coroutine) and ``args`` bind to its parameters,
    checked from its code object the way the interpreter binds them: the
    call cannot fail, so nothing is lost by making it later, and no
    coroutine waits in memory meanwhile. False means "call it now with
    :func:`coroutine_or_error`", which also raises the interpreter's own
    :class:`TypeError` for arguments that do not bind.
    """
    if type(async_fn) is not types.FunctionType:
        return False
    code = async_fn.__code__
    flags = code.co_flags
    if not flags & inspect.CO_COROUTINE:
        return False
    given, accepted = len(args), code.co_argcount
    if given > accepted and not flags & inspect.CO_VARARGS:
        return False  # too many positional arguments
    defaults = async_fn.__defaults__
    if given < accepted - (len(defaults) if defaults else 0):
        return False  # a required positional argument is missing
    keyword_defaults = async_fn.__kwdefaults__
    # A keyword-only parameter without a default can never be given here.
    return code.co_kwonlyargcount == (len(keyword_defaults) if keyword_defaults else 0)


def resume(coro: AnyCoroutine) -> AnyCoroutine:
    """``capture(resume, (coro,))`` runs a coroutine created earlier.

    For a coroutine made at spawn time by :func:`coroutine_or_error`: it is
    awaited by :func:`capture` like any ``async_fn(*args)``, with no extra
    frame.
    """
    return coro


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
    supervisor's nursery (see :func:`not_isolated`).

    The hot paths (a supervised task's body, a runtime job) spell the same
    ``try`` out inline, to save a coroutine frame per task.
    """
    try:
        await async_fn(*args)
    except Exception as exc:
        return exc
    except BaseExceptionGroup as group:
        raise not_isolated(group)  # noqa: B904 - the group stays as its __context__
    return None


def not_isolated(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The part of a body's mixed exception group that must propagate.

    Raise it from the ``except BaseExceptionGroup`` clause that caught
    ``group`` (so that the group stays reachable as its ``__context__``); the
    ``Exception`` part is dropped, see :func:`capture`.
    """
    _, others = group.split(Exception)
    assert others is not None  # an all-Exception group is an Exception
    return others


class TaskState:
    """The supervisor's record of one task. Internal; handles wrap it."""

    __slots__ = ("_done_event", "aborted", "done", "id", "meta", "name", "scope", "verdict")

    def __init__(self, name: str, meta: object = None) -> None:
        self.id: int = next_task_id()
        self.name = name
        # What the component attaches to the task (the registry: kind, spawn time).
        self.meta = meta
        # Made when the task starts: a task waiting to start is stopped by
        # the flag alone, and holds one object less until then.
        self.scope: trio.CancelScope | None = None
        self.aborted = False
        self.done = False
        # Why the supervisor cancelled it as failed (a watchdog's Hung), if it did.
        self.verdict: FailureReason | None = None
        self._done_event: trio.Event | None = None

    @property
    def info(self) -> TaskInfo:
        return TaskInfo(self.id, self.name)

    def abort(self) -> None:
        """Cancel the task and mark it as intentionally stopped.

        The flag is set first and is a plain attribute store, so this is also
        safe from a finalizer: once it is set the task is never reported. A
        task that has not started has no scope yet: the flag alone keeps its
        body from ever running.
        """
        self.aborted = True
        if self.scope is not None:
            self.scope.cancel()

    def fail(self, reason: FailureReason) -> None:
        """Cancel the task as failed: it is reported with ``reason``.

        For failures only the supervisor can see (a missed heartbeat): the
        verdict wins over whatever the task then does while it is being
        cancelled. An intentional stop still wins over the verdict: once
        :meth:`abort` was called (before or after), nothing is reported.
        """
        if self.aborted or self.done:
            return
        self.verdict = reason
        if self.scope is not None:  # else it starts cancelled (see _run)
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
    there with its own per-task data (``TaskState.meta``). If either raises
    (a bug), that is logged and the supervisor goes on.

    ``logger`` (default ``trio_monitor``; components pass their own) gets
    the core's own warnings: spawns born aborted, and the names of the
    stragglers a :meth:`join` cancels.
    """

    __slots__ = (
        "_aborting",
        "_closing",
        "_idle",
        "_logger",
        "_nursery",
        "_on_failure",
        "_report",
        "tasks",
    )

    def __init__(
        self,
        nursery: trio.Nursery,
        report: Report,
        on_failure: FailureHook | None = None,
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self._nursery = nursery
        self._report = report
        self._on_failure = on_failure
        self._logger = logger if logger is not None else _LOGGER
        self._closing = False
        # Cancel phases under way (see abort_remaining); counted, since two
        # joins may overlap.
        self._aborting = 0
        self._idle: trio.Event | None = None
        self.tasks: dict[int, TaskState] = {}

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def stopping(self) -> bool:
        """Whether a cancel phase is under way: new spawns are born aborted."""
        return self._closing or self._aborting > 0

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
        """Start ``async_fn(*args)`` as a supervised task called ``name``.

        ``async_fn`` is checked here, so a non-async callable or arguments
        that do not bind raise :class:`TypeError` at once: it is called here
        (:func:`coroutine_or_error`), unless :func:`deferred_call` shows that
        the call cannot fail, in which case the task makes it when it
        starts. While
        the supervisor is :attr:`stopping`, the task is born aborted: it is
        listed until its first step, then ends without running or being
        reported, and a warning is logged.

        Raises:
          TypeError: ``async_fn`` is not an async function (see
            :func:`coroutine_or_error`).
          RuntimeError: The nursery has exited (the component's block is over).
        """
        if deferred_call(async_fn, args):
            # Called when the task starts: no coroutine waits in the queue
            # (one object less per task for the garbage collector to scan).
            body, body_args = async_fn, args
        else:
            body, body_args = resume, (coroutine_or_error(async_fn, args),)
        state = TaskState(name, meta)
        born_aborted = state.aborted = self._closing or self._aborting > 0
        try:
            self._nursery.start_soon(self._run, state, body, body_args, policy, name=name)
        except RuntimeError as exc:
            if body is resume:
                body_args[0].close()
            raise RuntimeError(
                f"cannot spawn {name!r}: the component is closed; spawn inside its async with block"
            ) from exc
        self.tasks[state.id] = state
        if born_aborted:
            self._logger.warning(
                "task %r (id %d) was spawned while its component is stopping: "
                "it is aborted before it starts",
                name,
                state.id,
            )
        return state

    async def _run(
        self, state: TaskState, body: AsyncFn, args: tuple[Any, ...], policy: FailurePolicy
    ) -> None:
        exc: Exception | None = None
        returned = False
        try:
            try:
                with trio.CancelScope() as state.scope:
                    if state.aborted:
                        # Aborted (or born aborted) before its first step: the
                        # body never starts.
                        if body is resume:
                            args[0].close()
                    else:
                        if state.verdict is not None:
                            # Failed by the supervisor before its first step:
                            # it starts cancelled (see fail).
                            state.scope.cancel()
                        # capture(), inline: no frame of its own per task.
                        try:
                            await body(*args)
                        except Exception as caught:
                            exc = caught
                        except BaseExceptionGroup as group:
                            raise not_isolated(group)  # noqa: B904 - see capture
                        else:
                            returned = True
            except Exception as group:
                # What an exception group keeps once our own scope has taken
                # its Cancelled out of it.
                exc = group
        finally:
            self._forget(state)
        if state.aborted or self._closing:
            return
        if state.verdict is not None:
            reason: FailureReason | None = state.verdict
        elif exc is None and not policy.runs_forever:
            return  # a one-shot task's success: nothing to classify
        else:
            reason = policy.classify(returned, exc)
        if reason is not None and not is_outer_cancelled():
            self._deliver(state, TaskFailure(state.info, reason))

    def _deliver(self, state: TaskState, failure: TaskFailure) -> None:
        try:
            if self._on_failure is not None:
                self._on_failure(state, failure)
            self._report(failure)
        except Exception:
            # A bug in a component's hook must not take the supervisor down.
            self._logger.exception(
                "reporting the failure of task %r (id %d) failed", state.name, state.id
            )

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

    async def abort_remaining(self, on_abort: Callable[[TaskState], None] | None = None) -> int:
        """The cancel phase of a stop: abort every running task, wait until all are gone.

        ``on_abort`` sees each task as it is aborted. While this waits, new
        spawns are born aborted, so a task that respawns itself from its
        ``finally`` cannot keep the phase from ending; a task that ignores
        its cancellation can. Returns how many tasks this aborted (tasks
        already aborted are not counted), once every task has exited.
        """
        self._aborting += 1
        try:
            aborted = [state for state in self.tasks.values() if not state.aborted]
            for state in aborted:
                state.abort()
                if on_abort is not None:
                    on_abort(state)
            await self.wait_idle()
        finally:
            self._aborting -= 1
        return len(aborted)

    # Not trio.fail_after: the timeout is when the graceful phase ends, not an error.
    async def join(self, timeout: float) -> int:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for every task, then abort the rest.

        Each task still running at the deadline is logged by name at
        WARNING, then aborted (:meth:`abort_remaining`). Returns how many
        tasks had to be aborted, once they have all exited.
        """
        with trio.move_on_after(timeout):
            await self.wait_idle()

        def straggler(state: TaskState) -> None:
            self._logger.warning(
                "task %r (id %d) still running at the %gs deadline: cancelling it",
                state.name,
                state.id,
                timeout,
            )

        return await self.abort_remaining(straggler)

    def close(self) -> None:
        """Stop everything still running, without reports.

        From now on, spawns are born aborted (until the nursery has exited;
        then they raise :class:`RuntimeError`).
        """
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
    logger: logging.Logger | None = None,
) -> AsyncGenerator[C, None]:
    """The ``async with`` shell shared by all components.

    Failures go to ``on_failure`` (with the task's state), then ``report``;
    the core's own warnings to ``logger``: see :class:`SupervisedNursery`.

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
            supervisor = SupervisedNursery(nursery, report, on_failure, logger=logger)
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
