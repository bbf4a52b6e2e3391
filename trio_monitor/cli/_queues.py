"""Commands on queues: ``queues`` lists them, ``pause`` and ``resume`` stop and restart them.

Pausing is stored in the database, so it holds on every server sharing it
and across restarts: no job of a paused queue starts; running ones finish.
"""

from __future__ import annotations

from functools import partial

import click

from trio_monitor import jobs

from ._errors import run_async
from ._group import cli
from ._output import json_option, print_json, print_table, record_json
from ._storage import open_client, storage_option, storage_url

__all__ = ["pause", "queues", "resume"]

#: The states shown as columns of the ``queues`` table, in a job's usual order.
COLUMNS = ("scheduled", "enqueued", "processing", "awaiting_retry", "failed", "aborted")


async def _queues(url: str) -> list[jobs.QueueInfo]:
    async with open_client(url) as client:
        return await client.queues()


def _limits(info: jobs.QueueInfo) -> str:
    limits: list[str] = []
    if info.max_running is not None:
        limits.append(f"{info.max_running} at once")
    if info.rate is not None:
        count, seconds = info.rate
        limits.append(f"{count} per {seconds:g}s")
    return ", ".join(limits)


@cli.command()
@json_option
@storage_option
def queues(as_json: bool) -> None:
    """List the queues that have jobs or settings: paused or not, limits, jobs per state."""
    rows = run_async(partial(_queues, storage_url()))
    if as_json:
        print_json([record_json(row) for row in rows])
        return
    print_table(
        f"{len(rows)} queue(s)",
        ("queue", "paused", "limits", *COLUMNS),
        (
            (
                row.name,
                "paused" if row.paused else "",
                _limits(row),
                *(row.counts.get(state, 0) for state in COLUMNS),
            )
            for row in rows
        ),
    )


async def _pause(url: str, name: str, paused: bool) -> None:
    async with open_client(url) as client:
        if paused:
            await client.pause_queue(name)
        else:
            await client.resume_queue(name)


@cli.command()
@click.argument("queue")
@storage_option
def pause(queue: str) -> None:
    """Start no job of QUEUE on any server until resumed (running jobs finish)."""
    run_async(partial(_pause, storage_url(), queue, True))
    click.echo(f"paused {queue}")


@cli.command()
@click.argument("queue")
@storage_option
def resume(queue: str) -> None:
    """Let servers start the jobs of QUEUE again."""
    run_async(partial(_pause, storage_url(), queue, False))
    click.echo(f"resumed {queue}")
