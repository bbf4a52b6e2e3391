"""Crash tests: job servers in real processes, killed with SIGKILL mid-job.

Each server runs ``tests/jobs/crash_worker.py`` in its own process on one
SQLite file; the test kills it and checks that a peer (another process, or a
server in the test's own Trio run) recovers its jobs: dead-server reclaim
through heartbeats, and the startup sweep of stale claims. Every worker run
is recorded (crash_worker's run logs), so the tests also check that no job
ever ran on two workers at the same time, except a run cut short by its
process dying. Real clock, short intervals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.jobs import crash_worker
from tests.jobs.crash_worker import (
    DEAD_SERVER_TIMEOUT,
    HEARTBEAT_INTERVAL,
    WORKERS,
    assert_never_concurrent,
    read_runs,
    retry_policy,
    server_config,
)
from tests.jobs.server_helpers import Recorder
from trio_monitor import jobs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

WORKER_SCRIPT = Path(crash_worker.__file__)
TERMINAL = (jobs.Succeeded, jobs.Failed)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


class Fleet:
    """Server processes on one database; kills and reaps them, remembers deaths."""

    def __init__(self, tmp_path: Path, db: Path) -> None:
        self.db = db
        self.runs_dir = tmp_path / "runs"
        self.runs_dir.mkdir()
        self.log_path = tmp_path / "servers.log"
        self.live: dict[int, trio.Process] = {}
        #: pid -> time.monotonic() once the killed process was reaped.
        self.deaths: dict[int, float] = {}
        crash_worker.use_runs_dir(self.runs_dir)

    async def spawn(self, *options: str) -> trio.Process:
        with self.log_path.open("ab") as log:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(WORKER_SCRIPT), str(self.db), str(self.runs_dir), *options],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.live[proc.pid] = proc
        return proc

    def identity(self, proc: trio.Process) -> str | None:
        ready = self.runs_dir / f"ready-{proc.pid}"
        return ready.read_text() if ready.exists() else None

    async def wait_ready(self, proc: trio.Process, within: float = 15.0) -> str:
        with trio.fail_after(within):
            while (identity := self.identity(proc)) is None:
                assert proc.poll() is None, f"server {proc.pid} exited early:\n{self.log()}"
                await trio.sleep(0.02)
        return identity

    async def kill(self, proc: trio.Process) -> None:
        proc.kill()
        await self.reap(proc)

    async def reap(self, proc: trio.Process) -> None:
        await proc.wait()
        self.deaths[proc.pid] = time.monotonic()
        del self.live[proc.pid]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def kill_all(self) -> None:
        for proc in list(self.live.values()):
            await self.kill(proc)


@asynccontextmanager
async def open_fleet(tmp_path: Path, db: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(tmp_path, db)
    try:
        yield fleet
    finally:
        with trio.CancelScope(shield=True):
            await fleet.kill_all()


async def wait_for_runs(
    fleet: Fleet, job_id: str, count: int = 1, within: float = 15.0
) -> list[crash_worker.Run]:
    with trio.fail_after(within):
        while True:
            runs = [r for r in read_runs(fleet.runs_dir) if r.job_id == job_id]
            if len(runs) >= count:
                return runs
            await trio.sleep(0.02)


async def wait_for_jobs(
    storage: jobs.Storage,
    job_ids: list[str],
    done: Callable[[jobs.Job], bool] = lambda job: isinstance(job.state, TERMINAL),
    within: float = 20.0,
) -> dict[str, jobs.Job]:
    with trio.fail_after(within):
        while True:
            found = {job_id: await storage.get(job_id) for job_id in job_ids}
            if all(job is not None and done(job) for job in found.values()):
                return {job_id: job for job_id, job in found.items() if job is not None}
            await trio.sleep(0.05)


async def enqueue_mixed(storage: jobs.Storage) -> tuple[str, list[str]]:
    """One job that hangs on its first attempt (claimed first) and ten quick ones."""
    hang = await storage.enqueue(jobs.Job.new("hang_first", {}, priority=1))
    quick = [
        await storage.enqueue(jobs.Job.new("record", {"n": n, "sleep": 0.02})) for n in range(10)
    ]
    return hang, quick


@pytest.mark.parametrize("peer", ["process", "in_run"])
async def test_job_of_killed_server_is_reclaimed_by_a_peer(tmp_path: Path, peer: str) -> None:
    db = tmp_path / "jobs.db"
    async with jobs.open_storage(sqlite_url(db)) as storage, open_fleet(tmp_path, db) as fleet:
        hang, quick = await enqueue_mixed(storage)
        servers = [await fleet.spawn("--heartbeat", "--workers", "2", "--name", "a")]
        if peer == "process":
            servers.append(await fleet.spawn("--heartbeat", "--workers", "2", "--name", "b"))
        identities = {proc.pid: await fleet.wait_ready(proc) for proc in servers}

        (first,) = await wait_for_runs(fleet, hang)
        runner = fleet.live[first.pid]
        claimed = await storage.get(hang)
        assert claimed is not None
        assert isinstance(claimed.state, jobs.Processing)
        assert claimed.state.server_name == identities[runner.pid]
        await fleet.kill(runner)
        assert runner.returncode == -signal.SIGKILL

        recorder = Recorder()
        if peer == "in_run":
            config = server_config("peer", workers=2, heartbeat=True)
            server = jobs.JobServer(
                config, storage, WORKERS, retry_policy=retry_policy(3), on_state_change=recorder
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                done = await wait_for_jobs(storage, [hang, *quick])
                await server.stop()
        else:
            done = await wait_for_jobs(storage, [hang, *quick])

        # Nothing lost: every job succeeded, with its own result.
        assert all(isinstance(job.state, jobs.Succeeded) for job in done.values()), done
        results = {job_id: getattr(job.state, "result", None) for job_id, job in done.items()}
        assert results == {hang: "done", **{job_id: n for n, job_id in enumerate(quick)}}
        assert await storage.count_by_state() == {"succeeded": 11}
        # The killed attempt counts: claimed twice.
        assert done[hang].attempts == 2

        hang_runs = [r for r in read_runs(fleet.runs_dir) if r.job_id == hang]
        assert len(hang_runs) == 2, hang_runs
        killed_run, rerun = hang_runs
        assert (killed_run.pid, killed_run.attempt, killed_run.end) == (runner.pid, 1, None)
        assert (rerun.pid != runner.pid, rerun.attempt, rerun.end is None) == (True, 2, False)
        # Reclaimed only once the dead server's heartbeat was old enough.
        waited = rerun.start - fleet.deaths[runner.pid]
        assert waited > DEAD_SERVER_TIMEOUT - HEARTBEAT_INTERVAL - 0.3
        assert_never_concurrent(read_runs(fleet.runs_dir), fleet.deaths)
        # The dead server's heartbeat row went with the reclaim.
        assert identities[runner.pid] not in {s.id for s in await storage.list_servers()}

        if peer == "in_run":
            reclaims = [
                c
                for c in recorder.of(hang)
                if isinstance(c.old, jobs.Processing) and isinstance(c.new, jobs.Enqueued)
            ]
            assert len(reclaims) == 1
            reclaimed_from = reclaims[0].old
            assert isinstance(reclaimed_from, jobs.Processing)
            assert reclaimed_from.server_name == identities[runner.pid]


async def test_job_that_kills_its_server_ends_failed_after_max_attempts(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    max_attempts = 3
    async with jobs.open_storage(sqlite_url(db)) as storage, open_fleet(tmp_path, db) as fleet:
        job_id = await storage.enqueue(jobs.Job.new("suicide", {}))
        dead: list[trio.Process] = []
        with trio.fail_after(45):
            while True:
                proc = await fleet.spawn(
                    "--heartbeat", "--max-attempts", str(max_attempts), "--name", "victim"
                )
                # Until this server dies by the job, or the job has ended.
                while proc.poll() is None:
                    job = await storage.get(job_id)
                    assert job is not None
                    if isinstance(job.state, TERMINAL):
                        break
                    await trio.sleep(0.05)
                else:
                    await fleet.reap(proc)
                    dead.append(proc)
                    assert len(dead) <= max_attempts, "the job kept being run"
                    continue
                break

        job = await storage.get(job_id)
        assert job is not None
        assert isinstance(job.state, jobs.Failed), job.state
        assert f"max_attempts={max_attempts}" in job.state.error
        # Claimed once per death, and once more to give up without running it.
        assert job.attempts == max_attempts + 1
        assert [proc.returncode for proc in dead] == [-signal.SIGKILL] * max_attempts
        assert proc.poll() is None, "the server that gave up on the job must still be running"

        runs = read_runs(fleet.runs_dir)
        assert [(r.pid, r.attempt, r.end) for r in runs] == [
            (p.pid, n, None) for n, p in enumerate(dead, start=1)
        ]
        await fleet.kill_all()
        assert_never_concurrent(runs, fleet.deaths)


async def test_startup_requeues_claims_of_a_server_killed_without_heartbeats(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    stale_after = 0.3
    async with jobs.open_storage(sqlite_url(db)) as storage, open_fleet(tmp_path, db) as fleet:
        hang, quick = await enqueue_mixed(storage)
        solo = await fleet.spawn("--workers", "2", "--name", "solo")
        await fleet.wait_ready(solo)
        (first,) = await wait_for_runs(fleet, hang)
        assert first.pid == solo.pid
        await fleet.kill(solo)
        left = await storage.count_by_state()

        # A server that does not consider the claim stale leaves it alone.
        patient = jobs.JobServer(server_config("solo", heartbeat=False), storage, WORKERS)
        async with trio.open_nursery() as nursery:
            await nursery.start(patient.run)
            await trio.sleep(max(0.5, stale_after))
            job = await storage.get(hang)
            assert job is not None
            assert isinstance(job.state, jobs.Processing)
            assert (job.state.server_name, job.attempts) == ("solo", 1)
            await patient.stop()
        assert len([r for r in read_runs(fleet.runs_dir) if r.job_id == hang]) == 1
        assert left.get("processing", 0) >= 1

        # One with a short stale_processing_after re-enqueues it on start.
        recorder = Recorder()
        server = jobs.JobServer(
            server_config("solo", heartbeat=False, stale_after=stale_after),
            storage,
            WORKERS,
            retry_policy=retry_policy(3),
            on_state_change=recorder,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            recovered = [
                c
                for c in recorder.of(hang)
                if isinstance(c.old, jobs.Processing) and isinstance(c.new, jobs.Enqueued)
            ]
            assert len(recovered) == 1, "the stale claim is re-enqueued before run() returns"
            done = await wait_for_jobs(storage, [hang, *quick])
            await server.stop()

        assert all(isinstance(job.state, jobs.Succeeded) for job in done.values()), done
        assert await storage.count_by_state() == {"succeeded": 11}
        assert done[hang].attempts == 2
        hang_runs = [r for r in read_runs(fleet.runs_dir) if r.job_id == hang]
        assert [(r.pid, r.attempt, r.end is None) for r in hang_runs] == [
            (solo.pid, 1, True),
            (os.getpid(), 2, False),
        ]
        assert_never_concurrent(read_runs(fleet.runs_dir), fleet.deaths)
