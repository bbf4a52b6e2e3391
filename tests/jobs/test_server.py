"""The job server: lifecycle, claiming, scheduling, recovery, bad input.

Tests taking ``storage`` run once per backend (tests/jobs/conftest.py) on the
real clock with short intervals; tests taking ``memory_storage`` and
``autojump_clock`` check timing on virtual time.
"""

from __future__ import annotations

import itertools
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from tests.jobs.server_helpers import (
    FAST,
    Recorder,
    fast_config,
    make_server,
    running,
)
from trio_monitor import ShutdownToken, jobs
from trio_monitor.jobs._backends._memory import MemoryStorage


def echo_workers() -> tuple[jobs.WorkerRegistry, list[jobs.Job]]:
    workers = jobs.WorkerRegistry()
    seen: list[jobs.Job] = []

    @workers.worker("echo")
    async def echo(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        seen.append(job)
        return {"echo": job.payload}

    return workers, seen


# -- lifecycle (ported from qml's server tests) ------------------------------


async def test_start_stop(storage: jobs.Storage) -> None:
    workers, _ = echo_workers()
    server = make_server(storage, workers, enable_scheduler=False)
    assert not server.is_running
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        assert server.is_running
        await server.stop()
        assert not server.is_running
        await server.stop()  # a stopped server: nothing happens
        assert not server.is_running


async def test_run_twice_at_once_raises_server_error(storage: jobs.Storage) -> None:
    workers, _ = echo_workers()
    server = make_server(storage, workers)
    async with running(server):
        with pytest.raises(jobs.ServerError, match="already running"):
            await server.run()
        assert server.is_running


async def test_stop_waits_for_the_in_flight_job(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()
    done: list[int] = []

    @workers.worker("slow")
    async def slow(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await trio.sleep(0.3)
        done.append(1)
        return "finished"

    server = make_server(storage, workers, worker_count=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("slow", None)
        await started.wait()
        await server.stop()
    assert done == [1]
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result == "finished"


async def test_cancel_token_fires_on_stop(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()
    observed: list[ShutdownToken] = []

    @workers.worker("cancellable")
    async def cancellable(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        with trio.move_on_after(10):
            await ctx.cancel.wait()
            observed.append(ctx.cancel)
            return "saw cancel"
        return "timed out"

    server = make_server(storage, workers, worker_count=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("cancellable", None)
        await started.wait()
        assert not observed
        await server.stop()
    assert len(observed) == 1
    assert observed[0].is_set()
    job = await storage.get(job_id)
    assert job is not None
    assert job.state == jobs.Succeeded("saw cancel", job.state.duration)  # type: ignore[union-attr]


async def test_start_recovers_stranded_processing_jobs(storage: jobs.Storage) -> None:
    recorder = Recorder()
    stranded = jobs.Job.new("noop", None)
    stranded.state = jobs.Processing(
        datetime.now(UTC) - timedelta(hours=1), "dead-worker", "dead-server"
    )
    stranded.attempts = 1
    fresh = jobs.Job.new("noop", None)
    fresh.state = jobs.Processing(datetime.now(UTC), "live-worker", "live-server")
    await storage.enqueue(stranded)
    await storage.enqueue(fresh)
    server = make_server(
        storage, jobs.WorkerRegistry(), recorder, worker_count=0, stale_processing_after=300.0
    )
    async with running(server):
        pass
    recovered = await storage.get(stranded.id)
    assert recovered is not None
    assert isinstance(recovered.state, jobs.Enqueued)
    assert recovered.attempts == 1  # the attempt it used stays counted
    untouched = await storage.get(fresh.id)
    assert untouched is not None
    assert isinstance(untouched.state, jobs.Processing)
    assert recorder.kinds(stranded.id) == [("processing", "enqueued")]
    assert recorder.of(fresh.id) == []


async def test_job_processing(storage: jobs.Storage) -> None:
    workers, seen = echo_workers()
    recorder = Recorder()
    server = make_server(storage, workers, recorder, worker_count=1, fetch_batch_size=1)
    async with running(server):
        job_id = await server.enqueue("echo", ["arg1"])
        await recorder.wait_state(job_id, jobs.Succeeded)
    assert [job.payload for job in seen] == [["arg1"]]
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result == {"echo": ["arg1"]}
    assert job.state.duration >= 0
    assert job.attempts == 1
    assert job.expires_at is not None
    claim = recorder.of(job_id)[0]
    assert isinstance(claim.new, jobs.Processing)
    assert claim.new.server_name.startswith("test#")  # heartbeats on by default: name#uuid
    assert claim.new.worker_id == "test:worker:0"
    assert recorder.kinds(job_id) == [("enqueued", "processing"), ("processing", "succeeded")]


async def test_restart_after_stop(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    tokens: list[ShutdownToken] = []

    @workers.worker("note")
    async def note(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        tokens.append(ctx.cancel)
        assert not ctx.cancel.is_set()
        return None

    recorder = Recorder()
    server = make_server(storage, workers, recorder)
    for round_ in range(2):
        async with running(server):
            job_id = await server.enqueue("note", round_)
            await recorder.wait_state(job_id, jobs.Succeeded)
        assert not server.is_running
    assert len(tokens) == 2
    assert tokens[0] is not tokens[1]  # a fresh token per start
    assert tokens[0].is_set()
    assert tokens[1].is_set()


async def test_stop_past_shutdown_timeout_requeues_with_attempt_uncounted(
    storage: jobs.Storage,
) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()

    @workers.worker("stubborn")
    async def stubborn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await trio.sleep_forever()  # ignores ctx.cancel

    recorder = Recorder()
    server = make_server(storage, workers, recorder, worker_count=1, shutdown_timeout=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("stubborn", None)
        await started.wait()
        await server.stop()
        assert not server.is_running
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Enqueued)
    assert job.attempts == 0
    assert recorder.kinds(job_id) == [("enqueued", "processing"), ("processing", "enqueued")]


async def test_a_claim_landing_after_the_stop_deadline_is_released(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The stop gives up on its workers at once (shutdown_timeout=0) while
    # the fetcher's claim is still in flight; the job that claim returns
    # has no worker left and must go back to Enqueued, not crash the fetcher.
    class GatedClaims(MemoryStorage):
        def __init__(self) -> None:
            super().__init__()
            self.claimed = trio.Event()
            self.gate = trio.Event()

        async def claim(self, **kwargs: Any) -> list[jobs.Job]:
            got = await super().claim(**kwargs)
            if got:
                self.claimed.set()
                await self.gate.wait()
            return got

    storage = GatedClaims()
    workers, seen = echo_workers()
    recorder = Recorder()
    server = make_server(storage, workers, recorder, worker_count=1, shutdown_timeout=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("echo", 1)
        await storage.claimed.wait()
        nursery.start_soon(server.stop)
        await trio.testing.wait_all_tasks_blocked()
        storage.gate.set()
    assert not server.is_running
    assert seen == []
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Enqueued)
    assert job.attempts == 0
    assert recorder.kinds(job_id) == [("enqueued", "processing"), ("processing", "enqueued")]
    assert "crashed" not in caplog.text


async def test_outer_cancellation_requeues_the_running_job(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()

    @workers.worker("forever")
    async def forever(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await trio.sleep_forever()

    server = make_server(storage, workers, worker_count=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("forever", None)
        await started.wait()
        nursery.cancel_scope.cancel()
    assert not server.is_running
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Enqueued)
    assert job.attempts == 0


# -- claiming ------------------------------------------------------------------


async def test_priority_then_age_decides_the_order(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    order: list[str] = []

    @workers.worker("record")
    async def record(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        order.append(job.payload)
        return None

    recorder = Recorder()
    server = make_server(storage, workers, recorder, worker_count=1, fetch_batch_size=1)
    await server.enqueue("record", "low-old", priority=0)
    await server.enqueue("record", "high", priority=5)
    await server.enqueue("record", "low-new", priority=0)
    last = await server.enqueue("record", "higher", priority=9)
    async with running(server):
        await recorder.wait_until(lambda: len(order) == 4)
    assert order == ["higher", "high", "low-old", "low-new"]
    assert recorder.of(last)


async def test_workers_claim_from_their_queues_only(storage: jobs.Storage) -> None:
    workers, seen = echo_workers()
    recorder = Recorder()
    a = await jobs.JobServer(fast_config(), storage, workers).enqueue("echo", 1, queue="a")
    b = await jobs.JobServer(fast_config(), storage, workers).enqueue("echo", 2, queue="b")
    only_a = make_server(storage, workers, recorder, queues=["a"])
    async with running(only_a):
        await recorder.wait_state(a, jobs.Succeeded)
    job_b = await storage.get(b)
    assert job_b is not None
    assert isinstance(job_b.state, jobs.Enqueued)
    every_queue = make_server(storage, workers, recorder, queues=[])
    async with running(every_queue):
        await recorder.wait_state(b, jobs.Succeeded)
    assert sorted(job.payload for job in seen) == [1, 2]


async def test_idle_worker_wakes_at_once_on_enqueue(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    started_at: list[float] = []

    @workers.worker("now")
    async def now(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started_at.append(trio.current_time())
        return None

    recorder = Recorder()
    server = make_server(memory_storage, workers, recorder, polling_interval=1000.0)
    async with running(server):
        await trio.sleep(50)  # every worker idle, the fetcher waiting for work
        enqueued_at = trio.current_time()
        job_id = await server.enqueue("now", None)
        await recorder.wait_state(job_id, jobs.Succeeded, within=1000)
    assert started_at == [enqueued_at]


class CountingStorage(MemoryStorage):
    """Records how many workers each claim asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.claim_sizes: list[int] = []

    async def claim(self, **kwargs: Any) -> list[jobs.Job]:
        self.claim_sizes.append(len(kwargs["worker_ids"]))
        return await super().claim(**kwargs)


async def test_batch_claims_respect_fetch_batch_size_and_idle_workers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = CountingStorage()
    workers = jobs.WorkerRegistry()
    running_now: set[str] = set()
    most_at_once = 0

    @workers.worker("work")
    async def work(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        nonlocal most_at_once
        running_now.add(job.id)
        most_at_once = max(most_at_once, len(running_now))
        await trio.sleep(1)
        running_now.discard(job.id)
        return None

    recorder = Recorder()
    server = make_server(storage, workers, recorder, worker_count=4, fetch_batch_size=3)
    ids = [await server.enqueue("work", i) for i in range(12)]
    async with running(server):
        await recorder.wait_until(
            lambda: all(
                any(isinstance(c.new, jobs.Succeeded) for c in recorder.of(i)) for i in ids
            ),
            within=1000,
        )
    assert max(storage.claim_sizes) == 3  # batched, never above fetch_batch_size
    assert most_at_once == 4
    # Jobs far longer than a claim: no claim ahead, every claim is for idle workers only.
    assert all(size <= 4 for size in storage.claim_sizes)


async def test_storage_errors_are_retried_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    class FlakyStorage(MemoryStorage):
        failures = 3

        async def claim(self, **kwargs: Any) -> list[jobs.Job]:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("database is locked")
            return await super().claim(**kwargs)

        async def promote_due(self, now: datetime) -> list[jobs.Transitioned]:
            raise RuntimeError("database is locked")

    storage = FlakyStorage()
    workers, _ = echo_workers()
    recorder = Recorder()
    server = make_server(storage, workers, recorder)
    async with running(server):
        job_id = await server.enqueue("echo", 1)
        await recorder.wait_state(job_id, jobs.Succeeded, within=1000)
        await trio.sleep(5)
        assert server.is_running
    assert storage.failures == 0
    assert "claim failed" in caplog.text
    assert "scheduler failed" in caplog.text


# -- enqueueing ----------------------------------------------------------------


async def test_delayed_and_run_at_jobs_are_scheduled(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    ran_at: dict[object, float] = {}

    @workers.worker("when")
    async def when(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        ran_at[job.payload] = trio.current_time()
        return None

    recorder = Recorder()
    server = make_server(memory_storage, workers, recorder, scheduler_poll_interval=30.0)
    async with running(server):
        start = trio.current_time()
        delayed = await server.enqueue("when", "delay", delay=60.0)
        at = await server.enqueue("when", "run_at", run_at=server.now() + timedelta(seconds=90))
        job = await memory_storage.get(delayed)
        assert job is not None
        assert isinstance(job.state, jobs.Scheduled)
        assert job.state.enqueue_at == job.created_at + timedelta(seconds=60)
        await recorder.wait_state(at, jobs.Succeeded, within=1000)
    # The scheduler wakes at the due time, not at its next 30 s poll.
    assert ran_at["delay"] - start == pytest.approx(60.0, abs=0.01)
    assert ran_at["run_at"] - start == pytest.approx(90.0, abs=0.01)
    assert recorder.kinds(delayed)[0] == ("scheduled", "enqueued")


async def test_bad_enqueue_input(storage: jobs.Storage) -> None:
    server = make_server(storage, jobs.WorkerRegistry())
    with pytest.raises(TypeError, match="JSON"):
        await server.enqueue("echo", {"when": datetime.now(UTC)})
    with pytest.raises(TypeError, match="JSON"):
        await server.enqueue("echo", {1, 2})
    assert not any((await storage.count_by_state()).values())
    assert await storage.list_jobs() == []
    with pytest.raises(ValueError, match="delay or run_at, not both"):
        await server.enqueue("echo", None, delay=1.0, run_at=datetime.now(UTC))
    with pytest.raises(ValueError, match="delay"):
        await server.enqueue("echo", None, delay=-1.0)
    with pytest.raises(ValueError, match="naive"):
        await server.enqueue("echo", None, run_at=datetime.now())
    with pytest.raises(ValueError, match="method"):
        await server.enqueue("", None)
    assert await storage.list_jobs() == []


async def test_unknown_method_fails_naming_it(storage: jobs.Storage) -> None:
    recorder = Recorder()
    server = make_server(storage, jobs.WorkerRegistry(), recorder)
    async with running(server):
        job_id = await server.enqueue("no_such_method", None)
        change = await recorder.wait_state(job_id, jobs.Failed)
    assert isinstance(change.new, jobs.Failed)
    assert "no_such_method" in change.new.error
    job = await storage.get(job_id)
    assert job is not None
    assert job.attempts == 1
    assert isinstance(job.state, jobs.Failed)


async def test_non_json_result_is_stored_as_none_with_a_warning(
    storage: jobs.Storage, caplog: pytest.LogCaptureFixture
) -> None:
    workers = jobs.WorkerRegistry()

    class Opaque:
        pass

    @workers.worker("opaque")
    async def opaque(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return Opaque()

    recorder = Recorder()
    server = make_server(storage, workers, recorder)
    with caplog.at_level(logging.WARNING, logger="trio_monitor.jobs"):
        async with running(server):
            job_id = await server.enqueue("opaque", None)
            await recorder.wait_state(job_id, jobs.Succeeded)
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert job.state.result is None
    assert "Opaque" in caplog.text


async def test_a_raising_hook_is_logged_and_ignored(
    storage: jobs.Storage, caplog: pytest.LogCaptureFixture
) -> None:
    workers, _ = echo_workers()
    calls: list[str] = []
    succeeded = trio.Event()

    def bad_hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        calls.append(new.name)
        if isinstance(new, jobs.Succeeded):
            succeeded.set()
        raise RuntimeError("hook bug")

    server = jobs.JobServer(fast_config(), storage, workers, on_state_change=bad_hook)
    async with running(server):
        job_id = await server.enqueue("echo", 1)
        with trio.fail_after(10):
            await succeeded.wait()
        assert server.is_running
    assert calls == ["processing", "succeeded"]
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Succeeded)
    assert "hook raised" in caplog.text


async def test_delete(storage: jobs.Storage) -> None:
    server = make_server(storage, jobs.WorkerRegistry(), worker_count=0)
    job_id = await server.enqueue("echo", 1, delay=100)
    assert await server.delete(job_id)
    job = await storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Deleted)
    assert job.expires_at is not None
    assert not await server.delete("no-such-id")


# -- recurring -----------------------------------------------------------------


async def test_cron_job_is_enqueued_once_per_occurrence_with_two_servers(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    runs: list[tuple[float, str]] = []

    @workers.worker("tick")
    async def tick(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs.append((trio.current_time(), ctx.server_name))
        return None

    one = make_server(memory_storage, workers, server_name="one", recurring_poll_interval=0.3)
    two = make_server(memory_storage, workers, server_name="two", recurring_poll_interval=0.7)
    async with running(one), running(two):
        await one.schedule_recurring("every-2s", "*/2 * * * * *", "tick", {"n": 1})
        await trio.sleep(20.5)
    made = await memory_storage.list_jobs()
    assert 9 <= len(made) <= 11
    created = sorted(job.created_at for job in made)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(created)]
    assert min(gaps) > 1.0  # no occurrence enqueued twice
    assert all(isinstance(job.state, jobs.Succeeded) for job in made)
    assert all(job.payload == {"n": 1} for job in made)
    assert len(runs) == len(made)


async def test_schedule_recurring_refuses_bad_cron_and_removes(storage: jobs.Storage) -> None:
    server = make_server(storage, jobs.WorkerRegistry())
    with pytest.raises(ValueError, match="minute"):
        await server.schedule_recurring("r", "0 61 * * * *", "tick", None)
    with pytest.raises(ValueError, match="six"):
        await server.schedule_recurring("r", "* * * * *", "tick", None)
    with pytest.raises(TypeError, match="JSON"):
        await server.schedule_recurring("r", "* * * * * *", "tick", object())
    assert await storage.list_recurring() == []
    await server.schedule_recurring("r", "0 0 8 * * MON", "tick", {"a": 1}, queue="mail")
    (stored,) = await storage.list_recurring()
    assert stored.cron == "0 0 8 * * MON"
    assert stored.queue == "mail"
    assert stored.next_run_at.weekday() == 0  # a Monday
    assert (stored.next_run_at.hour, stored.next_run_at.minute) == (8, 0)
    assert await server.remove_recurring("r")
    assert not await server.remove_recurring("r")


# -- cleanup -------------------------------------------------------------------


async def test_finished_jobs_expire_after_their_ttl(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("ok")
    async def ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return None

    @workers.worker("bad")
    async def bad(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        raise ValueError("bad")

    recorder = Recorder()
    server = make_server(
        memory_storage,
        workers,
        recorder,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
        succeeded_ttl=100.0,
        failed_ttl=200.0,
        cleanup_interval=1.0,
    )
    async with running(server):
        good = await server.enqueue("ok", None)
        failed = await server.enqueue("bad", None)
        await recorder.wait_state(good, jobs.Succeeded, within=1000)
        await recorder.wait_state(failed, jobs.Failed, within=1000)
        job = await memory_storage.get(good)
        assert job is not None
        assert job.expires_at == server.now() + timedelta(seconds=100)
        await trio.sleep(99)
        assert await memory_storage.get(good) is not None
        await trio.sleep(2)
        assert await memory_storage.get(good) is None
        assert await memory_storage.get(failed) is not None
        await trio.sleep(100)
        assert await memory_storage.get(failed) is None


# -- heartbeat and reclaim -----------------------------------------------------


async def test_heartbeat_reclaims_a_dead_servers_job(storage: jobs.Storage) -> None:
    workers, seen = echo_workers()
    recorder = Recorder()
    now = datetime.now(UTC)
    dead = jobs.ServerInfo(
        id="dead#1",
        name="dead",
        worker_count=1,
        queues=["default"],
        started_at=now - timedelta(hours=2),
        last_heartbeat=now - timedelta(hours=1),
    )
    await storage.register_server(dead)
    orphan = jobs.Job.new("echo", "orphan")
    orphan.state = jobs.Processing(now, "dead:worker:0", "dead#1")  # recent: not stale
    orphan.attempts = 1
    await storage.enqueue(orphan)
    server = make_server(storage, workers, recorder, enable_heartbeat=True, dead_server_timeout=5.0)
    async with running(server):
        identity = server.server_id
        assert identity is not None
        assert identity.startswith("test#")
        await recorder.wait_state(orphan.id, jobs.Succeeded)
        # The pass that requeued the orphan removes the dead row right after;
        # the requeued job may finish first.
        with trio.fail_after(10):
            # Registered; the dead row is gone.
            while {info.id for info in await storage.list_servers()} != {identity}:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert await storage.list_servers() == []  # deregistered on stop
    job = await storage.get(orphan.id)
    assert job is not None
    assert job.attempts == 2
    # The requeue, the claim it wakes and the outcome are reported by
    # different tasks (the liveness sweep's hook may run after the worker's),
    # so only their presence is certain, not their order.
    kinds = recorder.kinds(orphan.id)
    assert ("processing", "enqueued") in kinds
    assert len(kinds) == 3, kinds
    (claim,) = [change for change in recorder.of(orphan.id) if change.old.name == "enqueued"]
    assert isinstance(claim.new, jobs.Processing)
    assert claim.new.server_name == identity
    assert [j.payload for j in seen] == ["orphan"]


async def test_a_dead_server_with_more_jobs_than_a_listing_page_has_all_reclaimed(
    storage: jobs.Storage,
) -> None:
    # The liveness sweep lists Processing jobs unpaged: a client listing
    # pages by 100, and a sweep that saw only one page would leave the rest
    # of a dead server's jobs in Processing.
    now = datetime.now(UTC)
    await storage.register_server(
        jobs.ServerInfo(
            id="dead#1",
            name="dead",
            worker_count=250,
            queues=["default"],
            started_at=now - timedelta(hours=2),
            last_heartbeat=now - timedelta(hours=1),
        )
    )
    orphans: list[jobs.Job] = []
    for index in range(250):
        orphan = jobs.Job.new("echo", index)
        # Claimed long ago by a long-silent server: the start-up sweep takes them.
        orphan.state = jobs.Processing(now - timedelta(hours=1), f"dead:worker:{index}", "dead#1")
        orphan.attempts = 1
        orphans.append(orphan)
    await storage.enqueue_many(orphans)
    assert len(await jobs.Client(storage).list_jobs(state=jobs.Processing)) == 100  # one page
    server = make_server(storage, jobs.WorkerRegistry(), worker_count=0, dead_server_timeout=5.0)
    async with running(server):
        pass  # the start-up sweep is done once run() has started
    left = await storage.list_jobs(state=jobs.Processing)
    assert left == []
    requeued = await storage.list_jobs(state=jobs.Enqueued)
    assert {job.id for job in requeued} == {job.id for job in orphans}
    assert {job.attempts for job in requeued} == {1}  # the attempt they used stays counted


async def test_heartbeat_registers_again_when_its_row_is_gone(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    server = make_server(
        memory_storage, jobs.WorkerRegistry(), enable_heartbeat=True, heartbeat_interval=1.0
    )
    async with running(server):
        identity = server.server_id
        assert identity is not None
        (info,) = await memory_storage.list_servers()
        assert info.id == identity
        await memory_storage.deregister_server(identity)
        await trio.sleep(1.5)
        (info,) = await memory_storage.list_servers()
        assert info.id == identity
        assert info.last_heartbeat >= server.now() - timedelta(seconds=1.5)


async def test_late_finisher_does_not_overwrite_a_reclaimed_job(
    storage: jobs.Storage, caplog: pytest.LogCaptureFixture
) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()
    release = trio.Event()

    @workers.worker("late")
    async def late(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await release.wait()
        return "late result"

    server = make_server(storage, workers, worker_count=1)
    async with running(server):
        job_id = await server.enqueue("late", None)
        await started.wait()
        # Meanwhile the job is taken away (a peer reclaimed it, then it was
        # retried elsewhere and failed for good).
        current = await storage.get(job_id)
        assert current is not None
        (taken,) = await storage.apply(
            [jobs.Transition(job_id, current.version, jobs.Failed("finished elsewhere"))]
        )
        assert taken is not None
        release.set()
    # stop() has written (or tried to write) every outcome.
    assert "dropped" in caplog.text
    job = await storage.get(job_id)
    assert job is not None
    assert job.state == jobs.Failed("finished elsewhere")


async def test_gives_up_on_a_job_reclaimed_more_than_max_attempts(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    calls: list[int] = []

    @workers.worker("crasher")
    async def crasher(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        calls.append(1)
        return None

    recorder = Recorder()
    server = make_server(storage, workers, recorder)
    job = jobs.Job.new("crasher", None)
    job.attempts = 3  # three claims already, each lost with its process
    await storage.enqueue(job)
    async with running(server):
        change = await recorder.wait_state(job.id, jobs.Failed)
    assert isinstance(change.new, jobs.Failed)
    assert "gave up after 3 attempts" in change.new.error
    assert calls == []


# -- configuration -------------------------------------------------------------


def test_server_config_defaults() -> None:
    config = jobs.ServerConfig()
    assert config.server_name == "qml-server"
    assert config.worker_count == 5
    assert config.polling_interval == 1.0
    assert config.job_timeout == 300.0
    assert config.queues == ["default"]
    assert config.fetch_batch_size == 10
    assert config.enable_scheduler is True
    assert config.scheduler_poll_interval == 30.0
    assert config.shutdown_timeout == 30.0
    assert config.stale_processing_after == 300.0
    assert config.enable_recurring is True
    assert config.recurring_poll_interval == 5.0
    assert config.enable_cleanup is True
    assert config.cleanup_interval == 60.0
    assert config.succeeded_ttl == 86400.0
    assert config.failed_ttl == 604800.0
    assert config.enable_heartbeat is True  # SPEC 4b: liveness on by default
    assert config.heartbeat_interval == 10.0
    assert config.dead_server_timeout == 60.0
    assert jobs.ServerConfig(worker_count=0).worker_count == 0
    assert jobs.ServerConfig(queues=[]).queues == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("worker_count", -1),
        ("fetch_batch_size", 0),
        ("fetch_batch_size", -3),
        ("polling_interval", 0),
        ("polling_interval", -1.0),
        ("job_timeout", 0.0),
        ("scheduler_poll_interval", -5),
        ("recurring_poll_interval", 0),
        ("cleanup_interval", 0),
        ("heartbeat_interval", 0),
        ("dead_server_timeout", -1),
        ("stale_processing_after", 0),
        ("shutdown_timeout", -1),
        ("succeeded_ttl", -1),
        ("failed_ttl", float("nan")),
        ("server_name", ""),
    ],
)
def test_server_config_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        jobs.ServerConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("worker_count", "3"),
        ("worker_count", 2.0),
        ("worker_count", True),
        ("polling_interval", "1"),
        ("succeeded_ttl", "1d"),  # None is valid: kept for ever (SPEC 6)
        ("server_name", 7),
        ("queues", ["a", 3]),
        ("queues", "default"),
    ],
)
def test_server_config_refuses_wrong_types_with_type_error(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        jobs.ServerConfig(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["succeeded_ttl", "failed_ttl", "job_timeout"])
@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_server_config_refuses_durations_no_datetime_holds(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        jobs.ServerConfig(**{field: value})  # type: ignore[arg-type]


def test_server_config_is_frozen() -> None:
    config = jobs.ServerConfig()
    with pytest.raises(AttributeError):
        config.worker_count = 3  # type: ignore[misc]


def test_job_server_refuses_wrong_arguments() -> None:
    with pytest.raises(TypeError, match="ServerConfig"):
        jobs.JobServer(object(), MemoryStorage(), jobs.WorkerRegistry())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Storage"):
        jobs.JobServer(jobs.ServerConfig(), object(), jobs.WorkerRegistry())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="WorkerRegistry"):
        jobs.JobServer(jobs.ServerConfig(), MemoryStorage(), {})  # type: ignore[arg-type]


async def test_worker_count_zero_only_schedules(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    server = make_server(memory_storage, jobs.WorkerRegistry(), recorder, worker_count=0)
    async with running(server):
        job_id = await server.enqueue("x", None, delay=1.0)
        await recorder.wait_state(job_id, jobs.Enqueued, within=1000)
        await trio.sleep(10)
    job = await memory_storage.get(job_id)
    assert job is not None
    assert isinstance(job.state, jobs.Enqueued)  # promoted, never claimed
    assert FAST["polling_interval"] < 1
