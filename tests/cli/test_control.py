"""The job-control commands end to end, as real subprocesses on SQLite and PostgreSQL.

``retry``, ``abort``, ``delete``, ``queues``, ``pause``, ``resume``, ``enqueue``'s
job options and ``jobs`` paging share one database per backend (each test
keeps to its own queue); ``migrate`` gets databases of its own.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from tests.cli.runner import Cli, command_env, run
from tests.jobs.test_migrations import SCHEMAS, build_sqlite_v1
from tests.pg_cluster import PgCluster
from trio_monitor import jobs


def queue_name() -> str:
    """A queue of the test's own in the shared database."""
    return f"q-{uuid.uuid4().hex[:8]}"


def store(cli: Cli, *stored: jobs.Job) -> None:
    """Put jobs in the database as they are (any state), in this process."""

    async def put() -> None:
        async with jobs.open_storage(cli.url) as storage:
            for job in stored:
                await storage.enqueue(job)

    trio.run(put)


def in_state(queue: str, state: jobs.JobState) -> jobs.Job:
    job = jobs.Job.new("add", {"a": 1, "b": 1}, queue=queue)
    job.state = state
    return job


def test_abort_then_retry_a_queued_job(shared_cli: Cli) -> None:
    cli = shared_cli
    job_id = cli.ok("enqueue", "add", '{"a": 1, "b": 2}', "--queue", queue_name()).strip()
    assert cli.ok("abort", job_id).strip() == f"aborted {job_id}"
    aborted = cli.job(job_id)
    assert aborted["state"] == "aborted"
    assert aborted["state_data"]["reason"] == "aborted from the command line"

    again = cli("abort", job_id)
    assert again.returncode == 1
    assert f"job {job_id} is already aborted" in again.stderr

    assert cli.ok("retry", job_id).strip() == f"retried {job_id}"
    assert (cli.job(job_id)["state"], cli.job(job_id)["attempts"]) == ("enqueued", 0)
    refused = cli("retry", job_id)
    assert refused.returncode == 1
    assert "is enqueued: only failed or aborted jobs can be retried" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_retry_failed_jobs_and_unknown_ids(shared_cli: Cli) -> None:
    cli = shared_cli
    queue = queue_name()
    failed = [in_state(queue, jobs.Failed("boom")) for _ in range(2)]
    succeeded = in_state(queue, jobs.Succeeded(2, 0.1))
    store(cli, *failed, succeeded)

    retried = cli.ok("retry", "--failed").splitlines()
    assert {f"retried {job.id}" for job in failed} <= set(retried)
    listed = cli.json("jobs", "--queue", queue)
    assert {job["id"]: job["state"] for job in listed} == {
        failed[0].id: "enqueued",
        failed[1].id: "enqueued",
        succeeded.id: "succeeded",
    }
    assert cli.ok("retry", "--failed") == ""  # none left

    # Every id is tried; the exit status says some were not retried, and why.
    mixed = cli("retry", "no-such-job", succeeded.id)
    assert mixed.returncode == 1
    assert "no job with id 'no-such-job'" in mixed.stderr
    assert f"job {succeeded.id} is succeeded" in mixed.stderr
    both = cli("retry", succeeded.id, "--failed")
    assert both.returncode == 2
    assert "give job ids or --failed" in both.stderr
    assert cli("retry").returncode == 2


def test_abort_of_a_running_job_asks_its_server_and_delete_of_unknown_fails(
    shared_cli: Cli,
) -> None:
    cli = shared_cli
    queue = queue_name()
    running = in_state(queue, jobs.Processing(datetime.now(UTC), "w:0", "elsewhere#1"))
    store(cli, running)
    out = cli.ok("abort", running.id).strip()
    assert out == f"abort requested for {running.id} (running on elsewhere#1)"
    missing = cli("abort", "no-such-job")
    assert (missing.returncode, missing.stderr.count("\n")) == (1, 1)
    assert "no job with id 'no-such-job'" in missing.stderr

    queued = cli.ok("enqueue", "add", '{"a": 1, "b": 1}', "--queue", queue).strip()
    assert cli.ok("delete", queued).strip() == f"deleted {queued}"
    twice = cli("delete", queued)
    assert twice.returncode == 1
    assert f"job {queued} is already deleted" in twice.stderr


def test_enqueue_job_options_and_unique_keys(shared_cli: Cli) -> None:
    cli = shared_cli
    queue = queue_name()
    options = ("--queue", queue, "--unique-key", f"report-{queue}", "--lock", "ledger")
    first = cli.ok(
        "enqueue", "add", '{"a": 1, "b": 1}', *options, "--timeout", "2.5",
        "--headers", '{"tenant": "acme"}',
    ).strip()  # fmt: skip
    # A live job holds the key: nothing new is stored, its id is printed.
    assert cli.ok("enqueue", "add", '{"a": 9, "b": 9}', *options).strip() == first
    job = cli.job(first)
    assert (job["unique_key"], job["lock"], job["timeout"]) == (f"report-{queue}", "ledger", 2.5)
    assert job["headers"] == {"tenant": "acme"}
    assert len(cli.json("jobs", "--queue", queue)) == 1

    cli.ok("abort", first)  # no longer live: the key is free again
    second = cli.ok("enqueue", "add", '{"a": 1, "b": 1}', *options).strip()
    assert second != first

    for bad in ('["not", "an object"]', '{"n": 1}', "{nope"):
        refused = cli("enqueue", "add", "--headers", bad)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
    assert cli("enqueue", "add", "--timeout", "0").returncode == 2


def test_jobs_pages_newest_first_with_database_filters(shared_cli: Cli) -> None:
    cli = shared_cli
    queue = queue_name()
    ids = [
        cli.ok("enqueue", method, "null", "--queue", queue).strip()
        for method in ("add", "fail", "add")
    ]
    page = cli.json("jobs", "--queue", queue, "--limit", "2")
    assert [job["id"] for job in page] == [ids[2], ids[1]]
    rest = cli.json("jobs", "--queue", queue, "--limit", "2", "--before", page[-1]["id"])
    assert [job["id"] for job in rest] == [ids[0]]
    added = cli.json("jobs", "--queue", queue, "--method", "add", "--state", "enqueued")
    assert [job["id"] for job in added] == [ids[2], ids[0]]
    assert cli.json("jobs", "--queue", queue, "--before", "no-such-job") == []


def test_pause_keeps_a_queue_from_starting_until_resumed(shared_cli: Cli) -> None:
    cli = shared_cli
    paused, other = queue_name(), queue_name()
    assert cli.ok("pause", paused).strip() == f"paused {paused}"
    held = cli.ok("enqueue", "add", '{"a": 1, "b": 1}', "--queue", paused).strip()
    free = cli.ok("enqueue", "add", '{"a": 2, "b": 2}', "--queue", other).strip()

    listed = {queue["name"]: queue for queue in cli.json("queues")}
    assert listed[paused]["paused"] is True
    assert listed[paused]["counts"] == {"enqueued": 1}
    assert listed[other]["paused"] is False
    table = cli.ok("queues")
    assert any(line.split()[:2] == [paused, "paused"] for line in table.splitlines())

    # One job at a time, the paused queue's job first in age: had the pause
    # not held, it would have started before the other one.
    worker = cli.start_worker("--queues", f"{paused},{other}", "--concurrency", "1")
    cli.wait_for_state(free, "succeeded")
    assert cli.job(held)["state"] == "enqueued"

    assert cli.ok("resume", paused).strip() == f"resumed {paused}"
    assert cli.wait_for_state(held, "succeeded")["state_data"]["result"] == 2
    assert {q["name"]: q["paused"] for q in cli.json("queues")}[paused] is False
    cli.stop_worker(worker)


# -- migrate ------------------------------------------------------------------------


def check_migrate_from_v1(url: str, latest: int) -> None:
    def migrate(*args: str) -> tuple[int, str, str]:
        done = run("migrate", *args, "--storage", url)
        return done.returncode, done.stdout, done.stderr

    status, _, err = migrate("--check")
    assert status == 1
    assert "migrations pending: the database has schema version 1" in err
    assert err.count("\n") == 1
    assert migrate() == (0, f"migrated the schema from version 1 to {latest}\n", "")
    assert migrate("--check") == (0, f"schema up to date (version {latest})\n", "")
    assert migrate() == (0, f"schema up to date (version {latest})\n", "")


def test_migrate_a_v1_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    build_sqlite_v1(path)
    url = f"sqlite:///{path}"
    check_migrate_from_v1(url, latest=2)
    (job,) = [job for job in json.loads(run_json("jobs", url)) if job["id"] == "j-failed"]
    assert job["state"] == "failed"  # the jobs are kept

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    for args in (("--check",), ()):
        newer = run("migrate", *args, "--storage", url)
        assert newer.returncode == 2
        assert newer.stderr.count("\n") == 1
        assert "schema version 99, newer than this trio_monitor's 2" in newer.stderr


def run_json(command: str, url: str) -> str:
    done = run(command, "--json", "--storage", url)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.postgres
def test_migrate_a_v1_postgres_database(pg_cluster: PgCluster) -> None:
    url = pg_cluster.create_database()
    try:
        pg_cluster.execute((SCHEMAS / "postgres_v1.sql").read_text(), url.rsplit("/", 1)[1])
        check_migrate_from_v1(url, latest=3)
        pg_cluster.execute(
            "INSERT INTO trio_monitor_schema_version (version) VALUES (99)", url.rsplit("/", 1)[1]
        )
        newer = run("migrate", "--check", "--storage", url)
        assert newer.returncode == 2
        assert "schema version 99, newer than this trio_monitor's 3" in newer.stderr
    finally:
        pg_cluster.drop_database(url.rsplit("/", 1)[1])


def test_migrate_with_a_bad_url_exits_2() -> None:
    done = run("migrate", "--check", "--storage", "mysql://nope")
    assert done.returncode == 2
    assert "unsupported storage URL" in done.stderr
    assert "Traceback" not in done.stderr


# -- tracing --------------------------------------------------------------------------


def test_a_job_run_span_continues_the_trace_captured_at_enqueue(sqlite_cli: Cli) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    env = command_env(TRACEPARENT=f"00-{trace_id}-{parent_id}-01")
    done = run(
        "enqueue", "add", '{"a": 1, "b": 1}', "--trace", "--storage", sqlite_cli.url, env=env
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert sqlite_cli.job(job_id)["headers"]["traceparent"].startswith(f"00-{trace_id}-")

    spans_file = sqlite_cli.tmp_path / "spans.jsonl"
    worker = sqlite_cli.start_worker(
        "--trace", app="tests.cli.traced_app:workers", TRIO_MONITOR_TEST_SPANS=str(spans_file)
    )
    sqlite_cli.wait_for_state(job_id, "succeeded")
    sqlite_cli.stop_worker(worker)
    (span,) = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert span["context"]["trace_id"] == f"0x{trace_id}"
    assert span["parent_id"] == f"0x{parent_id}"
    assert span["attributes"]["messaging.message.id"] == job_id
