"""Tests of the background runtime (SPEC section 2).

The first part ports the seed's (spikard ``background.rs``) 53 tests to Trio,
on the autojump mock clock, in the seed's order; each port names its original.
Where the seed only checked "no more than" or "shutdown is ok", the port
checks the exact figure our runtime guarantees (FIFO start order, exact peaks,
exact metrics).

Dropped seed tests (4), all about Rust-only details:

* ``test_error_from_string_conversion``, ``test_error_from_owned_string``,
  ``test_borrowed_str_conversion``, ``test_background_job_error_with_string_slice``:
  they test the ``From<&str>``/``From<String>`` conversions of the seed's
  ``BackgroundJobError`` type. A Python job fails by raising any exception;
  there is no error type to convert into (failure reporting is tested below).

Ported in spirit rather than letter: ``test_metrics_inc_dec_operations`` and
``test_background_metrics_concurrent_increments`` test the seed's private
atomic counter struct; the ports check the same counters through the public
``metrics()`` while jobs move through their states. The two metadata tests
check the default name (the function's qualified name) and a custom name and
request id where they are observable: in logs and failure reports.

The second part tests every guarantee of the contract and of this design.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_monitor as tm
from tests.channels import drain_nowait
from tests.hostile import Misbehaviour, assert_reported_readably, raise_unprintable, run_misbehaving
from trio_monitor._runtime import _Engine

Clock = trio.testing.MockClock


async def nothing() -> None:
    pass


async def fail(message: str = "intentional failure") -> None:
    raise RuntimeError(message)


class Barrier:
    """tokio's Barrier: ``wait()`` returns once ``parties`` tasks called it."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.all_here = trio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.all_here.set()
        await self.all_here.wait()


class Peak:
    """Tracks how many jobs run at once, and the most at any moment."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def job(self, seconds: float) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            self.now += 1
            self.most = max(self.most, self.now)
            try:
                await trio.sleep(seconds)
            finally:
                self.now -= 1

        return job


def config(
    queue: int = 1024, workers: int = 128, drain: float = 30.0, **kw: Any
) -> tm.RuntimeConfig:
    return tm.RuntimeConfig(
        max_queue_size=queue, max_concurrent_tasks=workers, drain_timeout=drain, **kw
    )


def counting(
    counter: list[int], sleep: float = 0, fails: bool = False
) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        if sleep:
            await trio.sleep(sleep)
        counter[0] += 1
        if fails:
            raise RuntimeError("intentional failure")

    return job


# --- the seed's tests, in Trio idiom ------------------------------------------


async def test_basic_spawn_and_execution(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        runtime.handle().spawn(counting(count))
        await trio.sleep(0.1)
        assert count == [1]
        await runtime.shutdown()


async def test_multiple_tasks(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        handle = runtime.handle()
        for _ in range(10):
            handle.spawn(counting(count))
        await trio.sleep(0.2)
        assert count == [10]
        await runtime.shutdown()


async def test_task_with_metadata(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        runtime.handle().spawn(counting(count), name="test_task", request_id="req-123")
        await trio.sleep(0.1)
        assert count == [1]
        await runtime.shutdown()


async def test_queue_full_error(autojump_clock: Clock) -> None:
    barrier = Barrier(3)

    async def job() -> None:
        await barrier.wait()
        await trio.sleep(1)

    async with tm.open_runtime(config(queue=2, workers=10, drain=5)) as runtime:
        handle = runtime.handle()
        for _ in range(2):
            handle.spawn(job)
        with pytest.raises(tm.QueueFull):
            handle.spawn(nothing)
        await barrier.wait()
        await trio.sleep(0.1)
        await runtime.shutdown()


async def test_task_failure_handling(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        runtime.handle().spawn(counting(count, fails=True))
        await trio.sleep(0.1)
        assert count == [1]
        await runtime.shutdown()
    assert runtime.metrics().failed == 1


async def test_concurrency_limit_with_proper_synchronization(autojump_clock: Clock) -> None:
    peak = Peak()
    async with tm.open_runtime(config(queue=100, workers=2)) as runtime:
        for _ in range(5):
            runtime.handle().spawn(peak.job(0.1))
        await trio.sleep(0.7)
        assert peak.most == 2
        await runtime.shutdown()


async def test_graceful_shutdown(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=10, workers=2, drain=5)) as runtime:
        runtime.handle().spawn(counting(count, sleep=0.05))
        await trio.sleep(0.2)
        await runtime.shutdown()
        assert count == [1]


async def test_shutdown_timeout(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(queue=10, workers=2, drain=1)) as runtime:
        runtime.handle().spawn(trio.sleep, 5)
        await trio.sleep(0.1)
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()


async def test_metrics_tracking(autojump_clock: Clock) -> None:
    barrier = Barrier(2)
    async with tm.open_runtime() as runtime:
        for _ in range(2):
            runtime.handle().spawn(barrier.wait)
        assert runtime.metrics().queued == 2
        await trio.sleep(0.15)
        await runtime.shutdown()
    metrics = runtime.metrics()
    assert (metrics.queued, metrics.running, metrics.succeeded, metrics.failed) == (0, 0, 2, 0)


async def test_task_cancellation_on_shutdown(autojump_clock: Clock) -> None:
    started = [0]

    async def job() -> None:
        started[0] += 1
        await trio.sleep(10)

    async with tm.open_runtime(config(queue=10, workers=2, drain=1)) as runtime:
        runtime.handle().spawn(job)
        await trio.sleep(0.1)
        assert started == [1]
        before = trio.current_time()
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()
        assert trio.current_time() - before == pytest.approx(1)


async def test_queue_overflow_multiple_spawns(autojump_clock: Clock) -> None:
    barrier = Barrier(4)

    async def job() -> None:
        await barrier.wait()
        await trio.sleep(0.1)

    async with tm.open_runtime(config(queue=3, workers=10, drain=5)) as runtime:
        handle = runtime.handle()
        for _ in range(3):
            handle.spawn(job)
        with pytest.raises(tm.QueueFull):
            handle.spawn(nothing)
        await barrier.wait()
        await trio.sleep(0.2)
        handle.spawn(nothing)
        await runtime.shutdown()


async def test_concurrent_task_execution_order(autojump_clock: Clock) -> None:
    order: list[int] = []

    async def job(i: int) -> None:
        order.append(i)

    async with tm.open_runtime() as runtime:
        for i in range(5):
            runtime.handle().spawn(job, i)
        await trio.sleep(0.2)
        assert order == [0, 1, 2, 3, 4]  # the seed only asked for all of them
        await runtime.shutdown()


async def test_background_job_metadata_default(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_runtime() as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(fail)
    [failure] = drain_nowait(failures)
    assert failure.task.name == "fail"
    assert "'fail'" in caplog.text
    assert "request id None" in caplog.text


async def test_background_job_metadata_custom(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_runtime() as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(fail, name="custom_task", request_id="req-456")
    [failure] = drain_nowait(failures)
    assert failure.task.name == "custom_task"
    assert "custom_task" in caplog.text
    assert "req-456" in caplog.text


async def test_metrics_inc_dec_operations(autojump_clock: Clock) -> None:
    gate = trio.Event()

    async def job() -> None:
        await gate.wait()
        raise RuntimeError("failed")

    async with tm.open_runtime(config(workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(job)
        handle.spawn(job)
        assert (runtime.metrics().queued, runtime.metrics().running) == (2, 0)
        await trio.testing.wait_all_tasks_blocked()
        assert (runtime.metrics().queued, runtime.metrics().running) == (1, 1)
        gate.set()
    metrics = runtime.metrics()
    assert (metrics.queued, metrics.running, metrics.failed) == (0, 0, 2)


async def test_spawn_error_display() -> None:
    assert str(tm.QueueFull()) == "background task queue is full"


async def test_background_config_default() -> None:
    cfg = tm.RuntimeConfig()
    assert (cfg.max_queue_size, cfg.max_concurrent_tasks, cfg.drain_timeout) == (1024, 128, 30.0)
    assert cfg.job_timeout is None


async def test_shutdown_with_zero_pending_tasks(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        before = trio.current_time()
        await runtime.shutdown()
        assert trio.current_time() == before


async def test_shutdown_with_only_running_tasks(autojump_clock: Clock) -> None:
    events: list[str] = []

    async def job() -> None:
        events.append("started")
        await trio.sleep(0.1)
        events.append("completed")

    async with tm.open_runtime(config(queue=10, workers=2, drain=5)) as runtime:
        runtime.handle().spawn(job)
        await trio.sleep(0.02)
        assert events == ["started"]
        await runtime.shutdown()
        assert events == ["started", "completed"]


async def test_shutdown_drains_queued_tasks(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=100, workers=1, drain=5)) as runtime:
        for _ in range(10):
            runtime.handle().spawn(counting(count, sleep=0.01))
        await runtime.shutdown()
        assert count == [10]


async def test_shutdown_timeout_force_stops_long_tasks(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=10, workers=2, drain=1)) as runtime:
        runtime.handle().spawn(counting(count, sleep=10))
        await trio.sleep(0.05)
        before = trio.current_time()
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()
        assert trio.current_time() - before == pytest.approx(1)
    await trio.sleep(20)
    assert count == [0]


async def test_multiple_shutdown_calls_idempotent(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        await runtime.shutdown()
        await runtime.shutdown()


async def test_spawn_after_all_senders_dropped_fails(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        handle = runtime.handle()
        await runtime.shutdown()
        await trio.sleep(0.05)
        with pytest.raises(tm.RuntimeClosed):
            handle.spawn(nothing)


async def test_concurrent_spawns_hit_semaphore_limit(autojump_clock: Clock) -> None:
    peak = Peak()
    async with tm.open_runtime(config(queue=100, workers=3, drain=10)) as runtime:
        for _ in range(5):
            runtime.handle().spawn(peak.job(0.2))
        await trio.sleep(0.1)
        assert (peak.now, peak.most) == (3, 3)
        await runtime.shutdown()
    assert runtime.metrics().succeeded == 5


async def test_task_panic_cleanup_still_occurs(autojump_clock: Clock) -> None:
    ran: list[str] = []

    async def failing() -> None:
        ran.append("failing")
        raise RuntimeError("simulated task failure")

    async def after() -> None:
        await trio.sleep(0.05)
        ran.append("after")

    async with tm.open_runtime() as runtime:
        runtime.handle().spawn(failing)
        runtime.handle().spawn(after)
        await trio.sleep(0.2)
        assert ran == ["failing", "after"]
        await runtime.shutdown()


async def test_queue_overflow_with_immediate_rejection(autojump_clock: Clock) -> None:
    barrier = Barrier(3)

    async def job() -> None:
        await barrier.wait()
        await trio.sleep(0.5)

    async with tm.open_runtime(config(queue=2, workers=100, drain=5)) as runtime:
        handle = runtime.handle()
        for _ in range(2):
            handle.spawn(job)
        with pytest.raises(tm.QueueFull):
            handle.spawn(nothing)
        await barrier.wait()
        await runtime.shutdown()


async def test_metrics_accuracy_under_concurrent_load(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=50, workers=5, drain=10)) as runtime:
        for _ in range(20):
            runtime.handle().spawn(counting(count, sleep=0.05))
        await runtime.shutdown()
        assert count == [20]
        assert runtime.metrics().succeeded == 20


async def test_drain_with_slowly_completing_tasks(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=50, workers=2, drain=10)) as runtime:
        for i in range(5):
            runtime.handle().spawn(counting(count, sleep=0.1 + i * 0.05))
        await runtime.shutdown()
        assert count == [5]


async def test_semaphore_starvation_doesnt_deadlock(autojump_clock: Clock) -> None:
    order: list[int] = []

    async def job(i: int) -> None:
        await trio.sleep(0.005)
        order.append(i)

    async with tm.open_runtime(config(queue=100, workers=1, drain=10)) as runtime:
        for i in range(10):
            runtime.handle().spawn(job, i)
        await runtime.shutdown()
        assert order == list(range(10))


async def test_cancel_task_mid_execution(autojump_clock: Clock) -> None:
    events: list[str] = []

    async def job() -> None:
        events.append("started")
        await trio.sleep(10)
        events.append("ended")

    async with tm.open_runtime(config(queue=10, workers=2, drain=1)) as runtime:
        runtime.handle().spawn(job)
        await trio.sleep(0.05)
        assert events == ["started"]
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()
        assert events == ["started"]


async def test_rapid_spawn_and_shutdown(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=1000, workers=10, drain=5)) as runtime:
        for _ in range(100):
            runtime.handle().spawn(counting(count))
        await runtime.shutdown()
        assert count == [100]  # the seed only asked for 0 < count <= 100


async def test_shutdown_with_mixed_success_and_failure_tasks(autojump_clock: Clock) -> None:
    ok, failed = [0], [0]
    async with tm.open_runtime() as runtime:
        for i in range(10):
            runtime.handle().spawn(counting(ok) if i % 2 == 0 else counting(failed, fails=True))
        await trio.sleep(0.2)
        await runtime.shutdown()
    assert (ok, failed) == ([5], [5])
    assert (runtime.metrics().succeeded, runtime.metrics().failed) == (5, 5)


async def test_concurrent_handle_clones_spawn_independently(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        handle = runtime.handle()

        async def spawner(handle: tm.RuntimeHandle) -> None:
            for _ in range(5):
                handle.spawn(counting(count))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(spawner, copy.copy(handle))
        await trio.sleep(0.2)
        await runtime.shutdown()
        assert count == [15]


async def test_queue_full_metrics_updated(autojump_clock: Clock) -> None:
    barrier = Barrier(3)

    async def job() -> None:
        await barrier.wait()
        await trio.sleep(1)

    async with tm.open_runtime(config(queue=2, workers=100, drain=5)) as runtime:
        handle = runtime.handle()
        for _ in range(2):
            handle.spawn(job)
        with pytest.raises(tm.QueueFull):
            handle.spawn(nothing)
        assert runtime.metrics().rejected == 1
        assert runtime.metrics().queued == 2
        await barrier.wait()
        await trio.sleep(0.1)
        await runtime.shutdown()
    assert runtime.metrics().rejected == 1


async def test_handle_persistence_across_spawns(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        handle = runtime.handle()
        for _ in range(5):
            handle.spawn(counting(count))
        await trio.sleep(0.15)
        assert count == [5]
        await runtime.shutdown()


async def test_shutdown_with_queue_at_capacity(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=5, workers=1, drain=10)) as runtime:
        for _ in range(5):
            runtime.handle().spawn(counting(count, sleep=0.02))
        assert runtime.metrics().queued == 5
        await runtime.shutdown()
        assert count == [5]


async def test_metadata_preserved_through_execution(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    count = [0]
    async with tm.open_runtime() as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(
            counting(count, fails=True), name="test_metadata_task", request_id="req-metadata-123"
        )
        await trio.sleep(0.1)
        assert count == [1]
        await runtime.shutdown()
    [failure] = drain_nowait(failures)
    assert failure.task.name == "test_metadata_task"
    [record] = [r for r in caplog.records if r.name == "trio_monitor.runtime"]
    assert "test_metadata_task" in record.getMessage()
    assert "req-metadata-123" in record.getMessage()


async def test_very_short_drain_timeout_forces_stop(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(queue=10, workers=2, drain=0)) as runtime:
        runtime.handle().spawn(trio.sleep, 1)
        await trio.sleep(0.01)
        with pytest.raises(tm.ShutdownTimeout) as info:
            await runtime.shutdown()
    assert (info.value.cancelled, info.value.not_started) == (1, 0)


async def test_spawn_many_tasks_sequential_drain(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=200, workers=2, drain=15)) as runtime:
        for _ in range(50):
            runtime.handle().spawn(counting(count, sleep=0.001))
        await runtime.shutdown()
        assert count == [50]


async def test_no_deadlock_with_max_concurrency_barrier(autojump_clock: Clock) -> None:
    barrier = Barrier(4)

    async def job() -> None:
        await barrier.wait()
        await trio.sleep(0.05)

    async with tm.open_runtime(config(queue=100, workers=3, drain=10)) as runtime:
        for _ in range(3):
            runtime.handle().spawn(job)
        await barrier.wait()
        await trio.sleep(0.1)
        await runtime.shutdown()
    assert runtime.metrics().succeeded == 3


async def test_phase1_semaphore_acquisition_with_concurrent_load(autojump_clock: Clock) -> None:
    barrier = Barrier(2)
    count = [0]

    async def blocker() -> None:
        await barrier.wait()
        await trio.sleep(0.1)

    async with tm.open_runtime(config(queue=50, workers=1, drain=10)) as runtime:
        runtime.handle().spawn(blocker)
        await trio.sleep(0.05)
        for _ in range(3):
            runtime.handle().spawn(counting(count))
        assert count == [0]
        await barrier.wait()
        await trio.sleep(0.25)
        assert count == [3]
        await runtime.shutdown()


async def test_concurrent_task_completion_race_conditions(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=100, workers=8, drain=10)) as runtime:
        for i in range(50):
            runtime.handle().spawn(counting(count, sleep=(i * 11 % 100) / 1000))
        await runtime.shutdown()
        assert count == [50]


async def test_failure_metric_tracking_under_concurrent_errors(autojump_clock: Clock) -> None:
    ok, failed = [0], [0]
    async with tm.open_runtime(config(queue=50, workers=5, drain=10)) as runtime:
        for i in range(20):
            runtime.handle().spawn(counting(failed, fails=True) if i % 3 == 0 else counting(ok))
        await runtime.shutdown()
    assert (ok, failed) == ([13], [7])
    assert (runtime.metrics().succeeded, runtime.metrics().failed) == (13, 7)


async def test_handle_clone_isolation_concurrent_spawns(autojump_clock: Clock) -> None:
    counts = [[0] for _ in range(5)]
    async with tm.open_runtime(config(queue=100, workers=4, drain=10)) as runtime:

        async def spawner(handle: tm.RuntimeHandle, worker: int) -> None:
            for task in range(10):
                handle.spawn(counting(counts[worker], sleep=((worker * 10 + task) % 50) / 1000))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for worker in range(5):
                nursery.start_soon(spawner, runtime.handle(), worker)
        await runtime.shutdown()
    assert counts == [[10]] * 5


async def test_spawn_error_display_formatting() -> None:
    error = tm.QueueFull()
    assert f"{error}" == "background task queue is full"
    assert isinstance(error, tm.SpawnError)
    assert isinstance(tm.RuntimeClosed(), tm.SpawnError)


async def test_background_metrics_concurrent_increments(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(workers=4)) as runtime:

        async def spawner(handle: tm.RuntimeHandle) -> None:
            for _ in range(10):
                handle.spawn(fail)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(spawner, runtime.handle())
    metrics = runtime.metrics()
    assert (metrics.queued, metrics.running, metrics.failed) == (0, 0, 100)


async def test_drain_phase_execution_with_lingering_senders(autojump_clock: Clock) -> None:
    count = [0]
    async with tm.open_runtime(config(queue=20, workers=2, drain=10)) as runtime:
        handle = runtime.handle()  # a handle still alive during the drain
        for _ in range(5):
            handle.spawn(counting(count, sleep=0.01))
        await runtime.shutdown()
        assert count == [5]


async def test_concurrent_queue_status_transitions(autojump_clock: Clock) -> None:
    transitions: list[tuple[str, int]] = []

    async def job(i: int) -> None:
        transitions.append(("spawned", i))
        await trio.sleep(0.05)
        transitions.append(("completed", i))

    async with tm.open_runtime(config(queue=10, workers=2, drain=10)) as runtime:
        for i in range(10):
            runtime.handle().spawn(job, i)
        await trio.sleep(0.3)
        await runtime.shutdown()
    assert sorted(i for action, i in transitions if action == "completed") == list(range(10))


async def test_semaphore_no_starvation_with_uneven_task_duration(autojump_clock: Clock) -> None:
    fast, slow = [0], [0]
    async with tm.open_runtime(config(queue=100, workers=2, drain=10)) as runtime:
        for _ in range(5):
            runtime.handle().spawn(counting(slow, sleep=0.1))
        await trio.sleep(0.01)
        for _ in range(5):
            runtime.handle().spawn(counting(fast, sleep=0.01))
        await runtime.shutdown()
    assert (fast, slow) == ([5], [5])


# --- configuration -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_queue_size", 0),
        ("max_queue_size", -1),
        ("max_concurrent_tasks", 0),
        ("max_concurrent_tasks", -5),
        ("drain_timeout", -0.5),
        ("drain_timeout", math.nan),
        ("job_timeout", 0),
        ("job_timeout", -1.0),
    ],
)
def test_config_rejects_bad_values(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        tm.RuntimeConfig(**kwargs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_queue_size", True),
        ("max_queue_size", 2.5),
        ("max_concurrent_tasks", "8"),
        ("drain_timeout", False),
        ("drain_timeout", "30"),
        ("job_timeout", True),
        ("job_timeout", "1"),
    ],
)
def test_config_rejects_wrong_types(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(TypeError, match=field):
        tm.RuntimeConfig(**kwargs)


def test_config_accepts_edges_and_is_frozen() -> None:
    cfg = tm.RuntimeConfig(max_queue_size=1, max_concurrent_tasks=1, drain_timeout=0, job_timeout=2)
    assert (cfg.drain_timeout, cfg.job_timeout) == (0.0, 2.0)
    assert isinstance(cfg.drain_timeout, float)
    assert tm.RuntimeConfig(drain_timeout=math.inf).drain_timeout == math.inf
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.max_queue_size = 5  # type: ignore[misc]


async def test_open_runtime_rejects_a_non_config() -> None:
    with pytest.raises(TypeError, match="RuntimeConfig"):
        async with tm.open_runtime({"max_queue_size": 1}):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_open_runtime_uses_the_defaults(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        assert runtime.config == tm.RuntimeConfig()


async def test_spawn_rejects_bad_labels(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        with pytest.raises(TypeError, match="name"):
            runtime.handle().spawn(nothing, name=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="request_id"):
            await runtime.handle().spawn_wait(nothing, request_id=7)  # type: ignore[arg-type]
    assert runtime.metrics().accepted == 0


# --- the queue bound and concurrency ------------------------------------------


class Sampler:
    """Samples the runtime's metrics at every job start and end."""

    def __init__(self) -> None:
        self.runtime: tm.BackgroundRuntime | None = None
        self.samples: list[tm.RuntimeMetrics] = []

    def sample(self) -> None:
        assert self.runtime is not None
        self.samples.append(self.runtime.metrics())

    def job(self, seconds: float) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            self.sample()
            await trio.sleep(seconds)
            self.sample()

        return job


async def test_a_job_counts_as_queued_until_its_code_starts(autojump_clock: Clock) -> None:
    seen: list[tm.RuntimeMetrics] = []
    async with tm.open_runtime(config(workers=1)) as runtime:

        async def job() -> None:
            seen.append(runtime.metrics())

        for _ in range(3):
            runtime.handle().spawn(job)
    # At each start the job itself is running, the later ones still queued.
    assert [(m.queued, m.running) for m in seen] == [(2, 1), (1, 1), (0, 1)]


async def test_spawn_bound_really_bounds(autojump_clock: Clock) -> None:
    sampler = Sampler()
    rejected = 0
    async with tm.open_runtime(config(queue=4, workers=3)) as runtime:
        sampler.runtime = runtime
        handle = runtime.handle()
        for i in range(200):
            try:
                handle.spawn(sampler.job(0.1 + (i % 7) / 10))
            except tm.QueueFull:
                rejected += 1
            sampler.sample()
            await trio.sleep(0.03)
    assert rejected > 0
    assert runtime.metrics().rejected == rejected
    assert max(m.queued for m in sampler.samples) == 4
    assert max(m.running for m in sampler.samples) == 3
    final = runtime.metrics()
    assert final.succeeded == 200 - rejected == final.accepted


async def test_spawn_wait_bound_really_bounds(autojump_clock: Clock) -> None:
    sampler = Sampler()
    async with tm.open_runtime(config(queue=3, workers=2)) as runtime:
        sampler.runtime = runtime
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(runtime.handle().spawn_wait, sampler.job(0.5 + i / 10))
            await trio.testing.wait_all_tasks_blocked()
            assert runtime.metrics().waiting == 10 - 3 - 2
            sampler.sample()
    assert max(m.queued for m in sampler.samples) == 3
    assert max(m.running for m in sampler.samples) == 2
    assert runtime.metrics().succeeded == 10
    assert runtime.metrics().rejected == 0


async def test_spawn_wait_blocks_then_proceeds_in_fifo_order(autojump_clock: Clock) -> None:
    gate = trio.Event()
    order: list[int] = []
    accepted_at: dict[int, float] = {}

    async def job(i: int) -> None:
        order.append(i)
        if i == 0:
            await gate.wait()

    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(job, 0)
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(job, 1)  # fills the queue
        with pytest.raises(tm.QueueFull):
            handle.spawn(job, 99)

        async def waiter(i: int) -> None:
            await handle.spawn_wait(job, i)
            accepted_at[i] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for i in (2, 3, 4):
                nursery.start_soon(waiter, i)
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(5)
            assert accepted_at == {}
            assert runtime.metrics().waiting == 3
            # Sync spawns cannot jump the line of waiting callers.
            with pytest.raises(tm.QueueFull):
                handle.spawn(job, 99)
            gate.set()
    assert order == [0, 1, 2, 3, 4]
    assert set(accepted_at) == {2, 3, 4}
    assert all(t >= 5 for t in accepted_at.values())


async def test_cancelled_spawn_wait_does_not_accept(autojump_clock: Clock) -> None:
    ran: list[int] = []

    async def job(i: int) -> None:
        ran.append(i)
        await trio.sleep(1)

    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(job, 0)
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(job, 1)
        with trio.move_on_after(0.5) as scope:
            await handle.spawn_wait(job, 2)
        assert scope.cancelled_caught
        assert runtime.metrics().waiting == 0
        # A cancelled caller that finds room: cancelled before accepting.
        await trio.sleep(5)
        with trio.CancelScope() as scope:
            scope.cancel()
            await handle.spawn_wait(job, 3)
    assert ran == [0, 1]
    assert runtime.metrics().accepted == 2


async def test_spawn_wait_gets_runtime_closed_at_shutdown(autojump_clock: Clock) -> None:
    count = [0]
    outcomes: list[str] = []
    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(counting(count, sleep=1))
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(counting(count, sleep=1))

        async def waiter() -> None:
            try:
                await handle.spawn_wait(counting(count))
            except tm.RuntimeClosed:
                outcomes.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            await runtime.shutdown()
    assert outcomes == ["closed"]
    assert count == [2]  # the accepted jobs still ran


async def test_runtime_closed_after_shutdown_and_after_exit(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        handle = runtime.handle()
        await runtime.shutdown()
        with pytest.raises(tm.RuntimeClosed):
            handle.spawn(nothing)
        with pytest.raises(tm.RuntimeClosed):
            await handle.spawn_wait(nothing)
    with pytest.raises(tm.RuntimeClosed):
        runtime.handle().spawn(nothing)
    assert runtime.metrics().accepted == 0
    assert runtime.metrics().rejected == 0


async def test_runtime_never_holds_more_worker_tasks_than_max_concurrent(
    autojump_clock: Clock,
) -> None:
    spawned: list[str] = []

    class Count(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task.name)

    trio.lowlevel.add_instrument(Count())
    async with tm.open_runtime(config(workers=4)) as runtime:
        handle = runtime.handle()
        for i in range(2000):
            await handle.spawn_wait(trio.sleep, (i % 5) / 100)
    assert runtime.metrics().succeeded == 2000
    assert 1 <= sum("runtime worker" in name for name in spawned) <= 4
    # Nothing else per job: the only other task is open_runtime's own machinery.
    assert len(spawned) <= 4 + 2


async def test_idle_workers_are_reused(autojump_clock: Clock) -> None:
    spawned: list[str] = []

    class Count(trio.abc.Instrument):
        def task_spawned(self, task: trio.lowlevel.Task) -> None:
            spawned.append(task.name)

    async with tm.open_runtime(config(workers=8)) as runtime:
        trio.lowlevel.add_instrument(Count())
        for _ in range(50):
            runtime.handle().spawn(trio.sleep, 0.01)
            await trio.sleep(1)
    assert runtime.metrics().succeeded == 50
    assert sum("runtime worker" in name for name in spawned) == 1


# --- failures -----------------------------------------------------------------


async def test_a_failing_job_affects_no_other_job(autojump_clock: Clock) -> None:
    done: list[str] = []

    async def slow(tag: str) -> None:
        await trio.sleep(1)
        done.append(tag)

    async def crash() -> None:
        await trio.sleep(0.5)
        raise ValueError("boom")

    async with tm.open_runtime(config(workers=3)) as runtime:
        handle = runtime.handle()
        handle.spawn(slow, "a")
        handle.spawn(crash)
        handle.spawn(slow, "b")
        handle.spawn(slow, "c")  # runs on the worker the crash freed
    assert sorted(done) == ["a", "b", "c"]
    metrics = runtime.metrics()
    assert (metrics.succeeded, metrics.failed) == (3, 1)


async def test_failure_is_logged_with_name_and_request_id(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_runtime() as runtime:
        runtime.handle().spawn(fail, "smtp down", name="send_email", request_id="req-42")
    [record] = [r for r in caplog.records if r.name == "trio_monitor.runtime"]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "send_email" in message
    assert "req-42" in message
    assert "smtp down" in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


async def test_failures_are_reported_to_subscribers(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        first = runtime.subscribe()
        second = runtime.subscribe(max_buffer_size=1)
        handle = runtime.handle()
        handle.spawn(fail, "one", name="job-one")
        handle.spawn(nothing)
        handle.spawn(fail, "two")
        await trio.sleep(1)
    reports = drain_nowait(first)
    assert [f.task.name for f in reports] == ["job-one", "fail"]
    assert reports[0].task.id < reports[1].task.id
    for failure, message in zip(reports, ["one", "two"], strict=True):
        reason = failure.reason
        assert isinstance(reason, tm.Panic)
        assert reason.message == message
        assert isinstance(reason.exception, RuntimeError)
        assert reason.traceback is not None
        assert f"RuntimeError: {message}" in reason.traceback
    # The slow subscriber missed one; the job did not wait for it.
    assert [f.task.name for f in drain_nowait(second)] == ["job-one"]
    # The channels ended with the runtime.
    with pytest.raises(trio.EndOfChannel):
        first.receive_nowait()


async def test_task_ids_are_unique_across_components(autojump_clock: Clock) -> None:
    async with tm.open_monitor() as monitor, tm.open_runtime() as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(fail)
        other = monitor.spawn_finite("x", nothing)
        runtime.handle().spawn(fail)
        await trio.sleep(1)
    ids = [f.task.id for f in drain_nowait(failures)]
    assert len(set(ids)) == 2
    assert other.info.id not in ids


async def test_per_job_timeout(autojump_clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def job(tag: str, seconds: float) -> None:
        await trio.sleep(seconds)
        done.append(tag)

    async with tm.open_runtime(config(job_timeout=1.5)) as runtime:
        failures = runtime.subscribe()
        handle = runtime.handle()
        handle.spawn(job, "slow", 10, name="slow-job", request_id="req-7")
        handle.spawn(job, "quick", 1)
        start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(1.5)
    assert done == ["quick"]
    metrics = runtime.metrics()
    assert (metrics.succeeded, metrics.failed, metrics.cancelled) == (1, 1, 0)
    [failure] = drain_nowait(failures)
    assert failure.task.name == "slow-job"
    reason = failure.reason
    assert isinstance(reason, tm.Panic)
    # SPEC 4b: "a TimeoutError text"; the builtin, so that `except TimeoutError` sees it.
    assert type(reason.exception) is TimeoutError
    assert reason.message == "background job 'slow-job' timed out after 1.5s"
    [record] = [r for r in caplog.records if r.name == "trio_monitor.runtime"]
    assert "timed out after 1.5s" in record.getMessage()
    assert "slow-job" in record.getMessage()
    assert "req-7" in record.getMessage()


async def test_job_turning_its_timeout_into_an_error_counts_as_timed_out(
    autojump_clock: Clock,
) -> None:
    async def job() -> None:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            raise OSError("interrupted") from None

    async with tm.open_runtime(config(job_timeout=1)) as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(job)
    [failure] = drain_nowait(failures)
    assert isinstance(failure.reason, tm.Panic)
    exc = failure.reason.exception
    assert type(exc) is TimeoutError
    assert isinstance(exc.__context__, OSError)


async def test_job_timeout_does_not_touch_fast_or_failing_jobs(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(job_timeout=1)) as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(trio.sleep, 0.9)
        runtime.handle().spawn(fail, "own error")
    [failure] = drain_nowait(failures)
    assert isinstance(failure.reason, tm.Panic)
    assert isinstance(failure.reason.exception, RuntimeError)
    assert (runtime.metrics().succeeded, runtime.metrics().failed) == (1, 1)


# --- shutdown -------------------------------------------------------------------


async def test_shutdown_timeout_counts_are_exact_and_nothing_runs_after(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[tuple[str, int]] = []

    async def job(i: int) -> None:
        events.append(("start", i))
        try:
            await trio.sleep(100)
        finally:
            events.append(("stop", i))
            # A job's cleanup that checkpoints is still cancelled.
            await trio.sleep(1)  # pragma: no cover - cancelled at once
            events.append(("after cleanup", i))  # pragma: no cover

    async with tm.open_runtime(config(queue=10, workers=2, drain=3)) as runtime:
        failures = runtime.subscribe()
        for i in range(5):
            runtime.handle().spawn(job, i)
        runtime.handle().spawn(nothing)  # never starts either
        with pytest.raises(tm.ShutdownTimeout) as info:
            await runtime.shutdown()
        assert (info.value.cancelled, info.value.not_started) == (2, 4)
        assert str(info.value).startswith("background runtime did not drain in time")
        assert sorted(events) == [("start", 0), ("start", 1), ("stop", 0), ("stop", 1)]
        metrics = runtime.metrics()
        assert (metrics.queued, metrics.running) == (0, 0)
        assert (metrics.cancelled, metrics.not_started) == (2, 4)
        assert metrics.accepted == 6
        # Nothing of the runtime runs any more.
        await trio.sleep(1000)
        assert len(events) == 4
    assert drain_nowait(failures) == []
    assert not [r for r in caplog.records if r.name == "trio_monitor.runtime"]


async def test_second_shutdown_returns_at_once(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(drain=5)) as runtime:
        runtime.handle().spawn(trio.sleep, 100)
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()
        before = trio.current_time()
        await runtime.shutdown()
        assert trio.current_time() == before


async def test_concurrent_second_shutdown_waits_for_the_drain(autojump_clock: Clock) -> None:
    # SPEC: "a second call returns at once", read as "once the drain has run":
    # a call while another drains waits for that drain, then returns.
    async with tm.open_runtime(config(drain=5)) as runtime:
        runtime.handle().spawn(trio.sleep, 2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.shutdown)
            await trio.testing.wait_all_tasks_blocked()
            before = trio.current_time()
            await runtime.shutdown()
            assert trio.current_time() == before + 2
            assert runtime.metrics().succeeded == 1


async def test_block_end_drains_and_raises_shutdown_timeout_bare(autojump_clock: Clock) -> None:
    count = [0]
    with pytest.raises(tm.ShutdownTimeout) as info:  # noqa: PT012
        async with tm.open_runtime(config(workers=1, drain=2)) as runtime:
            runtime.handle().spawn(counting(count, sleep=1))
            runtime.handle().spawn(trio.sleep, 100)
            runtime.handle().spawn(counting(count))
    assert (info.value.cancelled, info.value.not_started) == (1, 1)
    assert count == [1]


async def test_block_end_drain_waits_for_accepted_jobs(autojump_clock: Clock) -> None:
    count = [0]
    start = trio.current_time()
    async with tm.open_runtime(config(workers=2)) as runtime:
        for _ in range(6):
            runtime.handle().spawn(counting(count, sleep=1))
    assert count == [6]
    assert trio.current_time() - start == pytest.approx(3)


async def test_body_exception_propagates_bare_not_the_drain_error(autojump_clock: Clock) -> None:
    count = [0]
    with pytest.raises(KeyError) as info:  # noqa: PT012
        async with tm.open_runtime(config(drain=2)) as runtime:
            runtime.handle().spawn(counting(count, sleep=1))
            runtime.handle().spawn(trio.sleep, 100)
            raise KeyError("body")
    assert type(info.value) is KeyError
    # The drain still ran the job that could finish, and cut the other one.
    assert count == [1]
    assert runtime.metrics().cancelled == 1


async def test_outer_cancellation_does_not_drain(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    count = [0]
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with tm.open_runtime(config(workers=1, drain=30)) as runtime:
            failures = runtime.subscribe()
            runtime.handle().spawn(counting(count, sleep=10))
            runtime.handle().spawn(counting(count))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(1)
    assert count == [0]
    metrics = runtime.metrics()
    assert (metrics.cancelled, metrics.not_started, metrics.queued, metrics.running) == (1, 1, 0, 0)
    assert drain_nowait(failures) == []
    assert not [r for r in caplog.records if r.name == "trio_monitor.runtime"]
    with pytest.raises(tm.RuntimeClosed):
        runtime.handle().spawn(nothing)


async def test_outer_cancellation_during_the_drain_stops_it(autojump_clock: Clock) -> None:
    start = trio.current_time()
    with trio.move_on_after(1):
        async with tm.open_runtime(config(drain=30)) as runtime:
            runtime.handle().spawn(trio.sleep, 10)
    assert trio.current_time() - start == pytest.approx(1)
    assert runtime.metrics().cancelled == 1


async def test_metrics_balance(autojump_clock: Clock) -> None:
    async with tm.open_runtime(config(queue=3, workers=2, drain=2)) as runtime:
        handle = runtime.handle()
        handle.spawn(fail)
        handle.spawn(trio.sleep, 1)
        handle.spawn(trio.sleep, 100)
        with pytest.raises(tm.QueueFull):
            handle.spawn(nothing)
        await trio.testing.wait_all_tasks_blocked()  # both workers took a job
        handle.spawn(trio.sleep, 100)
        handle.spawn(trio.sleep, 100)
        live = runtime.metrics()
        assert live.accepted == 5
        with pytest.raises(tm.ShutdownTimeout):
            await runtime.shutdown()
    m = runtime.metrics()
    assert (m.succeeded, m.failed, m.cancelled, m.not_started, m.rejected) == (1, 1, 2, 1, 1)
    assert m.accepted == m.succeeded + m.failed + m.cancelled + m.not_started == 5


# --- handles and threads ----------------------------------------------------------


async def test_handle_is_cheap_and_copyable(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime, tm.open_runtime() as other:
        handle = runtime.handle()
        assert handle == runtime.handle() == copy.copy(handle) == copy.deepcopy(handle)
        assert handle != other.handle()
        assert len({handle, runtime.handle(), other.handle()}) == 2
        copy.copy(handle).spawn(nothing)
    assert runtime.metrics().succeeded == 1
    assert other.metrics().accepted == 0


async def test_spawn_from_thread() -> None:
    done = trio.Event()

    async def job(tag: str) -> None:
        assert tag == "from thread"
        done.set()

    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        await trio.to_thread.run_sync(
            lambda: handle.spawn_from_thread(job, "from thread", name="t", request_id="r")
        )
        with trio.fail_after(5):
            await done.wait()


async def test_spawn_from_thread_reraises_queue_full_and_closed_in_the_thread() -> None:
    gate = trio.Event()
    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(gate.wait)
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(nothing)
        with pytest.raises(tm.QueueFull):
            await trio.to_thread.run_sync(handle.spawn_from_thread, nothing)
        assert runtime.metrics().rejected == 1
        gate.set()
        await runtime.shutdown()
        with pytest.raises(tm.RuntimeClosed):
            await trio.to_thread.run_sync(handle.spawn_from_thread, nothing)


async def test_spawn_wait_from_thread_waits_for_room() -> None:
    gate = trio.Event()
    ran: list[str] = []

    async def job(tag: str) -> None:
        ran.append(tag)

    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(gate.wait)
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(job, "queued")
        returned = threading.Event()

        def in_thread() -> None:
            handle.spawn_wait_from_thread(job, "from thread")
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, in_thread)
            with trio.fail_after(5):
                # The thread's arrival has no event to wait on: poll.
                while runtime.metrics().waiting == 0:  # noqa: ASYNC110
                    await trio.sleep(0.001)
            assert not returned.is_set()
            gate.set()
    assert returned.is_set()
    assert ran == ["queued", "from thread"]


def test_spawn_from_thread_after_the_run_raises_runtime_closed() -> None:
    handles: list[tm.RuntimeHandle] = []

    async def main() -> None:
        async with tm.open_runtime() as runtime:
            handles.append(runtime.handle())

    trio.run(main)
    with pytest.raises(tm.RuntimeClosed):
        handles[0].spawn_from_thread(nothing)
    with pytest.raises(tm.RuntimeClosed):
        handles[0].spawn_wait_from_thread(nothing)


async def test_spawn_from_the_trio_thread_is_refused(autojump_clock: Clock) -> None:
    async with tm.open_runtime() as runtime:
        with pytest.raises(RuntimeError):
            runtime.handle().spawn_from_thread(nothing)
    assert runtime.metrics().accepted == 0


async def test_jobs_can_spawn_jobs(autojump_clock: Clock) -> None:
    count = [0]
    last = trio.Event()
    async with tm.open_runtime(config(queue=2, workers=1)) as runtime:
        handle = runtime.handle()

        async def parent(depth: int) -> None:
            count[0] += 1
            if depth:
                await handle.spawn_wait(parent, depth - 1)
            else:
                last.set()

        handle.spawn(parent, 20)
        await last.wait()
    assert count == [21]
    assert runtime.metrics().succeeded == 21


async def test_keyboard_interrupt_from_a_job_propagates(autojump_clock: Clock) -> None:
    async def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # noqa: PT012
        async with tm.open_runtime() as runtime:
            runtime.handle().spawn(interrupt)
            await trio.sleep(1)


# --- edges (issue 8) ------------------------------------------------------------


def runtime_records(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[Any]:
    return [r for r in caplog.records if r.name == "trio_monitor.runtime" and r.levelno >= level]


async def test_an_unprintable_exception_does_not_kill_the_worker(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    count = [0]
    async with tm.open_runtime(config(workers=1)) as runtime:
        failures = runtime.subscribe()
        handle = runtime.handle()
        handle.spawn(raise_unprintable, name="bad")
        for _ in range(3):
            handle.spawn(counting(count))
    assert count == [3]
    m = runtime.metrics()
    assert (m.succeeded, m.failed) == (3, 1)
    [failure] = drain_nowait(failures)
    [record] = runtime_records(caplog)
    assert "'bad'" in record.getMessage()
    assert_reported_readably(failure, record)


@pytest.mark.parametrize("how", list(Misbehaviour))
async def test_a_job_cut_by_the_drain_deadline_is_cancelled_whatever_it_does(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture, how: Misbehaviour
) -> None:
    async with tm.open_runtime(config(drain=2)) as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(run_misbehaving, how, math.inf)
        start = trio.current_time()
        with pytest.raises(tm.ShutdownTimeout) as info:
            await runtime.shutdown()
        assert trio.current_time() - start == pytest.approx(2)
    assert (info.value.cancelled, info.value.not_started) == (1, 0)
    m = runtime.metrics()
    assert (m.cancelled, m.failed, m.succeeded) == (1, 0, 0)
    assert drain_nowait(failures) == []
    assert runtime_records(caplog) == []


@pytest.mark.parametrize("how", list(Misbehaviour))
async def test_a_job_cut_by_outer_cancellation_is_cancelled_whatever_it_does(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture, how: Misbehaviour
) -> None:
    with trio.move_on_after(1):
        async with tm.open_runtime(config(workers=1, drain=30)) as runtime:
            failures = runtime.subscribe()
            runtime.handle().spawn(run_misbehaving, how, math.inf)
            runtime.handle().spawn(nothing)
            await trio.sleep_forever()
    assert trio.current_time() == pytest.approx(1)
    m = runtime.metrics()
    assert (m.cancelled, m.not_started, m.failed, m.succeeded) == (1, 1, 0, 0)
    assert drain_nowait(failures) == []
    assert runtime_records(caplog) == []


async def test_an_interrupted_shutdown_is_carried_on_by_the_block_exit(
    autojump_clock: Clock,
) -> None:
    count = [0]
    async with tm.open_runtime(config(drain=10)) as runtime:
        runtime.handle().spawn(counting(count, sleep=5))
        with trio.move_on_after(1) as cut:
            await runtime.shutdown()
        assert cut.cancelled_caught
        # Closed from the first call on.
        with pytest.raises(tm.RuntimeClosed):
            runtime.handle().spawn(nothing)
    # The exit waited for the job (the deadline, t=10, was never reached).
    assert trio.current_time() == pytest.approx(5)
    assert count == [1]
    assert runtime.metrics().cancelled == 0


async def test_an_interrupted_shutdown_keeps_its_original_deadline(autojump_clock: Clock) -> None:
    with pytest.raises(tm.ShutdownTimeout) as info:  # noqa: PT012
        async with tm.open_runtime(config(drain=10)) as runtime:
            runtime.handle().spawn(trio.sleep, 100)
            with trio.move_on_after(1):
                await runtime.shutdown()
            await trio.sleep(3)
    # Cancelled at the first call's deadline, not at the exit (t=4) nor 10 s after it.
    assert trio.current_time() == pytest.approx(10)
    assert (info.value.cancelled, info.value.not_started) == (1, 0)


async def test_a_second_call_after_an_interrupted_one_carries_the_drain_on(
    autojump_clock: Clock,
) -> None:
    async with tm.open_runtime(config(drain=10)) as runtime:
        runtime.handle().spawn(trio.sleep, 6)
        runtime.handle().spawn(trio.sleep, 100)
        with trio.move_on_after(2):
            await runtime.shutdown()
        assert runtime.metrics().running == 2
        with pytest.raises(tm.ShutdownTimeout) as info:
            await runtime.shutdown()
        assert trio.current_time() == pytest.approx(10)
        assert (info.value.cancelled, runtime.metrics().succeeded) == (1, 1)
        # And after the drain has ended, a call returns at once.
        await runtime.shutdown()
        assert trio.current_time() == pytest.approx(10)


async def test_a_shutdown_interrupted_while_cancelling_is_carried_on(autojump_clock: Clock) -> None:
    async def slow_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(5)

    async with tm.open_runtime(config(drain=2)) as runtime:
        runtime.handle().spawn(slow_cleanup)
        with trio.move_on_after(3):
            await runtime.shutdown()  # deadline at 2, cleanup until 7: cut at 3
        assert runtime.metrics().running == 1
        with pytest.raises(tm.ShutdownTimeout) as info:
            await runtime.shutdown()
        assert trio.current_time() == pytest.approx(7)
        assert info.value.cancelled == 1


async def test_a_job_swallowing_its_timeout_still_times_out(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_runtime(config(job_timeout=1)) as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(run_misbehaving, Misbehaviour.SWALLOW_AND_RETURN, 5, name="deaf")
    m = runtime.metrics()
    assert (m.failed, m.succeeded, m.cancelled) == (1, 0, 0)
    [failure] = drain_nowait(failures)
    assert isinstance(failure.reason, tm.Panic)
    assert type(failure.reason.exception) is TimeoutError
    assert failure.reason.message == "background job 'deaf' timed out after 1s"
    [record] = runtime_records(caplog)
    assert "timed out after 1s" in record.getMessage()


async def test_a_job_in_a_thread_past_its_timeout_times_out() -> None:
    # Real clock: the thread ignores cancellation; the job returns late.
    async def in_thread() -> str:
        return await trio.to_thread.run_sync(time.sleep, 0.3)  # type: ignore[func-returns-value]

    async with tm.open_runtime(config(job_timeout=0.05)) as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(in_thread)
    assert (runtime.metrics().failed, runtime.metrics().succeeded) == (1, 0)
    [failure] = drain_nowait(failures)
    assert isinstance(failure.reason, tm.Panic)
    assert type(failure.reason.exception) is TimeoutError


async def test_a_job_blocking_the_run_past_its_timeout_times_out() -> None:
    # Real clock: no checkpoint at all, so Trio never got to cancel it.
    async def blocking() -> None:
        time.sleep(0.1)  # noqa: ASYNC251 - blocking the run on purpose

    async with tm.open_runtime(config(job_timeout=0.01)) as runtime:
        runtime.handle().spawn(blocking)
    assert (runtime.metrics().failed, runtime.metrics().succeeded) == (1, 0)


def sync_function() -> None:
    pass


class AsyncCallable:
    def __init__(self, ran: list[int]) -> None:
        self.ran = ran

    async def __call__(self, value: int) -> None:
        self.ran.append(value)
        if value < 0:
            raise ValueError(value)


async def test_every_spawn_entry_point_refuses_non_async_callables(
    recwarn: pytest.WarningsRecorder,
) -> None:
    async with tm.open_runtime(config(queue=1, workers=1)) as runtime:
        handle = runtime.handle()
        for bad, match in [(nothing(), "coroutine object"), (sync_function, "synchronous")]:
            with pytest.raises(TypeError, match=match):
                handle.spawn(bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=match):
                await handle.spawn_wait(bad)  # type: ignore[arg-type]
        coro = nothing()
        with pytest.raises(TypeError, match="coroutine object"):
            await trio.to_thread.run_sync(handle.spawn_from_thread, coro)
        with pytest.raises(TypeError, match="synchronous"):
            await trio.to_thread.run_sync(handle.spawn_wait_from_thread, sync_function)
        assert runtime.metrics().accepted == 0
    del coro
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_a_callable_object_runs_and_is_named_after_its_class(autojump_clock: Clock) -> None:
    ran: list[int] = []
    async with tm.open_runtime() as runtime:
        failures = runtime.subscribe()
        runtime.handle().spawn(AsyncCallable(ran), 1)
        await runtime.handle().spawn_wait(AsyncCallable(ran), -1)
    assert ran == [1, -1]
    [failure] = drain_nowait(failures)
    assert failure.task.name == "AsyncCallable"


async def test_dropped_jobs_leave_no_unawaited_coroutine(
    autojump_clock: Clock, recwarn: pytest.WarningsRecorder
) -> None:
    gate = trio.Event()
    ran: list[int] = []
    async with tm.open_runtime(config(queue=1, workers=1, drain=1)) as runtime:
        handle = runtime.handle()
        handle.spawn(gate.wait)
        await trio.testing.wait_all_tasks_blocked()
        handle.spawn(AsyncCallable(ran), 1)  # queued
        with pytest.raises(tm.QueueFull):
            handle.spawn(AsyncCallable(ran), 2)  # refused
        with trio.move_on_after(0.5):
            await handle.spawn_wait(AsyncCallable(ran), 3)  # cancelled while waiting
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                with pytest.raises(tm.RuntimeClosed):
                    await handle.spawn_wait(AsyncCallable(ran), 4)

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(tm.ShutdownTimeout) as info:
                await runtime.shutdown()  # the waiter gets RuntimeClosed; job 1 never starts
    assert info.value.not_started == 1
    assert ran == []
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_a_dying_worker_is_replaced_and_queued_jobs_still_run(
    autojump_clock: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate a bug in the runtime's own bookkeeping: the first failure
    # report raises inside the worker.
    original = _Engine._job_failed
    bugs = [1]

    def buggy(self: _Engine, *args: Any) -> None:
        if bugs:
            bugs.pop()
            raise RuntimeError("bug in the runtime")
        original(self, *args)

    monkeypatch.setattr(_Engine, "_job_failed", buggy)
    count = [0]
    accepted = 0
    async with tm.open_runtime(config(workers=2, drain=100)) as runtime:
        handle = runtime.handle()
        handle.spawn(fail)
        handle.spawn(trio.sleep, 1)
        accepted += 2
        for _ in range(5):
            handle.spawn(counting(count, sleep=1))
            accepted += 1
            m = runtime.metrics()
            assert m.accepted == accepted
    assert count == [5]
    m = runtime.metrics()
    assert (m.failed, m.succeeded, m.cancelled, m.not_started) == (1, 6, 0, 0)
    assert m.accepted == accepted
    # Two workers at most ran jobs at once: 6 one-second jobs in 3 s.
    assert trio.current_time() == pytest.approx(3)
    [record] = runtime_records(caplog)
    assert "worker failed" in record.getMessage()
    assert "replacing it" in record.getMessage()
    assert "bug in the runtime" in record.getMessage()


def test_config_messages_name_the_field_and_inf_drain_is_valid() -> None:
    with pytest.raises(ValueError, match=r"RuntimeConfig\.max_queue_size must be an int >= 1"):
        tm.RuntimeConfig(max_queue_size=0)
    with pytest.raises(TypeError, match=r"RuntimeConfig\.max_concurrent_tasks must be an int"):
        tm.RuntimeConfig(max_concurrent_tasks=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"RuntimeConfig\.drain_timeout must be >= 0 seconds"):
        tm.RuntimeConfig(drain_timeout=-1)
    with pytest.raises(ValueError, match=r"RuntimeConfig\.job_timeout must be > 0 seconds"):
        tm.RuntimeConfig(job_timeout=0)
    with pytest.raises(ValueError, match=r"RuntimeConfig\.job_timeout .* NaN"):
        tm.RuntimeConfig(job_timeout=math.nan)
    assert tm.RuntimeConfig(drain_timeout=math.inf).drain_timeout == math.inf
    assert tm.RuntimeConfig(job_timeout=math.inf).job_timeout == math.inf
    assert isinstance(tm.RuntimeConfig(drain_timeout=5).drain_timeout, float)
