"""The task registry: named, tracked tasks with a two-phase stop.

Every task is spawned with a name and a :class:`TaskKind`, is listed by
:meth:`TaskRegistry.snapshot` while it runs, and is forgotten the moment it
finishes. Shutdown has two phases: the :class:`~trio_monitor.ShutdownToken`
asks tasks to wind down, then a deadline cancels whatever is still running,
and :class:`~trio_monitor.ShutdownDeadlineExceeded` says how many that was.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVarTuple, cast

import attrs
import trio

from ._broadcast import Broadcaster
from ._core import FINITE, SupervisedNursery, TaskState, open_component
from ._errors import ShutdownDeadlineExceeded
from ._failures import Panic, TaskFailure, describe_reason
from ._token import ShutdownToken
from ._validate import check_seconds, check_str, shown

__all__ = ["AbortHandle", "TaskKind", "TaskRegistry", "TaskSummary", "open_registry"]

logger = logging.getLogger("trio_monitor.registry")

PosArgs = TypeVarTuple("PosArgs")

# What the registry keeps per live task, in ``TaskState.meta``: the kind and
# the spawn time as a POSIX timestamp (a float is cheaper than a datetime;
# snapshots convert).
_Meta = tuple["TaskKind", float]


class TaskKind(enum.Enum):
    """What a registered task is, for observability."""

    #: A long-running loop (sync loop, heartbeat).
    BACKGROUND_LOOP = "background_loop"
    #: A per-peer connection handler.
    PEER_CONNECTION = "peer_connection"
    #: A per-request RPC handler.
    RPC_HANDLER = "rpc_handler"
    #: A periodic maintenance job (compaction, log rotation).
    MAINTENANCE = "maintenance"


@attrs.frozen
class TaskSummary:
    """One live task, as listed by :meth:`TaskRegistry.snapshot`.

    Attributes:
      name (str): The name given to :meth:`TaskRegistry.spawn`.
      kind (TaskKind): The kind given to :meth:`TaskRegistry.spawn`.
      spawned_at (datetime.datetime): When it was spawned (timezone-aware, UTC).
    """

    name: str
    kind: TaskKind
    spawned_at: datetime


class AbortHandle:
    """Cancels one registered task; returned by :meth:`TaskRegistry.spawn`.

    Dropping the handle does nothing to the task: the registry keeps it
    running and joins it at shutdown. An aborted task is not a failure: it is
    neither logged nor reported, whatever it does while it is being
    cancelled, and it is not counted by :meth:`TaskRegistry.join_all`.
    """

    __slots__ = ("_state",)

    def __init__(self, state: TaskState) -> None:
        self._state = state

    def abort(self) -> None:
        """Cancel the task, for example a peer handler whose peer left.

        Returns at once; use :meth:`wait` to know when it has exited. Safe to
        call more than once and after the task finished.
        """
        if not self._state.done:
            self._state.abort()

    def is_finished(self) -> bool:
        """Whether the task has exited, whatever the outcome."""
        return self._state.done

    async def wait(self) -> None:
        """Wait until the task has exited, whatever the outcome.

        Never raises the task's exception: failures are logged and go to
        :meth:`TaskRegistry.subscribe`. A checkpoint even if it has exited.
        """
        await self._state.wait()

    def __repr__(self) -> str:
        status = "finished" if self._state.done else "running"
        return f"<AbortHandle {self._state.name!r} {status}>"


class TaskRegistry:
    """Tracks named tasks and stops them in two phases.

    Get one from :func:`open_registry`. Tasks run in the registry's nursery;
    a task that raises an :class:`Exception` is logged at ERROR on the
    ``trio_monitor.registry`` logger (with its name and kind), reported to
    subscribers as a :class:`~trio_monitor.Panic`, and removed; its siblings
    go on. Returning is a normal end. Finished tasks leave the registry at
    once.

    ``len(registry)`` is the number of live tasks (so an empty registry is
    falsy, like an empty container).
    """

    def __init__(
        self,
        supervisor: SupervisedNursery,
        token: ShutdownToken,
        broadcaster: Broadcaster[TaskFailure],
    ) -> None:
        self._supervisor = supervisor
        self._token = token
        self._broadcaster = broadcaster

    @property
    def shutdown_token(self) -> ShutdownToken:
        """The token that asks this registry's tasks to stop.

        Pass it to the tasks that should wind down gracefully (it is not
        handed to them automatically). Leaving the ``async with`` block sets
        it; :meth:`join_all` does not.
        """
        return self._token

    def spawn(
        self,
        name: str,
        kind: TaskKind,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
    ) -> AbortHandle:
        """Start ``async_fn(*args)`` as a tracked task called ``name``.

        Like :meth:`trio.Nursery.start_soon`, this is synchronous: the task
        starts at the next scheduling point, and is listed from now on.
        Names need not be unique.

        ``async_fn(*args)`` is called here, as
        :meth:`trio.Nursery.start_soon` does, so a coroutine object or a
        synchronous function is refused at once. Spawned while the registry
        is cancelling its stragglers (past the deadline of :meth:`join_all`
        or of the block's exit), the task is born aborted: it never runs, is
        not counted, and a warning is logged. That is what bounds a stop when
        a task respawns itself from its ``finally``.

        Raises:
          TypeError: ``name`` is not a str, ``kind`` not a :class:`TaskKind`,
            or ``async_fn`` not an async function.
          RuntimeError: The registry's block has exited.
        """
        check_str("task name", name, allow_empty=True)
        if not isinstance(kind, TaskKind):
            raise TypeError(f"task kind must be a trio_monitor.TaskKind member, not {shown(kind)}")
        meta: _Meta = (kind, time.time())
        return AbortHandle(self._supervisor.spawn(name, async_fn, args, FINITE, meta))

    def snapshot(self) -> list[TaskSummary]:
        """The live tasks, oldest first. Finished tasks are never listed."""
        summaries: list[TaskSummary] = []
        for state in self._supervisor.tasks.values():
            kind, spawned_at = cast(_Meta, state.meta)
            summaries.append(TaskSummary(state.name, kind, datetime.fromtimestamp(spawned_at, UTC)))
        return summaries

    def __len__(self) -> int:
        """The number of live tasks."""
        return len(self._supervisor.tasks)

    def is_empty(self) -> bool:
        """Whether no task is running."""
        return not self._supervisor.tasks

    async def join_all(self, deadline: float) -> None:
        """Wait up to ``deadline`` seconds for every task, then cancel the rest.

        Tasks spawned while this waits are waited for too. It does not set
        the :attr:`shutdown_token`: set it first if tasks should be asked to
        stop. Each task still running at the deadline is logged by name at
        WARNING on ``trio_monitor.registry``, then cancelled; cancelled tasks
        are not logged or reported as failures. From then until they have
        exited, new spawns are born aborted (see :meth:`spawn`), so this
        returns once the cancelled tasks have stopped, even if they respawn
        themselves in a ``finally``.

        Raises:
          ShutdownDeadlineExceeded: Some tasks were still running at the
            deadline; raised once they have exited. ``.pending`` is how many.
          TypeError: ``deadline`` is not a number.
          ValueError: ``deadline`` is negative, infinite or NaN.
        """
        seconds = check_seconds("deadline", deadline)
        pending = await self._supervisor.join(seconds)
        if pending:
            raise ShutdownDeadlineExceeded(seconds, pending)

    def subscribe(
        self, max_buffer_size: int | float = 64
    ) -> trio.MemoryReceiveChannel[TaskFailure]:
        """A new receive channel that gets every task failure from now on.

        Failures have the same :class:`~trio_monitor.TaskFailure` form as the
        task monitor's (a raising task is a :class:`~trio_monitor.Panic`), so
        one observer can watch every component. They are logged as well. A
        subscriber that falls behind its ``max_buffer_size`` misses the
        overflow; tasks never wait for it. The channel ends when the registry
        closes.
        """
        return self._broadcaster.subscribe(max_buffer_size)

    def __repr__(self) -> str:
        return f"<TaskRegistry tasks={len(self)} {self._token!r}>"


def _log_failure(state: TaskState, failure: TaskFailure) -> None:
    kind, _ = cast(_Meta, state.meta)
    reason = failure.reason
    logger.error(
        "task %r (%s, id %d) failed: %s",
        state.name,
        kind.name,
        state.id,
        describe_reason(reason),
        exc_info=reason.exception if isinstance(reason, Panic) else None,
    )


@asynccontextmanager
async def open_registry(shutdown_deadline: float = 30.0) -> AsyncGenerator[TaskRegistry, None]:
    """Open a :class:`TaskRegistry` whose tasks live inside this block.

    When the block ends normally, the :attr:`~TaskRegistry.shutdown_token`
    is set, then the registry joins with ``shutdown_deadline``
    (:meth:`~TaskRegistry.join_all`: stragglers are logged by name, and
    tasks spawned while they are cancelled are born aborted), raising
    :class:`~trio_monitor.ShutdownDeadlineExceeded` if any task had to be
    cancelled. If the block raised an :class:`Exception`, the same two-phase
    stop happens and the block's exception propagates as itself (a deadline
    error is then dropped). On cancellation from outside, or another
    :class:`BaseException` such as :exc:`KeyboardInterrupt`, nothing waits:
    tasks are cancelled at once (and the token is set all the same).

    Raises:
      TypeError: ``shutdown_deadline`` is not a number.
      ValueError: ``shutdown_deadline`` is negative, infinite or NaN.
    """
    deadline = check_seconds("shutdown_deadline", shutdown_deadline)
    token = ShutdownToken()
    broadcaster: Broadcaster[TaskFailure] = Broadcaster()

    async def two_phase_stop(registry: TaskRegistry) -> None:
        token.set()
        await registry.join_all(deadline)

    def close(_registry: TaskRegistry) -> None:
        token.set()
        broadcaster.close()

    def report(failure: TaskFailure) -> None:
        broadcaster.publish(failure)  # already logged by _log_failure

    async with open_component(
        lambda supervisor: TaskRegistry(supervisor, token, broadcaster),
        report,
        graceful_stop=two_phase_stop,
        on_close=close,
        on_failure=_log_failure,
        logger=logger,
    ) as registry:
        yield registry
