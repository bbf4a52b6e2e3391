"""Job control, the server's half (SPEC §6): abort, per-method settings,
``jobs.Retry``/``retry_on``, plain ``def`` workers, lifespan, progress,
headers, ``run(burst=True)`` and ``server.client``.

Tests taking ``storage`` run on memory, SQLite and PostgreSQL on the real
clock; tests taking ``memory_storage`` and ``autojump_clock`` check timing
on virtual time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.jobs.server_helpers import Recorder, make_server, running
from trio_monitor import jobs
from trio_monitor.jobs._backends._memory import MemoryStorage


def blocking_workers() -> tuple[jobs.WorkerRegistry, dict[str, trio.Event]]:
    """A ``block`` method that runs until cancelled, and signals when it started."""
    workers = jobs.WorkerRegistry()
    started: defaultdict[str, trio.Event] = defaultdict(trio.Event)

    @workers.worker("block")
    async def block(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started[job.id].set()
        await trio.sleep_forever()

    @workers.worker("raise_in_finally")
    async def raise_in_finally(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started[job.id].set()
        try:
            await trio.sleep_forever()
        finally:
            raise trio.ClosedResourceError("cleanup failed while cancelled")

    @workers.worker("swallow")
    async def swallow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started[job.id].set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            return "swallowed"  # returns instead of letting Cancelled out

    return workers, started


async def wait_started(started: defaultdict[str, trio.Event], job_id: str) -> None:
    with trio.fail_after(10):
        await started[job_id].wait()


# -- abort -------------------------------------------------------------------


async def test_abort_of_a_queued_job_means_it_never_runs(storage: jobs.Storage) -> None:
    workers, started = blocking_workers()
    server = make_server(storage, workers)
    scheduled = await server.enqueue("block", None, delay=3600)
    assert await server.client.abort(scheduled, "not needed")
    enqueued = await server.enqueue("block", None)
    assert await server.client.abort(enqueued)
    async with running(server):
        await trio.sleep(0.2)
    assert started == {}
    for job_id, reason in ((scheduled, "not needed"), (enqueued, "aborted")):
        job = await storage.get(job_id)
        assert job is not None
        assert job.state == jobs.Aborted(reason)
        assert job.attempts == 0
    assert not await server.client.abort(enqueued)  # terminal now: False


@pytest.mark.parametrize("method", ["block", "raise_in_finally", "swallow"])
async def test_abort_of_a_running_job_cancels_it_and_it_ends_aborted(
    storage: jobs.Storage, method: str
) -> None:
    # Whatever the code does while cancelled (raises in finally, swallows
    # Cancelled and returns) the outcome is Aborted, not a failure, not retried.
    workers, started = blocking_workers()
    recorder = Recorder()
    server = make_server(storage, workers, recorder, job_timeout=100.0)
    async with running(server):
        job_id = await server.enqueue(method, None)
        await wait_started(started, job_id)
        before = trio.current_time()
        assert await server.client.abort(job_id, "operator said so")
        change = await recorder.wait_state(job_id, jobs.Aborted, within=5.0)
        # In-process and PostgreSQL: pushed, not polled.
        assert change.at - before < 1.0
        job = await server.client.wait(job_id)
        assert job.state == jobs.Aborted("operator said so")
        assert job.attempts == 1
        await trio.sleep(0.2)
    assert recorder.kinds(job_id)[-1] == ("processing", "aborted")
    assert not any(isinstance(c.new, jobs.AwaitingRetry | jobs.Failed) for c in recorder.of(job_id))
    assert not await server.client.abort(job_id)
    assert await server.client.retry(job_id)  # Aborted -> Enqueued


async def test_abort_heard_through_polling_alone(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    # Another process's abort is not pushed (SQLite): the server finds it
    # within polling_interval. Here the push is swallowed to prove the poll.
    workers, started = blocking_workers()
    recorder = Recorder()
    server = make_server(memory_storage, workers, recorder, polling_interval=2.0)

    async def never() -> None:
        await trio.sleep_forever()

    memory_storage.wait_for_abort = never  # type: ignore[method-assign]
    async with running(server):
        job_id = await server.enqueue("block", None)
        await wait_started(started, job_id)
        start = trio.current_time()
        assert await memory_storage.abort(job_id, "far away", server.now()) == "requested"
        change = await recorder.wait_state(job_id, jobs.Aborted, within=10.0)
        assert change.at - start <= 2.0 + 1e-6


async def test_abort_of_a_sync_worker_in_its_thread(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    entered = threading.Event()
    left: list[str] = []
    gone = threading.Event()

    @workers.worker("spin")
    def spin(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        entered.set()
        try:
            while True:
                trio.from_thread.check_cancelled()
                time.sleep(0.005)
        finally:
            left.append(job.id)
            gone.set()

    recorder = Recorder()
    server = make_server(storage, workers, recorder, job_timeout=100.0)
    async with running(server):
        job_id = await server.enqueue("spin", None)
        assert await trio.to_thread.run_sync(entered.wait, 10)
        assert await server.client.abort(job_id)
        await recorder.wait_state(job_id, jobs.Aborted, within=5.0)
        assert await trio.to_thread.run_sync(gone.wait, 5)
    assert left == [job_id]  # the thread itself was cancelled, not just abandoned


@settings(max_examples=40, deadline=None)
@given(
    durations=st.lists(st.integers(1, 20), min_size=1, max_size=8),
    abort_at=st.lists(st.integers(0, 25), min_size=8, max_size=8),
    worker_count=st.integers(1, 3),
)
def test_aborted_jobs_never_end_succeeded_or_failed_memory(
    durations: list[int], abort_at: list[int], worker_count: int
) -> None:
    """Property: abort returned True for a queued job -> Aborted; requested for a
    running job (that would still run past the abort) -> Aborted; never a failure."""

    async def main() -> None:
        storage = MemoryStorage()
        workers = jobs.WorkerRegistry()

        ends: dict[str, float] = {}

        @workers.worker("work")
        async def work(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
            ends[job.id] = trio.current_time() + job.payload
            await trio.sleep(job.payload)
            return "done"

        recorder = Recorder()
        server = make_server(
            storage,
            workers,
            recorder,
            worker_count=worker_count,
            polling_interval=1.0,
            heartbeat_interval=1.0,
            scheduler_poll_interval=5.0,
            recurring_poll_interval=5.0,
            cleanup_interval=5.0,
        )
        outcomes: dict[str, tuple[str, float]] = {}
        async with running(server):
            ids = [await server.enqueue("work", d + 0.5) for d in durations]
            async with trio.open_nursery() as nursery:
                for job_id, at in zip(ids, abort_at, strict=False):

                    async def abort(job_id: str = job_id, at: int = at) -> None:
                        await trio.sleep(at)
                        outcome = await storage.abort(job_id, "p", server.now())
                        outcomes[job_id] = (outcome, trio.current_time())

                    nursery.start_soon(abort)
            for job_id in ids:
                with trio.fail_after(1000):
                    await server.client.wait(job_id)
        for job_id, duration in zip(ids, durations, strict=True):
            job = await storage.get(job_id)
            assert job is not None
            outcome, _ = outcomes[job_id]
            terminal = [c.new for c in recorder.of(job_id) if c.new.name != "processing"]
            assert not any(isinstance(s, jobs.Failed | jobs.AwaitingRetry) for s in terminal)
            if outcome == "aborted":
                assert job.state == jobs.Aborted("p")
                assert job.attempts == 0
            elif outcome == "requested":
                # It was running. Aborted at once if it had time left; an
                # abort at the very instant it returns may lose the race
                # (the documented one): then it succeeded.
                aborted_at = outcomes[job_id][1]
                if aborted_at < ends[job_id]:
                    assert job.state == jobs.Aborted("p"), (duration, job.state)
                else:
                    assert isinstance(job.state, jobs.Aborted | jobs.Succeeded)
            else:
                assert outcome == "finished"
                assert isinstance(job.state, jobs.Succeeded)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- per-method settings, Retry, retry_on --------------------------------------


async def test_timeouts_job_beats_method_beats_server(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("nap", timeout=2.0, retry_policy=jobs.RetryPolicy(max_attempts=1))
    async def nap(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep(job.payload)
        return "rested"

    @workers.worker("plain", retry_policy=jobs.RetryPolicy(max_attempts=1))
    async def plain(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep(job.payload)
        return "rested"

    server = make_server(memory_storage, workers, job_timeout=10.0)
    async with running(server):
        by_method = await server.enqueue("nap", 3)  # method's 2 s
        by_job = await server.enqueue("nap", 3, timeout=5.0)  # job's 5 s beats it
        by_server = await server.enqueue("plain", 9)  # server's 10 s
        over_server = await server.enqueue("plain", 11)
        done = {i: await server.client.wait(i) for i in (by_method, by_job, by_server, over_server)}
    assert done[by_method].state == jobs.Failed("TimeoutError: timed out after 2s")
    assert isinstance(done[by_job].state, jobs.Succeeded)
    assert isinstance(done[by_server].state, jobs.Succeeded)
    assert done[over_server].state == jobs.Failed("TimeoutError: timed out after 10s")


async def test_raise_retry_overrides_the_delay_and_counts_the_attempt(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    runs: list[float] = []

    @workers.worker("later", retry_policy=jobs.RetryPolicy(max_attempts=3, initial_delay=1.0))
    async def later(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs.append(trio.current_time())
        raise jobs.Retry(delay=100.0, reason="rate limited upstream")

    server = make_server(memory_storage, workers, scheduler_poll_interval=1000.0)
    async with running(server):
        job_id = await server.enqueue("later", None)
        job = await server.client.wait(job_id)
    assert job.state == jobs.Failed("Retry: rate limited upstream")
    assert job.attempts == 3
    assert [round(b - a, 3) for a, b in itertools.pairwise(runs)] == [100.0, 100.0]


async def test_retry_on_retries_only_those_types(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("picky", retry_on=(KeyError,))
    async def picky(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        if job.payload == "key":
            raise KeyError("missing")
        if job.payload == "retry":
            raise jobs.Retry()  # always retried, retry_on or not
        raise ValueError("bad value")

    server = make_server(memory_storage, workers)
    async with running(server):
        ids = {p: await server.enqueue("picky", p) for p in ("key", "value", "retry")}
        done = {p: await server.client.wait(i) for p, i in ids.items()}
    assert done["value"].attempts == 1  # failed at once
    assert done["value"].state == jobs.Failed("ValueError: bad value")
    assert done["key"].attempts == 3  # the server's policy: 3 attempts
    assert done["retry"].attempts == 3
    assert done["retry"].state == jobs.Failed("Retry")


def test_bad_per_method_settings_are_refused() -> None:
    workers = jobs.WorkerRegistry()
    with pytest.raises(ValueError, match="timeout"):
        workers.worker("a", timeout=-1.0)
    with pytest.raises(ValueError, match="timeout"):
        workers.worker("a", timeout=float("inf"))
    with pytest.raises(TypeError, match="retry_policy"):
        workers.worker("a", retry_policy=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_on"):
        workers.worker("a", retry_on=("KeyError",))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lifespan"):
        jobs.WorkerRegistry(lifespan=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Retry delay"):
        jobs.Retry(delay=-1)
    assert "a" not in workers


# -- plain def workers -----------------------------------------------------------


async def test_sync_workers_run_in_threads_bounded_by_worker_count(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    lock = threading.Lock()
    now_running = [0]
    most = [0]
    thread_ids: set[int] = set()

    @workers.worker("cpu")
    def cpu(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        with lock:
            now_running[0] += 1
            most[0] = max(most[0], now_running[0])
            thread_ids.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            now_running[0] -= 1
        return job.payload * 2

    server = make_server(storage, workers, worker_count=2)
    async with running(server):
        ids = [await server.enqueue("cpu", i) for i in range(6)]
        done = [await server.client.wait(i) for i in ids]
    assert [j.state.result for j in done if isinstance(j.state, jobs.Succeeded)] == [
        i * 2 for i in range(6)
    ]
    assert most[0] == 2
    assert threading.get_ident() not in thread_ids


async def test_a_sync_worker_ignoring_cancellation_still_times_out(
    memory_storage: jobs.Storage,
) -> None:
    workers = jobs.WorkerRegistry()
    release = threading.Event()

    @workers.worker("stubborn", timeout=0.1, retry_policy=jobs.RetryPolicy(max_attempts=1))
    def stubborn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        release.wait(10)  # never checks for cancellation
        return "late"

    server = make_server(memory_storage, workers, worker_count=1)
    try:
        async with running(server):
            start = trio.current_time()
            job_id = await server.enqueue("stubborn", None)
            job = await server.client.wait(job_id)
            assert trio.current_time() - start < 5.0  # not the 10 s the thread takes
    finally:
        release.set()
    assert job.state == jobs.Failed("TimeoutError: timed out after 0.1s")


# -- lifespan, progress, headers ------------------------------------------------


async def test_lifespan_is_entered_once_per_start_and_is_ctx_state(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, int]]:
        events.append("open")
        try:
            yield {"pool": len(events)}
        finally:
            events.append("close")

    workers = jobs.WorkerRegistry(lifespan=lifespan)
    states: list[Any] = []

    @workers.worker("use")
    async def use(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        states.append(ctx.state)
        return None

    server = make_server(memory_storage, workers)
    for _ in range(2):
        async with running(server):
            for _ in range(3):
                await server.client.wait(await server.enqueue("use", None))
    assert events == ["open", "close", "open", "close"]
    assert states == [{"pool": 1}] * 3 + [{"pool": 3}] * 3
    assert states[0] is states[1]


async def test_a_failing_lifespan_fails_the_start(memory_storage: jobs.Storage) -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        raise OSError("database unreachable")
        yield

    server = make_server(memory_storage, jobs.WorkerRegistry(lifespan=lifespan))
    with pytest.raises(OSError, match="database unreachable"):
        await server.run()
    assert not server.is_running


async def test_progress_and_headers_reach_the_worker_and_the_client(
    storage: jobs.Storage,
) -> None:
    workers = jobs.WorkerRegistry()
    reported = trio.Event()
    finish = trio.Event()
    seen: list[tuple[dict[str, str], dict[str, str]]] = []

    @workers.worker("report")
    async def report(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        seen.append((ctx.headers, job.headers))
        with pytest.raises(ValueError, match="fraction"):
            await ctx.report_progress(1.5)
        await ctx.report_progress(0.5, "half way")
        reported.set()
        await finish.wait()
        return None

    server = make_server(storage, workers)
    async with running(server):
        job_id = await server.enqueue("report", None, headers={"traceparent": "00-abc-01"})
        with trio.fail_after(10):
            await reported.wait()
        job = await server.client.get(job_id)
        assert job is not None
        assert job.progress == jobs.Progress(0.5, "half way")
        finish.set()
        done = await server.client.wait(job_id)
    assert isinstance(done.state, jobs.Succeeded)  # progress never breaks the outcome's CAS
    assert seen == [({"traceparent": "00-abc-01"}, {"traceparent": "00-abc-01"})]


# -- burst, client ----------------------------------------------------------------


async def test_burst_returns_once_nothing_is_due_or_running(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.sleep(0.01)
        return job.payload

    server = make_server(storage, workers, worker_count=2)
    ids = [await server.enqueue("echo", i) for i in range(5)]
    later = await server.enqueue("echo", "later", delay=3600)
    with trio.fail_after(20):
        await server.run(burst=True)
    assert not server.is_running
    for job_id in ids:
        job = await storage.get(job_id)
        assert job is not None
        assert isinstance(job.state, jobs.Succeeded)
    job = await storage.get(later)
    assert job is not None
    assert isinstance(job.state, jobs.Scheduled)
    idle = make_server(storage, workers, worker_count=0)
    with trio.fail_after(20):
        await idle.run(burst=True)


async def test_server_client_and_unique_enqueue(storage: jobs.Storage) -> None:
    server = make_server(storage, jobs.WorkerRegistry())
    assert isinstance(server.client, jobs.Client)
    assert server.client.storage is storage
    first = await server.enqueue("x", 1, unique_key="nightly")
    assert await server.enqueue("x", 2, unique_key="nightly") == first


async def test_a_ttl_of_none_keeps_finished_jobs_for_ever(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("ok")
    async def ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return None

    hourly = {
        name: 3600.0
        for name in (
            "polling_interval",
            "scheduler_poll_interval",
            "recurring_poll_interval",
            "heartbeat_interval",
            "cleanup_interval",
        )
    }
    server = make_server(
        memory_storage,
        workers,
        succeeded_ttl=None,
        failed_ttl=None,
        dead_server_timeout=7200.0,
        **hourly,
    )
    async with running(server):
        job_id = await server.enqueue("ok", None)
        aborted = await server.enqueue("ok", None, delay=10)
        await server.client.abort(aborted)
        await server.client.wait(job_id)
        await trio.sleep(timedelta(days=60).total_seconds())  # many cleanup sweeps
    for kept in (job_id, aborted):
        job = await memory_storage.get(kept)
        assert job is not None
        assert job.expires_at is None


async def test_schedule_recurring_in_a_time_zone(storage: jobs.Storage) -> None:
    server = make_server(storage, jobs.WorkerRegistry())
    await server.schedule_recurring(
        "nightly", "0 30 2 * * *", "cleanup", None, timezone="Europe/Paris"
    )
    (template,) = await server.client.recurring()
    assert template.timezone == "Europe/Paris"
    local = template.next_run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) in {(2, 30), (3, 30)}  # 03:30 only on a spring change
    with pytest.raises(ValueError, match="unknown time zone"):
        await server.schedule_recurring("x", "0 * * * * *", "m", None, timezone="Nowhere/Land")
    assert [r.id for r in await server.client.recurring()] == ["nightly"]


async def test_an_abort_not_yet_heard_beats_the_stop(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    # Stopping past shutdown_timeout requeues running jobs; one whose abort
    # was requested (and not heard yet: no push, a long poll) ends Aborted.
    workers, started = blocking_workers()
    recorder = Recorder()
    server = make_server(
        memory_storage, workers, recorder, polling_interval=1000.0, shutdown_timeout=1.0
    )

    async def never() -> None:
        await trio.sleep_forever()

    memory_storage.wait_for_abort = never  # type: ignore[method-assign]
    async with running(server):
        job_id = await server.enqueue("block", None)
        await wait_started(started, job_id)
        assert await memory_storage.abort(job_id, "late", server.now()) == "requested"
    job = await memory_storage.get(job_id)
    assert job is not None
    assert job.state == jobs.Aborted("late")
    assert ("processing", "enqueued") not in recorder.kinds(job_id)


async def test_server_delete_of_a_running_job_aborts_it_like_the_client(
    storage: jobs.Storage,
) -> None:
    # One meaning of "delete a running job" whoever asks: it is stopped and
    # ends Aborted("deleted"), never left running behind a Deleted row.
    workers, started = blocking_workers()
    recorder = Recorder()
    server = make_server(storage, workers, recorder, job_timeout=100.0)
    async with running(server):
        job_id = await server.enqueue("block", None)
        await wait_started(started, job_id)
        assert await server.delete(job_id)
        await recorder.wait_state(job_id, jobs.Aborted, within=5.0)
    job = await storage.get(job_id)
    assert job is not None
    assert job.state == jobs.Aborted("deleted", job.state.finished_at)  # type: ignore[union-attr]
    assert recorder.kinds(job_id)[-1] == ("processing", "aborted")
