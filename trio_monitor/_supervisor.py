"""The supervisor: Erlang/OTP supervision as Trio idiom.

A supervisor starts children in order, each once it is *ready* (Trio's
``task_status.started()`` protocol), restarts them when they fail according
to a strategy and a restart kind, waits with exponential backoff before
restarting the same child again, cancels children that miss their heartbeat,
and gives up (raising :class:`~trio_monitor.RestartIntensityExceeded`) when
restarts come too fast. Nesting supervisors builds a supervision tree: a
supervisor that gives up is a failing child of its parent.

Each run of a child is a task of the supervision core
(:class:`~trio_monitor._core.SupervisedNursery`), exactly as the monitor's
tasks are: its own cancel scope, its outcome classified, and no report once
it was stopped on purpose, whatever it does while being cancelled. This
module decides what happens *after* a run ends: nothing, a restart of one
child or of several, or giving up.
"""

from __future__ import annotations

import collections
import enum
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, cast

import attrs
import trio

from ._backoff import Backoff
from ._broadcast import Broadcaster, publish_or_log
from ._core import (
    FINITE,
    INFINITE,
    AnyCoroutine,
    FailurePolicy,
    SupervisedNursery,
    TaskState,
    coroutine_or_error,
    open_component,
)
from ._errors import RestartIntensityExceeded
from ._failures import (
    EarlyTermination,
    Error,
    FailureReason,
    Hung,
    Panic,
    TaskFailure,
    describe_reason,
)
from ._heartbeat import Pulse, bind, wait_until_late
from ._token import ShutdownToken
from ._validate import check_count, check_seconds, check_str, shown

__all__ = [
    "ChildHandle",
    "ChildInfo",
    "ChildStatus",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "open_supervisor",
]

logger = logging.getLogger("trio_monitor.supervisor")


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one of them fails."""

    #: Restart only the child that failed.
    ONE_FOR_ONE = "one_for_one"
    #: Stop every other child (reverse start order), then restart them all
    #: in start order: for children that cannot work without each other.
    ONE_FOR_ALL = "one_for_all"
    #: Stop the children started after the failed one (reverse start
    #: order), then restart it and them in start order: for children that
    #: depend on the ones started before them.
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    """When a child that ended is started again."""

    #: Always: the child should run for as long as the supervisor does, so
    #: returning is a failure (:class:`~trio_monitor.EarlyTermination`).
    PERMANENT = "permanent"
    #: Only after an abnormal end (an :class:`Exception`, or
    #: :class:`~trio_monitor.Hung`); returning ends it for good.
    TRANSIENT = "transient"
    #: Never: it runs once. Its failure is still reported.
    TEMPORARY = "temporary"


#: What a child is doing, as :attr:`ChildInfo.status` says.
ChildStatus = Literal["starting", "running", "backing_off", "stopping", "stopped"]


@attrs.frozen
class ChildInfo:
    """One child of a supervisor, as listed by :meth:`Supervisor.children`.

    Attributes:
      name (str): The name given to :meth:`Supervisor.start`.
      status (str): ``"starting"`` (started, not ready yet), ``"running"``
        (ready), ``"backing_off"`` (waiting before a restart),
        ``"stopping"`` (being stopped: its shutdown token is set, or it is
        being cancelled) or ``"stopped"`` (ended for good).
      restarts (int): How many times it was started again, for whatever
        reason (its own failure, a sibling's under ``ONE_FOR_ALL`` or
        ``REST_FOR_ONE``, :meth:`ChildHandle.restart`).
      started_at (datetime.datetime | None): When its current (or last) run
        started (timezone-aware, UTC).
      last_failure (TaskFailure | None): Its most recent reported failure.
    """

    name: str
    status: ChildStatus
    restarts: int
    started_at: datetime | None
    last_failure: TaskFailure | None


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a :class:`Supervisor`.

    Attributes:
      children (int): Children kept by the supervisor (listed by
        :meth:`Supervisor.children`, stopped ones included).
      restarts (int): Restarts the supervisor decided because a child
        failed, one per failure whatever the strategy (what the intensity
        limit counts); manual restarts are not counted.
      dropped_failures (int): Reports a full subscriber buffer had no room
        for, summed over subscribers.
      subscribers (int): Open subscriptions.
    """

    children: int
    restarts: int
    dropped_failures: int
    subscribers: int


def _accepts(fn: object, parameter: str) -> bool:
    """Whether ``fn`` takes a parameter called ``parameter`` by keyword."""
    try:
        found = inspect.signature(cast(Callable[..., Any], fn)).parameters.get(parameter)
    except (TypeError, ValueError):  # no signature to read: a builtin, a C callable
        return False
    return found is not None and found.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


class _Job:
    """One restart operation of several children, or a manual restart.

    A child's ``owner`` is the operation that will start its next run; a
    later operation (a new failure, a manual restart, a stop) takes the
    child over by replacing it, and an operation starts only the children it
    still owns. So operations may overlap without a child being started
    twice.
    """

    __slots__ = ("done", "runs")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.runs: list[_Run] = []


class _Child:
    """The supervisor's record of one child: its spec and its current state."""

    __slots__ = (
        "args",
        "consecutive",
        "fn",
        "kept",
        "last_failure",
        "liveness_timeout",
        "name",
        "owner",
        "policy",
        "restart",
        "restarts",
        "retired",
        "run",
        "shutdown_timeout",
        "started_at",
        "started_clock",
        "status",
        "value",
        "wants_shutdown",
        "wants_status",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        restart: Restart,
        shutdown_timeout: float,
        liveness_timeout: float | None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.restart = restart
        self.shutdown_timeout = shutdown_timeout
        self.liveness_timeout = liveness_timeout
        self.wants_status = _accepts(fn, "task_status")
        self.wants_shutdown = _accepts(fn, "shutdown")
        # A permanent child runs for ever: returning is an EarlyTermination.
        self.policy: FailurePolicy = INFINITE if restart is Restart.PERMANENT else FINITE
        self.status: ChildStatus = "starting"
        self.run: _Run | None = None
        self.value: object = None
        self.restarts = 0
        # Consecutive restarts, for the backoff; reset by a long enough run.
        self.consecutive = 0
        self.started_clock = 0.0
        self.started_at: datetime | None = None
        self.last_failure: TaskFailure | None = None
        self.owner: _Job | None = None
        # Its first run got ready (start() returned): strategies handle it.
        self.kept = False
        # Ended for good (stop(), a transient child returning...): no
        # strategy restarts it; only ChildHandle.restart() does.
        self.retired = False

    def retire(self) -> None:
        """End for good: no pending restart starts it again."""
        self.owner = None
        self.retired = True
        self.status = "stopped"

    def info(self) -> ChildInfo:
        return ChildInfo(self.name, self.status, self.restarts, self.started_at, self.last_failure)


class _Run:
    """One run of a child, from its spawn to its end."""

    __slots__ = (
        "began",
        "child",
        "delay",
        "failure",
        "first",
        "pending",
        "pulse",
        "ready",
        "settled",
        "startup_error",
        "state",
        "stop_deadline",
        "token",
        "watch_scope",
    )

    def __init__(self, child: _Child, *, delay: float = 0.0, first: bool = False) -> None:
        self.child = child
        # Backoff to sleep in the run's own task before the child starts.
        self.delay = delay
        # The run of Supervisor.start(): failing before ready raises there.
        self.first = first
        # Only a child with a ``shutdown`` parameter gets (and needs) one.
        self.token = ShutdownToken() if child.wants_shutdown else None
        self.pulse: Pulse | None = None
        self.watch_scope: trio.CancelScope | None = None
        self.ready = False
        # The child's own code has started (its backoff, if any, is over).
        self.began = False
        # When a stop of this run cancels it (Trio time), once one began.
        self.stop_deadline: float | None = None
        # Set once the run is ready or has ended, whichever comes first.
        self.settled = trio.Event()
        self.failure: TaskFailure | None = None
        self.startup_error: BaseException | None = None
        self.state: TaskState | None = None
        # The child's coroutine made by start() until the run's task takes it.
        self.pending: AnyCoroutine | None = None

    def close_pending(self) -> None:
        """Close a coroutine the run's task will never take (stopped before its first step)."""
        if self.pending is not None:
            self.pending.close()
            self.pending = None

    def coroutine(self, supervisor: Supervisor) -> AnyCoroutine:
        """Call the child's function for this run (see :func:`coroutine_or_error`)."""
        child = self.child
        kwargs: dict[str, object] = {}
        if child.wants_status:
            kwargs["task_status"] = _Readiness(supervisor, self)
        if child.wants_shutdown:
            kwargs["shutdown"] = self.token
        fn = functools.partial(child.fn, **kwargs) if kwargs else child.fn
        return coroutine_or_error(fn, child.args)


class _Readiness(trio.TaskStatus[Any]):
    """The ``task_status`` a child receives: ``started(value)`` makes it ready."""

    __slots__ = ("_run", "_supervisor")

    def __init__(self, supervisor: Supervisor, run: _Run) -> None:
        self._supervisor = supervisor
        self._run = run

    def started(self, value: Any = None) -> None:
        if self._run.ready:
            raise RuntimeError("called 'started' twice on the same task status")
        self._supervisor._mark_ready(self._run, value)  # pyright: ignore[reportPrivateUsage]

    def __repr__(self) -> str:
        return f"<task status of child {self._run.child.name!r}>"


def _startup_error(child: _Child, reason: FailureReason) -> BaseException:
    """What :meth:`Supervisor.start` raises for a child that failed before ready."""
    if isinstance(reason, Panic | Error):
        return reason.exception
    if isinstance(reason, Hung):
        return TimeoutError(
            f"child {child.name!r} sent no heartbeat for {reason.liveness_timeout:g}s "
            "before it was ready"
        )
    return RuntimeError(f"child {child.name!r} returned before it called task_status.started()")


class ChildHandle:
    """Controls one child of a :class:`Supervisor`; returned by :meth:`Supervisor.start`.

    The handle follows the child across restarts. Dropping it does nothing
    to the child.
    """

    __slots__ = ("_child", "_supervisor")

    def __init__(self, supervisor: Supervisor, child: _Child) -> None:
        self._supervisor = supervisor
        self._child = child

    @property
    def name(self) -> str:
        """The child's name."""
        return self._child.name

    @property
    def value(self) -> object:
        """What the current (or last) run passed to ``task_status.started()``.

        None for a child without a ``task_status`` parameter. Updated by
        every restart, once the new run is ready.
        """
        return self._child.value

    @property
    def restarts(self) -> int:
        """How many times the child was started again, for whatever reason."""
        return self._child.restarts

    def is_running(self) -> bool:
        """Whether the child is up: ready, and not backing off or being stopped."""
        return self._child.status == "running"

    def stop(self) -> None:
        """Stop the child for good; it is not a failure and is never reported.

        Returns at once; the stop goes on in the background, as graceful as
        the child's start asked for: its shutdown token is set, it gets up
        to its ``shutdown_timeout`` to return, then it is cancelled. Its
        status is ``"stopping"``, then ``"stopped"``. A pending restart of
        it is called off. Safe to call more than once; :meth:`restart`
        starts it again.
        """
        self._supervisor._stop_for_good(self._child)  # pyright: ignore[reportPrivateUsage]

    async def restart(self) -> None:
        """Restart the child by hand, and return once its new run is ready.

        The current run is stopped gracefully (on purpose: never reported),
        then the child starts again with the same readiness protocol. A
        manual restart is not a failure and does not count towards the
        supervisor's intensity limit; it restarts this child only, whatever
        the strategy. A stopped child is started again.

        Raises:
          Exception: The new run failed before it was ready; that failure
            is also reported and handled like any other.
          RuntimeError: The supervisor is stopping, or the restart was
            overtaken (the child was stopped meanwhile).
        """
        await self._supervisor._restart_by_hand(self._child)  # pyright: ignore[reportPrivateUsage]

    def __repr__(self) -> str:
        return f"<ChildHandle {self._child.name!r} {self._child.status}>"


class Supervisor:
    """Starts children and keeps them running; get one from :func:`open_supervisor`.

    Children are listed in start order, which is the order restarts use;
    stops go in reverse. See :func:`open_supervisor` for the policy.
    """

    def __init__(
        self,
        core: SupervisedNursery,
        broadcaster: Broadcaster[TaskFailure],
        *,
        strategy: Strategy,
        max_restarts: int,
        within: float,
        backoff: Backoff,
    ) -> None:
        self._core = core
        self._broadcaster = broadcaster
        self._strategy = strategy
        self._max_restarts = max_restarts
        self._within = within
        self._backoff = backoff
        self._children: dict[str, _Child] = {}
        # (Trio time, failure) of each restart decided in the last `within` seconds.
        self._window: collections.deque[tuple[float, TaskFailure]] = collections.deque()
        self._restarts = 0
        self._closing = False
        self._gave_up: RestartIntensityExceeded | None = None
        self._body_scope: trio.CancelScope | None = None
        # Restart operations under way, each in its own task and scope.
        self._jobs: set[trio.CancelScope] = set()
        # Stops and starts of several children go one at a time, in order.
        self._serial = trio.Lock()

    # --- public API ---

    async def start(
        self,
        name: str,
        async_fn: Callable[..., Awaitable[object]],
        *args: object,
        restart: Restart = Restart.PERMANENT,
        shutdown_timeout: float = 5.0,
        liveness_timeout: float | None = None,
    ) -> ChildHandle:
        """Start ``async_fn(*args)`` as a child called ``name``; return once it is ready.

        If ``async_fn`` has a ``task_status`` parameter, it is started with
        Trio's :meth:`trio.Nursery.start` protocol: this returns once it
        calls ``task_status.started(value)`` (then ``handle.value`` is
        ``value``); otherwise it is ready at once. If it has a ``shutdown``
        parameter, it receives a :class:`~trio_monitor.ShutdownToken` that
        is set when the child is asked to stop. Children are started (and
        restarted) in the order of these calls.

        A child that fails before it is ready is not kept: this raises its
        exception (:exc:`RuntimeError` if it returned first,
        :exc:`TimeoutError` if it missed its heartbeat), nothing is
        reported, and its name is free again. If the caller is cancelled
        first, the child is stopped on purpose and not kept either.

        Args:
          restart: When the child is started again (:class:`Restart`).
          shutdown_timeout: Seconds a child with a ``shutdown`` parameter
            gets to return once its token is set, before it is cancelled
            (may be ``math.inf``).
          liveness_timeout: If given, the child must call
            :func:`~trio_monitor.heartbeat` at least this often (in
            seconds, from its start on); one that does not is cancelled,
            reported as :class:`~trio_monitor.Hung` and restarted per
            ``restart``.

        Raises:
          ValueError: A child called ``name`` already exists, or an argument
            is out of range.
          TypeError: An argument has the wrong type, or ``async_fn`` is not
            an async function.
          RuntimeError: The supervisor is stopping (or has closed).
        """
        check_str("child name", name)
        if not isinstance(restart, Restart):
            raise TypeError(f"restart must be a trio_monitor.Restart member, not {shown(restart)}")
        shutdown = check_seconds("shutdown_timeout", shutdown_timeout, allow_inf=True)
        liveness = (
            None
            if liveness_timeout is None
            else check_seconds("liveness_timeout", liveness_timeout, positive=True, allow_inf=True)
        )
        self._check_open(f"start child {name!r}")
        if name in self._children:
            raise ValueError(
                f"child name {name!r} is taken in this supervisor: names are unique "
                "(use its handle's restart() to start it again)"
            )
        child = _Child(name, async_fn, args, restart, shutdown, liveness)
        run = _Run(child, first=True)
        coro = run.coroutine(self)
        self._children[name] = child
        self._spawn(run, coro)
        try:
            await run.settled.wait()
        except BaseException:
            if not run.ready:
                # Cancelled while the child was starting: like nursery.start,
                # the child goes too (on purpose, so it is not reported).
                self._abandon(run)
            raise
        if not run.ready:
            self._abandon(run)
            if run.startup_error is not None:
                raise run.startup_error
            raise RuntimeError(f"the supervisor stopped before child {name!r} was ready")
        return ChildHandle(self, child)

    def subscribe(
        self, max_buffer_size: int | float = 64
    ) -> trio.MemoryReceiveChannel[TaskFailure]:
        """A new receive channel that gets every failure reported from now on.

        Exactly as :meth:`TaskMonitor.subscribe <trio_monitor.TaskMonitor.subscribe>`:
        a bounded buffer per subscriber, overflow dropped and counted in
        ``statistics().dropped_failures``, never blocking a child; close the
        channel to unsubscribe; it ends when the supervisor closes. With no
        subscriber, failures are logged at ERROR on
        ``trio_monitor.supervisor``.
        """
        return self._broadcaster.subscribe(max_buffer_size)

    def children(self) -> list[ChildInfo]:
        """Every child kept, in start order (stopped ones included)."""
        return [child.info() for child in self._children.values()]

    def statistics(self) -> SupervisorStatistics:
        """Counts of children, restarts, subscribers and dropped reports."""
        return SupervisorStatistics(
            children=len(self._children),
            restarts=self._restarts,
            dropped_failures=self._broadcaster.dropped,
            subscribers=self._broadcaster.subscribers,
        )

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self._strategy.name} children={len(self._children)} "
            f"restarts={self._restarts}>"
        )

    # --- runs ---

    def _check_open(self, action: str) -> None:
        if self._closing or self._core.closing:
            raise RuntimeError(f"cannot {action}: the supervisor is stopping or closed")

    def _spawn(self, run: _Run, coro: AnyCoroutine | None = None) -> None:
        child = run.child
        child.run = run
        child.status = "backing_off" if run.delay > 0 else "starting"
        run.pending = coro
        run.state = self._core.spawn(child.name, self._run_child, (run,), child.policy, run)

    async def _run_child(self, run: _Run) -> None:
        """The body of one run: backoff, readiness, heartbeat; then the child's code."""
        child = run.child
        coro, run.pending = run.pending, None
        if coro is None:
            if run.delay > 0:
                await trio.sleep(run.delay)
                child.status = "starting"
            if run.state is not None and (run.state.aborted or self._closing):
                # Stopped before it began (or the supervisor is stopping):
                # on purpose, and the child's code never runs.
                run.state.aborted = True
                return
            # Made here, not at spawn: a restart whose call raises is a failure.
            coro = run.coroutine(self)
        run.began = True
        child.started_clock = trio.current_time()
        child.started_at = datetime.now(UTC)
        if child.liveness_timeout is not None:
            run.pulse = Pulse(child.liveness_timeout)
            run.watch_scope = trio.CancelScope()
            self._core.nursery.start_soon(self._watch, run)
        bind(run.pulse)
        if not child.wants_status:
            self._mark_ready(run, None)
        state = run.state
        assert state is not None
        try:
            try:
                await coro
            except Exception as exc:
                if not state.aborted and state.verdict is None:
                    # Classified here rather than by the core's capture, so
                    # that the report's traceback starts at the child's own
                    # code: this frame (and capture's) are the library's.
                    # The core still decides whether it is reported at all
                    # (never once stopped on purpose).
                    if exc.__traceback__ is not None:
                        exc.__traceback__ = exc.__traceback__.tb_next
                    state.verdict = child.policy.classify(False, exc)
                return
            if state.aborted or state.verdict is not None:
                return  # stopped on purpose, or hung: whoever ended it decides
            if not run.ready:
                if run.first:
                    run.startup_error = _startup_error(child, EarlyTermination())
            elif child.restart is not Restart.PERMANENT:
                # A transient or temporary child that returned: done for good.
                # (A permanent one is an EarlyTermination: see _on_failure.)
                child.retire()
        finally:
            if run.watch_scope is not None:
                run.watch_scope.cancel()
            # Whoever waits (start, a restart) resumes after this task's
            # step, which also runs _on_failure: the outcome is known then.
            run.settled.set()

    async def _watch(self, run: _Run) -> None:
        assert run.pulse is not None
        assert run.watch_scope is not None
        assert run.state is not None
        with run.watch_scope:
            await wait_until_late(run.pulse)
            run.state.fail(Hung(run.pulse.timeout))

    def _mark_ready(self, run: _Run, value: object) -> None:
        run.ready = True
        child = run.child
        child.kept = True
        if child.run is run:
            child.value = value
            if child.status == "starting":
                child.status = "running"
        run.settled.set()

    def _abandon(self, run: _Run) -> None:
        """Forget a child whose first run never got ready (stopping it on purpose)."""
        child = run.child
        if run.state is not None:
            run.state.abort()
        run.close_pending()
        if self._children.get(child.name) is child:
            del self._children[child.name]

    async def _stop_run(self, child: _Child) -> None:
        """Stop the child's current run on purpose: token, grace period, cancel."""
        run = child.run
        if run is None or run.state is None or run.state.done:
            return
        state = run.state
        # From here on it is an intentional stop: never reported, whatever
        # the child does (the same flag TaskState.abort sets, without the
        # cancel yet).
        state.aborted = True
        child.status = "stopping"
        if run.stop_deadline is None:
            # The grace period starts once, at the first request: a stop
            # taken over (a restart job cancelled by the block's end) keeps
            # its deadline.
            graceful = run.token is not None and run.began
            run.stop_deadline = trio.current_time() + (child.shutdown_timeout if graceful else 0.0)
            if graceful:
                assert run.token is not None
                run.token.set()
        if run.stop_deadline > trio.current_time():
            with trio.move_on_at(run.stop_deadline):
                await state.wait()
        state.abort()
        await state.wait()
        run.close_pending()

    # --- failures and restarts ---

    def _on_failure(self, state: TaskState, failure: TaskFailure) -> None:
        """A run failed (not stopped on purpose): report, then restart or give up.

        Called by the core in the failing task, synchronously, right as the
        run ends; so restarts are counted in the order failures happen.
        """
        run = cast(_Run, state.meta)
        child = run.child
        run.failure = failure
        if run.first and not run.ready:
            # start() raises it instead; the child is not kept.
            run.startup_error = _startup_error(child, failure.reason)
            return
        publish_or_log(self._broadcaster, failure, logger)
        child.last_failure = failure
        if child.run is not run:  # pragma: no cover - a run ends once, and only the last fails
            return
        if self._closing or not self._restarts_after(child, failure):
            child.retire()
            return
        now = trio.current_time()
        window = self._window
        while window and now - window[0][0] >= self._within:
            window.popleft()
        if len(window) >= self._max_restarts:
            child.status = "stopped"
            self._give_up([f for _, f in window] + [failure])
            return
        window.append((now, failure))
        self._restarts += 1
        if now - child.started_clock >= self._within:
            child.consecutive = 0
        child.consecutive += 1
        delay = self._backoff.delay(child.consecutive)
        if logger.isEnabledFor(logging.INFO):  # describing the failure has a cost
            logger.info(
                "child %r failed (%s): restart %d in %.3gs",
                child.name,
                describe_reason(failure.reason),
                child.consecutive,
                delay,
            )
        if self._strategy is Strategy.ONE_FOR_ONE:
            # Its own task sleeps the backoff: nobody else waits for it.
            child.owner = None
            child.restarts += 1
            self._spawn(_Run(child, delay=delay))
            return
        # Its run is over: it waits for the group's stops and the backoff.
        child.status = "backing_off"
        # A child still in its first start belongs to its start() call.
        children = [c for c in self._children.values() if c.kept and not c.retired]
        if self._strategy is Strategy.REST_FOR_ONE:
            children = children[children.index(child) :]
        # Restarts still pending for some of these children are merged into
        # this one, so that one operation restarts them all, in start order.
        pending = {c.owner for c in children if c.owner is not None}
        if pending:
            chosen = set(children)
            children = [c for c in self._children.values() if c in chosen or c.owner in pending]
        self._start_job(children, delay, by_hand=False)

    @staticmethod
    def _restarts_after(child: _Child, failure: TaskFailure) -> bool:
        if child.restart is Restart.TEMPORARY:
            return False
        if child.restart is Restart.TRANSIENT:
            return not isinstance(failure.reason, EarlyTermination)
        return True

    def _give_up(self, failures: Sequence[TaskFailure]) -> None:
        if self._gave_up is not None:
            return
        self._gave_up = RestartIntensityExceeded(self._max_restarts, self._within, failures)
        logger.error("%s", self._gave_up)
        self._closing = True
        for scope in self._jobs:
            scope.cancel()
        # The block's body ends; open_supervisor raises once all are stopped.
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _start_job(self, children: list[_Child], delay: float, *, by_hand: bool) -> _Job:
        job = _Job()
        for child in children:
            child.owner = job
        scope = trio.CancelScope()
        self._jobs.add(scope)
        self._core.nursery.start_soon(self._run_job, job, children, delay, by_hand, scope)
        return job

    async def _run_job(
        self,
        job: _Job,
        children: list[_Child],
        delay: float,
        by_hand: bool,
        scope: trio.CancelScope,
    ) -> None:
        """Stop ``children`` (reverse order), wait ``delay``, start them again (in order).

        A temporary child stopped by a strategy is not started again (as in
        OTP): it ends for good. One restarted by hand is.
        """
        try:
            with scope:
                async with self._serial:
                    for child in reversed(children):
                        if child.owner is not job:
                            continue
                        await self._stop_run(child)
                        if child.owner is not job:
                            continue
                        if child.restart is Restart.TEMPORARY and not by_hand:
                            child.retire()
                        else:
                            child.status = "backing_off"
                await trio.sleep(delay)
                async with self._serial:
                    for child in children:
                        if child.owner is not job:
                            continue  # taken over by a later failure, a stop or a restart
                        child.owner = None
                        child.restarts += 1
                        run = _Run(child)
                        job.runs.append(run)
                        self._spawn(run)
                        await run.settled.wait()
        finally:
            self._jobs.discard(scope)
            job.done.set()

    async def _restart_by_hand(self, child: _Child) -> None:
        self._check_open(f"restart child {child.name!r}")
        child.retired = False
        job = self._start_job([child], 0.0, by_hand=True)
        await job.done.wait()
        run = job.runs[0] if job.runs else None
        if run is None:
            raise RuntimeError(
                f"the restart of child {child.name!r} was overtaken: the child was stopped "
                "or the supervisor is stopping"
            )
        if not run.ready:
            if run.failure is not None:
                raise _startup_error(child, run.failure.reason)
            raise RuntimeError(f"child {child.name!r} was stopped before it was ready")

    def _stop_for_good(self, child: _Child) -> None:
        child.owner = None
        child.retired = True
        run = child.run
        if run is None or run.state is None or run.state.done or self._core.closing:
            if child.status != "stopping":
                child.status = "stopped"
            return
        run.state.aborted = True  # on purpose from now on, before the stop begins
        child.status = "stopping"
        self._core.nursery.start_soon(self._finish_stop_for_good, child)

    async def _finish_stop_for_good(self, child: _Child) -> None:
        await self._stop_run(child)
        if child.retired:
            child.status = "stopped"

    async def _stop_all(self) -> None:
        """The graceful stop: children one at a time, in reverse start order."""
        self._closing = True
        for scope in self._jobs:
            scope.cancel()
        children = list(self._children.values())
        # Stops already under way (a restart job's, now cancelled) end first,
        # so that children still stop one at a time.
        for child in children:
            if child.status == "stopping":
                await self._stop_run(child)
        for child in reversed(children):
            child.owner = None
            await self._stop_run(child)
            child.status = "stopped"


@asynccontextmanager
async def open_supervisor(
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    within: float = 5.0,
    backoff: Backoff | None = None,
) -> AsyncGenerator[Supervisor, None]:
    """Open a :class:`Supervisor` whose children live inside this block.

    Args:
      strategy: Which children are restarted when one fails
        (:class:`Strategy`).
      max_restarts: How many restarts the supervisor may make within any
        ``within``-second window. The failure that would need one more is
        not restarted: the supervisor gives up.
      within: The window, in seconds (> 0, may be ``math.inf``). A child
        that ran at least this long also starts its backoff afresh.
      backoff: The wait before the n-th consecutive restart of a child
        (default :class:`~trio_monitor.Backoff()`: 0.1 s doubling to 30 s,
        ±10 %). ``Backoff(initial=0)`` restarts at once.

    When the block ends normally or raises, every child is stopped
    gracefully, one at a time in reverse start order (token, grace period,
    cancel), and the block's exception propagates as itself. When the
    supervisor gives up, the block's body is cancelled, the children are
    stopped the same way, and :class:`~trio_monitor.RestartIntensityExceeded`
    is raised. Cancellation from outside stops everything at once and
    reports nothing. Subscriptions end once the block has exited.

    Raises:
      TypeError: An argument has the wrong type (``strategy`` not a
        :class:`Strategy`, ``backoff`` not a :class:`~trio_monitor.Backoff`...).
      ValueError: ``max_restarts`` is negative, ``within`` not positive.
      RestartIntensityExceeded: The supervisor gave up.
    """
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a trio_monitor.Strategy member, not {shown(strategy)}")
    max_restarts = check_count("max_restarts", max_restarts)
    within = check_seconds("within", within, positive=True, allow_inf=True)
    if backoff is None:
        backoff = Backoff()
    elif not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a trio_monitor.Backoff, not {shown(backoff)}")
    broadcaster: Broadcaster[TaskFailure] = Broadcaster()
    built: list[Supervisor] = []

    def build(core: SupervisedNursery) -> Supervisor:
        built.append(
            Supervisor(
                core,
                broadcaster,
                strategy=strategy,
                max_restarts=max_restarts,
                within=within,
                backoff=backoff,
            )
        )
        return built[0]

    def on_failure(state: TaskState, failure: TaskFailure) -> None:
        built[0]._on_failure(state, failure)  # pyright: ignore[reportPrivateUsage]

    async with open_component(
        build,
        # Every report goes through Supervisor._on_failure, which publishes
        # (or not: a child failing before it is ready raises in start()).
        lambda _failure: None,
        graceful_stop=Supervisor._stop_all,  # pyright: ignore[reportPrivateUsage]
        on_close=lambda _supervisor: broadcaster.close(),
        on_failure=on_failure,
        logger=logger,
    ) as supervisor:
        with trio.CancelScope() as body:
            supervisor._body_scope = body  # pyright: ignore[reportPrivateUsage]
            yield supervisor
        if supervisor._gave_up is not None:  # pyright: ignore[reportPrivateUsage]
            raise supervisor._gave_up  # pyright: ignore[reportPrivateUsage]
