"""Every command end to end, as real subprocesses on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime

import trio

from tests.cli.app import SLOW_ENV
from tests.cli.runner import Cli
from trio_monitor import jobs


def test_a_worker_process_runs_jobs_and_listings_show_them(cli: Cli) -> None:
    added = cli.ok("enqueue", "add", '{"a": 2, "b": 3}').strip()
    failing = cli.ok("enqueue", "fail", '"nope"').strip()
    assert cli.job(added)["state"] == "enqueued"

    worker = cli.start_worker("--concurrency", "2", "--name", "cli-test")
    done = cli.wait_for_state(added, "succeeded")
    assert done["state_data"]["result"] == 5
    assert done["attempts"] == 1
    retrying = cli.wait_for_state(failing, "awaiting_retry")
    assert "refused 'nope'" in retrying["state_data"]["error"]

    (server,) = cli.json("servers")
    assert server["name"] == "cli-test"
    assert server["id"].startswith("cli-test#")
    assert server["worker_count"] == 2
    assert server["queues"] == ["default"]

    listed = cli.json("jobs")
    assert [job["id"] for job in listed] == [failing, added]  # newest first
    assert [job["id"] for job in cli.json("jobs", "--state", "succeeded")] == [added]
    assert [job["id"] for job in cli.json("jobs", "--method", "fail")] == [failing]
    assert cli.json("jobs", "--queue", "other") == []
    assert len(cli.json("jobs", "--limit", "1")) == 1

    table = cli.ok("jobs")
    assert "state" in table.splitlines()[1]  # the header, under the title
    assert added in table
    assert "succeeded" in table
    assert f"{failing}" in cli.ok("job", failing)

    cli.stop_worker(worker)
    assert cli.json("servers") == []  # a stopped worker deregisters
    log = worker.output()
    assert f"job {added} (add) succeeded" in log
    assert "Traceback" not in log.split("failed attempt")[0]


def test_enqueue_options_are_stored(shared_cli: Cli) -> None:
    cli = shared_cli
    job_id = cli.ok(
        "enqueue",
        "add",
        '{"a": 1, "b": 1}',
        "--queue",
        "reports",
        "--priority",
        "7",
        "--delay",
        "3600",
    ).strip()
    job = cli.job(job_id)
    assert (job["queue"], job["priority"], job["state"]) == ("reports", 7, "scheduled")
    enqueue_at = datetime.fromisoformat(job["state_data"]["enqueue_at"])
    assert 3500 < (enqueue_at - datetime.now(UTC)).total_seconds() <= 3600
    assert cli.job(cli.ok("enqueue", "noop").strip())["payload"] is None


def test_delete_and_not_found(shared_cli: Cli) -> None:
    cli = shared_cli
    job_id = cli.ok("enqueue", "add", '{"a": 1, "b": 1}').strip()
    assert cli.ok("delete", job_id).strip() == f"deleted {job_id}"
    assert cli.job(job_id)["state"] == "deleted"

    missing = cli("delete", "no-such-job")
    assert missing.returncode == 1
    assert "no job with id 'no-such-job'" in missing.stderr
    shown = cli("job", "no-such-job")
    assert shown.returncode == 1
    assert shown.stderr.count("\n") == 1


def test_recurring_lists_the_templates(cli: Cli) -> None:
    async def schedule() -> None:
        async with jobs.open_storage(cli.url) as storage:
            server = jobs.JobServer(
                jobs.ServerConfig(worker_count=0), storage, jobs.WorkerRegistry()
            )
            await server.schedule_recurring("digest", "0 0 8 * * *", "add", {"a": 1, "b": 2})

    assert cli.json("recurring") == []
    trio.run(schedule)
    (template,) = cli.json("recurring")
    assert template["id"] == "digest"
    assert template["cron"] == "0 0 8 * * *"
    assert template["payload"] == {"a": 1, "b": 2}
    assert "digest" in cli.ok("recurring")


def test_sigterm_during_a_slow_job_requeues_it_for_another_worker(cli: Cli) -> None:
    job_id = cli.ok("enqueue", "slow").strip()
    first = cli.start_worker("--shutdown-timeout", "0.5")
    assert cli.wait_for_state(job_id, "processing")["attempts"] == 1

    cli.stop_worker(first)  # SIGTERM, exit status 0
    assert "stopping gracefully" in first.output()
    requeued = cli.job(job_id)
    assert requeued["state"] == "enqueued"  # not stranded in processing
    assert requeued["attempts"] == 0  # the interrupted attempt is not counted

    second = cli.start_worker(**{SLOW_ENV: "0"})
    done = cli.wait_for_state(job_id, "succeeded")
    assert done["attempts"] == 1
    assert done["state_data"]["result"] == "slept"
    cli.stop_worker(second)


def test_a_second_signal_stops_at_once_and_still_requeues(cli: Cli) -> None:
    job_id = cli.ok("enqueue", "slow").strip()
    worker = cli.start_worker()  # the default shutdown timeout: 25 s
    cli.wait_for_state(job_id, "processing")
    worker.signal(signal.SIGTERM)
    worker.wait_for_log("stopping gracefully")
    worker.signal(signal.SIGINT)
    assert worker.wait(timeout=10) == 0, worker.output()
    assert "stopping at once" in worker.output()
    assert cli.job(job_id)["state"] == "enqueued"
    assert cli.json("servers") == []


def test_json_logs(sqlite_cli: Cli) -> None:
    job_id = sqlite_cli.ok("enqueue", "add", '{"a": 1, "b": 1}').strip()
    worker = sqlite_cli.start_worker("--log-format", "json")
    sqlite_cli.wait_for_state(job_id, "succeeded")
    sqlite_cli.stop_worker(worker)
    lines = [json.loads(line) for line in worker.output().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert any(f"job {job_id} (add) succeeded" in line["message"] for line in lines)
    assert all(datetime.fromisoformat(line["time"]).tzinfo is not None for line in lines)


def test_traced_worker_writes_a_span_per_run(sqlite_cli: Cli) -> None:
    spans_file = sqlite_cli.tmp_path / "spans.jsonl"
    job_id = sqlite_cli.ok("enqueue", "add", '{"a": 1, "b": 1}').strip()
    worker = sqlite_cli.start_worker(
        "--trace", app="tests.cli.traced_app:workers", TRIO_MONITOR_TEST_SPANS=str(spans_file)
    )
    sqlite_cli.wait_for_state(job_id, "succeeded")
    sqlite_cli.stop_worker(worker)
    (span,) = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert span["name"] == "job add"
    assert span["attributes"]["messaging.message.id"] == job_id
