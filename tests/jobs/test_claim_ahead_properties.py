"""Property: with claims ahead, random aborts and stops never run a job twice.

Short jobs and slow claims make the servers hold claimed jobs that have not
started (the ready queue); aborts and graceful stops then hit ready jobs,
running jobs and queued ones at random. Whatever happens: no job runs
twice (a graceful stop lets running jobs finish and releases the ready ones
uncounted), every job ends Succeeded (after exactly one counted attempt) or
Aborted, and each run's ``ctx.worker_id`` is the worker id stored in its
claim, never shared by two runs of one server at once.

Memory runs on a MockClock with claims that take time; SQLite on the real
clock (its claims take real time), few examples.
"""

from __future__ import annotations

import tempfile
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_monitor import jobs
from trio_monitor.jobs._backends._memory import MemoryStorage


class SlowClaims(MemoryStorage):
    async def claim(self, **kwargs: Any) -> list[jobs.Job]:
        await trio.sleep(0.01)
        return await super().claim(**kwargs)


@attrs.frozen
class Action:
    after: float  # seconds (scaled) since the previous action
    kind: str  # "abort" or "toggle"
    target: int  # a job index (abort) or a server index (toggle)


scenarios = st.fixed_dictionaries(
    {
        "workers": st.lists(st.integers(1, 3), min_size=1, max_size=2),
        "batch": st.integers(1, 6),
        "durations": st.lists(st.sampled_from([0.0, 0.001, 0.001, 0.5]), min_size=1, max_size=40),
        "actions": st.lists(
            st.builds(
                Action,
                after=st.floats(0.0, 0.3),
                kind=st.sampled_from(["abort", "abort", "toggle"]),
                target=st.integers(0, 39),
            ),
            max_size=8,
        ),
    }
)


async def all_ended(storage: jobs.Storage, ids: list[str]) -> bool:
    for job_id in ids:
        job = await storage.get(job_id)
        if job is None or not isinstance(job.state, jobs.Succeeded | jobs.Aborted | jobs.Failed):
            return False
    return True


async def run_scenario(storage: jobs.Storage, scenario: dict[str, Any], scale: float) -> None:
    durations: list[float] = scenario["durations"]
    runs: dict[str, int] = {}
    claimed_by: dict[str, str] = {}  # job id -> worker id of its latest claim
    mismatches: list[tuple[str, str, str]] = []
    busy: dict[str, set[str]] = {}  # server identity -> worker ids running now
    shared: list[str] = []

    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job_fn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs[job.id] = runs.get(job.id, 0) + 1
        if claimed_by.get(job.id) != ctx.worker_id:
            mismatches.append((job.id, claimed_by.get(job.id, ""), ctx.worker_id))
        running = busy.setdefault(ctx.server_name, set())
        if ctx.worker_id in running:
            shared.append(ctx.worker_id)
        running.add(ctx.worker_id)
        try:
            await trio.sleep(job.payload * scale)
        finally:
            running.discard(ctx.worker_id)
        return None

    def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        if isinstance(new, jobs.Processing):
            claimed_by[job.id] = new.worker_id

    clock = jobs.TrioWallClock()
    servers = [
        jobs.JobServer(
            jobs.ServerConfig(
                server_name=f"s{i}",
                worker_count=count,
                fetch_batch_size=scenario["batch"],
                shutdown_timeout=100.0,  # graceful: running jobs always finish
                polling_interval=1.0 * scale,
                scheduler_poll_interval=1.0 * scale,
                heartbeat_interval=1.0 * scale,
                dead_server_timeout=1000.0,
                job_timeout=100.0,
            ),
            storage,
            workers,
            on_state_change=hook,
            clock=clock,
        )
        for i, count in enumerate(scenario["workers"])
    ]
    async with trio.open_nursery() as nursery:
        ids = [await servers[0].enqueue("job", d) for d in durations]
        for server in servers:
            await nursery.start(server.run)
        for action in scenario["actions"]:
            await trio.sleep(action.after * scale)
            if action.kind == "abort":
                await servers[0].client.abort(ids[action.target % len(ids)], "random")
                continue
            server = servers[action.target % len(servers)]
            if server.is_running:
                await server.stop()
            else:
                await nursery.start(server.run)
        for server in servers:
            if not server.is_running:
                await nursery.start(server.run)
        with trio.fail_after(1000 * max(scale, 0.05)):
            # Polled: a client's abort of a queued job calls no server's hook.
            while not await all_ended(storage, ids):  # noqa: ASYNC110
                await trio.sleep(0.1 * scale)
        for server in servers:
            await server.stop()

    assert mismatches == []
    assert shared == []
    for job_id in ids:
        assert runs.get(job_id, 0) <= 1, job_id
        stored = await storage.get(job_id)
        assert stored is not None
        if isinstance(stored.state, jobs.Succeeded):
            assert runs.get(job_id) == 1
            assert stored.attempts == 1  # releases of claimed-ahead jobs are uncounted
        else:
            assert isinstance(stored.state, jobs.Aborted), stored.state


@settings(max_examples=60, deadline=None)
@given(scenario=scenarios)
def test_claims_ahead_never_run_a_job_twice_memory(scenario: dict[str, Any]) -> None:
    async def main() -> None:
        await run_scenario(SlowClaims(), scenario, scale=1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_claims_ahead_never_run_a_job_twice_sqlite(scenario: dict[str, Any]) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with jobs.open_storage(f"sqlite:///{tmp}/jobs.db") as storage:
                await run_scenario(storage, scenario, scale=0.05)

    trio.run(main)
