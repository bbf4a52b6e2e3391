"""Property: several servers on one storage, random outcomes, random stops.

Whatever happens, each job ends in exactly one terminal state, its outcome
is the one its worker function determines, and no job ever runs on two
workers at once.

Memory runs on a MockClock (virtual time, many examples); SQLite on the real
clock with everything scaled down (few examples), when available.
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

OUTCOMES = ("ok", "raise", "flaky", "slow", "stubborn")


@attrs.frozen
class ServerPlan:
    worker_count: int
    fetch_batch_size: int
    shutdown_timeout: float


@attrs.frozen
class Toggle:
    after: float  # seconds since the previous toggle
    server: int


plans = st.builds(
    ServerPlan,
    worker_count=st.integers(1, 3),
    fetch_batch_size=st.integers(1, 4),
    shutdown_timeout=st.sampled_from([0.0, 0.5, 3.0]),
)
scenarios = st.fixed_dictionaries(
    {
        "servers": st.lists(plans, min_size=1, max_size=3),
        "outcomes": st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=12),
        "toggles": st.lists(
            st.builds(Toggle, after=st.floats(0.0, 4.0), server=st.integers(0, 2)), max_size=6
        ),
    }
)


async def run_scenario(storage: jobs.Storage, scenario: dict[str, Any], scale: float) -> None:
    running: set[str] = set()
    overlaps: list[str] = []
    terminal: dict[str, list[jobs.JobState]] = {}
    all_done = trio.Event()
    outcomes: list[str] = scenario["outcomes"]

    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job_fn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        if job.id in running:
            overlaps.append(job.id)
        running.add(job.id)
        try:
            outcome = job.payload
            await trio.sleep(0.1 * scale)
            if outcome == "raise":
                raise RuntimeError("always fails")
            if outcome == "flaky" and ctx.attempt == 1:
                raise RuntimeError("fails once")
            if outcome == "slow":
                with trio.move_on_after(2.0 * scale):
                    await ctx.cancel.wait()  # cooperative: ends early on stop
            if outcome == "stubborn":
                await trio.sleep(2.0 * scale)  # ignores ctx.cancel
            return outcome
        finally:
            running.discard(job.id)

    def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        if isinstance(new, jobs.Succeeded | jobs.Failed):
            terminal.setdefault(job.id, []).append(new)
            if len(terminal) == len(outcomes):
                all_done.set()

    plans_: list[ServerPlan] = scenario["servers"]
    clock = jobs.TrioWallClock()  # one machine: one wall clock, following Trio time
    servers = [
        jobs.JobServer(
            jobs.ServerConfig(
                server_name=f"s{i}",
                worker_count=plan.worker_count,
                fetch_batch_size=plan.fetch_batch_size,
                shutdown_timeout=plan.shutdown_timeout * scale,
                polling_interval=0.5 * scale,
                scheduler_poll_interval=0.5 * scale,
                job_timeout=100.0,
            ),
            storage,
            workers,
            retry_policy=jobs.RetryPolicy(max_attempts=3, initial_delay=0.2 * scale, jitter=0.1),
            on_state_change=hook,
            clock=clock,
        )
        for i, plan in enumerate(plans_)
    ]
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        ids = [await servers[0].enqueue("job", outcome) for outcome in outcomes]
        for toggle in scenario["toggles"]:
            await trio.sleep(toggle.after * scale)
            server = servers[toggle.server % len(servers)]
            if server.is_running:
                await server.stop()
            else:
                await nursery.start(server.run)
        for server in servers:
            if not server.is_running:
                await nursery.start(server.run)
        with trio.fail_after(1000 * max(scale, 0.05)):
            await all_done.wait()
        for server in servers:
            await server.stop()

    assert overlaps == []
    for job_id, outcome in zip(ids, outcomes, strict=True):
        states = terminal[job_id]
        assert len(states) == 1, (outcome, states)
        stored = await storage.get(job_id)
        assert stored is not None
        assert stored.state == states[0]
        if outcome == "raise":
            assert stored.state == jobs.Failed("RuntimeError: always fails")
            assert stored.attempts == 3
        else:
            assert isinstance(stored.state, jobs.Succeeded)
            assert stored.state.result == outcome


@settings(max_examples=60, deadline=None)
@given(scenario=scenarios)
def test_each_job_ends_once_and_never_runs_twice_at_once_memory(scenario: dict[str, Any]) -> None:
    async def main() -> None:
        await run_scenario(MemoryStorage(), scenario, scale=1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios)
def test_each_job_ends_once_and_never_runs_twice_at_once_sqlite(scenario: dict[str, Any]) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with jobs.open_storage(f"sqlite:///{tmp}/jobs.db") as storage:
                await run_scenario(storage, scenario, scale=0.02)

    trio.run(main)
