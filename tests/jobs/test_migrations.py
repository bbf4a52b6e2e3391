"""Upgrading a database written by the schema of the previous release, in place.

``tests/jobs/schemas/*_v1.sql`` is schema version 1 exactly as that release
created it. Each test builds a database from it, writes jobs in every state
the way version 1 stored them, opens it with today's code, and checks that
every job is still there, reads back as it was, and that the new columns
work.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from trio_monitor.jobs import (
    Aborted,
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    Processing,
    Progress,
    Scheduled,
    Succeeded,
    check_schema,
    open_storage,
)

SCHEMAS = Path(__file__).parent / "schemas"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T0_US = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)

#: (id, state, state_data) as version 1 wrote them (no finished_at).
V1_JOBS: list[tuple[str, str, str]] = [
    ("j-enqueued", "enqueued", '{"enqueued_at":"2026-01-02T03:04:05.678901+00:00"}'),
    ("j-scheduled", "scheduled", '{"enqueue_at":"2026-01-03T00:00:00+00:00"}'),
    (
        "j-processing",
        "processing",
        '{"started_at":"2026-01-02T03:04:06+00:00","worker_id":"w1","server_name":"s#1"}',
    ),
    ("j-succeeded", "succeeded", '{"result":{"ok":[1,2]},"duration":0.25}'),
    ("j-failed", "failed", '{"error":"boom"}'),
    (
        "j-retry",
        "awaiting_retry",
        '{"retry_at":"2026-01-02T03:05:00+00:00","error":"once"}',
    ),
    ("j-deleted", "deleted", "{}"),
]

EXPECTED_STATES = {
    "j-enqueued": Enqueued(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)),
    "j-scheduled": Scheduled(datetime(2026, 1, 3, tzinfo=UTC)),
    "j-processing": Processing(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC), "w1", "s#1"),
    "j-succeeded": Succeeded({"ok": [1, 2]}, 0.25),
    "j-failed": Failed("boom"),
    "j-retry": AwaitingRetry(datetime(2026, 1, 2, 3, 5, tzinfo=UTC), "once"),
    "j-deleted": Deleted(),
}


async def check_upgraded(url: str) -> None:
    status = await check_schema(url)
    assert status.current == 1
    assert not status.up_to_date
    async with open_storage(url) as storage:
        assert (await storage.schema_status()).up_to_date
        for job_id, expected in EXPECTED_STATES.items():
            job = await storage.get(job_id)
            assert job is not None, job_id
            assert job.state == expected
            assert job.payload == {"n": job_id}
            assert job.created_at == T0
            assert job.headers == {}
            assert job.timeout is None
            assert job.unique_key is None
            assert job.lock is None
            assert job.progress is None
            if isinstance(job.state, Succeeded | Failed):
                # Version 1 did not record it: the creation time stands in.
                assert abs((job.state.finished_at - T0).total_seconds()) < 0.001
        assert len(await storage.list_jobs()) == len(V1_JOBS)
        recurring = await storage.list_recurring()
        assert [(r.id, r.timezone) for r in recurring] == [("nightly", "UTC")]
        # The new columns and tables work on the upgraded database.
        new = Job.new(
            "m",
            1,
            headers={"tenant": "a"},
            timeout=3.0,
            unique_key="u",
            lock="l",
        )
        new.progress = Progress(0.5, "half")
        await storage.enqueue(new)
        again = await storage.get(new.id)
        assert again is not None
        assert (again.headers, again.timeout, again.unique_key, again.lock, again.progress) == (
            {"tenant": "a"},
            3.0,
            "u",
            "l",
            Progress(0.5, "half"),
        )
        await storage.enqueue(Job(id="ab", method="m", payload=None, state=Aborted("stop")))
        aborted = await storage.get("ab")
        assert aborted is not None
        assert aborted.state == Aborted("stop")


def build_sqlite_v1(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript((SCHEMAS / "sqlite_v1.sql").read_text())
    for seq, (job_id, state, data) in enumerate(V1_JOBS):
        conn.execute(
            "INSERT INTO jobs (id, method, payload, queue, priority, attempts, created_at,"
            " state, state_data, due_at, started_at, server_name, expires_at, version)"
            " VALUES (?, 'm', ?, 'default', 0, 1, ?, ?, ?, NULL, NULL, NULL, NULL, ?)",
            (job_id, f'{{"n":"{job_id}"}}', T0_US, state, data, seq),
        )
    conn.execute(
        "INSERT INTO recurring VALUES ('nightly', '0 0 3 * * *', 'm', 'null', 'default', 0, ?)",
        (T0_US,),
    )
    conn.commit()
    conn.close()


async def test_sqlite_v1_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    build_sqlite_v1(path)
    await check_upgraded(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


@pytest.mark.postgres
async def test_postgres_v1_database_upgrades_in_place(pg_url: str) -> None:
    psycopg: Any = pytest.importorskip("psycopg")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute((SCHEMAS / "postgres_v1.sql").read_text().encode())
        for seq, (job_id, state, data) in enumerate(V1_JOBS):
            conn.execute(
                "INSERT INTO trio_monitor_jobs (id, method, payload, queue, priority, attempts,"
                " created_at, state, state_data, version)"
                " VALUES (%s, 'm', %s, 'default', 0, 1, %s, %s, %s, %s)",
                [job_id, f'{{"n":"{job_id}"}}', T0, state, data, seq],
            )
        conn.execute(
            "INSERT INTO trio_monitor_recurring (id, cron, method, payload, queue,"
            " next_run_at, priority) VALUES ('nightly', '0 0 3 * * *', 'm', 'null',"
            " 'default', %s, 0)",
            [T0],
        )
    await check_upgraded(pg_url)
