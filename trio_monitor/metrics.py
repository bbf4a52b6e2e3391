"""Prometheus metrics for the job server and the supervision components.

Needs the ``metrics`` extra (``pip install 'trio-monitor[metrics]'``, which
brings ``prometheus_client``). The ``trio-monitor worker --metrics-port N``
command wires all of this up; a program that runs its own
:class:`~trio_monitor.jobs.JobServer` uses the pieces directly::

    registry = prometheus_client.CollectorRegistry()
    job_metrics = metrics.JobMetrics(registry)
    server = jobs.JobServer(config, storage, workers,
                            middleware=[job_metrics.middleware],
                            on_state_change=job_metrics.on_state_change)
    counts = metrics.JobCountsCollector(jobs.Client(storage).counts, registry=registry)
    nursery.start_soon(counts.run)               # refreshes counts from the database
    registry.register(metrics.StatisticsCollector("monitor", monitor))

Two kinds of numbers come out, and they aggregate differently:

* **Counts of jobs by queue and state** are read from the database, so every
  worker process reports the same, cluster-wide figures (use ``max``, not
  ``sum``, across processes).
* **Durations, latencies and processed totals** are per process: each one
  reports the jobs it ran (``sum`` them across processes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol, cast, get_args

import attrs
import trio

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        GCCollector,
        Histogram,
        ProcessCollector,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_monitor.metrics needs prometheus_client: pip install 'trio-monitor[metrics]'"
    ) from exc

from . import jobs
from ._validate import shown

__all__ = [
    "CollectorRegistry",
    "CountsSource",
    "GCCollector",
    "JobCountsCollector",
    "JobMetrics",
    "ProcessCollector",
    "StatisticsCollector",
    "serve_metrics",
    "storage_counts",
]

logger = logging.getLogger("trio_monitor.metrics")

#: Every state a job can be in, so each one is exported (as 0 when empty).
STATE_NAMES = tuple(cls.name for cls in get_args(jobs.JobState))
#: The queue label of the zero counts exported while the database has no job.
ALL_QUEUES = "*"

#: Histogram buckets (seconds): jobs run from milliseconds to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, math.inf)
#: Enqueue-to-start latency buckets (seconds): milliseconds when idle, more under load.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf)


class JobMetrics:
    """Per-process job metrics, fed by a middleware and an ``on_state_change`` hook.

    Pass :meth:`middleware` in the server's ``middleware`` list (first, so
    that it times everything else too) and :meth:`on_state_change` as its
    hook. It exports:

    ``trio_monitor_job_duration_seconds{method}`` (histogram)
      How long each run took, whatever its outcome.
    ``trio_monitor_job_start_latency_seconds{method}`` (histogram)
      From a job's creation to the start of its first attempt. A job
      enqueued with a delay counts its delay too; retries are not counted.
    ``trio_monitor_jobs_processed_total{method, outcome}`` (counter)
      Runs that ended, by ``outcome``: ``succeeded``, ``failed`` (for good),
      ``retried`` (a failed attempt that will be retried) or ``requeued``
      (cancelled by a stop, back in the queue uncounted) or ``aborted``.

    Args:
      registry: Where to register the metrics (default: prometheus_client's
        global registry).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.duration = Histogram(
            "trio_monitor_job_duration_seconds",
            "How long job runs took, by method.",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.start_latency = Histogram(
            "trio_monitor_job_start_latency_seconds",
            "Time from a job's creation to the start of its first attempt, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.processed = Counter(
            "trio_monitor_jobs_processed",
            "Job runs that ended, by method and outcome.",
            ["method", "outcome"],
            registry=registry,
        )

    async def middleware(
        self, job: jobs.Job, ctx: jobs.WorkerContext, call_next: Callable[[], Awaitable[object]]
    ) -> object:
        """Time the run and, for a first attempt, its start latency."""
        state = job.state
        if isinstance(state, jobs.Processing) and job.attempts == 1:
            latency = (state.started_at - job.created_at).total_seconds()
            self.start_latency.labels(job.method).observe(max(latency, 0.0))
        started = trio.current_time()
        try:
            return await call_next()
        finally:
            self.duration.labels(job.method).observe(trio.current_time() - started)

    def on_state_change(self, job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        """Count the run that ``old -> new`` ended, if it ended one."""
        if not isinstance(old, jobs.Processing):
            return
        outcome = _OUTCOMES.get(new.name)
        if outcome is not None:
            self.processed.labels(job.method, outcome).inc()


#: The outcome of a run, by the name of the state it ended in (by name, so
#: that a terminal state added later, such as an aborted one, needs one entry).
_OUTCOMES = {
    jobs.Succeeded.name: "succeeded",
    jobs.Failed.name: "failed",
    jobs.AwaitingRetry.name: "retried",
    jobs.Enqueued.name: "requeued",
    "aborted": "aborted",
}

#: Reads job counts keyed by ``(queue, state name)``.
CountsSource = Callable[[], Awaitable[Mapping[tuple[str, str], int]]]


def storage_counts(storage: jobs.Storage) -> CountsSource:
    """A :data:`CountsSource` reading :meth:`jobs.Client.counts` on ``storage``.

    The figures are the database's, per real queue: ``queue`` is the job's
    queue name.
    """
    return jobs.Client(storage).counts


class JobCountsCollector(Collector):
    """Exports ``trio_monitor_jobs{queue, state}``: how many jobs the database holds.

    The figures come from the database, so they are right across any number
    of worker processes. Scrapes are answered from the last reading, which
    :meth:`run` refreshes every ``interval`` seconds (or call
    :meth:`refresh`); ``trio_monitor_jobs_read_timestamp_seconds`` says when
    that was, so an alert can tell stale counts from an empty queue. Every
    state is exported, as 0 when no job is in it.

    Args:
      counts: What reads the counts (see :func:`storage_counts`).
      registry: Where to register this collector (None: do not register).
    """

    def __init__(
        self, counts: CountsSource, *, registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self._read = counts
        self._counts: dict[tuple[str, str], int] = {}
        self._read_at: float | None = None
        if registry is not None:
            registry.register(self)

    async def refresh(self) -> None:
        """Read the counts now."""
        counts = dict(await self._read())
        queues = {queue for queue, _ in counts} or {ALL_QUEUES}
        for queue in queues:
            for state in STATE_NAMES:
                counts.setdefault((queue, state), 0)
        self._counts = counts
        self._read_at = time.time()

    async def run(
        self,
        interval: float = 5.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh every ``interval`` seconds until cancelled.

        Use ``await nursery.start(counts.run)``: it returns after the first
        reading. A failing reading is logged and retried at the next tick;
        the last good figures stay exported meanwhile.
        """
        if not isinstance(interval, int | float) or not interval > 0 or math.isinf(interval):
            raise ValueError(
                f"interval must be a finite number of seconds > 0, got {shown(interval)}"
            )
        started = False
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("could not read job counts; retrying in %gs", interval)
            if not started:
                task_status.started()
                started = True
            await trio.sleep(interval)

    def collect(self) -> Iterator[Metric]:
        jobs_family = GaugeMetricFamily(
            "trio_monitor_jobs",
            "Jobs in the database, by queue and state (cluster-wide).",
            labels=["queue", "state"],
        )
        for (queue, state), n in sorted(self._counts.items()):
            jobs_family.add_metric([queue, state], n)
        yield jobs_family
        if self._read_at is not None:
            yield GaugeMetricFamily(
                "trio_monitor_jobs_read_timestamp_seconds",
                "When trio_monitor_jobs was last read from the database (Unix time).",
                value=self._read_at,
            )


class HasStatistics(Protocol):
    """Anything with a ``statistics()`` method (e.g. :class:`~trio_monitor.TaskMonitor`)."""

    def statistics(self) -> Any: ...


class StatisticsCollector(Collector):
    """Exports a component's statistics as gauges ``trio_monitor_<component>_<field>``.

    ``source`` is an object with a ``statistics()`` method (a task monitor,
    a supervisor) or a function taking no arguments (``runtime.metrics``,
    ``lambda: {"tasks": len(registry)}``). What it returns may be an attrs
    record or a mapping; its int and float fields become gauges, read at
    each scrape. A source that raises is logged and left out of that scrape
    (the other metrics are still served); one returning anything else is a
    bug, and raises :exc:`TypeError`. Call it from the thread that serves scrapes only if the
    source is safe to read from there (the components' statistics are plain
    attribute reads).

    Args:
      component: The name in the metric names (``"monitor"``, ``"runtime"``).
      source: Where the statistics come from.
    """

    def __init__(self, component: str, source: HasStatistics | Callable[[], object]) -> None:
        if not isinstance(component, str) or not component.isidentifier():
            raise ValueError(f"component must be an identifier-like str, got {shown(component)}")
        statistics = getattr(source, "statistics", None)
        if callable(statistics):
            self._read: Callable[[], object] = statistics
        elif callable(source):
            self._read = source
        else:
            raise TypeError(
                f"source must have a statistics() method or be callable, got {shown(source)}"
            )
        self.component = component

    def collect(self) -> Iterator[Metric]:
        try:
            snapshot = self._read()
        except Exception:
            # One broken source must not fail the whole scrape.
            logger.exception("could not read the %s statistics; skipping them", self.component)
            return
        fields: Mapping[Any, object]
        if isinstance(snapshot, Mapping):
            fields = cast("Mapping[Any, object]", snapshot)
        elif attrs.has(type(snapshot)):
            fields = attrs.asdict(cast("attrs.AttrsInstance", snapshot), recurse=False)
        else:
            raise TypeError(
                f"{self.component} statistics must be an attrs record or a mapping, "
                f"got {type(snapshot).__name__}"
            )
        for name, value in fields.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield GaugeMetricFamily(
                    f"trio_monitor_{self.component}_{name}",
                    f"{self.component} statistics: {name}.",
                    value=value,
                )


@contextlib.asynccontextmanager
async def serve_metrics(
    port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> AsyncGenerator[int, None]:
    """Serve ``registry`` at ``http://host:port/metrics`` for the duration of the block.

    prometheus_client's HTTP server runs in a daemon thread (scrapes never
    wait on Trio, nor Trio on them); it is shut down at block exit. Yields
    the port it listens on (useful with ``port=0``: any free port).
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    try:
        yield httpd.server_port
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(httpd.shutdown)
        httpd.server_close()
        thread.join(timeout=1.0)
