"""Processing one job: retries, timeouts, middleware, context, RetryPolicy."""

from __future__ import annotations

import gc
import warnings
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from tests.jobs.server_helpers import Recorder, make_server, running
from trio_monitor import jobs
from trio_monitor.testing import run_job


async def test_retries_wait_the_policy_delays_then_fail_with_the_error(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    attempts: list[tuple[float, int]] = []

    @workers.worker("flaky")
    async def flaky(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        attempts.append((trio.current_time(), ctx.attempt))
        raise ConnectionError(f"refused on attempt {ctx.attempt}")

    recorder = Recorder()
    policy = jobs.RetryPolicy(max_attempts=4, initial_delay=10.0, multiplier=3.0, jitter=0.0)
    server = make_server(
        memory_storage, workers, recorder, policy, worker_count=1, scheduler_poll_interval=1000.0
    )
    async with running(server):
        job_id = await server.enqueue("flaky", None)
        change = await recorder.wait_state(job_id, jobs.Failed, within=10_000)
    start = attempts[0][0]
    # Delays 10, 30, 90 (10 * 3 ** (n - 1)), on time although the scheduler
    # polls every 1000 s: the server wakes it for retries it makes.
    assert [n for _, n in attempts] == [1, 2, 3, 4]
    assert [t - start for t, _ in attempts] == pytest.approx([0, 10, 40, 130], abs=1e-3)
    retries = [c for c in recorder.of(job_id) if isinstance(c.new, jobs.AwaitingRetry)]
    assert [c.new.error for c in retries] == [  # type: ignore[union-attr]
        f"ConnectionError: refused on attempt {n}" for n in (1, 2, 3)
    ]
    assert isinstance(change.new, jobs.Failed)
    assert change.new.error == "ConnectionError: refused on attempt 4"
    job = await memory_storage.get(job_id)
    assert job is not None
    assert job.attempts == 4
    assert isinstance(job.state, jobs.Failed)


async def test_retry_then_success(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("twice")
    async def twice(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return ctx.attempt

    recorder = Recorder()
    policy = jobs.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0.0)
    server = make_server(storage, workers, recorder, policy)
    async with running(server):
        job_id = await server.enqueue("twice", None)
        await recorder.wait_state(job_id, jobs.Succeeded)
    job = await storage.get(job_id)
    assert job is not None
    assert job.state == jobs.Succeeded(3, job.state.duration)  # type: ignore[union-attr]
    assert [k for k in recorder.kinds(job_id) if k[1] != "processing"] == [
        ("processing", "awaiting_retry"),
        ("awaiting_retry", "enqueued"),
        ("processing", "awaiting_retry"),
        ("awaiting_retry", "enqueued"),
        ("processing", "succeeded"),
    ]


async def test_job_timeout_is_a_failed_attempt(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    cancelled: list[float] = []

    @workers.worker("hang")
    async def hang(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())

    recorder = Recorder()
    policy = jobs.RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0)
    server = make_server(memory_storage, workers, recorder, policy, job_timeout=7.5)
    async with running(server):
        start = trio.current_time()
        job_id = await server.enqueue("hang", None)
        change = await recorder.wait_state(job_id, jobs.Failed, within=1000)
    assert isinstance(change.new, jobs.Failed)
    assert change.new.error == "TimeoutError: timed out after 7.5s"
    assert [t - start for t in cancelled] == pytest.approx([7.5, 7.5 + 1.0 + 7.5], abs=1e-3)
    retry = next(c for c in recorder.of(job_id) if isinstance(c.new, jobs.AwaitingRetry))
    assert retry.new.error == "TimeoutError: timed out after 7.5s"  # type: ignore[union-attr]


async def test_middleware_runs_first_outermost(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    trace: list[str] = []

    @workers.worker("work")
    async def work(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        trace.append("worker")
        return 1

    def layer(name: str) -> Any:
        async def middleware(job: jobs.Job, ctx: jobs.WorkerContext, call_next: Any) -> object:
            trace.append(f"{name} in")
            result = await call_next()
            trace.append(f"{name} out")
            return [name, result]

        return middleware

    recorder = Recorder()
    server = make_server(
        storage, workers, recorder, jobs.RetryPolicy(), middleware=(layer("a"), layer("b"))
    )
    async with running(server):
        job_id = await server.enqueue("work", None)
        change = await recorder.wait_state(job_id, jobs.Succeeded)
    assert trace == ["a in", "b in", "worker", "b out", "a out"]
    assert change.new == jobs.Succeeded(["a", ["b", 1]], change.new.duration)  # type: ignore[union-attr]


async def test_middleware_may_short_circuit_or_fail(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    ran: list[object] = []

    @workers.worker("work")
    async def work(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        ran.append(job.payload)
        return "ran"

    async def gate(job: jobs.Job, ctx: jobs.WorkerContext, call_next: Any) -> object:
        if job.payload == "skip":
            return "skipped"
        if job.payload == "deny":
            raise PermissionError("denied by middleware")
        return await call_next()

    recorder = Recorder()
    server = make_server(
        storage, workers, recorder, jobs.RetryPolicy(max_attempts=1), middleware=(gate,)
    )
    async with running(server):
        skip = await server.enqueue("work", "skip")
        deny = await server.enqueue("work", "deny")
        go = await server.enqueue("work", "go")
        skipped = await recorder.wait_state(skip, jobs.Succeeded)
        denied = await recorder.wait_state(deny, jobs.Failed)
        went = await recorder.wait_state(go, jobs.Succeeded)
    assert skipped.new.result == "skipped"  # type: ignore[union-attr]
    assert denied.new.error == "PermissionError: denied by middleware"  # type: ignore[union-attr]
    assert went.new.result == "ran"  # type: ignore[union-attr]
    assert ran == ["go"]


async def test_worker_context(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    contexts: list[jobs.WorkerContext] = []

    @workers.worker("ctx")
    async def ctx_worker(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        contexts.append(ctx)
        if ctx.attempt == 1:
            raise RuntimeError("again")
        return None

    recorder = Recorder()
    policy = jobs.RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0.0)
    server = make_server(storage, workers, recorder, policy, worker_count=1)
    async with running(server):
        job_id = await server.enqueue("ctx", None)
        await recorder.wait_state(job_id, jobs.Succeeded)
    assert [c.attempt for c in contexts] == [1, 2]
    assert {c.worker_id for c in contexts} == {"test:worker:0"}
    assert len({c.server_name for c in contexts}) == 1
    assert contexts[0].server_name.startswith("test#")  # heartbeats on: name#uuid
    assert contexts[0].cancel is contexts[1].cancel  # one token per start
    assert contexts[0].cancel.is_set()  # set by stop()


def test_retry_policy_defaults_and_delays() -> None:
    policy = jobs.RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.multiplier) == (3, 1.0, 2.0)
    assert (policy.max_delay, policy.jitter) == (300.0, 0.1)
    exact = jobs.RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=10.0, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert exact.delay(10_000) == 10.0  # no overflow
    for attempt in range(1, 6):
        base = policy.base_delay(attempt)
        samples = [policy.delay(attempt) for _ in range(200)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in samples)
        assert len(set(samples)) > 1  # jitter moves it


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", -1),
        ("initial_delay", -1.0),
        ("multiplier", 0.5),
        ("max_delay", -1),
        ("jitter", 1.5),
        ("jitter", -0.1),
    ],
)
def test_retry_policy_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        jobs.RetryPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 1.5),
        ("max_attempts", "3"),
        ("initial_delay", "1"),
        ("multiplier", None),
        ("max_delay", True),
        ("jitter", "0.1"),
    ],
)
def test_retry_policy_refuses_wrong_types_with_type_error(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        jobs.RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_worker_registry() -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("a")
    async def a(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return None

    assert workers.get("a") is a
    assert "a" in workers
    assert workers.get("b") is None
    assert list(workers) == ["a"]
    assert len(workers) == 1
    with pytest.raises(ValueError, match="already registered"):
        workers.register("a", a)
    with pytest.raises(ValueError, match="non-empty"):
        workers.register("", a)


async def test_awaiting_retry_is_stamped_from_the_server_clock(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("fail")
    async def fail(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep(3)
        raise RuntimeError("x")

    recorder = Recorder()
    policy = jobs.RetryPolicy(max_attempts=2, initial_delay=5.0, jitter=0.0)
    server = make_server(memory_storage, workers, recorder, policy)
    async with running(server):
        t0 = server.now()
        job_id = await server.enqueue("fail", None)
        change = await recorder.wait_state(job_id, jobs.AwaitingRetry, within=1000)
    assert isinstance(change.new, jobs.AwaitingRetry)
    assert change.new.retry_at == t0 + timedelta(seconds=3 + 5)


async def test_a_plain_worker_returning_a_coroutine_fails_saying_why() -> None:
    # A lambda around an async function is a plain callable: it runs in a
    # thread, and the coroutine it returns would never run there.
    ran: list[int] = []

    async def send(job: jobs.Job, ctx: jobs.WorkerContext) -> None:
        ran.append(job.payload)

    workers = jobs.WorkerRegistry()
    workers.register("send", lambda job, ctx: send(job, ctx))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        with pytest.raises(TypeError, match="plain function that returned a coroutine"):
            await run_job(workers, "send", 1)
        gc.collect()
    assert ran == []
