"""The job server: configuration, lifecycle, and the loops of one start.

One way through for data: ``enqueue`` -> storage -> claim (a batch, one per
idle worker) -> processor -> compare-and-swap transition (group-committed)
-> ``on_state_change`` hook. Storage knows SQL, not scheduling; the server
knows scheduling, not SQL.

Everything a start owns lives in a :class:`_ServerRun`, so that a stopped
server starts again from a clean slate (a fresh shutdown token, a fresh
identity). Its tasks run under the supervision core's
:func:`~trio_monitor._core.open_component`: a task that crashes by a
bug is logged and never takes the server down, and nothing outlives
:meth:`JobServer.run`.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import trio

from .._core import FINITE, SupervisedNursery, TaskState, open_component
from .._failures import TaskFailure
from .._token import ShutdownToken
from .._validate import MAX_SECONDS, check_count, check_seconds, check_str
from ._client import Client
from ._cron import next_run, validate_cron
from ._model import (
    AwaitingRetry,
    Deleted,
    Enqueued,
    Job,
    JobState,
    Processing,
    RecurringJob,
    ServerInfo,
    Transition,
    Transitioned,
    dump_json,
    utcnow,
)
from ._processor import Processor, RetryPolicy, StateChangeHook
from ._storage import Storage
from ._workers import Middleware, WorkerContext, WorkerRegistry

__all__ = ["JobServer", "ServerConfig", "ServerError"]

logger = logging.getLogger("trio_monitor.jobs")

#: Bounds on storage calls made while shielded from cancellation.
SHIELDED_CALL_TIMEOUT = 5.0
#: Back-off after a failing storage call: doubles from the first value to the
#: second, with +-25% jitter so servers do not retry in lock-step.
ERROR_BACKOFF = (0.5, 30.0)


class ServerError(Exception):
    """A job server was used the wrong way (e.g. started while running)."""


# -- configuration --------------------------------------------------------

_COUNTS = {"worker_count": 0, "fetch_batch_size": 1}
_INTERVALS = (
    "polling_interval",
    "job_timeout",
    "scheduler_poll_interval",
    "stale_processing_after",
    "recurring_poll_interval",
    "cleanup_interval",
    "heartbeat_interval",
    "dead_server_timeout",
)
_NON_NEGATIVE = ("shutdown_timeout", "succeeded_ttl", "failed_ttl")


def _queues(value: Sequence[str]) -> list[str]:
    if isinstance(value, str):
        raise TypeError(f"ServerConfig.queues must be a list of queue names, not the str {value!r}")
    queues = list(value)
    for index, queue in enumerate(queues):
        check_str(f"ServerConfig.queues[{index}]", queue)
    return queues


@attrs.frozen(hash=False)
class ServerConfig:
    """How a :class:`JobServer` runs. Durations are float seconds.

    Attributes:
      server_name (str): Name of the server; with heartbeats on, its
        identity is ``f"{server_name}#{uuid}"``, unique per start.
      worker_count (int): Jobs run at once. 0 is valid: a server that only
        recovers, schedules and sweeps.
      polling_interval (float): How long an idle server waits for work
        before it polls storage again. Enqueues in this process (and
        PostgreSQL notifications) wake it at once.
      job_timeout (float): A run taking longer is cancelled and counts as
        a failed attempt.
      queues (list[str]): Queues to claim from; empty: all queues.
      fetch_batch_size (int): Most jobs claimed in one storage round trip
        (never more than there are idle workers).
      enable_scheduler (bool): Run the scheduler, which enqueues
        :class:`~trio_monitor.jobs.Scheduled` and
        :class:`~trio_monitor.jobs.AwaitingRetry` jobs when due.
      scheduler_poll_interval (float): Its polling interval. Jobs this
        server delays or retries wake it early, at their due time.
      shutdown_timeout (float): How long :meth:`JobServer.stop` lets
        running jobs finish before it cancels them and re-enqueues them.
      stale_processing_after (float): On start, ``Processing`` jobs claimed
        longer ago than this are re-enqueued (their server died). Keep it
        well above ``job_timeout``.
      enable_recurring (bool): Run the recurring (cron) poller.
      recurring_poll_interval (float): Its polling interval.
      enable_cleanup (bool): Run the sweeper that deletes expired jobs.
      cleanup_interval (float): Its interval.
      succeeded_ttl (float): How long a ``Succeeded`` job is kept.
      failed_ttl (float): How long a ``Failed`` job is kept.
      enable_heartbeat (bool): Register the server, bump its heartbeat and
        re-enqueue the running jobs of peers whose heartbeat stopped.
      heartbeat_interval (float): Time between heartbeats.
      dead_server_timeout (float): A peer silent this long is dead. Keep it
        several ``heartbeat_interval`` s long.

    Raises:
      TypeError: a field of the wrong type (naming it).
      ValueError: a negative count, a non-positive interval, or a duration
        longer than about 95 years (naming it).
    """

    server_name: str = "qml-server"
    worker_count: int = 5
    polling_interval: float = 1.0
    job_timeout: float = 300.0
    queues: list[str] = attrs.field(factory=lambda: ["default"], converter=_queues)
    fetch_batch_size: int = 10
    enable_scheduler: bool = True
    scheduler_poll_interval: float = 30.0
    shutdown_timeout: float = 30.0
    stale_processing_after: float = 300.0
    enable_recurring: bool = True
    recurring_poll_interval: float = 5.0
    enable_cleanup: bool = True
    cleanup_interval: float = 60.0
    succeeded_ttl: float = 86400.0
    failed_ttl: float = 604800.0
    enable_heartbeat: bool = False
    heartbeat_interval: float = 10.0
    dead_server_timeout: float = 60.0

    def __attrs_post_init__(self) -> None:
        # The shared rule: wrong type -> TypeError, bad value -> ValueError.
        check_str("ServerConfig.server_name", self.server_name)
        for name, least in _COUNTS.items():
            check_count(f"ServerConfig.{name}", getattr(self, name), minimum=least)
        for name in (*_INTERVALS, *_NON_NEGATIVE):
            check_seconds(
                f"ServerConfig.{name}",
                getattr(self, name),
                positive=name in _INTERVALS,
                maximum=MAX_SECONDS,
            )


# -- the clock ------------------------------------------------------------


class _Clock:
    """Wall-clock UTC time that advances with :func:`trio.current_time`.

    Anchored once per Trio run, so a ``MockClock`` drives the server's
    delays, retries, TTLs and heartbeats, and real runs get real time.
    """

    __slots__ = ("_anchor",)

    def __init__(self) -> None:
        self._anchor: tuple[object, datetime, float] | None = None

    def now(self) -> datetime:
        token = trio.lowlevel.current_trio_token()
        if self._anchor is None or self._anchor[0] is not token:
            self._anchor = (token, utcnow(), trio.current_time())
        _, wall, mono = self._anchor
        return wall + timedelta(seconds=trio.current_time() - mono)

    def trio_time_of(self, when: datetime) -> float:
        """The :func:`trio.current_time` at which ``now()`` will reach ``when``."""
        return trio.current_time() + (when - self.now()).total_seconds()


def _backoff(failures: int) -> float:
    first, cap = ERROR_BACKOFF
    delay: float = min(cap, first * 2.0 ** min(failures - 1, 32))
    return delay * random.uniform(0.75, 1.25)


# -- the server -----------------------------------------------------------


class JobServer:
    """A persistent background-job server.

    Start it with ``await nursery.start(server.run)``, which returns once the
    startup sweep is done and the workers are claiming; stop it with
    :meth:`stop`. A stopped server may be started again.

    Args:
      config: How it runs.
      storage: Where jobs live (see :func:`~trio_monitor.jobs.open_storage`).
      workers: The worker functions, by method name.
      retry_policy: Retries of failing jobs (default :class:`RetryPolicy`).
      middleware: Async callables ``(job, ctx, call_next)`` wrapped around
        every run, the first outermost; ``await call_next()`` runs the rest
        of the chain and returns the result.
      on_state_change: ``fn(job, old_state, new_state)``, called after each
        transition this server persists: claims, outcomes, retries,
        scheduler promotions, recoveries, reclaims, requeues on stop. For a
        claim, ``old_state`` is an ``Enqueued`` stamped with the claim time.
        It runs in the server's task: keep it quick and non-blocking. If it
        raises, the error is logged and ignored.
    """

    def __init__(
        self,
        config: ServerConfig,
        storage: Storage,
        workers: WorkerRegistry,
        *,
        retry_policy: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        on_state_change: StateChangeHook | None = None,
    ) -> None:
        if not isinstance(config, ServerConfig):
            raise TypeError(f"config must be a ServerConfig, not {type(config).__name__}")
        if not isinstance(storage, Storage):
            raise TypeError(
                f"storage must implement the Storage protocol (see open_storage), "
                f"not {type(storage).__name__}"
            )
        if not isinstance(workers, WorkerRegistry):
            raise TypeError(f"workers must be a WorkerRegistry, not {type(workers).__name__}")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(
                f"retry_policy must be a RetryPolicy, not {type(retry_policy).__name__}"
            )
        middleware = tuple(middleware)
        for mw in middleware:
            if not callable(mw):
                raise TypeError(f"middleware must be async callables, got {mw!r}")
        if on_state_change is not None and not callable(on_state_change):
            raise TypeError(f"on_state_change must be callable, got {on_state_change!r}")
        self.config = config
        self.storage = storage
        self.workers = workers
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self.middleware = middleware
        self.on_state_change = on_state_change
        self._clock = _Clock()
        self._run: _ServerRun | None = None
        #: A :class:`~trio_monitor.jobs.Client` on this server's storage and clock.
        self.client = Client(storage, clock=self.now)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<JobServer {self.config.server_name!r} {state}>"

    # -- lifecycle --------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True from the moment :meth:`run` has started until it returns."""
        return self._run is not None and self._run.started

    @property
    def server_id(self) -> str | None:
        """The identity stamped on claimed jobs while running, else None."""
        return self._run.identity if self._run is not None else None

    def now(self) -> datetime:
        """The server's clock: UTC wall time that advances with :func:`trio.current_time`.

        Every time the server gives storage (claims, due times, TTLs,
        heartbeats) comes from here, so a :class:`trio.testing.MockClock`
        drives them all.
        """
        return self._clock.now()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the server until :meth:`stop` (or until cancelled).

        Use ``await nursery.start(server.run)``: it returns once stale
        ``Processing`` jobs were re-enqueued, the heartbeat row (if enabled)
        is registered and the loops are running.

        If cancelled from outside, everything stops at once; jobs that were
        running are re-enqueued (shielded, within a few seconds) with that
        attempt uncounted.

        Raises:
          ServerError: the server is already running.
        """
        if self._run is not None:
            raise ServerError(
                f"job server {self.config.server_name!r} is already running; "
                "stop() it before starting it again"
            )
        run = _ServerRun(self, self._clock)
        self._run = run
        try:
            await run.main(task_status)
        finally:
            self._run = None
            run.done.set()

    async def stop(self) -> None:
        """Stop gracefully and return once :meth:`run` has returned.

        Workers stop claiming and ``ctx.cancel`` is set; running jobs get
        ``shutdown_timeout`` seconds to finish, then they are cancelled and
        put back to ``Enqueued`` (that attempt uncounted). Pending outcomes
        are written, the heartbeat row is removed. Does nothing if the
        server is not running.
        """
        run = self._run
        if run is None:
            await trio.lowlevel.checkpoint()
            return
        run.request_stop()
        await run.done.wait()

    # -- jobs -------------------------------------------------------------

    async def enqueue(
        self,
        method: str,
        payload: Any,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float | None = None,
        run_at: datetime | None = None,
        unique_key: str | None = None,
        lock: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  (the job's timeout, SPEC §6)
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Store a new job and return its id; the same as ``server.client.enqueue``.

        With ``delay`` (seconds from now) or ``run_at`` (an aware datetime)
        the job is :class:`~trio_monitor.jobs.Scheduled` and the scheduler
        enqueues it when due; otherwise it is
        :class:`~trio_monitor.jobs.Enqueued` and an idle worker of this
        server picks it up at once. The server need not be running.

        Raises:
          TypeError: ``payload`` is not JSON-serialisable (nothing is stored).
          ValueError: both ``delay`` and ``run_at``, a negative delay, a
            naive ``run_at``, or an empty method or queue name.
        """
        # ``server.enqueue`` is ``server.client.enqueue``; the server only
        # tells its scheduler about a due time it will have to act on.
        due = None
        if delay is not None and isinstance(delay, int | float) and delay >= 0:
            due = self.now() + timedelta(seconds=min(float(delay), MAX_SECONDS))
        elif isinstance(run_at, datetime):
            due = run_at
        job_id = await self.client.enqueue(
            method,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            unique_key=unique_key,
            lock=lock,
            timeout=timeout,
            headers=headers,
        )
        if due is not None and self._run is not None:
            self._run.note_due(due)
        return job_id

    async def delete(self, job_id: str) -> bool:
        """Mark a job :class:`~trio_monitor.jobs.Deleted` (kept for ``failed_ttl``).

        Returns False if there is no such job. A running job that is
        deleted still runs, but its outcome is not written (the
        compare-and-swap fails).
        """
        for _ in range(5):
            job = await self.storage.get(job_id)
            if job is None:
                return False
            if isinstance(job.state, Deleted):
                return True
            expires = self.now() + timedelta(seconds=self.config.failed_ttl)
            transition = Transition(job.id, job.version, Deleted(), expires_at=expires)
            (stored,) = await self.storage.apply([transition])
            if stored is not None:
                self._notify(stored, job.state, stored.state)
                return True
        raise ServerError(f"job {job_id!r} kept changing; could not delete it")

    # -- recurring --------------------------------------------------------

    async def schedule_recurring(
        self,
        id: str,
        cron: str,
        method: str,
        payload: Any,
        queue: str = "default",
        *,
        priority: int = 0,
    ) -> None:
        """Register (or replace) a recurring job template.

        ``cron`` has six fields, seconds first:
        ``second minute hour day-of-month month day-of-week`` (UTC;
        day-of-week 0 or 7 is Sunday, or ``MON``-``SUN``). The recurring
        poller of any server on this storage enqueues one job per
        occurrence; missed occurrences collapse into one.

        Raises:
          ValueError: an invalid cron expression (naming the bad field), an
            empty id, method or queue.
          TypeError: ``payload`` is not JSON-serialisable.
        """
        if not isinstance(id, str) or not id:
            raise ValueError(f"recurring job id must be a non-empty str, got {id!r}")
        if not isinstance(method, str) or not method:
            raise ValueError(f"method must be a non-empty str, got {method!r}")
        if not isinstance(queue, str) or not queue:
            raise ValueError(f"queue must be a non-empty str, got {queue!r}")
        validate_cron(cron)
        dump_json(payload)
        recurring = RecurringJob(
            id=id,
            cron=cron,
            method=method,
            payload=payload,
            queue=queue,
            next_run_at=next_run(cron, self.now()),
            priority=priority,
        )
        await self.storage.upsert_recurring(recurring)

    async def remove_recurring(self, id: str) -> bool:
        """Remove a recurring template; False if there was none."""
        return await self.storage.remove_recurring(id)

    # -- internals --------------------------------------------------------

    def _notify(self, job: Job, old: JobState, new: JobState) -> None:
        _call_hook(self.on_state_change, job, old, new)


def _call_hook(hook: StateChangeHook | None, job: Job, old: JobState, new: JobState) -> None:
    """Call ``on_state_change``; an error in it is logged, never raised."""
    if hook is None:
        return
    try:
        hook(job, old, new)
    except Exception:
        logger.exception(
            "on_state_change hook raised for job %s (%s -> %s); ignored",
            job.id,
            old.name,
            new.name,
        )


class _ServerRun:
    """What one start of a :class:`JobServer` owns."""

    def __init__(self, server: JobServer, clock: _Clock) -> None:
        self.server = server
        self.clock = clock
        self.hook = server.on_state_change
        self.config = config = server.config
        self.storage = server.storage
        self.token = ShutdownToken()
        self.identity = (
            f"{config.server_name}#{uuid.uuid4()}"
            if config.enable_heartbeat
            else config.server_name
        )
        self.started = False
        self.done = trio.Event()
        self.processor = Processor(
            storage=server.storage,
            workers=server.workers,
            retry_policy=server.retry_policy,
            middleware=server.middleware,
            job_timeout=config.job_timeout,
            succeeded_ttl=config.succeeded_ttl,
            failed_ttl=config.failed_ttl,
            clock=server.now,
            notify=self.notify,
        )
        # Waits that stop() interrupts (the fetcher's, the loops' pauses).
        self._waits: set[trio.CancelScope] = set()
        # Workers: the idle ones, in order, and a one-slot mailbox each.
        self.worker_ids = [f"{config.server_name}:worker:{i}" for i in range(config.worker_count)]
        self._idle: list[str] = []
        self._idle_changed = trio.Event()
        self._mailboxes: dict[str, trio.MemorySendChannel[Job]] = {}
        # Outcomes waiting for the committer: (job as claimed, transition).
        self._pending: list[tuple[Job, Transition]] = []
        self._pending_changed = trio.Event()
        self._commits_closed = False
        self._scheduler_sleep: trio.CancelScope | None = None
        # The earliest due time (Trio time) note_due() heard of since the
        # scheduler last polled, so a hint given mid-poll is not lost.
        self._due_hint = math.inf

    # -- helpers ----------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def notify(self, job: Job, old: JobState, new: JobState) -> None:
        _call_hook(self.hook, job, old, new)

    def notify_all(self, changes: Sequence[Transitioned]) -> None:
        for change in changes:
            self.notify(change.job, change.old_state, change.job.state)

    def request_stop(self) -> None:
        self.token.set()
        for scope in list(self._waits):
            scope.cancel()

    async def _interruptible(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        """``await fn(*args)``, cut short when the server is asked to stop."""
        if self.token.is_set():
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                await fn(*args)
            finally:
                self._waits.discard(scope)

    async def _pause(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self.token.wait()

    def note_due(self, when: datetime) -> None:
        """Wake the scheduler by ``when`` if it would sleep past it."""
        at = self.clock.trio_time_of(when)
        self._due_hint = min(self._due_hint, at)
        scope = self._scheduler_sleep
        if scope is not None:
            scope.deadline = min(scope.deadline, at)

    def _report(self, failure: TaskFailure) -> None:
        exc = getattr(failure.reason, "exception", None)
        logger.error(
            "job server %r: task %s crashed: %s",
            self.identity,
            failure.task.name,
            failure.reason,
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    # -- main -------------------------------------------------------------

    async def main(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        await self._recover_stale()
        if config.enable_heartbeat:
            now = self.now()
            # Registered before the first claim, so peers never see our jobs
            # stamped with an identity that has no row.
            await self.storage.register_server(self._server_info(now))
        try:
            async with open_component(lambda supervisor: supervisor, self._report) as supervisor:
                self._spawn(supervisor)
                self.started = True
                logger.info(
                    "job server %r started: %d workers on queues %s",
                    self.identity,
                    config.worker_count,
                    config.queues or "(all)",
                )
                task_status.started()
                await self.token.wait()
                await self._drain(supervisor)
        finally:
            self.started = False
            if config.enable_heartbeat:
                await self._shielded(
                    "deregister the server", self.storage.deregister_server, self.identity
                )
        logger.info("job server %r stopped", self.identity)

    def _server_info(self, now: datetime) -> ServerInfo:
        return ServerInfo(
            id=self.identity,
            name=self.config.server_name,
            worker_count=self.config.worker_count,
            queues=list(self.config.queues),
            started_at=now,
            last_heartbeat=now,
        )

    async def _recover_stale(self) -> None:
        now = self.now()
        cutoff = now - timedelta(seconds=self.config.stale_processing_after)
        try:
            recovered = await self.storage.requeue_stale(cutoff, now)
        except Exception:
            logger.exception("could not re-enqueue stale Processing jobs on start; continuing")
            return
        if recovered:
            logger.info("re-enqueued %d stale Processing job(s) on start", len(recovered))
        self.notify_all(recovered)

    def _spawn(self, supervisor: SupervisedNursery) -> None:
        config = self.config
        self.loops: list[TaskState] = []
        if config.enable_scheduler:
            self.loops.append(supervisor.spawn("jobs.scheduler", self._scheduler, (), FINITE))
        if config.enable_recurring:
            self.loops.append(
                supervisor.spawn(
                    "jobs.recurring",
                    self._every,
                    ("recurring poller", config.recurring_poll_interval, self._recurring_tick),
                    FINITE,
                )
            )
        if config.enable_cleanup:
            self.loops.append(
                supervisor.spawn(
                    "jobs.cleanup",
                    self._every,
                    ("cleanup", config.cleanup_interval, self._cleanup_tick),
                    FINITE,
                )
            )
        if config.enable_heartbeat:
            # Runs until the drain is over: the server is alive while it drains.
            supervisor.spawn("jobs.heartbeat", self._heartbeat, (), FINITE)
        self.workers: list[TaskState] = []
        for worker_id in self.worker_ids:
            send, receive = trio.open_memory_channel[Job](1)
            self._mailboxes[worker_id] = send
            self.workers.append(
                supervisor.spawn(worker_id, self._worker, (worker_id, receive), FINITE)
            )
        self.committer = supervisor.spawn("jobs.committer", self._committer, (), FINITE)
        self.fetcher: TaskState | None = None
        if self.worker_ids:
            self.fetcher = supervisor.spawn("jobs.fetcher", self._fetcher, (), FINITE)
            self.loops.append(self.fetcher)

    async def _drain(self, supervisor: SupervisedNursery) -> None:
        """The graceful stop: let running jobs finish, then write their outcomes."""
        # The fetcher stops claiming (the token), hands out what its last
        # claim got, and closes the mailboxes; workers then finish and exit.
        with trio.move_on_after(self.config.shutdown_timeout):
            if self.fetcher is not None:
                await self.fetcher.wait()
            for state in self.workers:
                await state.wait()
        late = [state for state in self.workers if not state.done]
        if late:
            busy = sum(1 for state in late if state.name not in self._idle)
            if busy:
                logger.warning(
                    "job server %r: %d job(s) still running after shutdown_timeout=%gs; "
                    "cancelling and re-enqueueing them",
                    self.identity,
                    busy,
                    self.config.shutdown_timeout,
                )
            for state in late:
                state.abort()
            for state in late:
                await state.wait()
        self._commits_closed = True
        self._pending_changed.set()
        with trio.move_on_after(max(self.config.shutdown_timeout, SHIELDED_CALL_TIMEOUT)):
            await self.committer.wait()
        for state in self.loops:
            await state.wait()

    async def _shielded(self, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = SHIELDED_CALL_TIMEOUT
            try:
                await fn(*args)
            except Exception:
                logger.exception("job server %r: could not %s", self.identity, what)

    # -- periodic loops ---------------------------------------------------

    async def _every(self, name: str, interval: float, tick: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while not self.token.is_set():
            try:
                await tick()
            except Exception:
                failures += 1
                logger.exception("job server %r: %s failed; retrying", self.identity, name)
                await self._pause(_backoff(failures))
            else:
                failures = 0
                await self._pause(interval)

    async def _scheduler(self) -> None:
        failures = 0
        while not self.token.is_set():
            self._due_hint = math.inf
            try:
                promoted = await self.storage.promote_due(self.now())
            except Exception:
                failures += 1
                logger.exception("job server %r: scheduler failed; retrying", self.identity)
                await self._pause(_backoff(failures))
                continue
            failures = 0
            self.notify_all(promoted)
            # Sleep until the next poll, or earlier if note_due() learns of
            # a job due sooner (a delay or retry made in this process).
            wake_at = trio.current_time() + self.config.scheduler_poll_interval
            with trio.CancelScope(deadline=min(wake_at, self._due_hint)) as scope:
                self._scheduler_sleep = scope
                try:
                    await self.token.wait()
                finally:
                    self._scheduler_sleep = None

    async def _recurring_tick(self) -> None:
        made = await self.storage.enqueue_due_recurring(self.now(), next_run)
        for job in made:
            logger.debug("recurring poller enqueued job %s (%s)", job.id, job.method)

    async def _cleanup_tick(self) -> None:
        deleted = await self.storage.delete_expired(self.now())
        if deleted:
            logger.debug("cleanup deleted %d expired job(s)", deleted)

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval
        failures = 0
        while True:
            try:
                await self._heartbeat_tick()
            except Exception:
                failures += 1
                logger.exception("job server %r: heartbeat failed; retrying", self.identity)
                await trio.sleep(min(_backoff(failures), interval))
            else:
                failures = 0
                await trio.sleep(interval)

    async def _heartbeat_tick(self) -> None:
        now = self.now()
        if not await self.storage.heartbeat(self.identity, now):
            logger.warning(
                "job server %r: heartbeat row was gone (a peer thought it dead); registering again",
                self.identity,
            )
            await self.storage.register_server(self._server_info(now))
        cutoff = now - timedelta(seconds=self.config.dead_server_timeout)
        reclaimed = await self.storage.reclaim_dead(cutoff, now)
        if reclaimed:
            logger.warning(
                "job server %r: re-enqueued %d job(s) of dead servers",
                self.identity,
                len(reclaimed),
            )
        self.notify_all(reclaimed)

    # -- claiming and working ---------------------------------------------

    def _mark_idle(self, worker_id: str) -> None:
        self._idle.append(worker_id)
        self._idle_changed.set()
        self._idle_changed = trio.Event()

    async def _fetcher(self) -> None:
        """Claims jobs for idle workers, one batch per round trip."""
        config = self.config
        failures = 0
        try:
            while not self.token.is_set():
                if not self._idle:
                    await self._interruptible(self._idle_changed.wait)
                    continue
                worker_ids = self._idle[: config.fetch_batch_size]
                try:
                    claimed = await self.storage.claim(
                        queues=config.queues,
                        worker_ids=worker_ids,
                        server_name=self.identity,
                        now=self.now(),
                    )
                except Exception:
                    failures += 1
                    logger.exception("job server %r: claim failed; retrying", self.identity)
                    await self._interruptible(trio.sleep, _backoff(failures))
                    continue
                failures = 0
                undelivered = [job for job in claimed if not self._dispatch(job)]
                if undelivered:
                    # Their workers were cancelled by a stop past its deadline.
                    await self.processor.release(undelivered)
                if len(claimed) < len(worker_ids):
                    # Nothing more to claim: wait for an enqueue or poll later.
                    with trio.move_on_after(config.polling_interval):
                        await self._interruptible(self.storage.wait_for_work)
        finally:
            for send in self._mailboxes.values():
                send.close()

    def _dispatch(self, job: Job) -> bool:
        """Hand ``job`` to the worker whose id storage stamped on it; False if it is gone."""
        state = job.state
        assert isinstance(state, Processing), job
        self._idle.remove(state.worker_id)
        self.notify(job, Enqueued(state.started_at), state)
        try:
            self._mailboxes[state.worker_id].send_nowait(job)
        except trio.BrokenResourceError:
            return False
        return True

    async def _worker(self, worker_id: str, mailbox: trio.MemoryReceiveChannel[Job]) -> None:
        try:
            await self._work(worker_id, mailbox)
        finally:
            # Cancelled with a job handed over but not started: give it back.
            undelivered: list[Job] = []
            while True:
                try:
                    undelivered.append(mailbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            mailbox.close()
            if undelivered:
                await self.processor.release(undelivered)

    async def _work(self, worker_id: str, mailbox: trio.MemoryReceiveChannel[Job]) -> None:
        self._mark_idle(worker_id)
        async for job in mailbox:
            ctx = WorkerContext(
                cancel=self.token,
                worker_id=worker_id,
                server_name=self.identity,
                attempt=job.attempts,
            )
            transition = await self.processor.process(job, ctx)
            self._commit(job, transition)
            self._mark_idle(worker_id)

    # -- group commit -----------------------------------------------------

    def _commit(self, job: Job, transition: Transition) -> None:
        self._pending.append((job, transition))
        self._pending_changed.set()
        if isinstance(transition.state, AwaitingRetry):
            self.note_due(transition.state.retry_at)

    async def _committer(self) -> None:
        """Writes outcomes: whatever accumulated during one flush goes in the next."""
        failures = 0
        batch: list[tuple[Job, Transition]] = []
        try:
            while True:
                while not self._pending and not self._commits_closed:
                    self._pending_changed = trio.Event()
                    await self._pending_changed.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                try:
                    stored = await self.storage.apply([t for _, t in batch])
                except Exception:
                    failures += 1
                    logger.exception(
                        "job server %r: writing %d outcome(s) failed; retrying",
                        self.identity,
                        len(batch),
                    )
                    self._pending[:0] = batch
                    batch = []
                    await trio.sleep(_backoff(failures))
                    continue
                failures = 0
                self._written(batch, stored)
                batch = []
        except BaseException:
            # Cancelled from outside: write what we have, best effort.
            left, self._pending = batch + self._pending, []
            if left:
                with trio.CancelScope(shield=True) as scope:
                    scope.relative_deadline = SHIELDED_CALL_TIMEOUT
                    try:
                        stored = await self.storage.apply([t for _, t in left])
                    except Exception:
                        logger.exception("job server %r: outcomes lost", self.identity)
                    else:
                        self._written(left, stored)
            raise

    def _written(self, batch: list[tuple[Job, Transition]], stored: list[Job | None]) -> None:
        for (job, transition), now_stored in zip(batch, stored, strict=True):
            if now_stored is None:
                logger.warning(
                    "job %s changed while it ran (reclaimed or deleted); its %s outcome is dropped",
                    transition.job_id,
                    transition.state.name,
                )
                continue
            self.notify(now_stored, job.state, now_stored.state)
