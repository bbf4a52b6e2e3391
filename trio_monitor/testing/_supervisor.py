"""Supervisor test helpers: a child that fails on demand, and restart assertions.

:class:`FailOnDemand` wraps a child function (or stands in for one) so a
test can make the running child raise when it chooses, as a crash of the
real code would, and wait for the supervisor to start it again.
:func:`assert_restarts` checks how often children were restarted, with a
message that shows every child.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._supervisor import ChildHandle, Supervisor

__all__ = ["ChildFailure", "FailOnDemand", "assert_restarts"]


class ChildFailure(Exception):
    """What :meth:`FailOnDemand.fail` raises in the child unless told otherwise."""


async def _run_until_stopped(
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await trio.sleep_forever()


class FailOnDemand:
    """A supervisor child that a test can make fail, run after run.

    ``FailOnDemand(fn)`` is a child function that runs ``fn`` (with the
    supervisor's arguments, ``task_status`` and ``shutdown`` exactly as
    ``fn`` declares them); ``FailOnDemand()`` runs a child that is ready at
    once and runs until stopped. Pass it to :meth:`Supervisor.start
    <trio_monitor.Supervisor.start>` in place of ``fn``::

        child = testing.FailOnDemand(run_poller)
        await sup.start("poller", child)
        child.fail()                       # run 1 raises ChildFailure
        await child.wait_started(2)        # the supervisor restarted it
        testing.assert_restarts(sup, 1, name="poller")

    :meth:`fail` cancels the current run's code and then raises the
    exception from the child, so the supervisor sees a crash (a
    :class:`~trio_monitor.Panic`) at that moment, whatever the code was doing.

    Use one instance per child.

    Args:
      fn: The child function to run (default: ready at once, runs until
        stopped).
    """

    def __init__(self, fn: Callable[..., Awaitable[object]] | None = None) -> None:
        self._fn: Callable[..., Awaitable[object]] = fn if fn is not None else _run_until_stopped
        if not callable(self._fn):
            raise TypeError(f"fn must be an async function, not {fn!r}")
        # The supervisor reads a child's signature for task_status and shutdown.
        self.__signature__ = inspect.signature(self._fn)
        self.__name__ = getattr(self._fn, "__name__", type(self).__name__)
        #: How many runs have begun.
        self.starts = 0
        self._scope: trio.CancelScope | None = None
        self._failure: BaseException | None = None
        self._started = trio.Event()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "not running"
        return f"<FailOnDemand {self.__name__} {state}, {self.starts} start(s)>"

    @property
    def is_running(self) -> bool:
        """True while a run is under way."""
        return self._scope is not None

    async def __call__(self, *args: Any, **kwargs: Any) -> object:
        self.starts += 1
        self._started.set()
        self._started = trio.Event()
        self._failure = None
        result: object = None
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                result = await self._fn(*args, **kwargs)
            finally:
                self._scope = None
        # Raised even if the code swallowed the cancellation and returned.
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return result

    def fail(self, exception: BaseException | None = None) -> None:
        """Make the current run fail now with ``exception`` (default :class:`ChildFailure`).

        Raises:
          RuntimeError: no run is under way (wait for one with :meth:`wait_started`).
        """
        scope = self._scope
        if scope is None:
            raise RuntimeError(
                f"{self!r} has no run to fail; await wait_started(n) for its n-th start first"
            )
        self._failure = (
            exception
            if exception is not None
            else ChildFailure(f"{self.__name__} failed on demand")
        )
        scope.cancel()

    async def wait_started(self, starts: int) -> None:
        """Return once the child has begun ``starts`` runs in all (at once if it has)."""
        while self.starts < starts:
            await self._started.wait()
        await trio.lowlevel.checkpoint()


def assert_restarts(
    target: Supervisor | ChildHandle, count: int, *, name: str | None = None
) -> None:
    """Assert how many restarts there were.

    For a :class:`~trio_monitor.ChildHandle`, or a
    :class:`~trio_monitor.Supervisor` and a child ``name``: that child's
    :attr:`ChildInfo.restarts <trio_monitor.ChildInfo>` (every restart,
    whatever caused it). For a supervisor without ``name``: its
    :attr:`SupervisorStatistics.restarts <trio_monitor.SupervisorStatistics>`
    (restarts decided because a child failed).

    Raises:
      AssertionError: the count differs; the message lists every child
        with its status, restarts and last failure.
      KeyError: the supervisor has no child ``name``.
    """
    if isinstance(target, ChildHandle):
        if name is not None:
            raise TypeError("name is for a Supervisor; a ChildHandle is one child already")
        actual, what = target.restarts, f"child {target.name!r}"
        children = None
    elif isinstance(target, Supervisor):
        children = target.children()
        if name is None:
            actual, what = target.statistics().restarts, "the supervisor"
        else:
            found = [info for info in children if info.name == name]
            if not found:
                raise KeyError(
                    f"no child {name!r}; the children are {[info.name for info in children]}"
                )
            actual, what = found[0].restarts, f"child {name!r}"
    else:
        raise TypeError(f"expected a Supervisor or a ChildHandle, not {type(target).__name__}")
    if actual == count:
        return
    lines = [f"expected {count} restart(s) of {what}, got {actual}."]
    if children is not None:
        lines.append("Children:")
        lines.extend(
            f"  {info.name}: {info.status}, {info.restarts} restart(s), "
            f"last failure: {info.last_failure.reason if info.last_failure else None}"
            for info in children
        )
    raise AssertionError("\n".join(lines))
