"""The OpenTelemetry middleware: a span per job run, a child of the enqueuer's context."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from trio_monitor import jobs
from trio_monitor.jobs import tracing

workers = jobs.WorkerRegistry()


@workers.worker("ok")
async def _ok(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    await trio.sleep(0.1)
    return "done"


@workers.worker("boom")
async def _boom(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    raise ValueError("boom")


@workers.worker("hang")
async def _hang(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
    try:
        await trio.sleep_forever()
    finally:
        raise RuntimeError("cleanup failed while cancelled")  # hostile: must not count


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def _run_jobs(
    middleware: tracing.TracingMiddleware, methods: list[str], *, enqueue_in: object = None
) -> jobs.JobServer:
    config = jobs.ServerConfig(worker_count=3, shutdown_timeout=0.0)
    policy = jobs.RetryPolicy(max_attempts=1)
    async with jobs.open_storage("memory://") as storage:
        server = jobs.JobServer(
            config, storage, workers, retry_policy=policy, middleware=[middleware]
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            for method in methods:
                await server.enqueue(method, None)
            await trio.sleep(5)
            await server.stop()
    return server


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_one_span_per_run_with_outcome(
    autojump_clock: object, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    await _run_jobs(tracing.TracingMiddleware(provider), ["ok", "boom", "hang"])
    found = _by_name(exporter)
    assert set(found) == {"job ok", "job boom", "job hang"}

    ok = found["job ok"]
    assert ok.kind is SpanKind.CONSUMER
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.attributes is not None
    assert ok.attributes["trio_monitor.job.method"] == "ok"
    assert ok.attributes["messaging.destination.name"] == "default"
    assert ok.attributes["trio_monitor.job.attempt"] == 1
    assert ok.end_time is not None
    assert ok.start_time is not None
    assert ok.end_time >= ok.start_time
    assert ok.parent is None  # no context captured: a new trace

    boom = found["job boom"]
    assert boom.status.status_code is StatusCode.ERROR
    assert boom.status.description == "boom"
    assert [event.name for event in boom.events] == ["exception"]

    # Cancelled by a stop: not an error, even though its cleanup raised.
    hang = found["job hang"]
    assert hang.status.status_code is StatusCode.UNSET
    assert hang.attributes is not None
    assert hang.attributes["trio_monitor.job.cancelled"] is True


async def test_the_run_is_a_child_of_the_context_captured_at_enqueue(
    autojump_clock: object, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    captured: dict[str, dict[str, str]] = {}

    with tracer.start_as_current_span("request") as request_span:
        headers = tracing.inject_headers({"tenant": "acme"})
    assert headers["tenant"] == "acme"
    assert "traceparent" in headers

    def headers_of(job: jobs.Job) -> Mapping[str, str]:
        return captured.get(job.method, {})

    captured["ok"] = headers
    await _run_jobs(tracing.TracingMiddleware(provider, headers=headers_of), ["ok"])
    run = _by_name(exporter)["job ok"]
    parent = request_span.get_span_context()
    assert run.parent is not None
    assert run.parent.span_id == parent.span_id
    assert run.context is not None
    assert run.context.trace_id == parent.trace_id


def test_inject_outside_a_span_adds_nothing() -> None:
    assert tracing.inject_headers() == {}
    assert tracing.inject_headers({"a": "b"}) == {"a": "b"}


def test_job_headers_of_a_job_without_headers() -> None:
    assert tracing.job_headers(jobs.Job.new("m", None)) == {}
