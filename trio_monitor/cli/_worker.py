"""``trio-monitor worker APP``: run a job server until SIGINT or SIGTERM.

The first signal stops the server gracefully: it stops claiming, sets
``ctx.cancel``, lets running jobs finish within ``--shutdown-timeout``, then
cancels the rest and puts them back to ``Enqueued`` (that attempt uncounted),
so another worker runs them. A second signal stops at once: running jobs are
cancelled and requeued straight away. Either way the process exits 0 and
nothing is left stranded in ``Processing``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import click
import trio

from trio_monitor import jobs

from ._errors import BadUsage, Failed, run_async
from ._group import cli
from ._logs import LOG_FORMATS, configure_logging
from ._storage import open_cli_storage, redact, storage_option, storage_url

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["load_app", "worker"]

logger = logging.getLogger("trio_monitor.worker")

ALL_QUEUES = "*"
#: Below Kubernetes' default 30 s grace period, so that requeueing the jobs
#: still running happens before the SIGKILL.
DEFAULT_SHUTDOWN_TIMEOUT = 25.0


def load_app(spec: str) -> jobs.WorkerRegistry:
    """Import ``module:attribute`` and return it, checking it is a WorkerRegistry.

    The working directory is importable, as with ``python -m``.

    Raises:
      BadUsage: a malformed spec, a module that does not exist, a missing
        attribute or one that is not a :class:`~trio_monitor.jobs.WorkerRegistry`.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BadUsage(f"APP must be module:attribute (e.g. myapp.tasks:workers), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(f"{missing}."):
            raise  # the module exists, but an import inside it failed: show where
        raise BadUsage(f"cannot import {module_name!r} for APP {spec!r}: {exc}") from None
    found: object = module
    for name in attribute.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            raise BadUsage(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(found, jobs.WorkerRegistry):
        raise BadUsage(
            f"APP {spec!r} is a {type(found).__name__}, not a trio_monitor.jobs.WorkerRegistry"
        )
    return found


def _queues(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    if value.strip() == ALL_QUEUES:
        return []
    queues = [queue.strip() for queue in value.split(",")]
    if not all(queues):
        raise click.BadParameter(f"expected queue names separated by commas, got {value!r}")
    return queues


def log_job(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
    """An ``on_state_change`` hook logging each run's outcome."""
    if not isinstance(old, jobs.Processing):
        return
    if isinstance(new, jobs.Succeeded):
        logger.info("job %s (%s) succeeded in %.3fs", job.id, job.method, new.duration)
    elif isinstance(new, jobs.AwaitingRetry):
        logger.info(
            "job %s (%s) failed; retry at %s: %s", job.id, job.method, new.retry_at, new.error
        )
    elif isinstance(new, jobs.Failed):
        logger.warning("job %s (%s) failed for good: %s", job.id, job.method, new.error)
    elif isinstance(new, jobs.Enqueued):
        logger.info("job %s (%s) was stopped and put back in its queue", job.id, job.method)


StateChangeHook = Callable[[jobs.Job, jobs.JobState, jobs.JobState], None]


def _call_each(hooks: Sequence[StateChangeHook]) -> StateChangeHook:
    def call(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        for hook in hooks:
            hook(job, old, new)

    return call


async def _run_then_cancel(
    server: jobs.JobServer,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # Once the server has stopped, nothing else in the worker has work left.
    await server.run(task_status=task_status)
    scope.cancel()


async def _stop_on_signals(
    signals: AsyncIterator[int], server: jobs.JobServer, nursery: trio.Nursery
) -> None:
    """First signal: stop gracefully. Second: cancel everything (jobs are requeued)."""
    timeout = server.config.shutdown_timeout
    stopping = False
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stopping:
            stopping = True
            logger.info(
                "%s: stopping gracefully (running jobs get %gs to finish, then are "
                "requeued); send it again to stop at once",
                name,
                timeout,
            )
            nursery.start_soon(server.stop)
        else:
            logger.warning("%s again: stopping at once; running jobs are requeued", name)
            nursery.cancel_scope.cancel()
            return


async def _serve_metrics(
    storage: jobs.Storage,
    registry: CollectorRegistry,
    port: int,
    refresh: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    from trio_monitor import metrics

    counts = metrics.JobCountsCollector(jobs.Client(storage).counts, registry=registry)
    async with contextlib.AsyncExitStack() as stack:
        try:
            bound = await stack.enter_async_context(metrics.serve_metrics(port, registry=registry))
        except OSError as exc:
            raise Failed(f"cannot serve metrics on port {port}: {exc}") from None
        logger.info("serving metrics on http://0.0.0.0:%d/metrics", bound)
        await counts.run(refresh, task_status=task_status)


async def _serve(
    url: str,
    workers: jobs.WorkerRegistry,
    config: jobs.ServerConfig,
    metrics_port: int | None,
    metrics_refresh: float,
    trace: bool,
) -> None:
    async with open_cli_storage(url) as storage:
        hooks: list[StateChangeHook] = [log_job]
        middleware: list[Callable[..., Awaitable[object]]] = []
        if trace:
            from trio_monitor.jobs import tracing

            middleware.append(tracing.TracingMiddleware())  # first: its span covers the rest
        registry: CollectorRegistry | None = None
        if metrics_port is not None:
            from trio_monitor import metrics

            registry = metrics.CollectorRegistry()
            metrics.ProcessCollector(registry=registry)
            metrics.GCCollector(registry=registry)
            job_metrics = metrics.JobMetrics(registry)
            middleware.append(job_metrics.middleware)
            hooks.append(job_metrics.on_state_change)
        server = jobs.JobServer(
            config, storage, workers, middleware=middleware, on_state_change=_call_each(hooks)
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                if registry is not None:
                    await nursery.start(
                        _serve_metrics, storage, registry, metrics_port or 0, metrics_refresh
                    )
                await nursery.start(_run_then_cancel, server, nursery.cancel_scope)
                identity = server.server_id
                logger.info(
                    "worker %s started: %d job(s) at once from %s, storage %s, methods %s",
                    identity,
                    config.worker_count,
                    ", ".join(config.queues) or "every queue",
                    redact(url),
                    ", ".join(sorted(workers)) or "(none)",
                )
                await _stop_on_signals(signals, server, nursery)
    logger.info("worker %s stopped", identity)


@cli.command()
@click.argument("app")
@click.option(
    "--queues",
    default="default",
    show_default=True,
    callback=_queues,
    help=f"Queues to claim from, separated by commas; {ALL_QUEUES!r} for every queue.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Jobs run at once (0: only schedule, recover and sweep).",
)
@click.option(
    "--name",
    default=socket.gethostname,
    show_default="the host name",
    help="Server name; its identity is NAME#uuid, unique per start.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_SHUTDOWN_TIMEOUT,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM before they are requeued; "
    "keep it below the grace period of your process manager.",
)
@click.option(
    "--polling-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between polls for new jobs when idle.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs the metrics extra).",
)
@click.option(
    "--metrics-refresh",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between readings of the job counts from the database.",
)
@click.option(
    "--trace",
    is_flag=True,
    help="Run each job in an OpenTelemetry span (needs the otel extra, and an SDK "
    "configured by APP's module or by opentelemetry-instrument).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines on stderr: readable text, or one JSON object per line.",
)
@storage_option
def worker(
    app: str,
    queues: list[str],
    concurrency: int,
    name: str,
    shutdown_timeout: float,
    polling_interval: float,
    metrics_port: int | None,
    metrics_refresh: float,
    trace: bool,
    log_format: str,
) -> None:
    """Run a job server for APP until SIGINT or SIGTERM.

    APP is module:attribute naming a trio_monitor.jobs.WorkerRegistry
    (e.g. myapp.tasks:workers). Heartbeats are on, so the jobs of a worker
    that dies are run again by the others.

    The first SIGINT or SIGTERM stops gracefully: no new claims, running jobs
    get --shutdown-timeout seconds, then are requeued. A second one stops at
    once, requeueing running jobs.
    """
    url = storage_url()
    workers = load_app(app)
    # Check the extras the options need before anything starts.
    needed = {"trio_monitor.metrics": metrics_port is not None, "trio_monitor.jobs.tracing": trace}
    for module in (name for name, wanted in needed.items() if wanted):
        try:
            importlib.import_module(module)
        except ImportError as exc:  # the message says which extra to install
            raise BadUsage(str(exc)) from None
    configure_logging(log_format)
    config = jobs.ServerConfig(
        server_name=name,
        worker_count=concurrency,
        queues=queues,
        polling_interval=polling_interval,
        shutdown_timeout=shutdown_timeout,
        enable_heartbeat=True,
    )
    run_async(partial(_serve, url, workers, config, metrics_port, metrics_refresh, trace))
