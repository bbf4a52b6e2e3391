"""The background runtime: fire-and-forget jobs with a bounded queue and a drain.

The shape, and why:

* Accepted jobs wait in one deque of at most ``max_queue_size`` entries. A job
  leaves the deque at the moment its own code starts running, so the bound on
  waiting jobs is a real bound on memory: nothing is moved to an unbounded
  set of tasks parked on a semaphore.
* At most ``max_concurrent_tasks`` worker tasks, supervised by the core
  :class:`~trio_monitor._core.SupervisedNursery`, pop jobs and run them inline,
  one after the other. An idle worker parks until a job arrives, and exits at
  shutdown. A job therefore costs a deque entry, not a Trio task: there is no
  task, nursery entry or cancel scope per job (a scope only when
  ``job_timeout`` is set). Shutdown and cancellation act on the workers'
  own scopes, through the core.
* :meth:`RuntimeHandle.spawn_wait` callers that find the deque full queue up
  in FIFO order with their job in hand; when a worker pops a job it moves the
  first waiter's job into the freed slot and wakes that caller. Nobody can
  steal the slot in between, and the deque never exceeds its bound.
* A job is checked when it is spawned, like :meth:`trio.Nursery.start_soon`
  checks, but without creating its coroutine when that can be avoided: an
  ``async def`` function (or a partial of one) is recognised from its code
  flags, and queued as ``(fn, args)``; its coroutine, and so its frame, only
  exists while it runs. Anything else (a callable object, a sync wrapper
  returning a coroutine, a mistake) is called at once by the core's
  :func:`~trio_monitor._core.coroutine_or_error`: a mistake raises
  :class:`TypeError` in the spawning code, and a valid coroutine is queued
  as it is (and closed if it is dropped unrun).
* Every job ends in exactly one counter. A job whose worker is cancelled
  while it runs (the drain deadline, a cancellation from outside) is
  ``cancelled``, whatever it does with the cancellation: raise, swallow it
  and return, or fail in a ``finally``.
* A worker that dies by a bug (never by a job's exception: those are
  isolated) is logged and replaced while jobs wait, so nothing accepted is
  stranded.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVarTuple

import attrs
import outcome
import trio

from ._broadcast import Broadcaster
from ._core import (
    FINITE,
    SupervisedNursery,
    callable_name,
    capture,
    coroutine_or_error,
    is_async_function,
    not_isolated,
    open_component,
    resume,
)
from ._errors import QueueFull, RuntimeClosed, ShutdownTimeout
from ._failures import (
    Panic,
    TaskFailure,
    TaskInfo,
    describe_exception,
    describe_reason,
    next_task_id,
)
from ._validate import attrs_count, check_seconds, check_str

__all__ = [
    "BackgroundRuntime",
    "RuntimeConfig",
    "RuntimeHandle",
    "RuntimeMetrics",
    "open_runtime",
]

logger = logging.getLogger("trio_monitor.runtime")

PosArgs = TypeVarTuple("PosArgs")

# One accepted job: (async_fn, args, name or None, request_id or None, task id).
# A plain tuple: it is the only per-job allocation on the fast path. A job
# whose coroutine had to be created at spawn time is (resume, (coroutine,),
# name, ...): see _new_job.
_Job = tuple[Callable[..., Awaitable[object]], tuple[Any, ...], str | None, str | None, int]

_WORKER_NAME: Final = "trio_monitor.runtime worker"


# Converters, not validators: the fields hold floats whatever number was given.
def _drain_timeout(value: object) -> float:
    return check_seconds("RuntimeConfig.drain_timeout", value, allow_inf=True)


def _job_timeout(value: object) -> float | None:
    if value is None:
        return None
    return check_seconds("RuntimeConfig.job_timeout", value, positive=True, allow_inf=True)


@attrs.frozen
class RuntimeConfig:
    """Limits of a :class:`BackgroundRuntime`. Checked at construction.

    Attributes:
      max_queue_size (int): How many accepted jobs may wait to start, at
        most. A job counts as queued until its own code starts running.
        At least 1.
      max_concurrent_tasks (int): How many jobs may run at once, at most;
        also the most worker tasks the runtime ever holds. At least 1.
      drain_timeout (float): Seconds :meth:`BackgroundRuntime.shutdown` waits
        for accepted jobs to finish before cancelling the rest. ``0`` cancels
        at once; ``math.inf`` waits for ever.
      job_timeout (float | None): If set, a job still running after this
        many seconds is cancelled and counted as failed (reported as a
        :class:`~trio_monitor.Panic` holding a :exc:`TimeoutError`), even if
        it ignores the cancellation (swallows it, or sits in a thread) and
        returns later. None (the default) sets no limit and costs nothing
        per job.

    Raises:
      TypeError: A value is not a number (``bool`` included).
      ValueError: A size is below 1, a timeout is negative or NaN, or
        ``job_timeout`` is 0. The message names the field.
    """

    max_queue_size: int = attrs.field(
        default=1024, validator=attrs_count("RuntimeConfig", "max_queue_size", minimum=1)
    )
    max_concurrent_tasks: int = attrs.field(
        default=128, validator=attrs_count("RuntimeConfig", "max_concurrent_tasks", minimum=1)
    )
    drain_timeout: float = attrs.field(default=30.0, converter=_drain_timeout)
    job_timeout: float | None = attrs.field(default=None, converter=_job_timeout)


@attrs.frozen
class RuntimeMetrics:
    """A snapshot of a :class:`BackgroundRuntime`'s counters.

    Every accepted job is in exactly one state, so at any moment
    ``accepted == queued + running + succeeded + failed + cancelled + not_started``.

    Attributes:
      queued (int): Accepted jobs whose code has not started yet (never more
        than ``max_queue_size``).
      running (int): Jobs running now (never more than ``max_concurrent_tasks``).
      succeeded (int): Jobs that returned.
      failed (int): Jobs that raised an :class:`Exception` or hit ``job_timeout``.
      rejected (int): :meth:`RuntimeHandle.spawn` calls refused with
        :class:`~trio_monitor.QueueFull`.
      cancelled (int): Jobs cancelled while running: by the drain deadline
        of :meth:`BackgroundRuntime.shutdown`, or by a cancellation from
        outside the runtime. Such a job counts here whatever it does with
        its cancellation (raise an exception, swallow it and return), never
        in ``failed`` or ``succeeded``.
      not_started (int): Accepted jobs dropped without running, for the same
        two reasons.
      waiting (int): :meth:`RuntimeHandle.spawn_wait` callers waiting for
        room now. Their jobs are not accepted yet and not counted elsewhere.
    """

    queued: int
    running: int
    succeeded: int
    failed: int
    rejected: int
    cancelled: int
    not_started: int
    waiting: int

    @property
    def accepted(self) -> int:
        """Jobs accepted so far: the sum of every per-job state."""
        return (
            self.queued
            + self.running
            + self.succeeded
            + self.failed
            + self.cancelled
            + self.not_started
        )


class _Waiter:
    """A :meth:`RuntimeHandle.spawn_wait` caller parked with its job."""

    __slots__ = ("job", "task")

    def __init__(self, job: _Job, task: trio.lowlevel.Task) -> None:
        self.job = job
        self.task = task


def _job_name(job: _Job) -> str:
    name = job[2]
    return name if name is not None else callable_name(job[0])


def _new_job(
    async_fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    name: str | None,
    request_id: str | None,
) -> _Job:
    """The queue entry for a spawn, or TypeError for a non-async callable.

    The fast path keeps ``(fn, args)`` and creates no coroutine (see the
    module docstring); a callable that cannot be recognised without calling
    it is called now, in the Trio thread, and its coroutine queued.
    """
    if name is not None:
        check_str("job name", name, allow_empty=True)
    if request_id is not None:
        check_str("request_id", request_id, allow_empty=True)
    if is_async_function(async_fn):
        return (async_fn, args, name, request_id, next_task_id())
    coro = coroutine_or_error(async_fn, args)
    if name is None:
        name = callable_name(async_fn)
    return (resume, (coro,), name, request_id, next_task_id())


def _discard(job: _Job) -> None:
    """Forget a job that will never run: close its coroutine, if it has one."""
    if job[0] is resume:
        job[1][0].close()


class _Engine:
    """The runtime's state and workers, shared by the runtime and its handles."""

    __slots__ = (
        "_broadcaster",
        "_cancelled",
        "_closed",
        "_counts_before_drain",
        "_drain_deadline",
        "_drained",
        "_draining",
        "_failed",
        "_idle",
        "_max_queue",
        "_max_workers",
        "_not_started",
        "_pending",
        "_rejected",
        "_running",
        "_succeeded",
        "_summoned",
        "_supervisor",
        "_waiters",
        "config",
        "token",
    )

    def __init__(
        self,
        supervisor: SupervisedNursery,
        config: RuntimeConfig,
        broadcaster: Broadcaster[TaskFailure],
    ) -> None:
        self._supervisor = supervisor
        self.config = config
        self._broadcaster = broadcaster
        self.token = trio.lowlevel.current_trio_token()
        self._max_queue = config.max_queue_size
        self._max_workers = config.max_concurrent_tasks
        self._pending: deque[_Job] = deque()
        self._waiters: deque[_Waiter] = deque()
        # Idle workers park here until a job arrives, the longest idle
        # first to wake. (A deque and Trio's lowlevel wait, not a
        # ParkingLot: this is on every job's path when workers go idle.)
        self._idle: deque[trio.lowlevel.Task] = deque()
        # Workers started or woken that have not looked at the deque yet:
        # they will take that many queued jobs, so nobody else is woken for them.
        self._summoned = 0
        self._closed = False
        # The drain: its deadline (fixed by the first shutdown call), the
        # Event of the call draining now, whether it has ended, and the
        # counters it started from.
        self._drain_deadline: float | None = None
        self._draining: trio.Event | None = None
        self._drained = False
        self._counts_before_drain = (0, 0)
        self._running = 0
        self._succeeded = 0
        self._failed = 0
        self._rejected = 0
        self._cancelled = 0
        self._not_started = 0

    def metrics(self) -> RuntimeMetrics:
        return RuntimeMetrics(
            queued=len(self._pending),
            running=self._running,
            succeeded=self._succeeded,
            failed=self._failed,
            rejected=self._rejected,
            cancelled=self._cancelled,
            not_started=self._not_started,
            waiting=len(self._waiters),
        )

    def subscribe(
        self, max_buffer_size: int | float = 64
    ) -> trio.MemoryReceiveChannel[TaskFailure]:
        return self._broadcaster.subscribe(max_buffer_size)

    # --- accepting jobs ---

    def offer(self, job: _Job) -> bool:
        """Accept ``job`` if the deque has room; False if it is full.

        Raises RuntimeClosed (the job discarded) once the runtime is closed.
        """
        if self._closed:
            _discard(job)
            raise RuntimeClosed()
        if len(self._pending) >= self._max_queue:
            return False
        self._accept(job)
        return True

    def spawn(self, job: _Job) -> None:
        if not self.offer(job):
            self._rejected += 1
            _discard(job)
            raise QueueFull()

    def _accept(self, job: _Job) -> None:
        pending = self._pending
        pending.append(job)
        if len(pending) > self._summoned:
            # Nobody on the way will take this job: wake an idle worker, or
            # start one while there are fewer than max_concurrent_tasks.
            if self._idle:
                trio.lowlevel.reschedule(self._idle.popleft())
                self._summoned += 1
            elif len(self._supervisor.tasks) < self._max_workers:
                self._supervisor.spawn(_WORKER_NAME, self.work, (), FINITE)
                self._summoned += 1

    async def wait_for_room(self, job: _Job) -> None:
        """Queue up, job in hand, until a worker frees a slot for it.

        The deque is full: a worker that pops a job moves ours into the slot
        it freed and wakes us (accepted), or the runtime closes and wakes us
        with RuntimeClosed. Cancelled while waiting: the job is not accepted.
        """
        waiter = _Waiter(job, trio.lowlevel.current_task())
        waiters = self._waiters
        waiters.append(waiter)

        def abort(_: Any) -> trio.lowlevel.Abort:
            waiters.remove(waiter)
            _discard(job)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    # --- running jobs ---

    async def work(self) -> None:
        pending = self._pending
        waiters = self._waiters
        job_timeout = self.config.job_timeout
        checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
        while True:
            self._summoned -= 1
            # Jobs that summoned workers are on their way to take are theirs:
            # taking one here would leave its worker to wake up for nothing
            # (a task switch per job when workers keep going idle).
            while len(pending) > self._summoned:
                job = pending.popleft()
                if waiters:
                    # The slot just freed goes to the longest waiting caller.
                    # The deque keeps its length and this worker goes on
                    # popping, so nobody needs summoning (see _accept).
                    waiter = waiters.popleft()
                    pending.append(waiter.job)
                    trio.lowlevel.reschedule(waiter.task)
                self._running += 1
                timed_out = False
                try:
                    if job_timeout is None:
                        # capture(), inline: no frame of its own per job.
                        exc = None
                        try:
                            await job[0](*job[1])
                        except Exception as caught:
                            exc = caught
                        except BaseExceptionGroup as group:
                            raise not_isolated(group)  # noqa: B904 - see capture
                    else:
                        exc, timed_out = await self._run_with_timeout(job, job_timeout)
                    # Stopped while it ran, by the drain deadline or from
                    # outside? Then that stop is its outcome, whatever the job
                    # made of its Cancelled (an exception, or a return). No
                    # yield when not cancelled.
                    await checkpoint_if_cancelled()
                except BaseException:
                    # An intentional stop: counted, never reported.
                    self._running -= 1
                    self._cancelled += 1
                    raise
                self._running -= 1
                if exc is None:
                    self._succeeded += 1
                else:
                    self._failed += 1
                    self._job_failed(job, exc, timed_out)
            if self._closed:
                return
            await self._park()

    async def _park(self) -> None:
        """Wait, idle, until a job or the shutdown wakes this worker."""
        idle = self._idle
        task = trio.lowlevel.current_task()
        idle.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    @staticmethod
    async def _run_with_timeout(job: _Job, seconds: float) -> tuple[Exception | None, bool]:
        exc: Exception | None = None
        with trio.move_on_after(seconds) as scope:
            exc = await capture(job[0], job[1])
        # Past its deadline is a timeout, however the job ended: by the
        # cancellation, by an exception made of it, or by returning late
        # after ignoring it (swallowed, or sitting in a thread). The clock
        # check covers a job that blocked the run past the deadline before
        # Trio could cancel anything.
        if scope.cancel_called or trio.current_time() >= scope.deadline:
            timeout = TimeoutError(
                f"background job {_job_name(job)!r} timed out after {seconds:g}s"
            )
            # The job's own exception, if it raised one, stays reachable.
            timeout.__context__ = exc
            return timeout, True
        return exc, False

    def _job_failed(self, job: _Job, exc: Exception, timed_out: bool) -> None:
        name = _job_name(job)
        request_id = job[3]
        if timed_out:
            logger.error(
                "background job %r (request id %s) failed: timed out after %gs",
                name,
                request_id,
                self.config.job_timeout,
            )
        else:
            logger.error(
                "background job %r (request id %s) failed: %s",
                name,
                request_id,
                describe_exception(exc),
                exc_info=exc,
            )
        if self._broadcaster.subscribers:
            self._broadcaster.publish(
                TaskFailure(TaskInfo(job[4], name), Panic.from_exception(exc))
            )

    # --- stopping ---

    def worker_failed(self, failure: TaskFailure) -> None:
        """A worker died by an exception: a bug in the runtime, never a job's.

        Jobs' exceptions are isolated, so this should never run; if it does,
        it is logged, and the worker is replaced while jobs wait, so that
        nothing accepted is stranded. (The job the worker was running, if
        any, was counted already.) Each replacement takes a job before it
        can fail again, so this cannot loop by itself.
        """
        replaced = bool(self._pending) and not self._supervisor.stopping
        logger.error(
            "background runtime worker failed (a bug in trio_monitor); %s: %s",
            "replacing it" if replaced else "no job is waiting for it",
            describe_reason(failure.reason),
            exc_info=failure.reason.exception if isinstance(failure.reason, Panic) else None,
        )
        if replaced:
            self._supervisor.spawn(_WORKER_NAME, self.work, (), FINITE)
            self._summoned += 1

    # --- stopping ---

    def _close(self) -> None:
        """Refuse new jobs; wake waiters with RuntimeClosed and idle workers to exit."""
        if self._closed:
            return
        self._closed = True
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            _discard(waiter.job)
            trio.lowlevel.reschedule(waiter.task, outcome.Error(RuntimeClosed()))
        idle = self._idle
        self._summoned += len(idle)
        while idle:
            trio.lowlevel.reschedule(idle.popleft())

    def _drop_pending(self) -> None:
        """Count what is still queued as never started, and forget it."""
        pending = self._pending
        self._not_started += len(pending)
        while pending:
            _discard(pending.popleft())

    async def shutdown(self) -> None:
        deadline = self._drain_deadline
        if deadline is None:
            # The first call fixes the deadline: a call cut short by its
            # caller's cancellation leaves it as it was for the next one.
            deadline = self._drain_deadline = trio.current_time() + self.config.drain_timeout
            self._counts_before_drain = (self._cancelled, self._not_started)
            self._close()
        while not self._drained:
            draining = self._draining
            if draining is not None:
                # Another call is draining: wait for it to end. If it was
                # cut short, nobody drains any more and this call goes on.
                await draining.wait()
                continue
            draining = self._draining = trio.Event()
            try:
                await self._drain(deadline)
            finally:
                self._draining = None
                draining.set()
            return
        await trio.lowlevel.checkpoint()

    async def _drain(self, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await self._supervisor.wait_idle()
        # Idle, or past the deadline: drop what never started, then cancel
        # the workers and wait until they are gone. (Idle workers on their
        # way out are cancelled too; that stops no job.)
        self._drop_pending()
        await self._supervisor.abort_remaining()
        self._drained = True
        cancelled_before, not_started_before = self._counts_before_drain
        cancelled = self._cancelled - cancelled_before
        not_started = self._not_started - not_started_before
        if cancelled or not_started:
            raise ShutdownTimeout(cancelled, not_started)

    def on_close(self) -> None:
        # The block is exiting (also on outer cancellation): whatever is still
        # queued will never start.
        self._close()
        self._drop_pending()
        self._broadcaster.close()


class BackgroundRuntime:
    """Runs fire-and-forget jobs with a bounded queue and bounded concurrency.

    Get one from :func:`open_runtime`; spawn jobs through a
    :class:`RuntimeHandle` from :meth:`handle`. Jobs start in the order they
    were accepted.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine

    @property
    def config(self) -> RuntimeConfig:
        """The :class:`RuntimeConfig` this runtime was opened with."""
        return self._engine.config

    def handle(self) -> RuntimeHandle:
        """A :class:`RuntimeHandle` for spawning jobs: cheap, share it freely."""
        return RuntimeHandle(self._engine)

    def metrics(self) -> RuntimeMetrics:
        """A snapshot of the counters (see :class:`RuntimeMetrics`)."""
        return self._engine.metrics()

    def subscribe(
        self, max_buffer_size: int | float = 64
    ) -> trio.MemoryReceiveChannel[TaskFailure]:
        """A new receive channel that gets every job failure from now on.

        Failures come in the same :class:`~trio_monitor.TaskFailure` form as
        the task monitor's: ``task`` is a :class:`~trio_monitor.TaskInfo`
        (a process-unique id, and the job's name or its function's qualified
        name) and ``reason`` a :class:`~trio_monitor.Panic`; a job past
        ``job_timeout`` gives a Panic whose ``exception`` is a
        :exc:`TimeoutError`. Jobs cancelled by the drain deadline or from
        outside are never reported. Each subscriber has a buffer of ``max_buffer_size``
        reports; a subscriber that falls behind misses the overflow, and no
        job ever waits for it. When the runtime closes, the channel ends.
        """
        return self._engine.subscribe(max_buffer_size)

    async def shutdown(self) -> None:
        """Stop accepting jobs, run every accepted one, then return.

        From the first call on, spawning raises
        :class:`~trio_monitor.RuntimeClosed`, and so do
        :meth:`RuntimeHandle.spawn_wait` calls still waiting for room (their
        jobs were never accepted). Every job already accepted still runs.
        If they have not all finished after ``drain_timeout`` seconds, the
        running ones are cancelled and the queued ones dropped, and once no
        worker is left, :class:`~trio_monitor.ShutdownTimeout` is raised
        with the exact counts. Cancelled jobs count in ``cancelled`` and are
        never reported, whatever they do while being cancelled (raise an
        exception, or swallow the cancellation and return).

        The drain's deadline is fixed by the first call: ``drain_timeout``
        seconds from then. Later calls:

        * after the drain has ended, return at once (without raising again);
        * while another call is draining, wait until that drain has ended,
          then return (the draining call raises ``ShutdownTimeout``, if any);
        * after a call that its caller's own cancellation cut short (a
          ``move_on_after`` around it, say), carry the *same* drain on: they
          wait for the jobs up to the original deadline, never cancel them
          sooner, and raise ``ShutdownTimeout`` only if that deadline really
          passed. So does the block's exit.

        This runs by itself when the ``async with`` block ends normally or
        with an exception; cancellation from outside skips the drain. Do not
        call it from inside a job: the drain would wait for that job.

        Raises:
          ShutdownTimeout: The drain did not finish by its deadline.
        """
        await self._engine.shutdown()


class RuntimeHandle:
    """Spawns jobs into a :class:`BackgroundRuntime`.

    Cheap to create, copy and pass around (to request handlers, say); every
    copy feeds the same runtime. Methods other than :meth:`spawn_from_thread`
    and :meth:`spawn_wait_from_thread` must be called from the runtime's own
    Trio thread.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine

    def spawn(
        self,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Accept ``async_fn(*args)`` as a job, or raise at once.

        The job starts when a worker is free, in acceptance order. ``name``
        (default: the function's qualified name) and ``request_id`` label
        the job in logs and failure reports.

        ``async_fn`` is checked now, like :meth:`trio.Nursery.start_soon`
        does: an ``async def`` function (or a :func:`functools.partial` of
        one) is queued as it is and called when its job starts (so wrong
        arguments show as that job's failure); any other callable is called
        now, must return a coroutine, and its coroutine waits in the queue.

        Raises:
          TypeError: ``async_fn`` is not an async function (a coroutine
            object, a synchronous function...), or a label is not a str.
          QueueFull: ``max_queue_size`` jobs are waiting to start already
            (counted in ``metrics().rejected``). Shed the load (e.g. answer
            HTTP 503) or use :meth:`spawn_wait`.
          RuntimeClosed: The runtime is shutting down or closed.
        """
        self._engine.spawn(_new_job(async_fn, args, name, request_id))

    async def spawn_wait(
        self,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Accept ``async_fn(*args)`` as a job, waiting for room in the queue.

        Like :meth:`spawn`, but when the queue is full this waits until a
        queued job starts; callers waiting together are served first come,
        first served. It is a checkpoint; if it is cancelled, the job was
        not accepted.

        Raises:
          TypeError: As :meth:`spawn`, before any wait.
          RuntimeClosed: The runtime is closed, or closed while this waited.
        """
        # The handle does the waiting itself: a coroutine layer less on the
        # common path, which a producer resumes through for every job.
        engine = self._engine
        job = _new_job(async_fn, args, name, request_id)
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            _discard(job)
            raise
        if engine.offer(job):
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await engine.wait_for_room(job)

    def spawn_from_thread(
        self,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """:meth:`spawn` from a thread other than the runtime's Trio thread.

        For synchronous code run with :func:`trio.to_thread.run_sync`, or any
        other thread: the spawn runs in the Trio thread (through the run's
        :class:`trio.lowlevel.TrioToken`) and this returns once the job is
        accepted. Never call it from the Trio thread itself: it would block it.

        Raises:
          TypeError: As :meth:`spawn` (checked in the Trio thread, raised here).
          QueueFull: As :meth:`spawn`, raised in the calling thread.
          RuntimeClosed: As :meth:`spawn`, also when the Trio run has ended.
        """
        engine = self._engine
        try:
            # The job is made (and checked) in the Trio thread.
            trio.from_thread.run_sync(
                lambda: engine.spawn(_new_job(async_fn, args, name, request_id)),
                trio_token=engine.token,
            )
        except trio.RunFinishedError:
            raise RuntimeClosed() from None

    def spawn_wait_from_thread(
        self,
        async_fn: Callable[[*PosArgs], Awaitable[object]],
        *args: *PosArgs,
        name: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """:meth:`spawn_wait` from a thread other than the runtime's Trio thread.

        Blocks the calling thread until the job is accepted.

        Raises:
          TypeError: As :meth:`spawn` (checked in the Trio thread, raised here).
          RuntimeClosed: As :meth:`spawn_wait`, also when the Trio run has ended.
        """
        engine = self._engine
        try:
            trio.from_thread.run(
                lambda: self.spawn_wait(async_fn, *args, name=name, request_id=request_id),
                trio_token=engine.token,
            )
        except trio.RunFinishedError:
            raise RuntimeClosed() from None

    def __copy__(self) -> RuntimeHandle:
        return self

    def __deepcopy__(self, memo: object) -> RuntimeHandle:
        # A handle refers to its runtime; a copy refers to the same one.
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RuntimeHandle):
            return NotImplemented
        return self._engine is other._engine

    def __hash__(self) -> int:
        return hash(id(self._engine))

    def __repr__(self) -> str:
        return f"<RuntimeHandle of runtime at {id(self._engine):#x}>"


@asynccontextmanager
async def open_runtime(
    config: RuntimeConfig | None = None,
) -> AsyncGenerator[BackgroundRuntime, None]:
    """Open a :class:`BackgroundRuntime` whose jobs all run inside this block.

    When the block ends normally or with an exception,
    :meth:`BackgroundRuntime.shutdown` drains the runtime. An exception from
    the block propagates as itself (a :class:`~trio_monitor.ShutdownTimeout`
    from that drain is then dropped); after a normal end, a drain past
    ``drain_timeout`` raises :class:`~trio_monitor.ShutdownTimeout`. If a
    :meth:`~BackgroundRuntime.shutdown` call in the block was cut short by
    its caller's cancellation, the exit carries that drain on, up to its
    original deadline. On cancellation from outside nothing is drained:
    running jobs are cancelled at once, queued ones dropped, and nothing is
    reported.

    Args:
      config: The limits; ``RuntimeConfig()`` (1024 queued, 128 running, 30 s
        drain) when None.
    """
    if config is None:
        config = RuntimeConfig()
    elif not isinstance(config, RuntimeConfig):
        raise TypeError(f"config must be a RuntimeConfig, not {type(config).__name__}")
    engines: list[_Engine] = []

    def build(supervisor: SupervisedNursery) -> BackgroundRuntime:
        engines.append(_Engine(supervisor, config, Broadcaster()))
        return BackgroundRuntime(engines[0])

    async with open_component(
        build,
        lambda failure: engines[0].worker_failed(failure),
        graceful_stop=BackgroundRuntime.shutdown,
        on_close=lambda _runtime: engines[0].on_close(),
        logger=logger,
    ) as runtime:
        yield runtime
