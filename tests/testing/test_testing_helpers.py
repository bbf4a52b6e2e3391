"""assert_enqueued, RecordingStorage and run_job."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
from trio.testing import MockClock

from trio_monitor import jobs, testing


async def test_assert_enqueued_matches_and_returns_the_jobs(autojump_clock: MockClock) -> None:
    async with testing.open_test_server(jobs.WorkerRegistry(), config=_no_workers()) as t:
        await t.client.enqueue("send_email", {"to": "a"})
        await t.client.enqueue("send_email", {"to": "b"}, queue="bulk")
        await t.client.enqueue("report", {})
        # The client, the test server, its server and its storage all work.
        for target in (t.client, t, t.server, t.storage):
            assert len(testing.assert_enqueued(target, "send_email")) == 2
        [job] = testing.assert_enqueued(t, payload={"to": "b"}, count=1)
        assert job.queue == "bulk"
        testing.assert_enqueued(t, queue="bulk", count=1)
        testing.assert_enqueued(t, "report", count=1)
        testing.assert_enqueued(t, "nothing", count=0)
        testing.assert_enqueued(t, count=3)


async def test_assert_enqueued_failure_lists_what_was_enqueued(autojump_clock: MockClock) -> None:
    async with testing.open_test_server(jobs.WorkerRegistry(), config=_no_workers()) as t:
        with pytest.raises(AssertionError, match="Nothing was enqueued"):
            testing.assert_enqueued(t, "send_email")
        await t.client.enqueue("send_email", {"to": "a"})
        await t.client.enqueue("report", [1, 2], queue="reports", delay=60)
        with pytest.raises(AssertionError) as info:
            testing.assert_enqueued(t, "send_email", payload={"to": "z"}, count=2)
        message = str(info.value)
        assert "expected exactly 2 job(s) enqueued matching method='send_email'" in message
        assert "payload={'to': 'z'}; found 0" in message
        assert "Enqueued (2):" in message
        assert "send_email({'to': 'a'}) queue='default'" in message
        assert "report([1, 2]) queue='reports' priority=0 scheduled" in message


async def test_assert_enqueued_counts_jobs_whatever_became_of_them(
    autojump_clock: MockClock,
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("quick")
    async def quick(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return None

    async with testing.open_test_server(workers) as t:
        await t.client.enqueue("quick", 1)
        await t.drain()
        [job] = testing.assert_enqueued(t, "quick", payload=1)
        assert isinstance(job.state, jobs.Enqueued)  # as it was enqueued
        assert [j.method for j in t.enqueued] == ["quick"]


async def test_recurring_and_bulk_enqueues_are_recorded(autojump_clock: MockClock) -> None:
    async with testing.open_test_server(jobs.WorkerRegistry(), config=_no_workers()) as t:
        await t.storage.enqueue_many([jobs.Job.new("a", 1), jobs.Job.new("b", 2)])
        await t.server.schedule_recurring("every-second", "* * * * * *", "tick", {})
        await t.drain(until=t.server.now() + timedelta(seconds=3))
        testing.assert_enqueued(t, "a", count=1)
        assert len(testing.assert_enqueued(t, "tick")) >= 1


async def test_assert_enqueued_bad_arguments() -> None:
    async with jobs.open_storage("memory://") as storage:
        with pytest.raises(TypeError, match="does not remember"):
            testing.assert_enqueued(storage, "x")
        recording = testing.RecordingStorage(storage)
        with pytest.raises(ValueError, match="count"):
            testing.assert_enqueued(recording, count=-1)
        with pytest.raises(ValueError, match="count"):
            testing.assert_enqueued(recording, count=True)
    with pytest.raises(TypeError, match="Storage protocol"):
        testing.RecordingStorage(object())  # type: ignore[arg-type]


async def test_recording_storage_passes_everything_else_through() -> None:
    async with jobs.open_storage("memory://") as storage:
        recording = testing.RecordingStorage(storage)
        assert isinstance(recording, jobs.Storage)
        job_id = await recording.enqueue(jobs.Job.new("m", {"k": 1}))
        stored = await recording.get(job_id)
        assert stored is not None
        assert stored.payload == {"k": 1}
        with pytest.raises(TypeError):
            await recording.enqueue(jobs.Job.new("m", object()))
        assert len(recording.enqueued) == 1  # the refused one is not recorded
        assert "1 enqueued" in repr(recording)


def _no_workers() -> jobs.ServerConfig:
    return jobs.ServerConfig(worker_count=0)


# -- run_job -----------------------------------------------------------------

workers = jobs.WorkerRegistry()


class Boom(Exception):
    pass


@workers.worker("echo")
async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return {"payload": job.payload, "attempt": ctx.attempt, "queue": job.queue}


@workers.worker("boom")
async def boom(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    raise Boom(job.payload)


@workers.worker("slow")
async def slow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(100)
    return "late"


@workers.worker("opaque")
async def opaque(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return object()


async def test_run_job_returns_the_result() -> None:
    result = await testing.run_job(workers, "echo", [1, 2], queue="q", attempts=2)
    assert result == {"payload": [1, 2], "attempt": 3, "queue": "q"}


async def test_run_job_raises_the_workers_exception_itself() -> None:
    with pytest.raises(Boom, match="bad input") as info:
        await testing.run_job(workers, "boom", "bad input")
    assert info.value.args == ("bad input",)


async def test_run_job_goes_through_the_middleware_in_order() -> None:
    calls: list[str] = []

    def tracer(name: str) -> jobs._workers.Middleware:
        async def middleware(
            job: jobs.Job, ctx: jobs.WorkerContext, call_next: jobs._workers.CallNext
        ) -> object:
            calls.append(f"{name} in")
            result = await call_next()
            calls.append(f"{name} out")
            return result

        return middleware

    await testing.run_job(workers, "echo", 1, middleware=[tracer("outer"), tracer("inner")])
    assert calls == ["outer in", "inner in", "inner out", "outer out"]


async def test_run_job_raises_a_middlewares_exception() -> None:
    async def refuse(
        job: jobs.Job, ctx: jobs.WorkerContext, call_next: jobs._workers.CallNext
    ) -> object:
        raise PermissionError("tenant suspended")

    with pytest.raises(PermissionError, match="tenant suspended"):
        await testing.run_job(workers, "echo", 1, middleware=[refuse])


async def test_run_job_times_out_like_the_server(autojump_clock: MockClock) -> None:
    with pytest.raises(TimeoutError, match="timed out after 5s"):
        await testing.run_job(workers, "slow", None, job_timeout=5.0)
    assert trio.current_time() == pytest.approx(5.0)


async def test_run_job_stores_results_as_the_server_would() -> None:
    assert await testing.run_job(workers, "opaque", None) is None


async def test_run_job_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"no worker is registered for method 'nope'"):
        await testing.run_job(workers, "nope", None)
    with pytest.raises(TypeError, match="unknown job field"):
        await testing.run_job(workers, "echo", None, colour="red")
    with pytest.raises(TypeError, match="state"):
        await testing.run_job(workers, "echo", None, state=jobs.Failed("x"))
    with pytest.raises(TypeError, match="JSON"):
        await testing.run_job(workers, "echo", {1, 2})
    with pytest.raises(TypeError, match="WorkerRegistry"):
        await testing.run_job({}, "echo", None)  # type: ignore[arg-type]
