"""A job server in its own process, for crash tests that SIGKILL it.

Run as a script::

    python tests/jobs/crash_worker.py DB RUNS_DIR [--name N] [--workers K]
        [--heartbeat] [--stale-after S] [--max-attempts M]

It opens the SQLite database ``DB``, starts a :class:`~trio_monitor.jobs.JobServer`
with short intervals, writes ``RUNS_DIR/ready-<pid>`` once the server is
claiming, and runs until it is killed.

Every worker run is recorded in ``RUNS_DIR/runs-<pid>.log``, an append-only
file written with one ``os.write`` per line (so a line is whole, and
survives a SIGKILL of its writer): ``S <run> <job id> <attempt> <t>`` when a
run starts and ``E <run> <t>`` when it returns, ``t`` being
:func:`time.monotonic` (one clock for every process on the machine). Tests
read them back with :func:`read_runs` and check them with
:func:`assert_never_concurrent`.

The worker methods (:data:`WORKERS`):

* ``record``: sleeps ``payload["sleep"]`` seconds (default 0), returns ``payload.get("n")``.
* ``hang_first``: blocks forever on its first attempt (to be killed
  mid-job), returns ``"done"`` on later ones.
* ``suicide``: SIGKILLs its own process, every time.

The test process imports this module too, to run a peer server with the same
workers and records.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import sys
import time
from pathlib import Path

import attrs
import trio

from trio_monitor import jobs

WORKERS = jobs.WorkerRegistry()

#: Intervals for servers in crash tests: quick heartbeats, quick death.
HEARTBEAT_INTERVAL = 0.2
DEAD_SERVER_TIMEOUT = 1.0


def server_config(
    name: str,
    *,
    workers: int = 1,
    heartbeat: bool = True,
    stale_after: float = 300.0,
    dead_server_timeout: float = DEAD_SERVER_TIMEOUT,
) -> jobs.ServerConfig:
    """The configuration every crash-test server uses (in or out of process)."""
    return jobs.ServerConfig(
        server_name=name,
        worker_count=workers,
        polling_interval=0.05,
        scheduler_poll_interval=0.1,
        enable_recurring=False,
        enable_cleanup=False,
        shutdown_timeout=2.0,
        stale_processing_after=stale_after,
        enable_heartbeat=heartbeat,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        dead_server_timeout=dead_server_timeout,
    )


def retry_policy(max_attempts: int) -> jobs.RetryPolicy:
    return jobs.RetryPolicy(max_attempts=max_attempts, initial_delay=0.01, jitter=0.0)


# -- run records ----------------------------------------------------------


class RunLog:
    """This process's append-only run record file."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self.pid = os.getpid()
        self._fd: int | None = None
        self._numbers = itertools.count()

    def _write(self, line: str) -> None:
        if self._fd is None:
            path = self.runs_dir / f"runs-{self.pid}.log"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, line.encode())

    def start(self, job_id: str, attempt: int) -> int:
        run = next(self._numbers)
        self._write(f"S {run} {job_id} {attempt} {time.monotonic()!r}\n")
        return run

    def end(self, run: int) -> None:
        self._write(f"E {run} {time.monotonic()!r}\n")


#: Set by :func:`use_runs_dir` (once per process).
_log: RunLog | None = None


def use_runs_dir(runs_dir: Path) -> None:
    """Record this process's worker runs in ``runs_dir``."""
    global _log
    _log = RunLog(runs_dir)


def _run_log() -> RunLog:
    if _log is None:
        raise RuntimeError("call use_runs_dir() before running crash-test workers")
    return _log


@attrs.frozen
class Run:
    """One worker run, as recorded."""

    pid: int
    run: int
    job_id: str
    attempt: int
    start: float
    end: float | None  # None: the process died during the run


def read_runs(runs_dir: Path) -> list[Run]:
    """Every recorded run of every process, ordered by start time."""
    runs: list[Run] = []
    for path in runs_dir.glob("runs-*.log"):
        pid = int(path.stem.removeprefix("runs-"))
        started: dict[int, tuple[str, int, float]] = {}
        ended: dict[int, float] = {}
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields[0] == "S":
                started[int(fields[1])] = (fields[2], int(fields[3]), float(fields[4]))
            else:
                ended[int(fields[1])] = float(fields[2])
        for run, (job_id, attempt, start) in started.items():
            runs.append(Run(pid, run, job_id, attempt, start, ended.get(run)))
    runs.sort(key=lambda r: r.start)
    return runs


def assert_never_concurrent(runs: list[Run], deaths: dict[int, float]) -> None:
    """No job ran on two workers at the same time.

    A run without an end record must belong to a killed process
    (``deaths``: pid -> :func:`time.monotonic` after the kill was reaped); it
    is taken to have lasted until that death. Every other run of the same
    job must start after the previous run ended or its process died.
    """
    by_job: dict[str, list[Run]] = {}
    for run in runs:
        if run.end is None:
            assert run.pid in deaths, f"run {run} has no end, but process {run.pid} was not killed"
        by_job.setdefault(run.job_id, []).append(run)
    for job_runs in by_job.values():
        job_runs.sort(key=lambda r: r.start)
        for before, after in itertools.pairwise(job_runs):
            before_end = before.end if before.end is not None else deaths[before.pid]
            assert after.start >= before_end, (
                f"job {after.job_id} ran twice at once: {before} and {after}"
            )


# -- workers ----------------------------------------------------------------


@WORKERS.worker("record")
async def record(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    log = _run_log()
    run = log.start(job.id, ctx.attempt)
    await trio.sleep(float(job.payload.get("sleep", 0.0)))
    log.end(run)
    return job.payload.get("n")


@WORKERS.worker("hang_first")
async def hang_first(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    log = _run_log()
    run = log.start(job.id, ctx.attempt)
    if ctx.attempt == 1:
        await trio.sleep_forever()
    log.end(run)
    return "done"


@WORKERS.worker("suicide")
async def suicide(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    _run_log().start(job.id, ctx.attempt)
    os.kill(os.getpid(), signal.SIGKILL)
    await trio.sleep_forever()  # not reached: SIGKILL is not delivered late


# -- the server process -------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    runs_dir = Path(args.runs_dir)
    use_runs_dir(runs_dir)
    config = server_config(
        args.name,
        workers=args.workers,
        heartbeat=args.heartbeat,
        stale_after=args.stale_after,
        dead_server_timeout=args.dead_server_timeout,
    )
    async with jobs.open_storage(f"sqlite:///{args.db}") as storage:
        server = jobs.JobServer(
            config, storage, WORKERS, retry_policy=retry_policy(args.max_attempts)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            (runs_dir / f"ready-{os.getpid()}").write_text(server.server_id or args.name)
            await trio.sleep_forever()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("runs_dir")
    parser.add_argument("--name", default="crash")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--heartbeat", action="store_true")
    parser.add_argument("--stale-after", type=float, default=300.0)
    parser.add_argument("--dead-server-timeout", type=float, default=DEAD_SERVER_TIMEOUT)
    parser.add_argument("--max-attempts", type=int, default=3)
    args = parser.parse_args(argv)
    args.db = str(Path(args.db).resolve())
    logging.basicConfig(
        level=logging.WARNING, format=f"[{os.getpid()}] %(levelname)s %(name)s: %(message)s"
    )
    trio.run(serve, args)


if __name__ == "__main__":
    main(sys.argv[1:])
