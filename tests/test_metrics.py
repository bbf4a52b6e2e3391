"""Prometheus collectors: job metrics from a real server, counts, component statistics."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_monitor as tm
from trio_monitor import jobs, metrics

workers = jobs.WorkerRegistry()


@workers.worker("add")
async def _add(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.5)
    return job.payload["a"] + job.payload["b"]


@workers.worker("fail")
async def _fail(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    raise ValueError("no")


@workers.worker("hang")
async def _hang(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep_forever()


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_job_metrics_time_runs_and_count_outcomes(autojump_clock: object) -> None:
    registry = CollectorRegistry()
    job_metrics = metrics.JobMetrics(registry)
    config = jobs.ServerConfig(worker_count=2, polling_interval=0.1, shutdown_timeout=0.0)
    async with jobs.open_storage("memory://") as storage:
        server = jobs.JobServer(
            config,
            storage,
            workers,
            retry_policy=jobs.RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0),
            middleware=[job_metrics.middleware],
            on_state_change=job_metrics.on_state_change,
            clock=jobs.TrioWallClock(),  # retries due in virtual time
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            await server.enqueue("add", {"a": 1, "b": 2})
            await server.enqueue("fail", None)
            await trio.sleep(60)  # the failing job: one retry, then failed
            await server.enqueue("hang", None)
            await trio.sleep(1)
            await server.stop()  # shutdown_timeout 0: the hanging job is requeued

    assert (
        _sample(registry, "trio_monitor_jobs_processed_total", method="add", outcome="succeeded")
        == 1
    )
    assert (
        _sample(registry, "trio_monitor_jobs_processed_total", method="fail", outcome="retried")
        == 1
    )
    assert (
        _sample(registry, "trio_monitor_jobs_processed_total", method="fail", outcome="failed") == 1
    )
    assert (
        _sample(registry, "trio_monitor_jobs_processed_total", method="hang", outcome="requeued")
        == 1
    )
    assert _sample(registry, "trio_monitor_job_duration_seconds_count", method="add") == 1
    assert _sample(
        registry, "trio_monitor_job_duration_seconds_sum", method="add"
    ) == pytest.approx(0.5)
    # every run is timed, failed and cancelled ones too
    assert _sample(registry, "trio_monitor_job_duration_seconds_count", method="fail") == 2
    assert _sample(registry, "trio_monitor_job_duration_seconds_count", method="hang") == 1
    # latency: first attempts only
    assert _sample(registry, "trio_monitor_job_start_latency_seconds_count", method="fail") == 1
    latency = _sample(registry, "trio_monitor_job_start_latency_seconds_sum", method="add")
    assert latency is not None
    assert 0 <= latency < 0.5


_STATES: list[jobs.JobState] = [
    jobs.Enqueued(),
    jobs.Scheduled(jobs.Enqueued().enqueued_at),
    jobs.Processing(jobs.Enqueued().enqueued_at, "w", "s"),
    jobs.Succeeded(None, 1.0),
    jobs.Failed("x"),
    jobs.AwaitingRetry(jobs.Enqueued().enqueued_at, "x"),
    jobs.Deleted(),
]


@given(st.lists(st.tuples(st.sampled_from(_STATES), st.sampled_from(_STATES)), max_size=40))
def test_only_the_end_of_a_run_is_counted(
    changes: list[tuple[jobs.JobState, jobs.JobState]],
) -> None:
    registry = CollectorRegistry()
    job_metrics = metrics.JobMetrics(registry)
    job = jobs.Job.new("m", None)
    for old, new in changes:
        job_metrics.on_state_change(job, old, new)
    ends = [
        new
        for old, new in changes
        if isinstance(old, jobs.Processing)
        and isinstance(new, jobs.Succeeded | jobs.Failed | jobs.AwaitingRetry | jobs.Enqueued)
    ]
    counted = sum(
        _sample(registry, "trio_monitor_jobs_processed_total", method="m", outcome=outcome) or 0
        for outcome in ("succeeded", "failed", "retried", "requeued")
    )
    assert counted == len(ends)


async def test_counts_export_every_state_of_every_queue_from_storage() -> None:
    registry = CollectorRegistry()
    async with jobs.open_storage("memory://") as storage:
        counts = metrics.JobCountsCollector(metrics.storage_counts(storage), registry=registry)
        assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") is None
        await counts.refresh()  # no job yet: zeros under the catch-all label
        assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") == 0
        await storage.enqueue(jobs.Job.new("a", None))
        await storage.enqueue(jobs.Job.new("a", None))
        await storage.enqueue(jobs.Job.new("a", None, queue="emails"))
        await counts.refresh()
    assert _sample(registry, "trio_monitor_jobs", queue="default", state="enqueued") == 2
    assert _sample(registry, "trio_monitor_jobs", queue="emails", state="enqueued") == 1
    assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") is None
    for queue in ("default", "emails"):
        for state in metrics.STATE_NAMES:
            assert _sample(registry, "trio_monitor_jobs", queue=queue, state=state) is not None
    assert (_sample(registry, "trio_monitor_jobs_read_timestamp_seconds") or 0) > 0


async def test_counts_by_queue_from_another_source() -> None:
    async def by_queue() -> Mapping[tuple[str, str], int]:
        return {("emails", "failed"): 3, ("reports", "enqueued"): 1}

    registry = CollectorRegistry()
    counts = metrics.JobCountsCollector(by_queue, registry=registry)
    await counts.refresh()
    assert _sample(registry, "trio_monitor_jobs", queue="emails", state="failed") == 3
    assert _sample(registry, "trio_monitor_jobs", queue="emails", state="enqueued") == 0
    assert _sample(registry, "trio_monitor_jobs", queue="reports", state="enqueued") == 1


async def test_a_failing_reading_keeps_the_last_figures(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    readings: list[Mapping[tuple[str, str], int] | Exception] = [
        {("*", "enqueued"): 4},
        RuntimeError("database is down"),
    ]

    async def flaky() -> Mapping[tuple[str, str], int]:
        reading = readings.pop(0) if readings else {("*", "enqueued"): 5}
        if isinstance(reading, Exception):
            raise reading
        return reading

    registry = CollectorRegistry()
    counts = metrics.JobCountsCollector(flaky, registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(counts.run, 1.0)
        assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") == 4
        await trio.sleep(1.5)  # the second reading failed
        assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") == 4
        assert "could not read job counts" in caplog.text
        await trio.sleep(1.0)
        assert _sample(registry, "trio_monitor_jobs", queue="*", state="enqueued") == 5
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan, "1"])
async def test_counts_interval_is_checked(interval: object) -> None:
    async def none() -> Mapping[tuple[str, str], int]:
        return {}

    counts = metrics.JobCountsCollector(none, registry=None)
    with pytest.raises(ValueError, match="interval"):
        await counts.run(interval)  # type: ignore[arg-type]


async def test_statistics_of_the_components() -> None:
    registry = CollectorRegistry()
    async with (
        tm.open_monitor() as monitor,
        tm.open_runtime() as runtime,
        tm.open_registry() as tasks,
    ):
        looping = monitor.spawn_infinite("loop", trio.sleep_forever)
        subscription = monitor.subscribe()
        service = tasks.spawn("service", tm.TaskKind.BACKGROUND_LOOP, trio.sleep_forever)
        registry.register(metrics.StatisticsCollector("monitor", monitor))
        registry.register(metrics.StatisticsCollector("runtime", runtime.metrics))
        registry.register(metrics.StatisticsCollector("registry", lambda: {"tasks": len(tasks)}))
        await trio.testing.wait_all_tasks_blocked()
        assert _sample(registry, "trio_monitor_monitor_active_tasks") == 1
        assert _sample(registry, "trio_monitor_monitor_subscribers") == 1
        assert _sample(registry, "trio_monitor_runtime_running") == 0
        assert _sample(registry, "trio_monitor_registry_tasks") == 1
        subscription.close()
        looping.abort()
        service.abort()


async def test_statistics_of_a_supervisor(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ValueError("first run")
        await trio.sleep_forever()

    async with tm.open_supervisor(backoff=tm.Backoff(initial=0)) as sup:
        subscription = sup.subscribe()
        registry.register(metrics.StatisticsCollector("supervisor", sup))
        await sup.start("flaky", flaky)
        await trio.sleep(1)
        assert _sample(registry, "trio_monitor_supervisor_children") == 1
        assert _sample(registry, "trio_monitor_supervisor_restarts") == 1
        assert _sample(registry, "trio_monitor_supervisor_subscribers") == 1
        assert _sample(registry, "trio_monitor_supervisor_dropped_failures") == 0
        subscription.close()


def test_statistics_collector_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="component"):
        metrics.StatisticsCollector("not a name", lambda: {})
    with pytest.raises(TypeError, match="statistics"):
        metrics.StatisticsCollector("x", 42)  # type: ignore[arg-type]
    collector = metrics.StatisticsCollector("x", lambda: 42)
    with pytest.raises(TypeError, match="attrs record or a mapping"):
        list(collector.collect())

    def broken() -> object:
        raise RuntimeError("closed")

    assert list(metrics.StatisticsCollector("x", broken).collect()) == []
    only_numbers = metrics.StatisticsCollector("x", lambda: {"n": 1, "flag": True, "name": "a"})
    assert [family.name for family in only_numbers.collect()] == ["trio_monitor_x_n"]


async def test_serve_metrics_is_scraped_over_http() -> None:
    registry = CollectorRegistry()
    registry.register(metrics.StatisticsCollector("demo", lambda: {"answer": 42}))
    async with metrics.serve_metrics(0, "127.0.0.1", registry) as port:

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return str(r.read().decode())

        text = await trio.to_thread.run_sync(scrape)
    (family,) = text_string_to_metric_families(text)
    assert (family.name, family.samples[0].value) == ("trio_monitor_demo_answer", 42)
    assert text == generate_latest(registry).decode()
