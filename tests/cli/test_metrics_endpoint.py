"""``worker --metrics-port``: scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.cli.runner import Cli, Worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(worker: Worker) -> Samples:
    """Every sample the worker serves, keyed by name and labels."""
    port = int(worker.wait_for_log(r"serving metrics on http://[\d.]+:(\d+)/metrics").group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_until(worker: Worker, succeeded: float, scheduled: float) -> Samples:
    """Scrape until the job counts read from the database reach the given figures."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(worker)
        if (jobs_in(samples, "succeeded"), jobs_in(samples, "scheduled")) == (succeeded, scheduled):
            return samples
        assert time.monotonic() < deadline, samples
        time.sleep(0.1)


def jobs_in(samples: Samples, state: str) -> float:
    return samples[("trio_monitor_jobs", frozenset({("queue", "default"), ("state", state)}))]


def test_metrics_come_from_the_database_in_every_worker_process(cli: Cli) -> None:
    added = [cli.ok("enqueue", "add", f'{{"a": {n}, "b": 1}}').strip() for n in range(3)]
    failing = cli.ok("enqueue", "fail", "1").strip()
    refresh = ("--metrics-port", "0", "--metrics-refresh", "0.1")
    first = cli.start_worker(*refresh, "--concurrency", "2")
    for job_id in added:
        cli.wait_for_state(job_id, "succeeded")
    cli.wait_for_state(failing, "awaiting_retry")
    # A second process that ran no job: the counts are the database's, not its own.
    second = cli.start_worker(*refresh, "--concurrency", "0")
    cli.ok("enqueue", "add", '{"a": 0, "b": 0}', "--delay", "3600")

    ran, idle = scrape_until(first, 3, 1), scrape_until(second, 3, 1)
    for samples in (ran, idle):
        assert jobs_in(samples, "deleted") == 0  # every state is exported
        retried = jobs_in(samples, "awaiting_retry") + jobs_in(samples, "failed")
        assert retried + jobs_in(samples, "enqueued") + jobs_in(samples, "processing") == 1
        assert samples[("trio_monitor_jobs_read_timestamp_seconds", frozenset())] > 0

    method = frozenset({("method", "add")})
    assert ran[("trio_monitor_job_duration_seconds_count", method)] == 3
    assert ran[("trio_monitor_job_start_latency_seconds_count", method)] == 3
    assert ran[("trio_monitor_jobs_processed_total", method | {("outcome", "succeeded")})] == 3
    outcome = frozenset({("method", "fail"), ("outcome", "retried")})
    assert ran[("trio_monitor_jobs_processed_total", outcome)] >= 1
    assert not any(name.startswith("trio_monitor_job_duration") for name, _ in idle)
    assert ("process_cpu_seconds_total", frozenset()) in ran  # the standard process metrics
    cli.stop_worker(second)
    cli.stop_worker(first)
