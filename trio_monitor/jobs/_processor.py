"""Running one claimed job: middleware, timeout, retries, and the outcome.

The processor turns a claimed job into the :class:`Transition` that records
its outcome; it does not write it (the server's committer batches those).
The one write it makes itself is the requeue of a job whose run was
cancelled from outside (the server stopping past its deadline, or an
enclosing cancel scope): that write is shielded and bounded, and must happen
before the cancellation goes on, or the job would sit in ``Processing``
until a stale sweep finds it.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import attrs
import trio

from .._validate import MAX_SECONDS, attrs_count, attrs_fraction, attrs_seconds
from ._model import (
    AwaitingRetry,
    Enqueued,
    Failed,
    Job,
    JobState,
    Succeeded,
    Transition,
    dump_json,
)
from ._storage import Storage
from ._workers import Middleware, WorkerContext, WorkerFn, WorkerRegistry

__all__ = ["Processor", "RetryPolicy", "StateChangeHook"]

logger = logging.getLogger("trio_monitor.jobs")

#: ``fn(job, old_state, new_state)``, called after each persisted transition.
StateChangeHook = Callable[[Job, JobState, JobState], None]

#: How long a cancelled job's requeue may take before it is given up (the
#: job is then left to the stale sweep or dead-server reclaim).
REQUEUE_TIMEOUT = 5.0


def _check_multiplier(_instance: object, _attribute: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"RetryPolicy.multiplier must be a number, not {value!r}")
    if not value >= 1 or math.isinf(value):
        raise ValueError(f"RetryPolicy.multiplier must be a finite number >= 1, not {value!r}")


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
      multiplier (float): Growth of the delay per attempt (>= 1).
      max_delay (float): Cap on the delay, in seconds.
      jitter (float): Fraction of the delay added or taken at random (0-1).
    """

    max_attempts: int = attrs.field(
        default=3, validator=attrs_count("RetryPolicy", "max_attempts", minimum=1)
    )
    initial_delay: float = attrs.field(
        default=1.0,
        validator=attrs_seconds("RetryPolicy", "initial_delay", maximum=MAX_SECONDS),
    )
    multiplier: float = attrs.field(default=2.0, validator=_check_multiplier)
    max_delay: float = attrs.field(
        default=300.0, validator=attrs_seconds("RetryPolicy", "max_delay", allow_inf=True)
    )
    jitter: float = attrs.field(default=0.1, validator=attrs_fraction("RetryPolicy", "jitter"))

    def base_delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` before jitter."""
        exponent = max(attempt - 1, 0)
        try:
            raw = self.initial_delay * self.multiplier**exponent
        except OverflowError:
            raw = math.inf
        return min(self.max_delay, raw)

    def delay(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt``, jitter included."""
        base = self.base_delay(attempt)
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))


def describe(exc: BaseException) -> str:
    """An error as stored in a job: ``"Type: message"``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Processor:
    """Runs claimed jobs for one server start; shared by its workers."""

    def __init__(
        self,
        *,
        storage: Storage,
        workers: WorkerRegistry,
        retry_policy: RetryPolicy,
        middleware: Sequence[Middleware],
        job_timeout: float,
        succeeded_ttl: float,
        failed_ttl: float,
        clock: Callable[[], datetime],
        notify: StateChangeHook,
    ) -> None:
        self._storage = storage
        self._workers = workers
        self._retry = retry_policy
        self._middleware = tuple(middleware)
        self._job_timeout = job_timeout
        self._succeeded_ttl = timedelta(seconds=succeeded_ttl)
        self._failed_ttl = timedelta(seconds=failed_ttl)
        self._now = clock
        self._notify = notify

    async def process(self, job: Job, ctx: WorkerContext) -> Transition:
        """Run ``job`` (as claimed) and return the transition recording its outcome.

        If the run is cancelled from outside, the job is put back to
        :class:`Enqueued` with this attempt uncounted (shielded, bounded),
        and the cancellation propagates.
        """
        # The worker may mutate its copy; the CAS needs the claim's values.
        job_id, version, attempts, method = job.id, job.version, job.attempts, job.method
        if attempts > self._retry.max_attempts:
            # Claimed again and again without an outcome: it probably kills
            # the process running it. Do not run it once more.
            return self._terminal(
                job_id,
                version,
                Failed(
                    f"gave up after {attempts - 1} attempts: the job was claimed "
                    f"{attempts} times (max_attempts={self._retry.max_attempts}) without "
                    "finishing; its workers died or stalled"
                ),
            )
        fn = self._workers.get(method)
        if fn is None:
            return self._terminal(
                job_id, version, Failed(f"no worker is registered for method {method!r}")
            )
        started = trio.current_time()
        result: object = None
        try:
            with trio.move_on_after(self._job_timeout) as scope:
                result = await self._call(0, fn, job, ctx)
        except Exception as exc:
            logger.warning("job %s (%s) failed attempt %d", job_id, method, attempts, exc_info=True)
            return self._failed_attempt(job_id, version, attempts, describe(exc))
        except BaseException:
            await self.requeue([(job, self._requeue_transition(job_id, version, attempts))])
            raise
        if scope.cancelled_caught:
            logger.warning("job %s (%s) timed out after %ss", job_id, method, self._job_timeout)
            return self._failed_attempt(
                job_id, version, attempts, f"timed out after {self._job_timeout:g}s"
            )
        duration = trio.current_time() - started
        try:
            dump_json(result, "result")
        except TypeError:
            logger.warning(
                "job %s (%s) returned a %s, which is not JSON-serialisable; storing None",
                job_id,
                method,
                type(result).__name__,
            )
            result = None
        return self._terminal(job_id, version, Succeeded(result, duration))

    async def _call(self, index: int, fn: WorkerFn, job: Job, ctx: WorkerContext) -> object:
        # Middleware[0] is outermost; its call_next runs middleware[1], ...,
        # and the last call_next runs the worker itself.
        if index == len(self._middleware):
            return await fn(job, ctx)
        call_next = functools.partial(self._call, index + 1, fn, job, ctx)
        return await self._middleware[index](job, ctx, call_next)

    def _terminal(self, job_id: str, version: int, state: Succeeded | Failed) -> Transition:
        ttl = self._succeeded_ttl if isinstance(state, Succeeded) else self._failed_ttl
        now = self._now()
        return Transition(job_id, version, state, expires_at=now + ttl)

    def _failed_attempt(self, job_id: str, version: int, attempts: int, error: str) -> Transition:
        if attempts < self._retry.max_attempts:
            retry_at = self._now() + timedelta(seconds=self._retry.delay(attempts))
            return Transition(job_id, version, AwaitingRetry(retry_at, error))
        return self._terminal(job_id, version, Failed(error))

    def _requeue_transition(self, job_id: str, version: int, attempts: int) -> Transition:
        return Transition(job_id, version, Enqueued(self._now()), attempts=max(attempts - 1, 0))

    async def release(self, claimed: Sequence[Job]) -> None:
        """Put claimed jobs that were never run back to Enqueued, attempt uncounted.

        For jobs a stopping server claimed but could no longer hand to a
        worker. Shielded and bounded like the requeue of a cancelled run.
        """
        await self.requeue(
            [(job, self._requeue_transition(job.id, job.version, job.attempts)) for job in claimed]
        )

    async def requeue(self, requeues: Sequence[tuple[Job, Transition]]) -> None:
        # Shielded: it runs while a cancellation is going on, and must land
        # first, or the jobs would sit in Processing until a recovery sweep.
        stored: list[Job | None] = [None] * len(requeues)
        with trio.CancelScope(shield=True) as scope:
            scope.relative_deadline = REQUEUE_TIMEOUT
            try:
                stored = await self._storage.apply([transition for _, transition in requeues])
            except Exception:
                logger.exception("could not requeue %d cancelled job(s)", len(requeues))
        for (job, transition), now_stored in zip(requeues, stored, strict=True):
            if now_stored is None:
                logger.warning(
                    "cancelled job %s was not requeued; recovery will find it "
                    "(stale sweep or dead-server reclaim)",
                    transition.job_id,
                )
                continue
            logger.info("requeued job %s, cancelled before it finished", transition.job_id)
            self._notify(now_stored, job.state, now_stored.state)
