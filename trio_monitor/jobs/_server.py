"""The job server: configuration, lifecycle, and the loops of one start.

One way through for data: ``enqueue`` -> storage -> claim (a batch, for the
idle workers and, with short jobs, ahead of them) -> the ready queue ->
processor -> compare-and-swap transition (group-committed) ->
``on_state_change`` hook. Storage knows SQL, not scheduling; the server
knows scheduling, not SQL.

Everything a start owns lives in a :class:`_ServerRun`, so that a stopped
server starts again from a clean slate (a fresh shutdown token, a fresh
identity). Its tasks are transient children of a one-for-one
:func:`~trio_monitor.open_supervisor`, and nothing outlives
:meth:`JobServer.run`. Defence in depth:

* a storage error in any loop is logged and retried with a
  :class:`~trio_monitor.Backoff`; a *closed* storage
  (:exc:`trio.ClosedResourceError`) stops the server, and :meth:`JobServer.run`
  raises it;
* a task of the server that dies by a bug is reported and restarted by the
  supervisor after a backoff (never once the server is stopping), and a job
  it held is put back (its attempt counted, so that a
  job that triggers the bug every time ends Failed).
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import trio

from .._backoff import Backoff
from .._failures import Error, TaskFailure, describe_reason
from .._supervisor import ChildHandle, Restart, Strategy, Supervisor, open_supervisor
from .._token import ShutdownToken
from .._validate import MAX_SECONDS, attrs_count, attrs_seconds, check_seconds, check_str
from ._client import Client
from ._clock import WallClock, check_clock, trio_time_of
from ._cron import check_timezone, next_run, next_run_or_never, validate_cron
from ._liveness import Liveness
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
from ._processor import Processor, RetryPolicy, StateChangeHook, StopReason, describe
from ._storage import Storage
from ._workers import Middleware, WorkerContext, WorkerRegistry

__all__ = ["JobServer", "ServerConfig", "ServerError"]

logger = logging.getLogger("trio_monitor.jobs")

#: Bounds on storage calls made while shielded from cancellation, and the
#: grace a job stopped past ``shutdown_timeout`` gets to finish its cleanup.
SHIELDED_CALL_TIMEOUT = 5.0
#: Back-off after a failing storage call (and before restarting a task that
#: died by a bug), with jitter so that servers do not retry in lock-step.
ERROR_BACKOFF = Backoff(initial=0.5, multiplier=2.0, max=30.0, jitter=0.25)
#: The supervisor of the server's tasks never gives up: a task that keeps
#: dying is restarted for ever, at most once per backoff (each restart is
#: logged), rather than taking the whole server down with it. The window
#: doubles as the run after which a task's backoff starts afresh.
RESTART_WINDOW = ERROR_BACKOFF.max
#: Weight of the newest sample in the running averages of claim and job times.
EWMA_WEIGHT = 0.2


def _averaged(average: float, sample: float) -> float:
    """A running average with ``sample`` taken in (``math.inf``: none yet, the sample is it)."""
    if average == math.inf:
        return sample
    return average + (sample - average) * EWMA_WEIGHT


class ServerError(Exception):
    """A job server was used the wrong way (e.g. started while running)."""


# -- configuration --------------------------------------------------------


def _queues(value: Sequence[str]) -> list[str]:
    if isinstance(value, str):
        raise TypeError(f"ServerConfig.queues must be a list of queue names, not the str {value!r}")
    queues = list(value)
    for index, queue in enumerate(queues):
        check_str(f"ServerConfig.queues[{index}]", queue)
    return queues


def _interval(field: str, default: float) -> Any:
    # Durations the server waits or compares: > 0, finite, at most MAX_SECONDS
    # (so that ``now - interval`` always fits a datetime).
    return attrs.field(
        default=default,
        validator=attrs_seconds("ServerConfig", field, positive=True, maximum=MAX_SECONDS),
    )


def _ttl(value: object, name: str) -> None:
    if value is not None:
        check_seconds(f"ServerConfig.{name}", value, maximum=MAX_SECONDS)


def _flag(_instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"ServerConfig.{attribute.name} must be a bool, not {value!r}")


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
        PostgreSQL notifications) wake it at once, and so do its own
        outcomes (room in a ``max_running`` queue or a freed lock); room
        freed by another SQLite process is seen at the next poll.
      job_timeout (float): A run still going after this long is cancelled
        and counts as a failed attempt (with a ``TimeoutError`` text), even
        if it ignores its cancellation and returns later.
      queues (list[str]): Queues to claim from; empty: all queues.
      fetch_batch_size (int): Most jobs claimed in one storage round trip,
        and most jobs claimed ahead of the idle workers. A server claims
        ahead only while its jobs are short next to a claim's round trip
        (about ``worker_count * claim time / job time`` jobs, measured as
        it runs): the next claim then travels while the workers run the
        last one's jobs. Jobs claimed ahead are Processing before they
        start; any idle worker takes the oldest, so one never waits while a
        worker of the server is free. Those not started within
        ``polling_interval`` go back to Enqueued, as do those a stop finds
        (their attempt uncounted); an abort ends them at once. Worker ids
        (``f"{server_name}:worker:{i}"``) come from ``worker_count +
        fetch_batch_size`` of them, the lowest free first.
      claim_ahead (bool): Claim ahead of the idle workers as described
        under ``fetch_batch_size`` (on by default). Off: every claim is for
        idle workers only, and a Processing job is always running.
      enable_scheduler (bool): Run the scheduler, which enqueues
        :class:`~trio_monitor.jobs.Scheduled` and
        :class:`~trio_monitor.jobs.AwaitingRetry` jobs when due.
      scheduler_poll_interval (float): Its polling interval. Jobs this
        server delays or retries wake it early, at their due time.
      shutdown_timeout (float): How long :meth:`JobServer.stop` lets
        running jobs finish before it cancels them and re-enqueues them
        (that attempt uncounted). ``>= 0``.
      stale_processing_after (float): ``Processing`` jobs of a server that
        has no heartbeat row (one that runs without heartbeats, or has
        deregistered) are re-enqueued once claimed longer ago than this:
        on start, and continuously while the server runs. Keep it well
        above ``job_timeout``.
      enable_recurring (bool): Run the recurring (cron) poller.
      recurring_poll_interval (float): Its polling interval.
      enable_cleanup (bool): Run the sweeper that deletes expired jobs.
      cleanup_interval (float): Its interval.
      succeeded_ttl (float | None): How long a ``Succeeded`` job is kept;
        None keeps it for ever.
      failed_ttl (float | None): How long a ``Failed`` (or deleted) job is
        kept; None keeps it for ever.
      enable_heartbeat (bool): Register the server and bump its heartbeat,
        so that peers know it is alive (on by default). Every server,
        with or without it, re-enqueues the running jobs of peers whose
        heartbeat stopped.
      heartbeat_interval (float): Time between heartbeats, and between two
        looks for stranded jobs. Must be below ``dead_server_timeout``.
      dead_server_timeout (float): A peer whose heartbeat has not changed
        for this long (timed on this server's own monotonic clock, so a
        wall-clock step never matters) is dead. Keep it several
        ``heartbeat_interval`` s long.

    Every duration must be finite and at most
    :data:`~trio_monitor._validate.MAX_SECONDS` (about 95 years), so that
    every timestamp the server computes fits a datetime.

    Raises:
      TypeError: a field of the wrong type (naming it; a bool is not a number).
      ValueError: a negative count, a non-positive interval, an infinite or
        too long duration, or ``heartbeat_interval >= dead_server_timeout``
        (naming them).
    """

    server_name: str = attrs.field(
        default="qml-server", validator=lambda _i, _a, v: check_str("ServerConfig.server_name", v)
    )
    worker_count: int = attrs.field(
        default=5, validator=attrs_count("ServerConfig", "worker_count")
    )
    polling_interval: float = _interval("polling_interval", 1.0)
    job_timeout: float = _interval("job_timeout", 300.0)
    queues: list[str] = attrs.field(factory=lambda: ["default"], converter=_queues)
    fetch_batch_size: int = attrs.field(
        default=10, validator=attrs_count("ServerConfig", "fetch_batch_size", minimum=1)
    )
    claim_ahead: bool = attrs.field(default=True, validator=_flag)
    enable_scheduler: bool = attrs.field(default=True, validator=_flag)
    scheduler_poll_interval: float = _interval("scheduler_poll_interval", 30.0)
    shutdown_timeout: float = attrs.field(
        default=30.0,
        validator=attrs_seconds("ServerConfig", "shutdown_timeout", maximum=MAX_SECONDS),
    )
    stale_processing_after: float = _interval("stale_processing_after", 300.0)
    enable_recurring: bool = attrs.field(default=True, validator=_flag)
    recurring_poll_interval: float = _interval("recurring_poll_interval", 5.0)
    enable_cleanup: bool = attrs.field(default=True, validator=_flag)
    cleanup_interval: float = _interval("cleanup_interval", 60.0)
    succeeded_ttl: float | None = attrs.field(
        default=86400.0, validator=lambda _i, _a, v: _ttl(v, "succeeded_ttl")
    )
    failed_ttl: float | None = attrs.field(
        default=604800.0, validator=lambda _i, _a, v: _ttl(v, "failed_ttl")
    )
    enable_heartbeat: bool = attrs.field(default=True, validator=_flag)
    heartbeat_interval: float = _interval("heartbeat_interval", 10.0)
    dead_server_timeout: float = _interval("dead_server_timeout", 60.0)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval >= self.dead_server_timeout:
            raise ValueError(
                f"ServerConfig.heartbeat_interval ({self.heartbeat_interval:g}s) must be "
                f"below ServerConfig.dead_server_timeout ({self.dead_server_timeout:g}s), "
                "or live servers would declare each other dead; keep the timeout several "
                "heartbeats long"
            )


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
      clock: The wall clock: a callable returning the current time as an
        aware UTC datetime, read each time a timestamp is needed (default:
        the system clock). Tests under :class:`trio.testing.MockClock` pass
        a :class:`~trio_monitor.jobs.TrioWallClock`.

    Raises:
      TypeError: an argument of the wrong type (naming it).
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
        clock: WallClock | None = None,
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
        self._clock: WallClock = utcnow if clock is None else check_clock(clock)
        #: A :class:`~trio_monitor.jobs.Client` on this server's storage and
        #: clock: producer and operator calls, running or not.
        self.client = Client(storage, clock=self._clock)
        self._run: _ServerRun | None = None

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
        """The server's wall clock: UTC, read now (see the ``clock`` argument).

        Every time the server gives storage (claims, due times, TTLs,
        heartbeats) comes from here.
        """
        return self._clock()

    async def run(
        self, *, burst: bool = False, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the server until :meth:`stop` (or until cancelled).

        Use ``await nursery.start(server.run)``: it returns once the
        heartbeat row (if enabled) is registered, stranded ``Processing``
        jobs were re-enqueued, the workers' ``lifespan`` was entered and the
        loops are running.

        With ``burst=True`` the server stops by itself (gracefully, as
        :meth:`stop`) once it holds no job and a claim finds none it may
        start, after promoting the Scheduled and AwaitingRetry jobs due now:
        for batch hosts and tests. Jobs due later, jobs of paused queues and
        jobs waiting for a lock held elsewhere do not keep it running.

        If cancelled from outside, everything stops at once; jobs that were
        running are re-enqueued (shielded, within a few seconds) with that
        attempt uncounted.

        Raises:
          ServerError: the server is already running.
          trio.ClosedResourceError: the storage is closed (at start, or
            while running: the server then stops and raises it).
          BaseException: a job's own ``KeyboardInterrupt`` or
            ``SystemExit`` (its failed attempt is written first).
        """
        if self._run is not None:
            raise ServerError(
                f"job server {self.config.server_name!r} is already running; "
                "stop() it before starting it again"
            )
        run = _ServerRun(self, burst=burst)
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
        put back to ``Enqueued`` (that attempt uncounted, whatever their
        code does while cancelled). Pending outcomes are written, the
        heartbeat row is removed. Does nothing if the server is not running.
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
        payload: Any = None,
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
        """Store a new job and return its id: :meth:`server.client.enqueue <Client.enqueue>`.

        With ``delay`` (seconds from now) or ``run_at`` (an aware datetime)
        the job is :class:`~trio_monitor.jobs.Scheduled` and the scheduler
        enqueues it when due (this server's scheduler wakes for it at once);
        otherwise it is :class:`~trio_monitor.jobs.Enqueued` and an idle
        worker of this server picks it up at once. The server need not be
        running.

        Raises:
          TypeError: ``payload`` is not JSON-serialisable (nothing is
            stored), ``delay`` is not a number, or ``method`` or ``queue``
            is not a str.
          ValueError: both ``delay`` and ``run_at``, a negative, infinite
            or too long delay (more than about 95 years), a naive
            ``run_at``, or an empty method or queue name.
        """
        # ``server.enqueue`` is ``server.client.enqueue``; the server only
        # tells its scheduler about a due time it will have to act on.
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
        # The client has checked delay and run_at by now.
        due = None
        if delay is not None:
            due = self.now() + timedelta(seconds=float(delay))
        elif run_at is not None:
            due = run_at
        if due is not None and self._run is not None:
            self._run.note_due(due)
        return job_id

    async def delete(self, job_id: str) -> bool:
        """Mark a job :class:`~trio_monitor.jobs.Deleted` (kept for ``failed_ttl``; None: for ever).

        Returns False if there is no such job. A running job is aborted
        instead, wherever it runs, as :meth:`Client.delete
        <trio_monitor.jobs.Client.delete>` does: it ends
        :class:`~trio_monitor.jobs.Aborted` (reason ``"deleted"``), so that
        no job goes on running, unseen, behind a ``Deleted`` row.
        """
        for _ in range(5):
            job = await self.storage.get(job_id)
            if job is None:
                return False
            if isinstance(job.state, Deleted):
                return True
            if isinstance(job.state, Processing):
                return await self.client.delete(job_id)
            ttl = self.config.failed_ttl
            expires = None if ttl is None else self.now() + timedelta(seconds=ttl)
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
        timezone: str = "UTC",
    ) -> None:
        """Register (or replace) a recurring job template.

        ``cron`` has six fields, seconds first:
        ``second minute hour day-of-month month day-of-week`` (day-of-week
        0 or 7 is Sunday, or ``MON``-``SUN``), evaluated in ``timezone``
        (an IANA name such as ``"Europe/Paris"``; default UTC). Across a
        daylight-saving change no occurrence is missed or doubled: a wall
        time the spring change skips runs once, at the first instant after
        the gap; a wall time the autumn change repeats runs once, at its
        first occurrence. The recurring poller of any server on this
        storage enqueues one job per occurrence; missed occurrences
        collapse into one.

        Raises:
          ValueError: an invalid cron expression (naming the bad field), an
            unknown time zone, an empty id, method or queue.
          TypeError: ``payload`` is not JSON-serialisable, or an id, method,
            queue or time zone that is not a str.
        """
        check_str("recurring job id", id)
        check_str("method", method)
        check_str("queue", queue)
        validate_cron(cron)
        check_timezone(timezone)
        dump_json(payload)
        recurring = RecurringJob(
            id=id,
            cron=cron,
            method=method,
            payload=payload,
            queue=queue,
            next_run_at=next_run(cron, self.now(), timezone),
            priority=priority,
            timezone=timezone,
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


@attrs.define(eq=False)
class _Task:
    """One of the server's own tasks: a transient child of the run's supervisor.

    A run that dies by a bug is restarted by the supervisor (after its
    backoff); ``ended`` is set once the task is over for good: it returned,
    it was stopped, or it died while the server was stopping (then it is not
    replaced).
    """

    name: str
    fn: Callable[..., Awaitable[None]]
    args: tuple[Any, ...] = ()
    handle: ChildHandle | None = None
    runs: int = 0
    # Inside a run of fn (not between a death and its replacement).
    active: bool = False
    ended: trio.Event = attrs.field(factory=trio.Event)

    async def wait(self) -> None:
        """Return once the task is over for good."""
        await self.ended.wait()

    @property
    def done(self) -> bool:
        return self.ended.is_set()

    def abort(self) -> None:
        """Stop the task for good: it is cancelled, and never reported nor replaced."""
        if self.handle is not None:
            self.handle.stop()
        if not self.active:
            self.ended.set()


@attrs.define(eq=False)
class _Worker:
    """A worker task's slot: the job it runs (its id names the task, not the job's worker_id)."""

    worker_id: str
    current: Job | None = None


class _ServerRun:
    """What one start of a :class:`JobServer` owns."""

    def __init__(self, server: JobServer, *, burst: bool = False) -> None:
        self.server = server
        self.burst = burst
        self.clock = server.now
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
        # A closed storage found by a loop: the server stops and run() raises it.
        self.fatal: BaseException | None = None
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
            threads=config.worker_count,
        )
        self.liveness = Liveness(
            self.identity,
            config.dead_server_timeout,
            config.stale_processing_after,
            unique_id=config.enable_heartbeat,
        )
        self._last_stamp: datetime | None = None
        # Consecutive failures of each loop's storage calls, for its backoff.
        self._failures: dict[str, int] = {}
        self._supervisor: Supervisor | None = None
        self._silent_subscription: trio.MemoryReceiveChannel[TaskFailure] | None = None
        self.tasks: list[_Task] = []
        # Waits that stop() interrupts (the fetcher's, the loops' pauses).
        self._waits: set[trio.CancelScope] = set()
        # Worker tasks, and the worker ids stamped on claimed jobs: one of
        # worker_count + fetch_batch_size, unique among the jobs held (ready
        # or running), the lowest free one first.
        self._id_pool = config.worker_count + config.fetch_batch_size if config.worker_count else 0
        self._id_names = [f"{config.server_name}:worker:{i}" for i in range(self._id_pool)]
        self.slots = {name: _Worker(name) for name in self._id_names[: config.worker_count]}
        self._id_index = {name: i for i, name in enumerate(self._id_names)}
        self._free_ids = list(range(self._id_pool))  # a heap
        # Claimed jobs no worker has started yet, oldest first, with the
        # Trio time they were claimed; workers with nothing to do park.
        self._ready: collections.deque[tuple[Job, float]] = collections.deque()
        self._parked = trio.lowlevel.ParkingLot()
        # Jobs held beyond the workers (see _update_lead), and the averages
        # it comes from: a claim's round trip, and a job's run (Trio seconds).
        self._ahead = 0
        self._claim_time = 0.0
        self._job_time = math.inf
        # News that jobs may have become claimable: storage's wake-ups (an
        # enqueue, a promotion, a job leaving Processing) and our own
        # outcomes written. Counted, so that news arriving while a claim is
        # in flight is not lost: that claim may have looked too early.
        self._news = 0
        self._fetch_wait: trio.CancelScope | None = None
        self._fetch_waits_for = ""
        # Ids of the jobs this server holds: claimed, and their outcome not
        # yet written. Counts claims started and ended: odd while one is in
        # flight (its jobs are in storage as ours, not yet held).
        self._held: set[str] = set()
        self._claims = 0
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
        return self.clock()

    def notify(self, job: Job, old: JobState, new: JobState) -> None:
        _call_hook(self.hook, job, old, new)

    def notify_all(self, changes: Sequence[Transitioned]) -> None:
        for change in changes:
            self.notify(change.job, change.old_state, change.job.state)

    def request_stop(self) -> None:
        self.token.set()
        self._parked.unpark_all()
        for scope in list(self._waits):
            scope.cancel()
        for task in self.tasks:
            if task.runs and not task.active:
                # Died by a bug, its replacement still backing off: that
                # one returns at once now (see _supervised).
                task.ended.set()

    def _fail(self, exc: BaseException, where: str) -> None:
        """Stop the server because of ``exc``, which :meth:`JobServer.run` raises."""
        if self.fatal is None:
            logger.error(
                "job server %r: %s found the storage closed; stopping: %s",
                self.identity,
                where,
                describe(exc),
            )
            self.fatal = exc
        self.request_stop()

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
        at = trio_time_of(self.clock, when)
        self._due_hint = min(self._due_hint, at)
        scope = self._scheduler_sleep
        if scope is not None:
            scope.deadline = min(scope.deadline, at)

    # -- the server's own tasks -------------------------------------------

    async def _start(self, task: _Task) -> _Task:
        assert self._supervisor is not None
        self.tasks.append(task)
        task.handle = await self._supervisor.start(
            task.name, self._supervised, task, restart=Restart.TRANSIENT, shutdown_timeout=0
        )
        return task

    async def _supervised(self, task: _Task) -> None:
        """One run of ``task``: returning ends it for good, a bug gets it restarted."""
        if task.runs and self.token.is_set():
            task.ended.set()  # a replacement once the server is stopping: not run
            return
        task.runs += 1
        task.active = True
        try:
            await task.fn(*task.args)
        except Exception as exc:
            self._task_died(task, exc)
            raise
        except BaseException:
            task.ended.set()  # stopped, or cancelled from outside
            raise
        else:
            task.ended.set()
        finally:
            task.active = False

    def _task_died(self, task: _Task, exc: Exception) -> None:
        """``task`` died by a bug: log it, put back the job it held.

        The supervisor reports the failure and restarts the task after the
        server's backoff; once the server is stopping the task is over.
        """
        stopping = self.token.is_set()
        logger.error(
            "job server %r: task %s died by a bug (%s); %s",
            self.identity,
            task.name,
            describe_reason(Error.from_exception(exc)),
            "not replaced: the server is stopping" if stopping else "replacing it",
            exc_info=exc,
        )
        if stopping:
            task.ended.set()
        slot = task.args[0] if task.args and isinstance(task.args[0], _Worker) else None
        if slot is not None:
            job, slot.current = slot.current, None
            if job is not None:
                # Its attempt stays counted: if the job itself triggers the
                # bug, max_attempts ends it instead of killing workers for ever.
                self._commit(job, self.processor.requeue_counted(job))

    # -- main -------------------------------------------------------------

    async def main(self, task_status: trio.TaskStatus[None]) -> None:
        config = self.config
        try:
            # The startup sweep. A storage error here is logged and left to
            # the liveness loop, which registers the row if it is missing
            # (our claims are then only judged by their age meanwhile); a
            # closed storage is raised at once.
            try:
                if config.enable_heartbeat:
                    # Registered before the first claim, so peers never see
                    # our jobs stamped with an identity that has no row.
                    await self.storage.register_server(self._server_info(self._stamp()))
                await self._liveness_tick()
            except trio.ClosedResourceError:
                raise
            except Exception:
                logger.exception(
                    "job server %r: the startup registration or sweep failed; "
                    "the liveness loop will retry",
                    self.identity,
                )
            async with (
                self.server.workers.open_state() as state,
                open_supervisor(
                    Strategy.ONE_FOR_ONE,
                    max_restarts=sys.maxsize,
                    within=RESTART_WINDOW,
                    backoff=ERROR_BACKOFF,
                ) as supervisor,
            ):
                self.processor.state = state
                # The server logs its tasks' deaths itself, with its identity
                # and what became of the job (_task_died). A subscription that
                # keeps nothing tells the supervisor that someone listens, so it
                # does not log each failure a second time.
                self._silent_subscription = supervisor.subscribe(max_buffer_size=0)
                await self._build(supervisor)
                self.started = True
                logger.info(
                    "job server %r started: %d workers on queues %s",
                    self.identity,
                    config.worker_count,
                    config.queues or "(all)",
                )
                task_status.started()
                if self.burst and not self.slots:
                    self.request_stop()  # no worker: nothing this server could run
                await self.token.wait()
                await self._drain()
        finally:
            self.started = False
            if config.enable_heartbeat:
                await self._shielded(
                    "deregister the server", self.storage.deregister_server, self.identity
                )
        logger.info("job server %r stopped", self.identity)
        if self.fatal is not None:
            raise self.fatal

    def _server_info(self, now: datetime) -> ServerInfo:
        return ServerInfo(
            id=self.identity,
            name=self.config.server_name,
            worker_count=self.config.worker_count,
            queues=list(self.config.queues),
            started_at=now,
            last_heartbeat=now,
        )

    async def _build(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        config = self.config
        self.loops: list[_Task] = []
        if config.enable_scheduler:
            self.loops.append(
                _Task(
                    "jobs.scheduler",
                    self._loop,
                    ("scheduler", self._scheduler_tick, self._scheduler_wait),
                )
            )
        if config.enable_recurring:
            self.loops.append(
                _Task(
                    "jobs.recurring",
                    self._loop,
                    (
                        "recurring poller",
                        self._recurring_tick,
                        self._waiter(config.recurring_poll_interval),
                    ),
                )
            )
        if config.enable_cleanup:
            self.loops.append(
                _Task(
                    "jobs.cleanup",
                    self._loop,
                    ("cleanup", self._cleanup_tick, self._waiter(config.cleanup_interval)),
                )
            )
        for loop in self.loops:
            await self._start(loop)
        # Run until the drain is over: the server is alive while it drains,
        # and a job running out its shutdown_timeout can still be aborted.
        self.liveness_task = await self._start(_Task("jobs.liveness", self._liveness_loop))
        self.abort_task = await self._start(_Task("jobs.aborts", self._abort_loop))
        self.worker_tasks = [
            await self._start(_Task(slot.worker_id, self._worker, (slot,)))
            for slot in self.slots.values()
        ]
        self.committer = await self._start(_Task("jobs.committer", self._committer))
        self.fetcher: _Task | None = None
        if self.slots:
            self.loops.append(await self._start(_Task("jobs.work", self._work_listener)))
            self.fetcher = await self._start(_Task("jobs.fetcher", self._fetcher))

    async def _drain(self) -> None:
        """The graceful stop: let running jobs finish, stop the rest, write outcomes."""
        # The fetcher stops claiming (the token) and releases the jobs it
        # claimed that no worker started; workers finish their job and exit.
        with trio.move_on_after(self.config.shutdown_timeout):
            await self._wait_all(self.worker_tasks)
        if self.processor.running:
            # Requeueing a job whose abort was requested but not yet heard
            # would run it again: look once more, so the abort beats the stop.
            await self._hear_requested_aborts()
        stopped = self.processor.stop_all(StopReason.SHUTDOWN)
        if stopped:
            logger.warning(
                "job server %r: %d job(s) still running after shutdown_timeout=%gs; "
                "cancelling and re-enqueueing them (attempt uncounted)",
                self.identity,
                stopped,
                self.config.shutdown_timeout,
            )
        # Their outcomes go through the committer. Code that ignores its
        # cancellation gets a short grace, then its worker is cancelled too.
        with trio.move_on_after(SHIELDED_CALL_TIMEOUT if stopped else 0):
            await self._wait_all(self.worker_tasks)
        late = [task for task in self.worker_tasks if not task.done]
        for task in late:
            task.abort()
        await self._wait_all(late)
        if self.fetcher is not None:
            # A claim in flight is let land (its jobs then go back, their
            # workers gone), within a bound: storage may be down.
            with trio.move_on_after(SHIELDED_CALL_TIMEOUT):
                await self.fetcher.wait()
            self.fetcher.abort()
            await self.fetcher.wait()
        await self._release_ready(stopping=True)  # if the fetcher died meanwhile
        self._commits_closed = True
        self._pending_changed.set()
        with trio.move_on_after(max(self.config.shutdown_timeout, SHIELDED_CALL_TIMEOUT)):
            await self.committer.wait()
        for task in (self.committer, *self.loops, self.liveness_task, self.abort_task):
            task.abort()
        await self._wait_all([self.committer, *self.loops, self.liveness_task, self.abort_task])

    @staticmethod
    async def _wait_all(tasks: Sequence[_Task | None]) -> None:
        for task in tasks:
            if task is not None:
                await task.wait()

    async def _shielded(self, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = SHIELDED_CALL_TIMEOUT
            try:
                await fn(*args)
            except Exception:
                logger.exception("job server %r: could not %s", self.identity, what)

    # -- periodic loops ---------------------------------------------------

    async def _loop(
        self, name: str, tick: Callable[[], Awaitable[None]], wait: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``tick`` until the server stops, ``wait`` between ticks.

        A failing storage call is logged and retried after a backoff; a
        closed storage stops the server. Cancellation is never caught.
        """
        while not self.token.is_set():
            if await self._tick(name, tick):
                await wait()

    async def _tick(
        self, name: str, tick: Callable[[], Awaitable[None]], *, until_stop: bool = True
    ) -> bool:
        """Run one tick; False (after backing off) if it failed.

        The backoff ends early when the server is asked to stop, unless
        ``until_stop`` is False (the committer and the heartbeat work on
        through the drain).
        """
        try:
            await tick()
        except trio.ClosedResourceError as exc:
            self._fail(exc, name)
            return False
        except Exception:
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            delay = ERROR_BACKOFF.delay(failures)
            logger.exception(
                "job server %r: %s failed; retrying in %.1fs",
                self.identity,
                name,
                delay,
            )
            if until_stop:
                await self._pause(delay)
            else:
                await trio.sleep(delay)
            return False
        self._failures.pop(name, None)
        return True

    def _waiter(self, interval: float) -> Callable[[], Awaitable[None]]:
        return lambda: self._pause(interval)

    async def _scheduler_tick(self) -> None:
        self._due_hint = math.inf
        self.notify_all(await self.storage.promote_due(self.now()))

    async def _scheduler_wait(self) -> None:
        # Sleep until the next poll, or earlier if note_due() learns of a
        # job due sooner (a delay or retry made in this process).
        wake_at = trio.current_time() + self.config.scheduler_poll_interval
        with trio.CancelScope(deadline=min(wake_at, self._due_hint)) as scope:
            self._scheduler_sleep = scope
            try:
                await self.token.wait()
            finally:
                self._scheduler_sleep = None

    async def _recurring_tick(self) -> None:
        made = await self.storage.enqueue_due_recurring(self.now(), next_run_or_never)
        for job in made:
            logger.debug("recurring poller enqueued job %s (%s)", job.id, job.method)

    async def _cleanup_tick(self) -> None:
        deleted = await self.storage.delete_expired(self.now())
        if deleted:
            logger.debug("cleanup deleted %d expired job(s)", deleted)

    # -- liveness ---------------------------------------------------------

    async def _liveness_loop(self) -> None:
        # Not stopped by the token: the server stays alive while it drains.
        interval = self.config.heartbeat_interval
        while True:
            if await self._tick("liveness", self._liveness_tick, until_stop=False):
                await trio.sleep(interval)
            elif self.fatal is not None:
                return

    def _stamp(self) -> datetime:
        """The next heartbeat stamp: now, but always different from the last one.

        Peers only look at whether it changes, so a clock that stands still
        or steps back must still move it.
        """
        now = self.now()
        last = self._last_stamp
        if last is not None and now <= last:
            now = last + timedelta(microseconds=1)
        self._last_stamp = now
        return now

    async def _liveness_tick(self) -> None:
        """Bump our heartbeat, then re-enqueue the jobs of dead peers and stale claims."""
        if self.config.enable_heartbeat:
            stamp = self._stamp()
            if not await self.storage.heartbeat(self.identity, stamp):
                logger.warning(
                    "job server %r: heartbeat row was gone (a peer thought it dead); "
                    "registering again",
                    self.identity,
                )
                await self.storage.register_server(self._server_info(stamp))
        servers = await self.storage.list_servers()
        claims = self._claims
        # Every Processing job, unpaged (limit None): a page would leave the
        # stranded jobs past it in Processing until a later sweep, for ever
        # if more than a page of them keep coming.
        processing = await self.storage.list_jobs(state=Processing, limit=None)
        verdict = self.liveness.judge(
            servers,
            processing,
            held=self._held,
            # A claim in flight meanwhile may have stored jobs as ours that
            # we do not hold yet: judge our own jobs another time.
            settled=claims == self._claims and claims % 2 == 0,
            now=self.now(),
            mono=trio.current_time(),
        )
        if verdict.stranded:
            now = self.now()
            # The attempt they used stays counted.
            transitions = [
                Transition(job.id, job.version, Enqueued(now)) for job in verdict.stranded
            ]
            stored = await self.storage.apply(transitions)
            requeued = 0
            for job, now_stored in zip(verdict.stranded, stored, strict=True):
                if now_stored is not None:
                    requeued += 1
                    self.notify(now_stored, job.state, now_stored.state)
            if requeued:
                logger.warning(
                    "job server %r: re-enqueued %d job(s) stranded by dead servers or stale claims",
                    self.identity,
                    requeued,
                )
        for server_id in verdict.dead:
            logger.warning(
                "job server %r: peer %r is dead (its heartbeat stopped %gs ago); removing it",
                self.identity,
                server_id,
                self.config.dead_server_timeout,
            )
            await self.storage.deregister_server(server_id)

    # -- aborts -------------------------------------------------------------

    async def _abort_loop(self) -> None:
        """Cancel the jobs whose abort is requested, as soon as storage says so.

        Storage pushes a wake-up in this process and on PostgreSQL; across
        SQLite processes the list is polled every ``polling_interval``.
        """
        while True:
            ticked = await self._tick("abort listener", self._abort_tick, until_stop=False)
            if not ticked and self.fatal is not None:
                return

    async def _abort_tick(self) -> None:
        async with trio.open_nursery() as nursery:
            # Listen before reading, so that an abort requested while we
            # read still wakes us.
            woken = trio.Event()

            async def listen() -> None:
                await self.storage.wait_for_abort()
                woken.set()

            nursery.start_soon(listen)
            await trio.lowlevel.checkpoint()
            requested = await self.storage.aborts_requested(self.identity)
            if self.processor.abort(requested):
                logger.info(
                    "job server %r: cancelling %d aborted job(s)", self.identity, len(requested)
                )
            self._abort_ready()
            with trio.move_on_after(self.config.polling_interval):
                await woken.wait()
            nursery.cancel_scope.cancel()

    # -- claiming and working ---------------------------------------------
    #
    # Claimed jobs wait in ``_ready`` (first in, first out) until a worker
    # takes one; any idle worker takes the oldest, so a job never waits there
    # while a worker of this server is idle. The fetcher claims ahead of the
    # idle workers (see _room) so that the storage round trip of the next
    # claim overlaps the jobs being run, instead of taking turns with them.

    def _room(self) -> int:
        """How many jobs the fetcher should claim now (0: none yet).

        Up to ``worker_count + ahead`` jobs are held (running or ready), at
        most ``fetch_batch_size`` claimed at once. While workers have work,
        it waits until the whole lead is free, so that claims are full
        batches (fewer round trips per job: measured faster than claiming
        at half the lead); a worker left without work gets a claim at once.
        """
        room = len(self._free_ids) - (self._id_pool - len(self.slots) - self._ahead)
        if room <= 0:
            return 0
        room = min(room, self.config.fetch_batch_size)
        starving = not self._ready and len(self._parked) > 0
        if not starving and room < max(1, self._ahead):
            return 0  # nobody starves: wait until the whole lead is free
        return room

    def _wake_fetcher(self, reason: str) -> None:
        """Cut the fetcher's wait short if it waits for ``reason`` and it now matters."""
        scope = self._fetch_wait
        if scope is None or self._fetch_waits_for != reason:
            return
        if reason == "news" or self._room():
            scope.cancel()

    async def _fetcher(self) -> None:
        """Claims jobs into ``_ready``, one batch per round trip, ahead of the idle workers."""
        config = self.config
        # After a claim that got fewer jobs than asked: the news count when
        # it started (None: the last claim was full).
        short_since: int | None = None
        try:
            while not self.token.is_set():
                if self._ready and self._ready_overdue():
                    await self._release_ready()  # claimed ahead, still not started
                    self._ahead = 0
                    continue
                if short_since is not None:
                    if short_since == self._news:
                        # Nothing (more) to claim: wait for news (an enqueue,
                        # an outcome that frees room in a queue with
                        # max_running or a lock), or for the next poll.
                        await self._fetch_pause("news")
                    short_since = None
                    continue
                want = self._room()
                if not want:
                    await self._fetch_pause("room")
                    continue
                ids = [heapq.heappop(self._free_ids) for _ in range(want)]
                claimed: list[Job] = []
                news = self._news
                sent = trio.current_time()

                async def claim(ids: list[int] = ids, claimed: list[Job] = claimed) -> None:
                    self._claims += 1  # odd while a claim is in flight
                    try:
                        got = await self.storage.claim(
                            queues=config.queues,
                            worker_ids=[self._id_names[i] for i in ids],
                            server_name=self.identity,
                            now=self.now(),
                        )
                        self._held.update(job.id for job in got)
                        claimed.extend(got)
                    finally:
                        self._claims += 1

                try:
                    ok = await self._tick("claim", claim)
                finally:
                    for i in ids[len(claimed) :]:
                        heapq.heappush(self._free_ids, i)  # stamped on no job
                if not ok:
                    continue
                now = trio.current_time()
                self._claim_time = _averaged(self._claim_time, now - sent)
                self._update_lead()
                for job in claimed:
                    state = job.state
                    assert isinstance(state, Processing), job
                    self.notify(job, Enqueued(state.started_at), state)
                    self._ready.append((job, now))
                self._parked.unpark(count=len(claimed))
                if self.token.is_set():
                    break  # landed after the stop: released below
                if len(claimed) < want:
                    if self.burst and not claimed and await self._burst_done():
                        self.request_stop()
                        continue
                    short_since = news
        except Exception:
            raise  # a bug: the supervisor restarts the fetcher, the ready jobs stay
        except BaseException:
            await self._release_ready()  # cancelled from outside
            raise
        await self._release_ready(stopping=True)  # the stop: workers take no more jobs

    def _update_lead(self) -> None:
        """How many jobs to hold beyond the workers: those they run during a claim's round trip.

        ``worker_count * claim time / job time`` (Little's law), at most
        ``fetch_batch_size``: 0 while jobs take longer than a claim, so that
        long jobs never wait claimed behind each other; the full batch for
        jobs much shorter than a claim, so that the next claim travels while
        the workers run the last one's jobs.
        """
        if not self.config.claim_ahead:
            return
        lead = len(self.slots) * self._claim_time / max(self._job_time, 1e-9)
        self._ahead = min(self.config.fetch_batch_size, int(lead))

    def _hear_news(self) -> None:
        self._news += 1
        self._wake_fetcher("news")

    async def _work_listener(self) -> None:
        """Turns storage's wake-ups (:meth:`Storage.wait_for_work`) into news for the fetcher."""
        while not self.token.is_set():
            try:
                await self._interruptible(self.storage.wait_for_work)
            except trio.ClosedResourceError:
                return  # the fetcher's claims find it closed, and stop the server
            self._hear_news()

    def _ready_since(self) -> float:
        return self._ready[0][1]

    def _ready_overdue(self) -> bool:
        """The oldest ready job has waited ``polling_interval`` without a worker."""
        return self._ready_since() + self.config.polling_interval <= trio.current_time()

    async def _fetch_pause(self, reason: str) -> None:
        """Wait for ``reason`` (see _wake_fetcher), the stop, or a deadline.

        The deadline: the next poll, or the moment the oldest ready job has
        waited ``polling_interval`` without starting.
        """
        deadline = trio.current_time() + self.config.polling_interval
        if self._ready:
            deadline = min(deadline, self._ready_since() + self.config.polling_interval)
        self._fetch_waits_for = reason
        with trio.move_on_at(deadline) as scope:
            self._fetch_wait = scope
            try:
                await self._interruptible(trio.sleep_forever)
            finally:
                self._fetch_wait = None

    async def _hear_requested_aborts(self) -> None:
        """Read the aborts requested of this server now (bounded), before a stop requeues jobs."""
        with trio.move_on_after(SHIELDED_CALL_TIMEOUT):
            try:
                self.processor.abort(await self.storage.aborts_requested(self.identity))
            except Exception:
                logger.exception("job server %r: could not read requested aborts", self.identity)

    async def _release_ready(self, *, stopping: bool = False) -> None:
        """Put the claimed jobs no worker has started back to Enqueued (attempt uncounted).

        On a graceful stop, the aborts requested meanwhile are read first:
        releasing a job whose abort was requested (the flag goes with its
        Processing state) would run it again.
        """
        if not self._ready:
            return
        if stopping:
            await self._hear_requested_aborts()
            self._abort_ready()
        jobs = [job for job, _ in self._ready]
        self._ready.clear()
        for job in jobs:
            self._free_id(job)
        await self.processor.release(jobs)
        self._held.difference_update(job.id for job in jobs)

    def _abort_ready(self) -> None:
        """Jobs whose abort was requested before they started end Aborted without running."""
        if not self._ready:
            return
        keep: collections.deque[tuple[Job, float]] = collections.deque()
        for entry in self._ready:
            job = entry[0]
            aborted = self.processor.aborted_before_start(job)
            if aborted is None:
                keep.append(entry)
            else:
                self._commit(job, aborted)
        self._ready = keep

    def _free_id(self, job: Job) -> None:
        state = job.state
        assert isinstance(state, Processing), job
        heapq.heappush(self._free_ids, self._id_index[state.worker_id])

    async def _burst_done(self) -> bool:
        """In burst mode, after an empty claim: is there nothing left to do now?

        Nothing held (running, or its outcome unwritten), and nothing the
        scheduler can promote now; otherwise claim again.
        """
        if self._held or self._pending:
            return False
        promoted: list[Transitioned] = []

        async def promote() -> None:
            promoted.extend(await self.storage.promote_due(self.now()))

        if not await self._tick("scheduler", promote):
            return False
        self.notify_all(promoted)
        return not promoted and not self._held and not self._pending

    async def _next_job(self) -> Job | None:
        """The oldest ready job, for a worker; None once the server stops."""
        yielded = False
        while not self.token.is_set():
            if self._ready:
                if not yielded:
                    # A schedule point between jobs: the fetcher sends the
                    # next claim while the workers go on with the ready ones.
                    await trio.lowlevel.checkpoint()
                    yielded = True
                    continue
                return self._ready.popleft()[0]
            self._wake_fetcher("room")  # a worker without work: claim at once
            await self._parked.park()
            yielded = True
        return None

    async def _worker(self, slot: _Worker) -> None:
        processor = self.processor
        while True:
            job = await self._next_job()
            if job is None:
                return
            slot.current = job
            state = job.state
            assert isinstance(state, Processing), job
            ctx = WorkerContext(
                cancel=self.token,
                # The worker id stamped at the claim: unique among the jobs
                # this server holds, so among the ones it runs at once.
                worker_id=state.worker_id,
                server_name=self.identity,
                attempt=job.attempts,
                job_id=job.id,
                headers=dict(job.headers),
                state=processor.state,
                set_progress=self.storage.set_progress,
            )
            started = trio.current_time()
            transition = await processor.process(job, ctx)
            slot.current = None
            self._job_time = _averaged(self._job_time, trio.current_time() - started)
            self._commit(job, transition)

    # -- group commit -----------------------------------------------------

    def _commit(self, job: Job, transition: Transition) -> None:
        """Queue an outcome for the committer; the job's worker id is free again."""
        self._pending.append((job, transition))
        self._pending_changed.set()
        self._free_id(job)
        self._wake_fetcher("room")
        if isinstance(transition.state, AwaitingRetry):
            self.note_due(transition.state.retry_at)

    async def _committer(self) -> None:
        """Writes outcomes: whatever accumulated during one flush goes in the next."""
        batch: list[tuple[Job, Transition]] = []
        try:
            while True:
                while not self._pending and not self._commits_closed:
                    self._pending_changed = trio.Event()
                    await self._pending_changed.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                stored: list[Job | None] = []

                async def write(
                    batch: list[tuple[Job, Transition]] = batch, stored: list[Job | None] = stored
                ) -> None:
                    stored.extend(await self.storage.apply([t for _, t in batch]))

                if not await self._tick("writing outcomes", write, until_stop=False):
                    self._pending[:0] = batch
                    batch = []
                    if self.fatal is not None:
                        return
                    continue
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
                        for job, _ in left:
                            self._held.discard(job.id)
                        logger.exception(
                            "job server %r: %d outcome(s) lost",
                            self.identity,
                            len(left),
                        )
                    else:
                        self._written(left, stored)
            raise

    def _written(self, batch: list[tuple[Job, Transition]], stored: list[Job | None]) -> None:
        written = False
        for (job, transition), now_stored in zip(batch, stored, strict=True):
            self._held.discard(job.id)
            if now_stored is None:
                logger.warning(
                    "job %s changed while it ran (reclaimed or deleted); its %s outcome is dropped",
                    transition.job_id,
                    transition.state.name,
                )
                continue
            written = True
            self.notify(now_stored, job.state, now_stored.state)
        if written:
            # Jobs left Processing: room in a queue with max_running, maybe.
            # Counted, so that a claim in flight meanwhile learns it too.
            self._hear_news()
