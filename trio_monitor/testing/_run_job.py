"""Running one job inline, the way a server's worker would: :func:`run_job`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from .._token import ShutdownToken
from ..jobs import (
    AwaitingRetry,
    Failed,
    Job,
    RetryPolicy,
    Succeeded,
    WorkerContext,
    WorkerRegistry,
    open_storage,
)
from ..jobs._model import utcnow
from ..jobs._processor import Processor, describe
from ..jobs._workers import CallNext, Middleware

__all__ = ["run_job"]

#: The identity a job run by :func:`run_job` sees (``ctx.worker_id``, ``ctx.server_name``).
RUN_JOB_NAME = "run_job"
#: Job fields that run_job sets itself.
_NOT_JOB_FIELDS = frozenset({"method", "payload", "state", "version"})


def _job(method: str, payload: Any, job_fields: dict[str, Any]) -> Job:
    names = {field.name for field in attrs.fields(Job)} - _NOT_JOB_FIELDS
    unknown = sorted(set(job_fields) - names)
    if unknown:
        raise TypeError(
            f"run_job() got unknown job field(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(names))}"
        )
    job = Job.new(method, payload)
    for name, value in job_fields.items():
        setattr(job, name, value)
    return job


async def run_job(
    workers: WorkerRegistry,
    method: str,
    payload: Any,
    *,
    middleware: Sequence[Middleware] = (),
    job_timeout: float = 300.0,
    retry_policy: RetryPolicy | None = None,
    **job_fields: Any,
) -> object:
    """Run one job now, in this task, and return its result or raise its exception.

    The job goes the server's way: it is stored (in a private ``memory://``
    storage), claimed (so ``attempts`` is counted as a server counts it) and
    run by the server's own job processor, through ``middleware`` (the first
    outermost) and under ``job_timeout``. No server, scheduler or retry is
    involved: a failing job raises at once, whatever its retry policy says.

    Args:
      workers: The registry holding the worker for ``method``.
      method: The job's method.
      payload: Its payload (JSON-serialisable, as for any job).
      middleware: Wrapped around the run, as ``JobServer(middleware=...)``.
      job_timeout: As :attr:`ServerConfig.job_timeout
        <trio_monitor.jobs.ServerConfig>`.
      retry_policy: Only its ``max_attempts`` matters here: a job already
        claimed more often is not run (as on a server).
      job_fields: Other :class:`~trio_monitor.jobs.Job` fields as stored
        before the claim (``queue``, ``priority``, ``attempts``, ``id``...).
        The claim adds one to ``attempts``: ``ctx.attempt`` is
        ``attempts + 1``.

    Returns:
      The worker's result as the server would store it (``None`` if it is
      not JSON-serialisable).

    Raises:
      Exception: whatever the worker (or a middleware) raised, as itself.
      TimeoutError: the run took longer than ``job_timeout``.
      ValueError: no worker is registered for ``method``.
      TypeError: a payload that is not JSON-serialisable, an unknown job field.
    """
    if not isinstance(workers, WorkerRegistry):
        raise TypeError(f"workers must be a WorkerRegistry, not {type(workers).__name__}")
    if method not in workers:
        raise ValueError(
            f"no worker is registered for method {method!r}; registered: {sorted(workers)}"
        )
    job = _job(method, payload, job_fields)
    raised: list[BaseException] = []

    async def catch(job: Job, ctx: WorkerContext, call_next: CallNext) -> object:
        # Outermost: sees what the chain raised before the processor turns it into text.
        try:
            return await call_next()
        except BaseException as exc:
            raised.append(exc)
            raise

    async with open_storage("memory://") as storage:
        await storage.enqueue(job)
        (claimed,) = await storage.claim(
            queues=[job.queue],
            worker_ids=[RUN_JOB_NAME],
            server_name=RUN_JOB_NAME,
            now=utcnow(),
        )
        processor = Processor(
            storage=storage,
            workers=workers,
            retry_policy=retry_policy if retry_policy is not None else RetryPolicy(),
            middleware=(catch, *middleware),
            job_timeout=job_timeout,
            succeeded_ttl=86400.0,
            failed_ttl=86400.0,
            clock=utcnow,
            notify=lambda job, old, new: None,
        )
        ctx = WorkerContext(
            cancel=ShutdownToken(),
            worker_id=RUN_JOB_NAME,
            server_name=RUN_JOB_NAME,
            attempt=claimed.attempts,
        )
        transition = await processor.process(claimed, ctx)
    state = transition.state
    if isinstance(state, Succeeded):
        return state.result
    assert isinstance(state, Failed | AwaitingRetry), state
    if raised and isinstance(raised[-1], Exception) and state.error == describe(raised[-1]):
        raise raised[-1]
    if "timed out after" in state.error:
        raise TimeoutError(f"job {method!r} timed out after {job_timeout:g}s")
    raise RuntimeError(f"job {method!r} was not run: {state.error}")
