"""Commands that enqueue, list and show jobs, and list servers and recurring templates.

Each command opens the storage, does one thing through :class:`jobs.Client`,
prints, and exits 0 (done), 1 (not found or failed) or 2 (bad input). The
commands that act on jobs by id live in :mod:`._actions`, those on queues in
:mod:`._queues`, ``migrate`` in :mod:`._migrate`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from typing import Any, cast, get_args

import click

from trio_monitor import jobs

from ._errors import BadUsage, Failed, run_async
from ._group import cli
from ._output import job_json, json_option, print_json, print_table, record_json
from ._storage import open_client, storage_option, storage_url

__all__ = ["STATES", "enqueue", "job", "list_jobs", "recurring", "servers"]

#: Job states by name, for ``--state``.
STATES: dict[str, type[jobs.JobState]] = {cls.name: cls for cls in get_args(jobs.JobState)}


def _detail(state: jobs.JobState) -> str:
    """The one line that says most about a job in ``state``."""
    if isinstance(state, jobs.Succeeded):
        return f"{json.dumps(state.result, default=str)} in {state.duration:.3f}s"
    if isinstance(state, jobs.Failed):
        return state.error
    if isinstance(state, jobs.AwaitingRetry):
        return f"retry at {state.retry_at:%Y-%m-%d %H:%M:%S}: {state.error}"
    if isinstance(state, jobs.Scheduled):
        return f"at {state.enqueue_at:%Y-%m-%d %H:%M:%S}"
    if isinstance(state, jobs.Processing):
        return f"on {state.server_name} since {state.started_at:%H:%M:%S}"
    if isinstance(state, jobs.Aborted):
        return state.reason
    return ""


# -- enqueue ----------------------------------------------------------------


def _payload(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})") from None


def _headers(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> dict[str, str] | None:
    if value is None:
        return None
    parsed: object = _payload(_ctx, _param, value)
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"expected a JSON object of strings, got {value!r}")
    headers = cast("dict[str, object]", parsed)
    if not all(isinstance(v, str) for v in headers.values()):
        raise click.BadParameter(f"expected a JSON object of strings, got {value!r}")
    return cast("dict[str, str]", headers)


def _trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` plus the trace context to continue, for ``enqueue --trace``.

    The context is the one active in this process if an SDK made one, else
    the one the ``TRACEPARENT``/``TRACESTATE`` environment variables carry
    (how a shell script or a CI step passes its trace on to a child process).
    """
    try:
        from opentelemetry import context, propagate

        from trio_monitor.jobs import tracing
    except ImportError as exc:  # the message says which extra to install
        raise BadUsage(str(exc)) from None
    carrier = {
        key.lower(): os.environ[key] for key in ("TRACEPARENT", "TRACESTATE") if key in os.environ
    }
    token = context.attach(propagate.extract(carrier))
    try:
        return tracing.inject_headers(headers)
    finally:
        context.detach(token)


async def _enqueue(url: str, method: str, payload: Any, options: dict[str, Any]) -> str:
    async with open_client(url) as client:
        try:
            return await client.enqueue(method, payload, **options)
        except (TypeError, ValueError) as exc:
            raise BadUsage(str(exc)) from None


@cli.command()
@click.argument("method")
@click.argument("payload", metavar="[JSON]", required=False, callback=_payload)
@click.option("--queue", default="default", show_default=True, help="Queue to put the job in.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=None,
    help="Run it this many seconds from now (the job is Scheduled until then).",
)
@click.option(
    "--unique-key",
    default=None,
    help="Store nothing if a live job (queued, scheduled, awaiting retry, running) has "
    "this key, and print that job's id instead.",
)
@click.option(
    "--lock", default=None, help="At most one job with this lock runs at a time, cluster-wide."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds the job may run (beats the method's and the server's timeout).",
)
@click.option(
    "--headers",
    metavar="JSON",
    default=None,
    callback=_headers,
    help="Headers carried to the worker (job.headers): a JSON object of strings.",
)
@click.option(
    "--trace",
    is_flag=True,
    help="Add the current OpenTelemetry trace context (or TRACEPARENT from the environment) "
    "to the headers, so the job's span continues the trace (needs the otel extra).",
)
@storage_option
def enqueue(
    method: str,
    payload: Any,
    queue: str,
    priority: int,
    delay: float | None,
    unique_key: str | None,
    lock: str | None,
    timeout: float | None,
    headers: dict[str, str] | None,
    trace: bool,
) -> None:
    """Enqueue a job for METHOD with a JSON payload (default null); print its id.

    With --unique-key, the id printed is that of the live job holding the key,
    if there is one (nothing new is stored then).
    """
    if trace:
        headers = _trace_headers(headers)
    options = {
        "queue": queue,
        "priority": priority,
        "delay": delay,
        "unique_key": unique_key,
        "lock": lock,
        "timeout": timeout,
        "headers": headers,
    }
    click.echo(run_async(partial(_enqueue, storage_url(), method, payload, options)))


# -- jobs ---------------------------------------------------------------------


async def _list(url: str, filters: dict[str, Any]) -> list[jobs.Job]:
    async with open_client(url) as client:
        return await client.list_jobs(**filters)


@cli.command("jobs")
@click.option("--state", type=click.Choice(list(STATES)), help="Only jobs in this state.")
@click.option("--queue", help="Only jobs in this queue.")
@click.option("--method", help="Only jobs for this method.")
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="At most this many."
)
@click.option(
    "--before",
    metavar="ID",
    help="Only jobs created before job ID: pass the last id of a page to get the next one.",
)
@json_option
@storage_option
def list_jobs(
    state: str | None,
    queue: str | None,
    method: str | None,
    limit: int,
    before: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first, filtered by the database."""
    filters = {"state": state, "queue": queue, "method": method, "limit": limit, "before": before}
    rows = run_async(partial(_list, storage_url(), filters))
    if as_json:
        print_json([job_json(row) for row in rows])
        return
    print_table(
        f"{len(rows)} job(s)",
        ("id", "method", "queue", "state", "attempts", "created", "detail"),
        (
            (
                row.id,
                row.method,
                row.queue,
                row.state.name,
                row.attempts,
                f"{row.created_at:%Y-%m-%d %H:%M:%S}",
                _detail(row.state),
            )
            for row in rows
        ),
    )


# -- job ID -------------------------------------------------------------------


async def _get(url: str, job_id: str) -> jobs.Job | None:
    async with open_client(url) as client:
        return await client.get(job_id)


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@storage_option
def job(job_id: str, as_json: bool) -> None:
    """Show one job: payload, state, result or error."""
    found = run_async(partial(_get, storage_url(), job_id))
    if found is None:
        raise Failed(f"no job with id {job_id!r}")
    if as_json:
        print_json(job_json(found))
        return
    fields = record_json(found)
    fields["state"] = found.state.name
    fields.update({f"state.{key}": value for key, value in record_json(found.state).items()})
    print_table(
        f"job {found.id}",
        ("field", "value"),
        ((key, json.dumps(value, default=str)) for key, value in fields.items()),
    )


# -- servers, recurring -------------------------------------------------------


async def _servers(url: str) -> list[jobs.ServerInfo]:
    async with open_client(url) as client:
        return await client.servers()


@cli.command()
@json_option
@storage_option
def servers(as_json: bool) -> None:
    """List the running servers (those with heartbeats on)."""
    rows = run_async(partial(_servers, storage_url()))
    if as_json:
        print_json([record_json(row) for row in rows])
        return
    print_table(
        f"{len(rows)} server(s)",
        ("id", "workers", "queues", "started", "last heartbeat"),
        (
            (
                row.id,
                row.worker_count,
                ", ".join(row.queues) or "(all)",
                f"{row.started_at:%Y-%m-%d %H:%M:%S}",
                f"{row.last_heartbeat:%Y-%m-%d %H:%M:%S}",
            )
            for row in rows
        ),
    )


async def _recurring(url: str) -> list[jobs.RecurringJob]:
    async with open_client(url) as client:
        return await client.recurring()


@cli.command()
@json_option
@storage_option
def recurring(as_json: bool) -> None:
    """List the recurring (cron) job templates."""
    rows = run_async(partial(_recurring, storage_url()))
    if as_json:
        print_json([record_json(row) for row in rows])
        return
    print_table(
        f"{len(rows)} recurring job(s)",
        ("id", "cron", "method", "queue", "next run"),
        (
            (row.id, row.cron, row.method, row.queue, f"{row.next_run_at:%Y-%m-%d %H:%M:%S}")
            for row in rows
        ),
    )
