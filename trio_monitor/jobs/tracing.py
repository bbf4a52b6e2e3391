"""OpenTelemetry tracing for jobs: one span per job run, linked to the enqueuer's trace.

Needs the ``otel`` extra (``pip install 'trio-monitor[otel]'``, which brings
``opentelemetry-api``; configure an SDK and exporter as usual). Two halves:

* At enqueue, :func:`inject_headers` captures the current trace context
  (W3C ``traceparent``/``tracestate`` with the default propagator) into a
  ``dict[str, str]`` meant for the job's headers.
* In the worker, :class:`TracingMiddleware` opens a span per run, as a child
  of the context found in those headers (a new trace when there is none)::

      server = jobs.JobServer(config, storage, workers,
                              middleware=[tracing.TracingMiddleware()])

The span is named ``job <method>``, of kind ``CONSUMER``, with the job's id,
method, queue and attempt as attributes. A run that raises records the
exception and an ``ERROR`` status; a run cancelled by a stop or a timeout
(a stop, a timeout) ends with the attribute ``trio_monitor.job.cancelled``
and no error status, even if its cleanup code raised while being cancelled:
an intentional stop is not a failure of the job.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

import trio

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_monitor.jobs.tracing needs OpenTelemetry: pip install 'trio-monitor[otel]'"
    ) from exc

from .._failures import describe_exception
from ._model import Job
from ._workers import WorkerContext

__all__ = ["TracingMiddleware", "inject_headers", "job_headers"]

TRACER_NAME = "trio_monitor.jobs"
#: Span attribute set on runs ended by a cancellation (stop, timeout, abort).
CANCELLED = "trio_monitor.job.cancelled"


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """``headers`` plus the current trace context, to store with a job at enqueue.

    Uses the globally configured propagator (W3C trace context by default).
    Outside any span it adds nothing.
    """
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def job_headers(job: Job) -> Mapping[str, str]:
    """A job's headers (``job.headers``), or no headers if it has none."""
    headers = getattr(job, "headers", None)
    return cast("Mapping[str, str]", headers) if isinstance(headers, Mapping) else {}


class TracingMiddleware:
    """A job middleware that runs each job inside an OpenTelemetry span.

    Put it first in ``middleware`` so that the span covers the others.

    Args:
      tracer_provider: Where spans go (default: the global provider).
      headers: Reads the carrier of the enqueuer's trace context from a job
        (default :func:`job_headers`).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        headers: Callable[[Job], Mapping[str, str]] = job_headers,
    ) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self._headers = headers

    async def __call__(
        self, job: Job, ctx: WorkerContext, call_next: Callable[[], Awaitable[object]]
    ) -> object:
        parent = propagate.extract(self._headers(job))
        with self._tracer.start_as_current_span(
            f"job {job.method}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "trio_monitor",
                "messaging.operation.type": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "trio_monitor.job.method": job.method,
                "trio_monitor.job.attempt": ctx.attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next()
            except Exception as exc:
                if _being_cancelled():
                    # Raised by cleanup code while the run was cancelled (a
                    # stop, a timeout, an abort): the cancellation is what
                    # happened, not a failure of the job.
                    span.set_attribute(CANCELLED, True)
                else:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, describe_exception(exc)))
                raise
            except BaseException:
                span.set_attribute(CANCELLED, True)
                raise


def _being_cancelled() -> bool:
    # Trio's documented way to ask: a cancelled task's effective deadline is -inf.
    return trio.current_effective_deadline() == -math.inf
