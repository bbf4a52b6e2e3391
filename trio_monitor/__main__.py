"""Command line: ``python -m trio_monitor demo`` (also installed as ``trio-monitor``).

``demo`` runs a persistent job server on a SQLite file in the working
directory: retries, a delayed job, a cron job, a progress bar and a summary.

Each subcommand is a function taking the parsed arguments and returning an
exit status; add one with another ``subparsers.add_parser(...)`` and
``set_defaults(run=...)`` in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from trio_monitor import jobs

__all__ = ["build_parser", "main"]


DEMO_DB = "trio_monitor_demo.db"
CRON = "*/2 * * * * *"  # every 2 seconds (six fields, seconds first)
CRON_WINDOW = 10.0  # seconds the recurring job stays scheduled
BAR_WIDTH = 30

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


class _Progress:
    """Counts finished jobs from ``on_state_change`` and draws a bar on stderr."""

    def __init__(self) -> None:
        self.finished: set[str] = set()
        self.retrying: set[str] = set()
        self.known = 0
        self.start = 0.0

    def __call__(self, job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        if isinstance(new, jobs.Succeeded | jobs.Failed):
            self.finished.add(job.id)
            self.retrying.discard(job.id)
        elif isinstance(new, jobs.AwaitingRetry):
            self.retrying.add(job.id)

    def draw(self) -> None:
        elapsed = trio.current_time() - self.start
        total = max(self.known, len(self.finished), 1)
        filled = BAR_WIDTH * len(self.finished) // total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        sys.stderr.write(
            f"\r[{bar}] {len(self.finished)}/{self.known} jobs finished, "
            f"{len(self.retrying)} awaiting retry, {elapsed:4.1f}s "
        )
        sys.stderr.flush()


async def _draw_progress(progress: _Progress, storage: jobs.Storage) -> None:
    while True:
        progress.known = sum((await storage.count_by_state()).values())
        progress.draw()
        await trio.sleep(0.1)


def _storage_url(db: str) -> str:
    """The demo's storage: a fresh SQLite file."""
    path = Path(db).resolve()
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)  # each run starts from an empty database
    return f"sqlite:///{path}"  # sqlite:////absolute/path.db


def _summary(rows: Sequence[jobs.Job]) -> str:
    header = ("job", "method", "state", "attempts", "result / error")
    table: list[tuple[str, ...]] = [header]
    for job in rows:
        state = job.state
        if isinstance(state, jobs.Succeeded):
            detail = repr(state.result)
        elif isinstance(state, jobs.Failed | jobs.AwaitingRetry):
            detail = state.error
        else:
            detail = ""
        table.append((job.id[:8], job.method, state.name, str(job.attempts), detail))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines: list[str] = []
    for n, row in enumerate(table):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in [*widths, len(header[-1])]))
    return "\n".join(lines)


async def _demo(url: str) -> list[jobs.Job]:
    config = jobs.ServerConfig(
        server_name="demo",
        worker_count=3,
        polling_interval=0.5,
        scheduler_poll_interval=0.5,
        recurring_poll_interval=0.25,
        shutdown_timeout=5.0,
    )
    retry = jobs.RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=2.0, jitter=0.1)
    progress = _Progress()
    progress.start = trio.current_time()
    async with jobs.open_storage(url) as storage:
        server = jobs.JobServer(
            config, storage, workers, retry_policy=retry, on_state_change=progress
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            for image in ("cat.png", "dog.png"):
                await server.enqueue("resize_image", {"image": image})
            await server.enqueue("upload", {"file": "backup.tar"})
            await server.enqueue("build_report", {"month": "2026-11"})
            await server.enqueue("send_reminder", {"to": "ada@example.org"}, delay=4.0)
            await server.schedule_recurring("tick", CRON, "tick", {})
            nursery.start_soon(_draw_progress, progress, storage)
            await trio.sleep(CRON_WINDOW)
            await server.remove_recurring("tick")
            # Wait until every job has reached Succeeded or Failed.
            while True:
                counts = await storage.count_by_state()
                if sum(counts.values()) == counts.get("succeeded", 0) + counts.get("failed", 0):
                    break
                await trio.sleep(0.1)
            await server.stop()
            progress.known = sum(counts.values())
            progress.draw()
            nursery.cancel_scope.cancel()
        sys.stderr.write("\n")
        return await storage.list_jobs()


def _run_demo(args: argparse.Namespace) -> int:
    # Failed attempts are expected here: the summary shows them, so keep the
    # server's warnings (with tracebacks) off the terminal.
    logging.getLogger("trio_monitor").addHandler(logging.NullHandler())
    url = _storage_url(args.db)
    print(f"trio_monitor demo: a job server on {url}")
    print(
        "  jobs: two image resizes, an upload that fails twice then succeeds, a report that\n"
        "  exhausts its retries, a reminder delayed by 4s, and a cron job every 2s "
        f"({CRON!r}) for {CRON_WINDOW:g}s"
    )
    rows = trio.run(_demo, url)
    print(_summary(rows))
    print("done: every job finished; the server stopped and its storage is closed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one subcommand per entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_monitor",
        description="Structured-concurrency supervision for Trio.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    demo = subparsers.add_parser(
        "demo", help="run a persistent job server on a SQLite file for ~12 seconds"
    )
    demo.add_argument(
        "--db",
        default=DEMO_DB,
        help=f"SQLite file to use, recreated on each run (default: ./{DEMO_DB})",
    )
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
