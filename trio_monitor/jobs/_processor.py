"""Running one claimed job: middleware, timeout, retries, and the outcome.

The processor turns a claimed job into the :class:`Transition` that records
its outcome; it does not write it (the server's committer batches those).
The writes it makes itself are the outcomes that must land while a
cancellation from outside (an enclosing cancel scope) or a job's own
``KeyboardInterrupt``/``SystemExit`` goes on: those are shielded and
bounded, or the job would sit in ``Processing`` until recovery finds it.

An intentional stop is never a failure, as everywhere in trio_monitor (the
supervision core's rule, :mod:`trio_monitor._core`): a run stopped on purpose
(:class:`StopReason`) or cancelled from outside ends as the stop says,
whatever its code raises or returns meanwhile.
"""

from __future__ import annotations

import enum
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import attrs
import trio

from .._backoff import Backoff
from .._core import capture, is_outer_cancelled
from .._failures import describe_exception
from .._validate import (
    MAX_SECONDS,
    attrs_count,
    attrs_fraction,
    attrs_multiplier,
    attrs_seconds,
)
from ._model import (
    Aborted,
    AwaitingRetry,
    Enqueued,
    Failed,
    Job,
    JobState,
    Succeeded,
    Transition,
    encode_state,
)
from ._storage import Storage
from ._workers import Method, Middleware, Retry, WorkerContext, WorkerRegistry

__all__ = ["Processor", "RetryPolicy", "RunningJob", "StateChangeHook", "StopReason", "describe"]

logger = logging.getLogger("trio_monitor.jobs")

#: ``fn(job, old_state, new_state)``, called after each persisted transition.
StateChangeHook = Callable[[Job, JobState, JobState], None]

#: How long a cancelled job's requeue may take before it is given up (the
#: job is then left to the stale sweep or dead-server reclaim).
REQUEUE_TIMEOUT = 5.0


@attrs.frozen
class RetryPolicy:
    """How often a failing job is tried, and how long it waits in between.

    The wait after failed attempt ``n`` (1-based) is
    ``min(max_delay, initial_delay * multiplier ** (n - 1))``, moved at random
    by up to ``jitter`` times itself either way, so that jobs that failed
    together do not all retry at the same instant.

    Attributes:
      max_attempts (int): Attempts in all, the first included (>= 1). A job
        that fails its last one ends :class:`~trio_monitor.jobs.Failed`.
      initial_delay (float): Seconds before the first retry.
      multiplier (float): Growth of the delay per attempt (>= 1, finite).
      max_delay (float): Cap on the delay, in seconds. ``math.inf`` means
        no cap; the delay is clamped to about 95 years anyway
        (:data:`~trio_monitor._validate.MAX_SECONDS`), so that a retry time
        always fits a datetime.
      jitter (float): Fraction of the delay added or taken at random (0-1).

    Raises:
      TypeError: A field of the wrong type (a bool is not a number).
      ValueError: A field out of its range; the message names it.
    """

    max_attempts: int = attrs.field(
        default=3, validator=attrs_count("RetryPolicy", "max_attempts", minimum=1)
    )
    initial_delay: float = attrs.field(
        default=1.0,
        validator=attrs_seconds("RetryPolicy", "initial_delay", maximum=MAX_SECONDS),
    )
    multiplier: float = attrs.field(
        default=2.0, validator=attrs_multiplier("RetryPolicy", "multiplier")
    )
    max_delay: float = attrs.field(
        default=300.0, validator=attrs_seconds("RetryPolicy", "max_delay", allow_inf=True)
    )
    jitter: float = attrs.field(default=0.1, validator=attrs_fraction("RetryPolicy", "jitter"))

    def _backoff(self) -> Backoff:
        return Backoff(self.initial_delay, self.multiplier, self.max_delay, self.jitter)

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` before jitter (never above MAX_SECONDS)."""
        return self._backoff().base_delay(attempt)

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt``, jitter included (never above MAX_SECONDS)."""
        return self._backoff().delay(attempt)


#: The longest error text stored in a job; longer messages are cut, with a
#: note saying how much was left out.
MAX_ERROR_CHARS = 4000


def _run_plain(fn: Callable[[Job, WorkerContext], object], job: Job, ctx: WorkerContext) -> object:
    """Run a plain-def worker (in its thread); refuse a coroutine it returns, by name.

    A plain function wrapping an async one (a lambda, say) is run in a
    thread, where the coroutine it returns can never run. Trio would refuse
    it too, with a message that shows the whole job; this one says what to do.
    """
    result = fn(job, ctx)
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"the worker of {job.method!r} is a plain function that returned a coroutine: "
            "it ran in a thread, where its async part cannot run; register an async def "
            "(it runs in Trio), not a lambda or wrapper around one"
        )
    return result


def describe(exc: BaseException) -> str:
    """An error as stored in a job: ``"Type: message"``, never raising, bounded.

    Built with :func:`~trio_monitor._failures.describe_exception`, so an
    exception whose ``__str__`` raises is stored as ``"T: <unprintable T>"``;
    a huge message is cut to :data:`MAX_ERROR_CHARS`.
    """
    name = type(exc).__name__
    text = describe_exception(exc)
    error = f"{name}: {text}" if text else name
    if len(error) > MAX_ERROR_CHARS:
        cut = len(error) - MAX_ERROR_CHARS
        error = f"{error[:MAX_ERROR_CHARS]}... ({cut} more characters)"
    return error


class StopReason(enum.Enum):
    """Why a running job was stopped on purpose. An intentional stop is never a failure.

    Whatever the job's code does while it is being stopped (raises an
    :class:`Exception` from a ``finally``, swallows :class:`trio.Cancelled`,
    returns a value), the stop decides the outcome.
    """

    #: The server stopped past ``shutdown_timeout``, or the run was cancelled
    #: from outside: the job goes back to Enqueued, that attempt uncounted.
    SHUTDOWN = "shutdown"
    #: Its abort was requested (``client.abort``): the job ends
    #: :class:`~trio_monitor.jobs.Aborted` and is not retried. It beats a
    #: shutdown given before or after: requeueing a job someone aborted
    #: would run it again.
    ABORTED = "aborted"


class RunningJob:
    """One job being run: its cancel scope, and why it was stopped, if it was.

    The same rule as the supervision core's :meth:`TaskState.abort
    <trio_monitor._core.TaskState.abort>`: the reason is recorded before the
    scope is cancelled, so once the job's code sees its cancellation, the
    outcome is already decided.
    """

    __slots__ = ("abort_reason", "job_id", "scope", "stop_reason")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.scope = trio.CancelScope()
        self.stop_reason: StopReason | None = None
        #: The reason given to the abort, once there was one.
        self.abort_reason: str | None = None

    def stop(self, reason: StopReason) -> None:
        """Cancel the run on purpose; the first reason given wins (an abort beats any)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()

    def abort(self, reason: str) -> None:
        """Cancel the run because its abort was requested: it ends Aborted(reason)."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self.stop_reason = StopReason.ABORTED
        self.scope.cancel()


class Processor:
    """Runs claimed jobs for one server start; shared by its workers.

    Every run ends in exactly one of four ways, decided in this order:

    1. **Stopped on purpose** (a :class:`StopReason` given to
       :meth:`stop_all` or :meth:`abort`, or a cancellation from outside):
       the stop's outcome (requeued, that attempt uncounted; or
       ``Aborted``), whatever the code did meanwhile.
    2. **A BaseException of its own** (``SystemExit``, ``KeyboardInterrupt``):
       a counted failed attempt, written at once (shielded, bounded); then
       the exception propagates and stops the server, as Trio wants.
    3. **Timed out**: still running at its timeout (the job's own, else its
       method's, else ``job_timeout``), even if it then returned, having
       ignored its cancellation: a failed attempt with a
       :exc:`TimeoutError` text.
    4. Otherwise it raised (a failed attempt: retried after the method's or
       the server's policy, or after :class:`~trio_monitor.jobs.Retry`'s
       ``delay``; failed at once if the method's ``retry_on`` does not name
       it) or returned (succeeded).
    """

    def __init__(
        self,
        *,
        storage: Storage,
        workers: WorkerRegistry,
        retry_policy: RetryPolicy,
        middleware: Sequence[Middleware],
        job_timeout: float,
        succeeded_ttl: float | None,
        failed_ttl: float | None,
        clock: Callable[[], datetime],
        notify: StateChangeHook,
        threads: int = 1,
    ) -> None:
        self._storage = storage
        self._workers = workers
        # Plain ``def`` workers: at most this many threads at once (an
        # abandoned thread that ignores its cancellation keeps its place).
        self._threads = trio.CapacityLimiter(max(threads, 1))
        #: What the registry's lifespan yielded for this start (``ctx.state``).
        self.state: object = None
        self._retry = retry_policy
        self._middleware = tuple(middleware)
        self._job_timeout = job_timeout
        self._succeeded_ttl = None if succeeded_ttl is None else timedelta(seconds=succeeded_ttl)
        self._failed_ttl = None if failed_ttl is None else timedelta(seconds=failed_ttl)
        self._now = clock
        self._notify = notify
        #: The runs under way, by job id.
        self.running: dict[str, RunningJob] = {}
        # Aborts heard for jobs claimed but not started yet: id -> reason.
        self._aborts_pending: dict[str, str] = {}
        # Set by stop_all: runs that would start from now on are stopped at once.
        self._stopped_all: StopReason | None = None

    def stop_all(self, reason: StopReason) -> int:
        """Stop every run under way on purpose, and every run asked for later.

        Returns how many runs were under way.
        """
        self._stopped_all = reason
        runs = list(self.running.values())
        for run in runs:
            run.stop(reason)
        return len(runs)

    def abort(self, requested: Sequence[tuple[str, str]]) -> int:
        """Abort the runs whose ``(job id, reason)`` is in ``requested``; how many were running.

        Requested jobs not running yet (claimed, not started) are aborted
        the moment they start; the set is replaced at each call, since
        storage lists every requested abort of this server each time.
        """
        aborted = 0
        pending: dict[str, str] = {}
        for job_id, reason in requested:
            run = self.running.get(job_id)
            if run is None:
                pending[job_id] = reason
            else:
                run.abort(reason)
                aborted += 1
        self._aborts_pending = pending
        return aborted

    def aborted_before_start(self, job: Job) -> Transition | None:
        """The ``Aborted`` outcome of a claimed job not started yet, if its abort was heard.

        For the server's claimed-ahead jobs: such a job ends Aborted without
        running, at once, rather than when a worker gets to it.
        """
        reason = self._aborts_pending.pop(job.id, None)
        if reason is None:
            return None
        return self._terminal(job.id, job.version, Aborted(reason, self._now()))

    async def process(self, job: Job, ctx: WorkerContext) -> Transition:
        """Run ``job`` (as claimed) and return the transition recording its outcome.

        If the run is cancelled from outside, the job is put back to
        :class:`Enqueued` with this attempt uncounted (shielded, bounded),
        and the cancellation propagates. If the job raises a
        :class:`BaseException` that is not a cancellation, its failed
        attempt is written the same way and the exception propagates.
        """
        job_id, version, attempts, method = job.id, job.version, job.attempts, job.method
        settings = self._workers.method(method)
        policy = self._retry
        if settings is not None and settings.retry_policy is not None:
            policy = settings.retry_policy
        if attempts > policy.max_attempts:
            # Claimed again and again without an outcome: it probably kills
            # the process running it. Do not run it once more.
            return self._terminal(
                job_id,
                version,
                Failed(
                    f"gave up after {attempts - 1} attempts: the job was claimed "
                    f"{attempts} times (max_attempts={policy.max_attempts}) without "
                    "finishing; its workers died or stalled"
                ),
            )
        if settings is None:
            return self._terminal(
                job_id, version, Failed(f"no worker is registered for method {method!r}")
            )
        # The job's own timeout beats its method's, which beats the server's.
        limit = job.timeout or settings.timeout or self._job_timeout
        run = self.running[job_id] = RunningJob(job_id)
        if self._stopped_all is not None:
            run.stop(self._stopped_all)  # never starts: the server is past its deadline
        reason = self._aborts_pending.pop(job_id, None)
        if reason is not None:
            run.abort(reason)  # heard before it started: it never runs
        started = trio.current_time()
        # One cancel scope per run: the stops cancel it (their reason
        # recorded first), the timeout is its deadline.
        scope = run.scope
        scope.deadline = deadline = started + limit
        exc: Exception | None = None
        result: object = None
        try:
            with scope:
                # The worker gets a copy of its own: what it changes never
                # reaches the hook's job or the compare-and-swap.
                exc, result = await self._call_isolated(settings, attrs.evolve(job), ctx)
        except BaseException as raised:
            own = self._stopped(run, job_id, version, attempts)
            if own is None:
                # Its own SystemExit, KeyboardInterrupt...: counted.
                own = self._failed_attempt(job_id, version, attempts, describe(raised), policy)
                logger.exception(
                    "job %s (%s) raised %s: attempt %d counted, and it propagates",
                    job_id,
                    method,
                    type(raised).__name__,
                    attempts,
                )
            await self.write_now([(job, own)])
            raise
        finally:
            if self.running.get(job_id) is run:
                del self.running[job_id]
        stopped = self._stopped(run, job_id, version, attempts)
        if stopped is not None:
            if is_outer_cancelled():
                await self.write_now([(job, stopped)])
                await trio.lowlevel.checkpoint()  # raises the Cancelled
            return stopped
        # Past its deadline is a timeout however the run ended: cancelled,
        # an exception made of its Cancelled, or a late return after
        # ignoring it (swallowed, or blocked in a thread). Not stopped, so
        # nothing but the deadline cancelled the scope.
        if scope.cancel_called or trio.current_time() >= deadline:
            logger.warning("job %s (%s) timed out after %gs", job_id, method, limit)
            error = f"TimeoutError: timed out after {limit:g}s"
            if not settings.retries(TimeoutError()):
                return self._terminal(job_id, version, Failed(error))
            return self._failed_attempt(job_id, version, attempts, error, policy)
        if exc is not None:
            logger.warning(
                "job %s (%s) failed attempt %d: %s",
                job_id,
                method,
                attempts,
                describe(exc),
                exc_info=exc,
            )
            if isinstance(exc, Retry):
                error = f"Retry: {exc.reason}" if exc.reason else "Retry"
                return self._failed_attempt(job_id, version, attempts, error, policy, exc.delay)
            if not settings.retries(exc):
                # Not one retry_on names: failed at once.
                return self._terminal(job_id, version, Failed(describe(exc)))
            return self._failed_attempt(job_id, version, attempts, describe(exc), policy)
        return self._succeeded(job, trio.current_time() - started, result)

    async def _call_isolated(
        self, method: Method, job: Job, ctx: WorkerContext
    ) -> tuple[Exception | None, object]:
        result: object = None

        async def call() -> None:
            nonlocal result
            result = await self._call(0, method, job, ctx)

        exc = await capture(call, ())
        return exc, result

    async def _call(self, index: int, method: Method, job: Job, ctx: WorkerContext) -> object:
        # Middleware[0] is outermost; its call_next runs middleware[1], ...,
        # and the last call_next runs the worker itself.
        if index == len(self._middleware):
            if method.is_async:
                return await method.fn(job, ctx)
            # A plain def: in a worker thread, bounded. On cancellation
            # (abort, timeout, stop) trio.from_thread.check_cancelled()
            # raises in it; one that never checks is abandoned, so that the
            # outcome (and the worker) never wait for it.
            return await trio.to_thread.run_sync(
                functools.partial(_run_plain, method.fn, job, ctx),
                limiter=self._threads,
                abandon_on_cancel=True,
            )
        call_next = functools.partial(self._call, index + 1, method, job, ctx)
        return await self._middleware[index](job, ctx, call_next)

    def _stopped(
        self, run: RunningJob, job_id: str, version: int, attempts: int
    ) -> Transition | None:
        """The outcome of an intentional stop, or None if the run was not stopped.

        Each :class:`StopReason` maps to its outcome here.
        """
        reason = run.stop_reason
        if reason is None and is_outer_cancelled():
            reason = StopReason.SHUTDOWN
        if reason is None:
            return None
        if reason is StopReason.ABORTED:
            aborted = Aborted(run.abort_reason or "aborted", self._now())
            return self._terminal(job_id, version, aborted)
        return self._requeue_transition(job_id, version, attempts)

    def _succeeded(self, job: Job, duration: float, result: object) -> Transition:
        state = Succeeded(result, duration)
        try:
            # Exactly what storage will write: a result JSON refuses (a
            # set, NaN, a 5,000-deep list) must not fail there. None (the
            # common case) always encodes.
            if result is not None:
                encode_state(state)
        except Exception:
            logger.warning(
                "job %s (%s) returned a %s, which is not JSON-serialisable; storing None",
                job.id,
                job.method,
                type(result).__name__,
            )
            state = Succeeded(None, duration)
        return self._terminal(job.id, job.version, state)

    def _terminal(
        self, job_id: str, version: int, state: Succeeded | Failed | Aborted
    ) -> Transition:
        ttl = self._succeeded_ttl if isinstance(state, Succeeded) else self._failed_ttl
        expires = None if ttl is None else self._now() + ttl
        return Transition(job_id, version, state, expires_at=expires)

    def _failed_attempt(
        self,
        job_id: str,
        version: int,
        attempts: int,
        error: str,
        policy: RetryPolicy,
        delay: float | None = None,
    ) -> Transition:
        """A counted failed attempt: retried after ``delay`` (None: the policy's), or Failed."""
        if attempts < policy.max_attempts:
            wait = policy.delay(attempts) if delay is None else delay
            retry_at = self._now() + timedelta(seconds=wait)
            return Transition(job_id, version, AwaitingRetry(retry_at, error))
        return self._terminal(job_id, version, Failed(error))

    def _requeue_transition(self, job_id: str, version: int, attempts: int) -> Transition:
        return Transition(job_id, version, Enqueued(self._now()), attempts=max(attempts - 1, 0))

    def requeue_counted(self, job: Job) -> Transition:
        """Back to Enqueued with the attempt kept (a worker died by a bug mid-job)."""
        return Transition(job.id, job.version, Enqueued(self._now()))

    async def release(self, claimed: Sequence[Job]) -> None:
        """Put claimed jobs that were never run back to Enqueued, attempt uncounted.

        For jobs a stopping server claimed but could no longer hand to a
        worker. Shielded and bounded like the requeue of a cancelled run.
        """
        await self.write_now(
            [(job, self._requeue_transition(job.id, job.version, job.attempts)) for job in claimed]
        )

    async def write_now(self, writes: Sequence[tuple[Job, Transition]]) -> None:
        """Apply transitions at once, shielded and bounded by :data:`REQUEUE_TIMEOUT`.

        For outcomes that must land while a cancellation or a
        ``BaseException`` is going on, before it goes on: otherwise the jobs
        would sit in Processing until recovery finds them.
        """
        stored: list[Job | None] = [None] * len(writes)
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = REQUEUE_TIMEOUT
            try:
                stored = await self._storage.apply([transition for _, transition in writes])
            except Exception:
                logger.exception(
                    "could not write the outcome of %d stopped job(s)",
                    len(writes),
                )
        for (job, transition), now_stored in zip(writes, stored, strict=True):
            if now_stored is None:
                logger.warning(
                    "the %s outcome of stopped job %s was not written; recovery will find it "
                    "(stale sweep or dead-server reclaim)",
                    transition.state.name,
                    transition.job_id,
                )
                continue
            logger.info("job %s stopped before it finished: now %s", job.id, transition.state.name)
            self._notify(now_stored, job.state, now_stored.state)
