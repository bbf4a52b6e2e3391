"""The job server on a real SQLite file that another connection locks.

The issue's promise: a locked or briefly unavailable database makes the
server log and back off, never crash, and the work gets done once the lock
is gone. Real clock, real file, a real second connection holding the write
lock.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import trio

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
