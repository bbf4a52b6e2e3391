"""open_test_server and drain(): the real server in virtual time, on every backend."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from trio_monitor import jobs, testing

FLAKY_POLICY = jobs.RetryPolicy(max_attempts=5, initial_delay=300.0, multiplier=1.0, jitter=0.0)


def flaky_workers(failures: int, runs: list[tuple[int, float]]) -> jobs.WorkerRegistry:
    """``send_email`` fails its first ``failures`` attempts; runs are logged."""
    workers = jobs.WorkerRegistry()

    @workers.worker("send_email")
    async def send_email(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs.append((ctx.attempt, trio.current_time()))
        if ctx.attempt <= failures:
            raise ConnectionError("relay down")
        return "sent"

    return workers


async def test_spec_example_delayed_an_hour_and_retried_with_300s_backoffs(
    url: str, autojump_clock: MockClock
) -> None:
    runs: list[tuple[int, float]] = []
    wall = time.perf_counter()
    start = trio.current_time()
    async with testing.open_test_server(
        flaky_workers(2, runs), url, retry_policy=FLAKY_POLICY
    ) as t:
        job_id = await t.client.enqueue("send_email", {"to": "a@example.org"}, delay=3600)
        await t.drain()
        job = await t.storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result == "sent"
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    virtual = [at - start for _, at in runs]
    assert virtual[0] >= 3600
    assert virtual[1] - virtual[0] >= 300
    assert virtual[2] - virtual[1] >= 300
    assert trio.current_time() - start > 3600
    assert time.perf_counter() - wall < 5.0  # loosely: milliseconds in practice


async def test_drain_until_runs_recurring_jobs_up_to_that_time(
    url: str, autojump_clock: MockClock
) -> None:
    runs: list[datetime] = []
    workers = jobs.WorkerRegistry()

    @workers.worker("tick")
    async def tick(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs.append(job.created_at)
        return None

    async with testing.open_test_server(workers, url) as t:
        await t.server.schedule_recurring("ticker", "0 */10 * * * *", "tick", {})
        until = t.server.now() + timedelta(hours=1)
        await t.drain(until=until)
        assert t.server.now() >= until
        testing.assert_enqueued(t, "tick", count=6)
    assert len(runs) == 6
    assert all(at.minute % 10 == 0 for at in runs)


async def test_drain_stops_before_the_next_recurring_occurrence(
    autojump_clock: MockClock,
) -> None:
    ran: list[str] = []
    workers = jobs.WorkerRegistry()

    @workers.worker("note")
    async def note(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        ran.append(job.payload)
        return None

    async with testing.open_test_server(workers) as t:
        await t.server.schedule_recurring("daily", "0 0 0 * * *", "note", "recurring")
        [template] = await t.storage.list_recurring()
        before = (template.next_run_at - t.server.now()).total_seconds()
        await t.client.enqueue("note", "soon", delay=1.0)
        await t.client.enqueue("note", "after the occurrence", delay=before + 60)
        await t.drain()
        assert ran == ["soon"]
        await t.drain(until=template.next_run_at + timedelta(minutes=2))
        assert ran == ["soon", "recurring", "after the occurrence"]


async def test_drain_with_nothing_to_do_takes_no_time(url: str, autojump_clock: MockClock) -> None:
    async with testing.open_test_server(jobs.WorkerRegistry(), url) as t:
        start = trio.current_time()
        await t.drain()
        assert trio.current_time() == start


async def test_drain_waits_for_jobs_that_take_virtual_time(autojump_clock: MockClock) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("slow")
    async def slow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep(job.payload)
        return job.payload

    config = jobs.ServerConfig(job_timeout=100.0)
    async with testing.open_test_server(workers, config=config) as t:
        quick = await t.client.enqueue("slow", 50.0)
        stuck = await t.client.enqueue("slow", 10_000.0)  # times out, each attempt
        await t.drain()
        quick_job, stuck_job = await t.storage.get(quick), await t.storage.get(stuck)
    assert quick_job is not None
    assert stuck_job is not None
    assert isinstance(quick_job.state, jobs.Succeeded)
    assert quick_job.state.duration == pytest.approx(50.0)
    assert isinstance(stuck_job.state, jobs.Failed)
    assert "timed out" in stuck_job.state.error


async def test_jobs_the_server_does_not_serve_are_left_alone(autojump_clock: MockClock) -> None:
    config = jobs.ServerConfig(queues=["default"])
    async with testing.open_test_server(jobs.WorkerRegistry(), config=config) as t:
        await t.client.enqueue("other", {}, queue="elsewhere")
        await t.client.enqueue("other", {}, queue="elsewhere", delay=60)
        start = trio.current_time()
        await t.drain()
        assert trio.current_time() == start


async def test_drain_gives_up_on_jobs_nothing_runs(autojump_clock: MockClock) -> None:
    async def claim_nothing(**_: Any) -> list[jobs.Job]:
        await trio.lowlevel.checkpoint()
        return []

    async with testing.open_test_server(jobs.WorkerRegistry()) as t:
        t.storage.claim = claim_nothing  # a storage that never hands out a job
        # A real claim may be under way: let it end (autojump: once all are blocked).
        await trio.sleep(1.0)
        await t.client.enqueue("stuck", {"n": 1})
        with pytest.raises(testing.DrainStalled, match=r"stuck\(\{'n': 1\}\)"):
            await t.drain(stall_timeout=30.0)


async def test_drain_refuses_a_server_clock_that_ignores_trio_time(
    autojump_clock: MockClock,
) -> None:
    frozen = datetime(2030, 1, 1, tzinfo=UTC)
    async with testing.open_test_server(jobs.WorkerRegistry(), clock=lambda: frozen) as t:
        await t.client.enqueue("later", {}, delay=60)
        with pytest.raises(RuntimeError, match=r"did not move with trio\.current_time"):
            await t.drain()


async def test_drain_arguments_are_checked(autojump_clock: MockClock) -> None:
    async with testing.open_test_server(jobs.WorkerRegistry()) as t:
        with pytest.raises(ValueError, match="aware"):
            await t.drain(until=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="stall_timeout"):
            await t.drain(stall_timeout=0)
        await t.server.stop()
        with pytest.raises(RuntimeError, match="server running"):
            await t.drain()


async def test_the_body_error_propagates_bare_and_the_server_stops(
    autojump_clock: MockClock,
) -> None:
    servers: list[jobs.JobServer] = []

    async def body() -> None:
        async with testing.open_test_server(jobs.WorkerRegistry()) as t:
            servers.append(t.server)
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        await body()
    assert not servers[0].is_running


async def test_outer_cancellation_stops_everything_at_once(autojump_clock: MockClock) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("forever")
    async def forever(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep_forever()

    config = jobs.ServerConfig(shutdown_timeout=1000.0)
    with trio.move_on_after(5.0) as scope:
        async with testing.open_test_server(workers, config=config) as t:
            await t.client.enqueue("forever", {})
            await t.drain()
    assert scope.cancelled_caught
    assert trio.current_time() < 10.0  # did not wait for shutdown_timeout


async def test_the_users_state_hook_still_runs(autojump_clock: MockClock) -> None:
    seen: list[tuple[str, str]] = []
    workers = jobs.WorkerRegistry()

    @workers.worker("ok")
    async def ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return None

    def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        seen.append((old.name, new.name))
        raise RuntimeError("a hostile hook")  # logged by the server, ignored

    async with testing.open_test_server(workers, on_state_change=hook) as t:
        await t.client.enqueue("ok", {})
        await t.drain()
    assert seen == [("enqueued", "processing"), ("processing", "succeeded")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.floats(0, 100_000, allow_nan=False), st.integers(0, 3)),
        max_size=8,
    )
)
def test_property_drain_runs_every_job_each_after_its_due_time(
    plan: list[tuple[float, int]],
) -> None:
    """Whatever the delays and failures: drain() ends with every job run to
    success, every first attempt at or after its delay, and retries after
    their backoff."""
    policy = jobs.RetryPolicy(max_attempts=4, initial_delay=60.0, multiplier=2.0, jitter=0.1)
    runs: dict[int, list[float]] = {}
    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job_fn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        index = job.payload
        runs.setdefault(index, []).append(trio.current_time())
        if ctx.attempt <= plan[index][1]:
            raise ValueError("not yet")
        return index

    async def main() -> None:
        # Jobs that succeeded must outlive the longest drain (cleanup runs too).
        config = jobs.ServerConfig(succeeded_ttl=1e6)
        async with testing.open_test_server(workers, config=config, retry_policy=policy) as t:
            start = trio.current_time()
            ids = [
                await t.client.enqueue("job", index, delay=delay)
                for index, (delay, _) in enumerate(plan)
            ]
            await t.drain()
            for index, job_id in enumerate(ids):
                job = await t.storage.get(job_id)
                assert job is not None
                assert isinstance(job.state, jobs.Succeeded), job
                delay, failures = plan[index]
                times = runs[index]
                assert len(times) == failures + 1
                assert times[0] - start >= delay - 1e-3
                for attempt, (earlier, later) in enumerate(itertools.pairwise(times), 1):
                    assert later - earlier >= policy.base_delay(attempt) * 0.9 - 1e-3

    trio.run(main, clock=MockClock(autojump_threshold=0))
