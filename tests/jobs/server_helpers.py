"""Helpers for the job-server tests: a recording hook and a running server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from trio_monitor import jobs

#: Short intervals for tests on the real clock (SQLite) that also suit MockClock.
FAST: dict[str, Any] = {
    "polling_interval": 0.05,
    "scheduler_poll_interval": 0.05,
    "recurring_poll_interval": 0.05,
    "cleanup_interval": 0.05,
    "heartbeat_interval": 0.05,
    "shutdown_timeout": 5.0,
}

#: Retries that are quick and exact (no jitter).
QUICK_RETRIES = jobs.RetryPolicy(max_attempts=3, initial_delay=0.01, multiplier=2.0, jitter=0.0)


def fast_config(**overrides: Any) -> jobs.ServerConfig:
    return jobs.ServerConfig(**{"server_name": "test", "worker_count": 2, **FAST, **overrides})


def make_server(
    storage: jobs.Storage,
    workers: jobs.WorkerRegistry,
    recorder: Callable[[jobs.Job, jobs.JobState, jobs.JobState], None] | None = None,
    retry_policy: jobs.RetryPolicy = QUICK_RETRIES,
    middleware: tuple[Any, ...] = (),
    *,
    clock: jobs.WallClock | None = None,
    **config: Any,
) -> jobs.JobServer:
    """A server with :func:`fast_config`, on a :class:`~trio_monitor.jobs.TrioWallClock`

    (so that tests on MockClock run delays, retries and TTLs in virtual time).
    """
    return jobs.JobServer(
        fast_config(**config),
        storage,
        workers,
        retry_policy=retry_policy,
        middleware=middleware,
        on_state_change=recorder,
        clock=clock if clock is not None else jobs.TrioWallClock(),
    )


@attrs.frozen
class Change:
    job: jobs.Job
    old: jobs.JobState
    new: jobs.JobState
    at: float  # trio.current_time() when the hook ran


class Recorder:
    """An ``on_state_change`` hook that records every call and lets tests wait."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._changed = trio.Event()

    def __call__(self, job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        self.changes.append(Change(job, old, new, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()

    def of(self, job_id: str) -> list[Change]:
        return [c for c in self.changes if c.job.id == job_id]

    def kinds(self, job_id: str) -> list[tuple[str, str]]:
        return [(c.old.name, c.new.name) for c in self.of(job_id)]

    async def wait_until(self, predicate: Callable[[], bool], *, within: float = 10.0) -> None:
        with trio.fail_after(within):
            while not predicate():
                await self._changed.wait()

    async def wait_state(
        self, job_id: str, state: type[jobs.JobState], count: int = 1, *, within: float = 10.0
    ) -> Change:
        def reached() -> bool:
            return sum(isinstance(c.new, state) for c in self.of(job_id)) >= count

        await self.wait_until(reached, within=within)
        return [c for c in self.of(job_id) if isinstance(c.new, state)][count - 1]


@asynccontextmanager
async def running(server: jobs.JobServer) -> AsyncIterator[jobs.JobServer]:
    """Run ``server`` for the block; stop it gracefully at the end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
