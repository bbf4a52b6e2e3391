"""The job server at its edges: hostile jobs, stops, time, bad input, failing storage.

One regression test per case of "hold every promise at the edges"; the
classes are pinned by the properties in test_server_edge_properties.py.
Tests taking ``memory_storage`` and ``autojump_clock`` run in virtual time
(with a :class:`~trio_monitor.jobs.TrioWallClock`); tests taking
``storage`` run on every backend on the real clock.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from tests.hostile import Misbehaviour, UnprintableError, run_misbehaving
from tests.jobs.faulty import Fault, FaultyStorage
from tests.jobs.server_helpers import Recorder, fast_config, make_server, running
from trio_monitor import jobs
from trio_monitor._validate import MAX_SECONDS
from trio_monitor.jobs._model import utcnow
from trio_monitor.jobs._processor import MAX_ERROR_CHARS

#: Every way a job may misbehave while cancelled, but blocking in a thread
#: (which MockClock cannot wait for; tested on the real clock below).
#: Less than the shortest backoff before a task's replacement (0.5 s, -25 %).
ERROR_BACKOFF_FLOOR = 0.375

IN_TRIO = [how for how in Misbehaviour if how is not Misbehaviour.BLOCK_IN_THREAD]


#: One worker, "ok", that returns its payload.
OK_WORKERS = jobs.WorkerRegistry()


@OK_WORKERS.worker("ok")
async def _ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    return job.payload


def misbehaving_workers(how: Misbehaviour, started: trio.Event) -> jobs.WorkerRegistry:
    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await run_misbehaving(how, math.inf)
        return "returned"

    return workers


async def stored(storage: jobs.Storage, job_id: str) -> jobs.Job:
    job = await storage.get(job_id)
    assert job is not None
    return job


# -- intentional stops are never failures (SPEC 4b) ------------------------------


async def stop_mid_job(
    storage: jobs.Storage,
    workers: jobs.WorkerRegistry,
    started: trio.Event,
    *,
    cancel: bool = False,
    shutdown_timeout: float = 1.0,
) -> None:
    """Run the job ``job`` once (with max_attempts=1) and stop its server mid-run.

    ``stop()`` past ``shutdown_timeout``, or (``cancel``) an outer
    cancellation. Then check the job was put back with its attempt uncounted.
    """
    recorder = Recorder()
    server = make_server(
        storage,
        workers,
        recorder,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
        worker_count=1,
        shutdown_timeout=shutdown_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("job", None)
        await started.wait()
        if cancel:
            nursery.cancel_scope.cancel()
        else:
            await server.stop()
    assert not server.is_running
    job = await stored(storage, job_id)
    assert isinstance(job.state, jobs.Enqueued), job.state
    assert job.attempts == 0
    assert recorder.kinds(job_id) == [("enqueued", "processing"), ("processing", "enqueued")]


@pytest.mark.parametrize("cancel", [False, True], ids=["stop", "outer-cancel"])
@pytest.mark.parametrize("how", IN_TRIO, ids=[how.value for how in IN_TRIO])
async def test_an_intentional_stop_is_never_a_failed_attempt(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    how: Misbehaviour,
    cancel: bool,
) -> None:
    started = trio.Event()
    await stop_mid_job(memory_storage, misbehaving_workers(how, started), started, cancel=cancel)


async def test_a_reset_in_finally_during_a_stop_is_requeued_on_every_backend(
    storage: jobs.Storage,
) -> None:
    started = trio.Event()
    workers = misbehaving_workers(Misbehaviour.RAISE_IN_FINALLY, started)
    await stop_mid_job(storage, workers, started, shutdown_timeout=0.05)


async def test_a_job_blocked_in_a_thread_at_the_stop_is_requeued(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()

    @workers.worker("job")
    async def in_thread(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        started.set()
        await trio.to_thread.run_sync(time.sleep, 0.3)  # deaf to cancellation
        return "late"

    await stop_mid_job(storage, workers, started, shutdown_timeout=0.05)


async def test_a_job_that_mutates_its_copy_is_still_requeued_as_claimed(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()
    started = trio.Event()

    @workers.worker("job")
    async def meddling(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        job.id, job.version, job.attempts = "someone-else", 99, 42
        started.set()
        await run_misbehaving(Misbehaviour.SWALLOW_AND_RETURN, math.inf)
        return None

    await stop_mid_job(memory_storage, workers, started)


# -- hostile exceptions ------------------------------------------------------------


class HugeError(Exception):
    def __str__(self) -> str:
        return "x" * 1_000_000


def raising_workers(exc: BaseException) -> jobs.WorkerRegistry:
    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        raise exc

    return workers


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (UnprintableError(), "UnprintableError: <unprintable UnprintableError>"),
        (RecursionError("maximum recursion depth exceeded"), "RecursionError: maximum"),
        (HugeError(), "HugeError: xxxx"),
    ],
    ids=["unprintable", "recursion", "huge"],
)
async def test_hostile_exceptions_fail_the_attempt_with_a_safe_bounded_text(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    exc: Exception,
    expected: str,
) -> None:
    recorder = Recorder()
    server = make_server(
        memory_storage,
        raising_workers(exc),
        recorder,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
    )
    async with running(server):
        job_id = await server.enqueue("job", None)
        change = await recorder.wait_state(job_id, jobs.Failed, within=100)
        assert server.is_running
    assert isinstance(change.new, jobs.Failed)
    assert change.new.error.startswith(expected)
    assert len(change.new.error) <= MAX_ERROR_CHARS + 40
    job = await stored(memory_storage, job_id)
    assert job.state == change.new


async def test_a_deep_result_is_stored_as_none_with_a_warning(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("deep")
    async def deep(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        result: list[Any] = []
        for _ in range(5_000):
            result = [result]
        return result

    recorder = Recorder()
    server = make_server(memory_storage, workers, recorder)
    async with running(server):
        job_id = await server.enqueue("deep", None)
        change = await recorder.wait_state(job_id, jobs.Succeeded, within=100)
    assert isinstance(change.new, jobs.Succeeded)
    assert change.new.result is None
    assert "not JSON-serialisable" in caplog.text


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
async def test_a_jobs_own_base_exception_counts_its_attempt_and_propagates(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock, exc_type: type
) -> None:
    recorder = Recorder()
    server = make_server(memory_storage, raising_workers(exc_type(3)), recorder)
    job_id = await server.enqueue("job", None)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
    assert info.group_contains(exc_type)
    assert not server.is_running
    job = await stored(memory_storage, job_id)
    # Counted (so max_attempts ends a job that kills its server), and written.
    assert job.attempts == 1
    assert isinstance(job.state, jobs.AwaitingRetry), job.state
    assert job.state.error.startswith(exc_type.__name__)


# -- timeouts hold for code that ignores cancellation --------------------------


async def test_a_job_swallowing_its_timeout_and_returning_is_failed(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("deaf")
    async def deaf(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await run_misbehaving(Misbehaviour.SWALLOW_AND_RETURN, math.inf)
        return "too late"

    recorder = Recorder()
    server = make_server(
        memory_storage,
        workers,
        recorder,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
        job_timeout=2.0,
    )
    async with running(server):
        job_id = await server.enqueue("deaf", None)
        change = await recorder.wait_state(job_id, jobs.Failed, within=100)
    assert change.new == jobs.Failed("TimeoutError: timed out after 2s")


async def test_a_job_in_a_thread_past_its_timeout_is_failed(storage: jobs.Storage) -> None:
    workers = jobs.WorkerRegistry()

    @workers.worker("thread")
    async def in_thread(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        await trio.to_thread.run_sync(time.sleep, 0.3)
        return "too late"

    recorder = Recorder()
    server = make_server(
        storage, workers, recorder, retry_policy=jobs.RetryPolicy(max_attempts=1), job_timeout=0.05
    )
    async with running(server):
        job_id = await server.enqueue("thread", None)
        change = await recorder.wait_state(job_id, jobs.Failed)
    assert change.new == jobs.Failed("TimeoutError: timed out after 0.05s")


# -- defence in depth: a bug never strands a job or stops the server ---------------


async def test_a_raising_hook_and_hostile_middleware_leave_the_server_running(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = OK_WORKERS

    async def hostile(job: jobs.Job, ctx: jobs.WorkerContext, call_next: Any) -> object:
        if job.payload == "break":
            raise UnprintableError
        return await call_next()

    recorder = Recorder()

    def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        recorder(job, old, new)
        raise UnprintableError

    server = jobs.JobServer(
        fast_config(worker_count=1),
        memory_storage,
        workers,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
        middleware=[hostile],
        on_state_change=hook,
        clock=jobs.TrioWallClock(),
    )
    async with running(server):
        broken = await server.enqueue("ok", "break")
        fine = await server.enqueue("ok", "fine")
        await recorder.wait_state(broken, jobs.Failed, within=100)
        await recorder.wait_state(fine, jobs.Succeeded, within=100)
        assert server.is_running
    assert (await stored(memory_storage, broken)).state == jobs.Failed(
        "UnprintableError: <unprintable UnprintableError>"
    )
    assert (await stored(memory_storage, fine)).state.name == "succeeded"


async def test_a_worker_dying_by_a_bug_is_replaced_and_its_job_put_back(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trio_monitor.jobs._processor import Processor

    real_process = Processor.process
    bugs = [RuntimeError("a bug in the bookkeeping")]

    async def buggy(self: Processor, job: jobs.Job, ctx: jobs.WorkerContext) -> jobs.Transition:
        if bugs:
            raise bugs.pop()
        return await real_process(self, job, ctx)

    monkeypatch.setattr(Processor, "process", buggy)
    workers = jobs.WorkerRegistry()

    @workers.worker("ok")
    async def ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        return ctx.attempt

    recorder = Recorder()
    server = make_server(memory_storage, workers, recorder, worker_count=1)
    async with running(server):
        job_id = await server.enqueue("ok", None)
        change = await recorder.wait_state(job_id, jobs.Succeeded, within=100)
        # The replacement worker goes on with more work.
        more = await server.enqueue("ok", None)
        await recorder.wait_state(more, jobs.Succeeded, within=100)
        assert server.is_running
    assert change.new == jobs.Succeeded(2, change.new.duration)  # type: ignore[union-attr]
    assert (await stored(memory_storage, job_id)).attempts == 2  # the lost attempt counts
    assert "died by a bug" in caplog.text
    assert "replacing it" in caplog.text
    # Logged once, by the server (its identity, what became of the job), not
    # a second time by the supervisor that restarts the task.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def _dying_process(
    monkeypatch: pytest.MonkeyPatch,
    die: Callable[[jobs.Job, jobs.WorkerContext], Awaitable[bool]],
) -> None:
    """Make the processor die by a bug (not a job failure) whenever ``die`` says so."""
    from trio_monitor.jobs._processor import Processor

    real_process = Processor.process

    async def buggy(self: Processor, job: jobs.Job, ctx: jobs.WorkerContext) -> jobs.Transition:
        if await die(job, ctx):
            raise RuntimeError("a bug in the bookkeeping")
        return await real_process(self, job, ctx)

    monkeypatch.setattr(Processor, "process", buggy)


async def test_a_task_dying_again_and_again_is_restarted_with_the_servers_backoff(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Far more deaths than a default supervisor tolerates (3 in 5 s): the
    # server's supervisor never gives up, it only backs off more and more.
    from trio_monitor.jobs._server import ERROR_BACKOFF

    deaths: list[float] = []

    async def die(job: jobs.Job, ctx: jobs.WorkerContext) -> bool:
        if len(deaths) < 6:
            deaths.append(trio.current_time())
            return True
        return False

    _dying_process(monkeypatch, die)
    recorder = Recorder()
    retries = jobs.RetryPolicy(max_attempts=10, initial_delay=0.01, jitter=0.0)
    server = make_server(memory_storage, OK_WORKERS, recorder, retries, worker_count=1)
    async with running(server):
        job_id = await server.enqueue("ok", "done")
        await recorder.wait_state(job_id, jobs.Succeeded, within=MAX_SECONDS)
        assert server.is_running
    assert len(deaths) == 6
    for n, (died, next_death) in enumerate(itertools.pairwise(deaths), start=1):
        # Jitter may shorten the wait by its fraction, never more; the
        # job's claim after the replacement adds a little.
        shortest = ERROR_BACKOFF.initial * ERROR_BACKOFF.multiplier ** (n - 1)
        assert next_death - died >= shortest * (1 - ERROR_BACKOFF.jitter)
    assert (await stored(memory_storage, job_id)).attempts == 7


async def test_a_replacement_backing_off_does_not_hold_up_the_stop(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    died = trio.Event()

    async def die(job: jobs.Job, ctx: jobs.WorkerContext) -> bool:
        died.set()
        return True

    _dying_process(monkeypatch, die)
    server = make_server(memory_storage, OK_WORKERS, worker_count=1, shutdown_timeout=MAX_SECONDS)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await server.enqueue("ok", None)
        await died.wait()
        # Its replacement waits a backoff (>= 0.375 s); the stop does not.
        began = trio.current_time()
        await server.stop()
        assert trio.current_time() - began < ERROR_BACKOFF_FLOOR
        assert not server.is_running


async def test_a_task_dying_while_the_server_stops_is_not_replaced(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = trio.Event()
    runs: list[str] = []

    async def die(job: jobs.Job, ctx: jobs.WorkerContext) -> bool:
        runs.append(job.id)
        started.set()
        await ctx.cancel.wait()  # dies only once the stop has begun
        return True

    _dying_process(monkeypatch, die)
    server = make_server(memory_storage, OK_WORKERS, worker_count=1, shutdown_timeout=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        job_id = await server.enqueue("ok", None)
        await started.wait()
        began = trio.current_time()
        await server.stop()
        # Neither the shutdown_timeout nor a backoff was waited for.
        assert trio.current_time() - began < ERROR_BACKOFF_FLOOR
    assert runs == [job_id]
    assert "not replaced: the server is stopping" in caplog.text
    job = await stored(memory_storage, job_id)
    assert job.state.name == "enqueued"
    assert job.attempts == 1  # put back, the attempt the bug used counted


# -- liveness ------------------------------------------------------------------------


def test_liveness_is_on_by_default_and_its_timing_is_checked() -> None:
    assert jobs.ServerConfig().enable_heartbeat is True
    for interval, timeout in [(10.0, 10.0), (60.0, 10.0)]:
        with pytest.raises(ValueError, match="heartbeat_interval") as info:
            jobs.ServerConfig(heartbeat_interval=interval, dead_server_timeout=timeout)
        assert "dead_server_timeout" in str(info.value)


async def test_a_dead_peers_jobs_are_reclaimed_while_the_server_runs(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    workers = OK_WORKERS

    recorder = Recorder()
    clock = jobs.TrioWallClock()
    server = make_server(
        memory_storage,
        workers,
        recorder,
        clock=clock,
        heartbeat_interval=1.0,
        dead_server_timeout=5.0,
        stale_processing_after=1000.0,
    )
    async with running(server):
        await trio.sleep(30)  # long after the startup sweep
        now = clock()
        # A peer registers, claims a job, and dies (a SIGKILL: its row stays).
        peer = jobs.ServerInfo("peer#1", "peer", 1, ["default"], now, now)
        await memory_storage.register_server(peer)
        orphan = jobs.Job.new("ok", "orphan", now=now)
        orphan.state = jobs.Processing(now, "peer:worker:0", "peer#1")
        orphan.attempts = 1
        await memory_storage.enqueue(orphan)
        # A server without heartbeats (no row) that died long ago.
        stale = jobs.Job.new("ok", "stale", now=now)
        stale.state = jobs.Processing(now - timedelta(seconds=2000), "old:worker:0", "old")
        stale.attempts = 1
        await memory_storage.enqueue(stale)
        start = trio.current_time()
        reclaimed = await recorder.wait_state(orphan.id, jobs.Enqueued, within=100)
        await recorder.wait_state(orphan.id, jobs.Succeeded, within=100)
        await recorder.wait_state(stale.id, jobs.Succeeded, within=100)
        assert [s.id for s in await memory_storage.list_servers()] == [server.server_id]
    # Dead once its heartbeat stood still for dead_server_timeout, not before.
    assert 5.0 <= reclaimed.at - start <= 5.0 + 2 * 1.0
    for job_id in (orphan.id, stale.id):
        job = await stored(memory_storage, job_id)
        assert job.attempts == 2  # the lost attempt stays counted


async def test_the_startup_sweep_reclaims_stale_claims_of_long_silent_rows_at_once(
    storage: jobs.Storage,
) -> None:
    workers = OK_WORKERS

    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    await storage.register_server(jobs.ServerInfo("gone#1", "gone", 1, [], hour_ago, hour_ago))
    stale = jobs.Job.new("ok", None, now=hour_ago)
    stale.state = jobs.Processing(hour_ago, "gone:worker:0", "gone#1")
    stale.attempts = 1
    await storage.enqueue(stale)
    # Claimed just now by a server whose row is an hour old: not stale yet.
    fresh = jobs.Job.new("ok", None, now=now)
    fresh.state = jobs.Processing(now, "gone:worker:1", "gone#1")
    await storage.enqueue(fresh)
    recorder = Recorder()
    server = make_server(
        storage, workers, recorder, clock=utcnow, worker_count=0, dead_server_timeout=600.0
    )
    async with running(server):
        # Before run() reported itself started: as SPEC 4 says.
        assert recorder.kinds(stale.id) == [("processing", "enqueued")]
        assert recorder.kinds(fresh.id) == []


async def test_a_claim_of_its_own_that_it_lost_is_requeued(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    # A job stored as claimed by this very server start, that none of its
    # workers holds (a release whose write failed, say).
    workers = OK_WORKERS

    recorder = Recorder()
    clock = jobs.TrioWallClock()
    server = make_server(memory_storage, workers, recorder, clock=clock, heartbeat_interval=1.0)
    async with running(server):
        identity = server.server_id
        assert identity is not None
        lost = jobs.Job.new("ok", "lost", now=clock())
        lost.state = jobs.Processing(clock(), "test:worker:0", identity)
        lost.attempts = 1
        await memory_storage.enqueue(lost)
        start = trio.current_time()
        requeued = await recorder.wait_state(lost.id, jobs.Enqueued, within=100)
        await recorder.wait_state(lost.id, jobs.Succeeded, within=100)
    assert requeued.at - start <= 2 * 1.0
    assert (await stored(memory_storage, lost.id)).attempts == 2


@pytest.mark.parametrize("step", [120.0, -120.0])
async def test_a_wall_clock_step_never_makes_a_live_server_look_dead(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock, step: float
) -> None:
    runs: dict[str, int] = {}
    workers = jobs.WorkerRegistry()

    @workers.worker("long")
    async def long(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        runs[job.id] = runs.get(job.id, 0) + 1
        await trio.sleep(30)  # much longer than dead_server_timeout
        return None

    timing = {"heartbeat_interval": 1.0, "dead_server_timeout": 5.0, "job_timeout": 100.0}
    stepped = jobs.TrioWallClock()
    steady = jobs.TrioWallClock()
    recorder = Recorder()
    a = make_server(memory_storage, workers, recorder, clock=stepped, server_name="a", **timing)
    b = make_server(memory_storage, workers, recorder, clock=steady, server_name="b", **timing)
    async with running(a), running(b):
        ids = [await a.enqueue("long", i) for i in range(4)]
        await trio.sleep(10)
        stepped.step(step)  # an NTP correction on one server, mid-run
        await trio.sleep(10)
        stepped.step(-step)  # and back
        for job_id in ids:
            await recorder.wait_state(job_id, jobs.Succeeded, within=200)
        assert {s.id for s in await memory_storage.list_servers()} == {a.server_id, b.server_id}
    assert runs == dict.fromkeys(ids, 1)
    assert not any(
        isinstance(c.old, jobs.Processing) and isinstance(c.new, jobs.Enqueued)
        for c in recorder.changes
    )


# -- durations and types -------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "succeeded_ttl",
        "failed_ttl",
        "job_timeout",
        "polling_interval",
        "shutdown_timeout",
        "stale_processing_after",
        "dead_server_timeout",
    ],
)
@pytest.mark.parametrize("value", [math.inf, 1e12])
def test_durations_that_do_not_fit_a_datetime_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        jobs.ServerConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("worker_count", "3"),
        ("worker_count", True),
        ("polling_interval", "1"),
        ("enable_heartbeat", 1),
        ("server_name", 7),
        ("queues", [1]),
    ],
)
def test_wrong_types_are_type_errors(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        jobs.ServerConfig(**{field: value})


def test_retry_policy_checks_types_and_clamps_infinite_delays() -> None:
    with pytest.raises(TypeError, match="max_attempts"):
        jobs.RetryPolicy(max_attempts=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial_delay"):
        jobs.RetryPolicy(initial_delay=math.inf)
    with pytest.raises(ValueError, match="multiplier"):
        jobs.RetryPolicy(multiplier=math.inf)
    policy = jobs.RetryPolicy(max_delay=math.inf, jitter=0.5)
    assert all(policy.delay(n) <= MAX_SECONDS for n in (1, 39, 40, 1_000, 10**6))


async def test_a_retry_policy_without_a_cap_never_overflows_in_the_server(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    policy = jobs.RetryPolicy(
        max_attempts=60, initial_delay=1.0, multiplier=1e6, max_delay=math.inf, jitter=0.0
    )
    slow = {name: 1000.0 for name in ("polling_interval", "scheduler_poll_interval")}
    server = make_server(
        memory_storage,
        raising_workers(ValueError("again")),
        recorder,
        retry_policy=policy,
        recurring_poll_interval=1000.0,
        cleanup_interval=1000.0,
        heartbeat_interval=1000.0,
        dead_server_timeout=5000.0,
        **slow,
    )
    async with running(server):
        job_id = await server.enqueue("job", None)
        # Waits of 1 s, 11 days, then 1e12 s: clamped to MAX_SECONDS, not an OverflowError.
        change = await recorder.wait_state(job_id, jobs.AwaitingRetry, count=3, within=2e6)
        assert server.is_running
    assert isinstance(change.new, jobs.AwaitingRetry)
    wait = (change.new.retry_at - server.now()).total_seconds()
    assert MAX_SECONDS * 0.99 <= wait <= MAX_SECONDS


async def test_enqueue_refuses_delays_that_do_not_fit(memory_storage: jobs.Storage) -> None:
    server = make_server(memory_storage, jobs.WorkerRegistry())
    for delay in (math.inf, 1e12, -1.0, math.nan):
        with pytest.raises(ValueError, match="delay"):
            await server.enqueue("x", None, delay=delay)
    with pytest.raises(TypeError, match="delay"):
        await server.enqueue("x", None, delay="soon")  # type: ignore[arg-type]
    assert await memory_storage.list_jobs() == []


async def test_a_ttl_of_none_keeps_finished_jobs_for_ever(
    memory_storage: jobs.Storage, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    slow = dict.fromkeys(
        ("polling_interval", "scheduler_poll_interval", "recurring_poll_interval"), 600.0
    )
    server = make_server(
        memory_storage,
        raising_workers(ValueError("no")),
        recorder,
        retry_policy=jobs.RetryPolicy(max_attempts=1),
        succeeded_ttl=None,
        failed_ttl=None,
        cleanup_interval=600.0,
        heartbeat_interval=600.0,
        dead_server_timeout=3600.0,
        **slow,
    )
    async with running(server):
        job_id = await server.enqueue("job", None)
        await recorder.wait_state(job_id, jobs.Failed, within=100)
        await trio.sleep(30 * 86400.0)  # a month of cleanup sweeps, past every default TTL
    job = await stored(memory_storage, job_id)
    assert isinstance(job.state, jobs.Failed)
    assert job.expires_at is None


# -- storage closed, down or hanging ----------------------------------------------------


async def test_a_server_on_a_closed_storage_raises_closed_resource_error(
    storage: jobs.Storage,
) -> None:
    await storage.aclose()
    server = make_server(storage, jobs.WorkerRegistry())
    with trio.fail_after(10), pytest.raises(trio.ClosedResourceError):
        await server.run()  # raises before it would report itself started
    assert not server.is_running


async def test_a_storage_closed_under_a_running_server_stops_it_with_the_error(
    storage: jobs.Storage,
) -> None:
    server = make_server(storage, jobs.WorkerRegistry())
    with trio.fail_after(10), pytest.RaisesGroup(trio.ClosedResourceError):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await storage.aclose()
    assert not server.is_running


@pytest.mark.parametrize("fault", [Fault.DOWN, Fault.HANG])
async def test_loops_back_off_while_storage_is_down_and_the_stop_is_bounded(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
) -> None:
    caplog.set_level(logging.ERROR, logger="trio_monitor")
    storage = FaultyStorage(memory_storage)
    workers = OK_WORKERS

    recorder = Recorder()
    server = make_server(storage, workers, recorder, shutdown_timeout=2.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        storage.fault = fault
        await trio.sleep(600)
        assert server.is_running
        calls = sum(storage.calls.values())
        if fault is Fault.DOWN:
            # Backing off (to 30 s), not spinning: a few calls per loop a minute.
            assert 0 < calls < 8 * 6 * 10
            assert "retrying in" in caplog.text
        start = trio.current_time()
        await server.stop()
        took = trio.current_time() - start
    assert not server.is_running
    assert took <= 2.0 + 3 * 5.0 + 1.0
    # Back up: a new start works again.
    storage.fault = Fault.NONE
    async with running(server):
        job_id = await server.enqueue("ok", None)
        await recorder.wait_state(job_id, jobs.Succeeded, within=100)


# -- recurring ----------------------------------------------------------------------------


async def test_a_stored_cron_that_cannot_be_evaluated_is_skipped_not_fatal(
    memory_storage: jobs.Storage,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = jobs.TrioWallClock()
    recorder = Recorder()
    server = make_server(
        memory_storage, jobs.WorkerRegistry(), recorder, clock=clock, worker_count=0
    )
    await server.schedule_recurring("good", "* * * * * *", "tick", {})
    # Stored by hand (or by an older version): not a valid expression.
    await memory_storage.upsert_recurring(
        jobs.RecurringJob("bad", "61 * * * * *", "tick", {}, "default", clock())
    )
    async with running(server):
        await trio.sleep(5.5)
        made = await memory_storage.list_jobs()
    assert len(made) >= 4  # the good template went on, once a second
    assert "cannot be evaluated" in caplog.text
    (bad,) = [r for r in await memory_storage.list_recurring() if r.id == "bad"]
    assert bad.next_run_at > clock() + timedelta(days=365 * 90)
