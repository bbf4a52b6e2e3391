"""The job server on a real SQLite file that another connection locks.

The issue's promise: a locked or briefly unavailable database makes the
server log and back off, never crash, and the work gets done once the lock
is gone. Real clock, real file, a real second connection holding the write
lock.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.jobs.server_helpers import Recorder, fast_config, running
from trio_monitor import jobs


class _ClaimFailed(logging.Handler):
    """Sets an event when the server logs a failed claim (from the Trio thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "claim failed" in record.getMessage():
            self.seen.set()


async def test_a_locked_database_is_logged_and_waited_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_monitor")
    claim_failed = _ClaimFailed()
    logging.getLogger("trio_monitor").addHandler(claim_failed)
    path = tmp_path / "jobs.db"
    ran: list[str] = []
    workers = jobs.WorkerRegistry()

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        ran.append(job.id)
        return job.payload

    async with jobs.open_storage(f"sqlite:///{path}?busy_timeout=0.02") as storage:
        job_id = await storage.enqueue(jobs.Job.new("echo", {"n": 1}))

        # Another process's long write transaction: it holds the write lock.
        locker = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        await trio.to_thread.run_sync(locker.execute, "BEGIN IMMEDIATE")
        try:
            recorder = Recorder()
            server = jobs.JobServer(fast_config(), storage, workers, on_state_change=recorder)
            async with running(server):
                with trio.fail_after(10):
                    await claim_failed.seen.wait()
                assert server.is_running
                assert ran == []
                await trio.to_thread.run_sync(locker.execute, "ROLLBACK")

                await recorder.wait_state(job_id, jobs.Succeeded, within=20)
                assert server.is_running
        finally:
            locker.close()
            logging.getLogger("trio_monitor").removeHandler(claim_failed)

        job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result == {"n": 1}
    assert ran == [job_id]
    # Startup recovery and claims both met the lock, logged it and went on.
    assert "the startup registration or sweep failed" in caplog.text
    assert "database is locked" in caplog.text


async def test_a_server_claiming_from_600_queues_runs_their_jobs(tmp_path: Path) -> None:
    """More queues than SQLite's 500-term compound SELECT: the server still claims."""
    queues = [f"q{i}" for i in range(600)]
    workers = jobs.WorkerRegistry()

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return job.payload

    async with jobs.open_storage(f"sqlite:///{tmp_path / 'jobs.db'}") as storage:
        ids = [
            await storage.enqueue(jobs.Job.new("echo", {"queue": queue}, queue))
            for queue in (queues[0], queues[299], queues[599])
        ]
        recorder = Recorder()
        server = jobs.JobServer(
            fast_config(queues=queues), storage, workers, on_state_change=recorder
        )
        async with running(server):
            for job_id in ids:
                await recorder.wait_state(job_id, jobs.Succeeded, within=20)


async def test_a_writer_cancelled_behind_a_slow_read_cancels_nobody_else(
    tmp_path: Path,
) -> None:
    """The regression: a cancelled writer's Cancelled reached its batch-mates.

    A slow ``list_jobs`` holds the storage; two enqueues queue behind it in
    one scheduling round, and the first (which once carried the combined
    batch) is cancelled. The second, never cancelled, must store its job,
    and a server sharing the storage must keep running its jobs.
    """
    workers = jobs.WorkerRegistry()

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return job.payload

    later = jobs.Scheduled(jobs.Job.new("echo", None).created_at + timedelta(days=1))
    async with jobs.open_storage(f"sqlite:///{tmp_path / 'jobs.db'}") as storage:
        await storage.enqueue_many(
            [
                jobs.Job(str(uuid.uuid4()), "echo", {"pad": "x" * 50}, state=later)
                for _ in range(20000)
            ]
        )
        recorder = Recorder()
        server = jobs.JobServer(
            fast_config(worker_count=2), storage, workers, on_state_change=recorder
        )
        async with running(server):
            for round_ in range(3):
                kept = jobs.Job.new("echo", {"round": round_})
                dropped = jobs.Job.new("echo", {"dropped": round_})
                cancelled = trio.CancelScope()

                async def enqueue_cancelled(
                    job: jobs.Job = dropped, scope: trio.CancelScope = cancelled
                ) -> None:
                    with scope:
                        await storage.enqueue(job)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(storage.list_jobs)  # slow: 20,000 rows
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(enqueue_cancelled)
                    nursery.start_soon(storage.enqueue, kept)  # never cancelled
                    await trio.testing.wait_all_tasks_blocked()
                    cancelled.cancel()
                assert await storage.get(kept.id) is not None
                await recorder.wait_state(kept.id, jobs.Succeeded, within=20)
                assert server.is_running


async def test_cancelled_callers_sharing_the_storage_never_stop_the_server(
    tmp_path: Path,
) -> None:
    """The regression: a cancelled caller's Cancelled once reached the server's fetcher.

    Other tasks call the storage the server uses, and are cancelled at once
    or after a few checkpoints, while its writes (claims, outcomes) are
    combined with theirs. The server keeps running and runs every job that
    an uncancelled caller enqueued.
    """
    workers = jobs.WorkerRegistry()

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.lowlevel.checkpoint()
        return job.payload

    async with jobs.open_storage(f"sqlite:///{tmp_path / 'jobs.db'}") as storage:
        recorder = Recorder()
        server = jobs.JobServer(
            fast_config(worker_count=4), storage, workers, on_state_change=recorder
        )
        kept: list[str] = []
        async with running(server):

            async def caller(n: int) -> None:
                with trio.CancelScope() as scope:
                    if n % 2:
                        for _ in range(n % 5):
                            await trio.lowlevel.checkpoint()
                        scope.cancel()
                    job_id = await storage.enqueue(jobs.Job.new("echo", {"n": n}))
                    await storage.list_jobs(limit=50)
                    kept.append(job_id)

            for _ in range(5):
                async with trio.open_nursery() as nursery:
                    for n in range(40):
                        nursery.start_soon(caller, n)
                assert server.is_running
            for job_id in kept:
                await recorder.wait_state(job_id, jobs.Succeeded, within=20)
            assert server.is_running
        assert len(kept) >= 5 * 20
