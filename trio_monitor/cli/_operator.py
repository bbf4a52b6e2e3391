"""Commands that act on the jobs in the database: enqueue, list, show, delete.

Each command opens the storage, does one thing through the public job API,
prints, and exits 0 (done), 1 (not found or failed) or 2 (bad input).

The public producer/operator API (``jobs.Client``: ``retry``, ``abort``,
queue pausing, filtered listings) is not there yet. Until it is, these
commands go through :func:`_producer` (a job server that is never started:
its ``enqueue`` and ``delete`` need no running server) and the
:class:`~trio_monitor.jobs.Storage` protocol. Each command's ``async``
helper is the one place that switches to the client, and each command still
to come (``retry``, ``abort``, ``queues``, ``pause``, ``resume``,
``migrate``) is one more ``@cli.command()`` function here.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, get_args

import click

from trio_monitor import jobs

from ._errors import BadUsage, Failed, run_async
from ._group import cli
from ._output import job_json, json_option, print_json, print_table, record_json
from ._storage import open_cli_storage, storage_option, storage_url

__all__ = ["delete", "enqueue", "job", "list_jobs", "recurring", "servers"]

#: Job states by name, for ``--state``.
STATES: dict[str, type[jobs.JobState]] = {cls.name: cls for cls in get_args(jobs.JobState)}


def _producer(storage: jobs.Storage) -> jobs.JobServer:
    """Something to enqueue and delete with, without running a server."""
    config = jobs.ServerConfig(server_name="trio-monitor-cli", worker_count=0)
    return jobs.JobServer(config, storage, jobs.WorkerRegistry())


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
    return ""


# -- enqueue ----------------------------------------------------------------


def _payload(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})") from None


async def _enqueue(
    url: str, method: str, payload: Any, queue: str, priority: int, delay: float | None
) -> str:
    async with open_cli_storage(url) as storage:
        try:
            return await _producer(storage).enqueue(
                method, payload, queue=queue, priority=priority, delay=delay
            )
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
@storage_option
def enqueue(method: str, payload: Any, queue: str, priority: int, delay: float | None) -> None:
    """Enqueue a job for METHOD with a JSON payload (default null); print its id."""
    job_id = run_async(partial(_enqueue, storage_url(), method, payload, queue, priority, delay))
    click.echo(job_id)


# -- jobs ---------------------------------------------------------------------


async def _list(
    url: str, state: str | None, queue: str | None, method: str | None, limit: int
) -> list[jobs.Job]:
    async with open_cli_storage(url) as storage:
        if queue is None and method is None:
            return await storage.list_jobs(state=STATES[state] if state else None, limit=limit)
        # Storage filters by state only: filter the rest here.
        rows = await storage.list_jobs(state=STATES[state] if state else None)
        return [
            job
            for job in rows
            if (queue is None or job.queue == queue) and (method is None or job.method == method)
        ][:limit]


@cli.command("jobs")
@click.option("--state", type=click.Choice(list(STATES)), help="Only jobs in this state.")
@click.option("--queue", help="Only jobs in this queue.")
@click.option("--method", help="Only jobs for this method.")
@click.option(
    "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="At most this many."
)
@json_option
@storage_option
def list_jobs(
    state: str | None, queue: str | None, method: str | None, limit: int, as_json: bool
) -> None:
    """List jobs, oldest first."""
    rows = run_async(partial(_list, storage_url(), state, queue, method, limit))
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
    async with open_cli_storage(url) as storage:
        return await storage.get(job_id)


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


# -- delete ID... -------------------------------------------------------------


async def _delete(url: str, job_ids: tuple[str, ...]) -> list[str]:
    missing: list[str] = []
    async with open_cli_storage(url) as storage:
        producer = _producer(storage)
        for job_id in job_ids:
            if await producer.delete(job_id):
                click.echo(f"deleted {job_id}")
            else:
                missing.append(job_id)
    return missing


@cli.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@storage_option
def delete(job_ids: tuple[str, ...]) -> None:
    """Mark jobs Deleted (they are removed for good after the failed-job TTL)."""
    missing = run_async(partial(_delete, storage_url(), job_ids))
    if missing:
        raise Failed(f"no job with id {', '.join(map(repr, missing))}")


# -- servers, recurring -------------------------------------------------------


async def _servers(url: str) -> list[jobs.ServerInfo]:
    async with open_cli_storage(url) as storage:
        return await storage.list_servers()


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
    async with open_cli_storage(url) as storage:
        return await storage.list_recurring()


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
