"""``trio-monitor demo``: a persistent job server on a SQLite file for ~12 seconds.

Retries, a delayed job, a cron job, a progress bar and a summary table. The
progress bar is rich's: it redraws in place on a terminal and prints only
its final state when stderr is a file or a pipe.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import click
import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from trio_monitor import jobs

from ._group import cli
from ._output import print_table

__all__ = ["demo", "workers"]

DEMO_DB = "trio_monitor_demo.db"
CRON = "*/2 * * * * *"  # every 2 seconds (six fields, seconds first)
CRON_WINDOW = 10.0  # seconds the recurring job stays scheduled

workers = jobs.WorkerRegistry()


@workers.worker("resize_image")
async def _resize_image(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.8)
    return {"image": job.payload["image"], "size": "640x480"}


@workers.worker("upload")
async def _upload(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.3)
    if ctx.attempt < 3:  # fails twice, then succeeds
        raise ConnectionError(f"upload refused (attempt {ctx.attempt})")
    return f"uploaded on attempt {ctx.attempt}"


@workers.worker("build_report")
async def _build_report(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.2)
    raise ValueError("report template is missing")  # exhausts its retries


@workers.worker("send_reminder")
async def _send_reminder(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.1)
    return f"reminded {job.payload['to']}"


@workers.worker("tick")
async def _tick(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return "tick"


class _Outcomes:
    """An ``on_state_change`` hook that tracks finished and retrying jobs."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.retrying: set[str] = set()

    def __call__(self, job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        if isinstance(new, jobs.Succeeded | jobs.Failed):
            self.finished.add(job.id)
            self.retrying.discard(job.id)
        elif isinstance(new, jobs.AwaitingRetry):
            self.retrying.add(job.id)


def _progress_bar() -> Progress:
    # auto_refresh=False: no drawing thread; the Trio task below refreshes it.
    return Progress(
        TextColumn("jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("finished, {task.fields[retrying]} awaiting retry"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        auto_refresh=False,
    )


async def _draw(
    progress: Progress, task: TaskID, outcomes: _Outcomes, storage: jobs.Storage
) -> None:
    while True:
        total = sum((await storage.count_by_state()).values())
        _update(progress, task, outcomes, total)
        await trio.sleep(0.1)


def _update(progress: Progress, task: TaskID, outcomes: _Outcomes, total: int) -> None:
    progress.update(
        task,
        total=max(total, len(outcomes.finished)),
        completed=len(outcomes.finished),
        retrying=len(outcomes.retrying),
    )
    progress.refresh()


def _storage_url(db: str) -> str:
    """The demo's storage: a fresh SQLite file, or memory if SQLite is missing."""
    if importlib.util.find_spec("sqlite3") is None:
        click.echo("note: this Python has no sqlite3 module; using memory:// instead")
        return "memory://"
    path = Path(db).resolve()
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)  # each run starts from an empty database
    return f"sqlite:///{path}"  # sqlite:////absolute/path.db


async def _run(url: str, cron_window: float) -> list[jobs.Job]:
    config = jobs.ServerConfig(
        server_name="demo",
        worker_count=3,
        polling_interval=0.5,
        scheduler_poll_interval=0.5,
        recurring_poll_interval=0.25,
        shutdown_timeout=5.0,
    )
    retry = jobs.RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, jitter=0.1)
    outcomes = _Outcomes()
    async with jobs.open_storage(url) as storage:
        server = jobs.JobServer(
            config, storage, workers, retry_policy=retry, on_state_change=outcomes
        )
        with _progress_bar() as progress:
            task = progress.add_task("jobs", total=None, retrying=0)
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                for image in ("cat.png", "dog.png"):
                    await server.enqueue("resize_image", {"image": image})
                await server.enqueue("upload", {"file": "backup.tar"})
                await server.enqueue("build_report", {"month": "2026-11"})
                await server.enqueue("send_reminder", {"to": "ada@example.org"}, delay=4.0)
                await server.schedule_recurring("tick", CRON, "tick", {})
                nursery.start_soon(_draw, progress, task, outcomes, storage)
                await trio.sleep(cron_window)
                await server.remove_recurring("tick")
                # Wait until every job has reached Succeeded or Failed.
                while True:
                    counts = await storage.count_by_state()
                    finished = counts.get("succeeded", 0) + counts.get("failed", 0)
                    if sum(counts.values()) == finished:
                        break
                    await trio.sleep(0.1)
                await server.stop()
                _update(progress, task, outcomes, sum(counts.values()))
                nursery.cancel_scope.cancel()
        return await storage.list_jobs()


def _summary(rows: Sequence[jobs.Job]) -> None:
    def detail(state: jobs.JobState) -> str:
        if isinstance(state, jobs.Succeeded):
            return json.dumps(state.result)
        if isinstance(state, jobs.Failed | jobs.AwaitingRetry):
            return state.error
        return ""

    print_table(
        "jobs",
        ("job", "method", "state", "attempts", "result / error"),
        ((job.id[:8], job.method, job.state.name, job.attempts, detail(job.state)) for job in rows),
    )


@cli.command()
@click.option(
    "--db",
    default=DEMO_DB,
    show_default=True,
    help="SQLite file to use, recreated on each run.",
)
@click.option(
    "--cron-window",
    type=click.FloatRange(min=0),
    default=CRON_WINDOW,
    show_default=True,
    help="Seconds the cron job stays scheduled (the demo lasts about 2 s longer).",
)
def demo(db: str, cron_window: float) -> None:
    """Run a persistent job server on a SQLite file for ~12 seconds."""
    # Failed attempts are expected here: the summary shows them, so keep the
    # server's warnings (with tracebacks) off the terminal.
    logging.getLogger("trio_monitor").addHandler(logging.NullHandler())
    url = _storage_url(db)
    click.echo(f"trio_monitor demo: a job server on {url}")
    click.echo(
        "  jobs: two image resizes, an upload that fails twice then succeeds, a report that\n"
        "  exhausts its retries, a reminder delayed by 4s, and a cron job every 2s "
        f"({CRON!r}) for {cron_window:g}s"
    )
    rows = trio.run(partial(_run, url, cron_window))
    _summary(rows)
    click.echo("done: every job finished; the server stopped and its storage is closed")
