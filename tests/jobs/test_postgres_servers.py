"""Several job-server processes on one PostgreSQL database.

Each test starts server processes (``sys.executable`` running the script
below) against a fresh database, enqueues jobs, and checks from the records
the workers write (one file per process, a line when a run starts and one
when it ends, with wall-clock times) that every job ran, succeeded, and never
ran on two processes at the same time, also when a server is SIGKILLed or
PostgreSQL restarts mid-run.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.pg_cluster import PgCluster
from trio_monitor import jobs

pytest.importorskip("psycopg")

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

N_JOBS = 5000

SERVER_SCRIPT = r"""
import json, os, sys, time, logging
import trio
from trio_monitor import jobs

cfg = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
record = open(cfg["record"], "a", buffering=1)
pid = os.getpid()
workers = jobs.WorkerRegistry()

@workers.worker("work")
async def work(job, ctx):
    record.write(f"S {job.id} {pid} {time.time()!r}\n")
    await trio.sleep(cfg["job_seconds"])
    record.write(f"E {job.id} {pid} {time.time()!r}\n")
    return pid

async def main():
    async with jobs.open_storage(cfg["url"]) as storage:
        config = jobs.ServerConfig(
            server_name=cfg["name"],
            worker_count=8,
            fetch_batch_size=8,
            polling_interval=0.5,
            enable_heartbeat=cfg["heartbeat"],
            heartbeat_interval=0.2,
            dead_server_timeout=1.0,
            enable_cleanup=False,
            shutdown_timeout=5.0,
        )
        retry = jobs.RetryPolicy(max_attempts=20, initial_delay=0.05, max_delay=0.5)
        server = jobs.JobServer(config, storage, workers, retry_policy=retry)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            print("STARTED", flush=True)
            while True:
                await trio.sleep(0.2)
                try:
                    counts = await storage.count_by_state()
                except Exception as exc:  # PostgreSQL restarting: try again
                    print(f"poll failed: {exc!r}", file=sys.stderr, flush=True)
                    continue
                if counts.get("succeeded", 0) + counts.get("failed", 0) >= cfg["total"]:
                    break
            await server.stop()

trio.run(main)
"""


@asynccontextmanager
async def servers(
    tmp_path: Path, url: str, count: int, *, heartbeat: bool, job_seconds: float
) -> AsyncIterator[list[trio.Process]]:
    script = tmp_path / "server.py"
    script.write_text(SERVER_SCRIPT)
    procs: list[trio.Process] = []
    try:
        for i in range(count):
            cfg = {
                "url": url,
                "name": f"server-{i}",
                "record": str(tmp_path / f"record-{i}.txt"),
                "heartbeat": heartbeat,
                "job_seconds": job_seconds,
                "total": N_JOBS,
            }
            procs.append(
                await trio.lowlevel.open_process(
                    [sys.executable, str(script), json.dumps(cfg)],
                    stdout=(tmp_path / f"out-{i}.txt").open("w"),
                    stderr=(tmp_path / f"err-{i}.txt").open("w"),
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


async def enqueue_all(storage: jobs.Storage) -> list[str]:
    ids: list[str] = []
    for start in range(0, N_JOBS, 1000):
        batch = [jobs.Job.new("work", {"n": i}) for i in range(start, start + 1000)]
        ids.extend(await storage.enqueue_many(batch))
    return ids


async def wait_until_succeeded(storage: jobs.Storage, at_least: int, seconds: float) -> None:
    with trio.fail_after(seconds):
        while True:
            try:
                counts = await storage.count_by_state()
            except Exception:  # PostgreSQL restarting
                counts = {}
            if counts.get("succeeded", 0) >= at_least:
                return
            await trio.sleep(0.05)


def read_runs(tmp_path: Path) -> dict[str, list[tuple[int, float, float | None]]]:
    """job id -> [(pid, start, end or None)] from every process's record."""
    runs: dict[str, list[tuple[int, float, float | None]]] = defaultdict(list)
    for record in sorted(tmp_path.glob("record-*.txt")):
        open_runs: dict[tuple[str, int], float] = {}
        for line in record.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:  # a torn last line of a killed process
                continue
            kind, job_id, pid, when = parts
            if kind == "S":
                open_runs[(job_id, int(pid))] = float(when)
            else:
                start = open_runs.pop((job_id, int(pid)))
                runs[job_id].append((int(pid), start, float(when)))
        for (job_id, pid), start in open_runs.items():
            runs[job_id].append((pid, start, None))
    return runs


def assert_no_concurrent_runs(
    runs: dict[str, list[tuple[int, float, float | None]]], killed_pid: int | None
) -> None:
    for job_id, job_runs in runs.items():
        ordered = sorted(job_runs, key=lambda run: run[1])
        for (pid_a, start_a, end_a), (pid_b, start_b, _) in itertools.pairwise(ordered):
            overlap = end_a is None or start_b < end_a
            if overlap:
                assert pid_a == killed_pid, (
                    f"job {job_id} ran on {pid_a} and {pid_b} at once ({start_a}, {start_b})"
                )


async def check_all_succeeded(storage: jobs.Storage, ids: list[str]) -> None:
    assert await storage.count_by_state() == {"succeeded": N_JOBS}
    stored = await storage.list_jobs()
    assert sorted(j.id for j in stored) == sorted(ids)
    assert all(isinstance(j.state, jobs.Succeeded) for j in stored)


async def test_three_servers_run_every_job_exactly_once(pg_url: str, tmp_path: Path) -> None:
    async with jobs.open_storage(pg_url) as storage:
        ids = await enqueue_all(storage)
        async with servers(tmp_path, pg_url, 3, heartbeat=False, job_seconds=0.0) as procs:
            await wait_until_succeeded(storage, N_JOBS, seconds=120)
            with trio.fail_after(30):
                for proc in procs:
                    assert await proc.wait() == 0
        await check_all_succeeded(storage, ids)
    runs = read_runs(tmp_path)
    assert sorted(runs) == sorted(ids)
    for job_id, job_runs in runs.items():
        assert len(job_runs) == 1, f"job {job_id} ran {len(job_runs)} times: {job_runs}"
    pids = {run[0] for job_runs in runs.values() for run in job_runs}
    assert len(pids) == 3  # all three servers took part


async def test_killed_server_jobs_are_reclaimed(pg_url: str, tmp_path: Path) -> None:
    async with jobs.open_storage(pg_url) as storage:
        ids = await enqueue_all(storage)
        async with servers(tmp_path, pg_url, 3, heartbeat=True, job_seconds=0.02) as procs:
            await wait_until_succeeded(storage, N_JOBS // 4, seconds=120)
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
            orphans = [
                j.id
                for j in await storage.list_jobs(state=jobs.Processing)
                if isinstance(j.state, jobs.Processing)
                and j.state.server_name.startswith("server-0#")
            ]
            assert orphans  # the victim died holding jobs
            await wait_until_succeeded(storage, N_JOBS, seconds=120)
            with trio.fail_after(30):
                for proc in procs[1:]:
                    assert await proc.wait() == 0
        await check_all_succeeded(storage, ids)
        assert await storage.list_servers() == []  # the dead one's row was reclaimed too
        for job_id in orphans:  # reclaimed and run again: a second attempt
            reclaimed = await storage.get(job_id)
            assert reclaimed is not None
            assert reclaimed.attempts == 2
    runs = read_runs(tmp_path)
    assert sorted(runs) == sorted(ids)
    assert_no_concurrent_runs(runs, killed_pid=victim.pid)
    # Only the killed server's runs were repeated, and every job finished a run.
    for job_id, job_runs in runs.items():
        finished = [run for run in job_runs if run[2] is not None and run[0] != victim.pid]
        repeated = len(job_runs) > 1
        assert not repeated or any(run[0] == victim.pid for run in job_runs), job_id
        assert finished or all(run[0] == victim.pid for run in job_runs)


async def test_servers_survive_a_postgres_restart(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    async with jobs.open_storage(pg_url) as storage:
        ids = await enqueue_all(storage)
        async with servers(tmp_path, pg_url, 3, heartbeat=True, job_seconds=0.002) as procs:
            await wait_until_succeeded(storage, N_JOBS // 4, seconds=120)
            await trio.to_thread.run_sync(pg_cluster.restart)
            await wait_until_succeeded(storage, N_JOBS, seconds=180)
            with trio.fail_after(30):
                for proc in procs:
                    assert await proc.wait() == 0
        await check_all_succeeded(storage, ids)
    runs = read_runs(tmp_path)
    assert sorted(runs) == sorted(ids)
    assert_no_concurrent_runs(runs, killed_pid=None)
    errors = "".join(p.read_text() for p in sorted(tmp_path.glob("err-*.txt")))  # noqa: ASYNC240
    # The servers noticed the restart (logged) and carried on.
    assert (
        "OperationalError" in errors
        or "terminating connection" in errors
        or "poll failed" in errors
    )
