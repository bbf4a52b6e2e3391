"""SQLite-specific behaviour: schema migrations, WAL, sharing a file between
processes, a locked database, URL paths, cancellation. The storage contract
itself is in ``test_storage_contract.py``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_monitor.jobs import (
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    Processing,
    Scheduled,
    SchemaVersionError,
    Succeeded,
    Transition,
    open_storage,
)
from trio_monitor.jobs._backends._sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStorage
from trio_monitor.jobs._backends._sqlite._schema import connect
from trio_monitor.jobs._backends._sqlite._storage import _apply_sql, _list_sql
from trio_monitor.jobs._model import decode_state, encode_state, utcnow


def url(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


async def connection_pragma(storage: SQLiteStorage, name: str) -> object:
    """A pragma of the storage's own connection, read on its thread."""
    return await storage._read(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])


async def open_with(path: Path, migrations: Sequence[Sequence[str]]) -> None:
    """Open (and migrate) ``path`` as a trio_monitor whose migrations are ``migrations``."""
    conn = await trio.to_thread.run_sync(connect, str(path), 5.0, migrations)
    conn.close()


async def claim(storage: SQLiteStorage, n: int = 1, now: datetime | None = None) -> list[Job]:
    return await storage.claim(
        queues=["default"],
        worker_ids=[f"w{i}" for i in range(n)],
        server_name="srv",
        now=utcnow() if now is None else now,
    )


# -- schema and pragmas ----------------------------------------------------


async def test_fresh_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_storage(url(path)) as storage:
        await storage.enqueue(Job.new("m", 1))
        assert pragma(path, "user_version") == SCHEMA_VERSION
        assert pragma(path, "journal_mode") == "wal"
        assert {"jobs", "servers", "recurring"} <= tables(path)
        assert isinstance(storage, SQLiteStorage)
        assert await connection_pragma(storage, "synchronous") == 1  # NORMAL
        assert await connection_pragma(storage, "busy_timeout") == 5000


async def test_reopening_a_migrated_database_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    job = Job.new("m", {"keep": True})
    async with open_storage(url(path)) as storage:
        await storage.enqueue(job)
    schema = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    async with open_storage(url(path)) as storage:
        got = await storage.get(job.id)
    assert got is not None
    assert got.payload == {"keep": True}
    assert pragma(path, "user_version") == SCHEMA_VERSION
    after = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert after == schema


async def test_open_applies_only_the_missing_migrations(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    job = Job.new("m", 7)
    async with open_storage(url(path)) as storage:
        await storage.enqueue(job)
    step = ("CREATE TABLE extra (x INTEGER)", "INSERT INTO extra VALUES (1)")
    for _ in range(2):  # the second open finds nothing to do (a re-run would fail)
        await open_with(path, (*MIGRATIONS, step))
    assert pragma(path, "user_version") == SCHEMA_VERSION + 1
    assert sqlite3.connect(path).execute("SELECT count(*) FROM extra").fetchone()[0] == 1


async def test_a_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    async with open_storage(url(path)):
        pass
    step = ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL")
    with pytest.raises(sqlite3.OperationalError):
        await open_with(path, (*MIGRATIONS, step))
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert "extra" not in tables(path)


async def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (anything TEXT)")
    conn.execute("INSERT INTO jobs VALUES ('precious')")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match=r"newer trio_monitor") as info:
        async with open_storage(url(path)):
            pass
    assert str(SCHEMA_VERSION + 5) in str(info.value)
    assert path.read_bytes() == before
    assert pragma(path, "journal_mode") == "delete"  # not switched to WAL either
    rows = sqlite3.connect(path).execute("SELECT anything FROM jobs").fetchall()
    assert rows == [("precious",)]


def migrated_in_memory() -> sqlite3.Connection:
    """An in-memory database with the job schema, for query plans."""
    conn = sqlite3.connect(":memory:")
    for step in MIGRATIONS:
        for statement in step:
            conn.execute(statement)
    return conn


def test_claim_queries_use_their_indexes() -> None:
    conn = migrated_in_memory()
    for queue_count, index in (
        (0, "jobs_claim_any"),
        (1, "jobs_claim_queue"),
        (3, "jobs_claim_queue"),
        (600, "jobs_claim_any"),
    ):
        sql = SQLiteStorage._claim_sql(queue_count)
        if queue_count > 100:
            params: list[object] = [json.dumps([f"q{i}" for i in range(queue_count)]), 1]
        else:
            params = ["q", 1] * queue_count + ([1] if queue_count != 1 else [])
        plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert index in plan
        # A sort is only allowed over the per-queue heads of a multi-queue claim.
        assert ("TEMP B-TREE" in plan) == (1 < queue_count <= 100)


def test_one_statement_claims_and_outcomes_use_their_indexes() -> None:
    """The claim's UPDATE ... RETURNING walks the claim indexes as the plain SELECT does and
    writes rows by rowid; the outcomes' UPDATE ... FROM finds each job by its id."""
    conn = migrated_in_memory()
    for queue_count, index in (
        (0, "jobs_claim_any"),
        (1, "jobs_claim_queue"),
        (3, "jobs_claim_queue"),
    ):
        queues = [f"q{i}" for i in range(queue_count)]
        for limit in (1, 5):  # the parameters' order does not matter to the plan
            sql = SQLiteStorage._claim_update_sql(queue_count, limit)
            params = [*["{}"] * limit, *SQLiteStorage._candidate_params(queues, limit), 0, "srv"]
            plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert index in plan
            assert "SEARCH jobs USING INTEGER PRIMARY KEY" in plan
            assert "SCAN jobs " not in plan.replace(f"SCAN jobs USING INDEX {index}", "")
    sql = _apply_sql(3)
    plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", [None] * 30))
    assert "SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)" in plan


# -- URLs ------------------------------------------------------------------


async def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_storage("sqlite:///rel.db") as storage:
        await storage.enqueue(Job.new("m", 1))
    assert (tmp_path / "rel.db").exists()
    (tmp_path / "sub").mkdir()
    async with open_storage("sqlite:///sub/nested.db"):
        pass
    assert (tmp_path / "sub" / "nested.db").exists()
    absolute = tmp_path / "abs" / "jobs.db"
    absolute.parent.mkdir()
    monkeypatch.chdir("/")
    assert f"sqlite:///{absolute}".startswith("sqlite:////")
    async with open_storage(f"sqlite:///{absolute}") as storage:
        await storage.enqueue(Job.new("m", 1))
    assert absolute.exists()
    assert not (Path("/") / "rel.db").exists()


async def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        async with open_storage(url(tmp_path / "nope" / "jobs.db")):
            pass
    assert not (tmp_path / "nope").exists()


async def test_busy_timeout_url_option(tmp_path: Path) -> None:
    async with open_storage(url(tmp_path / "a.db", "?busy_timeout=0.25")) as storage:
        assert isinstance(storage, SQLiteStorage)
        assert await connection_pragma(storage, "busy_timeout") == 250


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("?busy_timeout=1", "names no database"),
        ("a.db?timeout=1", "unknown SQLite URL option 'timeout'"),
        ("a.db?busy_timeout=soon", "busy_timeout must be seconds"),
        ("a.db?busy_timeout=-1", "busy_timeout must be >= 0"),
    ],
)
async def test_bad_sqlite_urls(tmp_path: Path, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with open_storage(f"sqlite:///{tmp_path}/{target}".replace(f"{tmp_path}/?", "?")):
            pass


# -- several processes, locks ----------------------------------------------

CLAIMER = """
import json, sys, trio
from trio_monitor.jobs._backends._sqlite import SQLiteStorage
from trio_monitor.jobs._model import utcnow

async def main(path, name):
    storage = await SQLiteStorage.open(path)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    got = []
    try:
        while True:
            jobs = await storage.claim(
                queues=["default"], worker_ids=["a", "b"], server_name=name, now=utcnow()
            )
            if not jobs:
                break
            got += [job.id for job in jobs]
    finally:
        await storage.aclose()
    print(json.dumps(got), flush=True)

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_two_processes_claim_disjoint_jobs(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    jobs = [Job.new("m", i, priority=i % 3) for i in range(400)]
    async with open_storage(url(path)) as storage:
        await storage.enqueue_many(jobs)

    outputs: dict[str, list[str]] = {}

    async def run(name: str, ready: trio.Event, go: trio.Event) -> None:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CLAIMER, str(path), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        buffer = b""
        while b"\n" not in buffer:
            chunk = await proc.stdout.receive_some()
            assert chunk, "claimer exited early"
            buffer += chunk
        ready.set()
        await go.wait()
        await proc.stdin.send_all(b"go\n")
        while True:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                break
            buffer += chunk
        assert await proc.wait() == 0
        outputs[name] = json.loads(buffer.decode().splitlines()[1])

    with trio.fail_after(60):
        go = trio.Event()
        readies = [trio.Event(), trio.Event()]
        async with trio.open_nursery() as nursery:
            for name, ready in zip(("p1", "p2"), readies, strict=True):
                nursery.start_soon(run, name, ready, go)
            for ready in readies:
                await ready.wait()
            go.set()
    one, two = outputs["p1"], outputs["p2"]
    assert not set(one) & set(two)
    assert sorted(one + two) == sorted(job.id for job in jobs)
    assert len(one) + len(two) == len(jobs)
    async with open_storage(url(path)) as storage:
        stored = await storage.list_jobs(state=Processing)
    owners = {job.id: job.state.server_name for job in stored if isinstance(job.state, Processing)}
    assert {owners[i] for i in one} <= {"p1"}
    assert {owners[i] for i in two} <= {"p2"}


@pytest.fixture
def locker(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A second connection to ``tmp_path/locked.db``, for holding its write lock."""
    conn = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    yield conn
    conn.close()


async def test_locked_database_raises_then_recovers(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    path = tmp_path / "locked.db"
    async with open_storage(url(path, "?busy_timeout=0.05")) as storage:
        await storage.enqueue(Job.new("m", 0))
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(sqlite3.OperationalError, match=r"locked.*busy_timeout"):
                await storage.enqueue(Job.new("m", 1))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await claim(storage)
            # WAL: readers are not blocked by the writer.
            assert (await storage.count_by_state())["enqueued"] == 1
        finally:
            locker.execute("ROLLBACK")
        # The storage is usable again, and nothing half-done was left behind.
        job = Job.new("m", 2)
        await storage.enqueue(job)
        assert (await storage.count_by_state())["enqueued"] == 2
        assert len(await claim(storage, 5)) == 2
        assert await storage.get(job.id) is not None


async def test_opening_needs_no_write_lock_unless_it_migrates(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    path = tmp_path / "locked.db"
    async with open_storage(url(path)):
        pass
    locker.execute("BEGIN IMMEDIATE")  # a long writer elsewhere
    try:
        async with open_storage(url(path, "?busy_timeout=0.05")) as storage:
            assert await storage.list_jobs() == []  # reads go on (WAL)
    finally:
        locker.execute("ROLLBACK")


async def test_a_migration_behind_a_locked_database_says_what_to_do(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    path = tmp_path / "locked.db"
    locker.execute("PRAGMA journal_mode = WAL")
    locker.execute("BEGIN IMMEDIATE")  # the file is new: opening must migrate
    try:
        with pytest.raises(sqlite3.OperationalError, match=r"locked.*busy_timeout, 0\.05s"):
            async with open_storage(url(path, "?busy_timeout=0.05")):
                pass
    finally:
        locker.execute("ROLLBACK")
    async with open_storage(url(path)) as storage:  # and once it is free, it opens
        assert await storage.list_jobs() == []


async def test_apply_with_a_non_json_result_applies_nothing(tmp_path: Path) -> None:
    async with open_storage(url(tmp_path / "j.db")) as storage:
        await storage.enqueue_many([Job.new("m", 1), Job.new("m", 2)])
        first, second = await claim(storage, 2)
        with pytest.raises(TypeError, match="JSON"):
            await storage.apply(
                [
                    Transition(first.id, first.version, Failed("fine")),
                    Transition(second.id, second.version, Succeeded(object(), 0.1)),
                ]
            )
        assert await storage.get(first.id) == first
        assert await storage.get(second.id) == second


async def test_cancelled_call_finishes_its_transaction(
    tmp_path: Path, locker: sqlite3.Connection
) -> None:
    """A cancelled caller waits for its thread: the write is whole, never half."""
    path = tmp_path / "locked.db"
    job = Job.new("m", 1)
    async with open_storage(url(path, "?busy_timeout=5")) as storage:
        locker.execute("BEGIN IMMEDIATE")

        async def release_later() -> None:
            await trio.sleep(0.2)
            locker.execute("ROLLBACK")

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            returned = False
            with trio.move_on_after(0.02) as scope:
                await storage.enqueue(job)
                # The call was not abandoned: it returns its result, and the
                # cancellation is delivered at the next checkpoint.
                returned = True
                await trio.lowlevel.checkpoint()
        assert returned
        assert scope.cancelled_caught
        assert trio.current_time() - start >= 0.2  # it waited for the thread
        stored = await storage.get(job.id)
        assert stored is not None
        assert isinstance(stored.state, Enqueued)


async def test_timestamps_come_back_as_utc(tmp_path: Path) -> None:
    plus5 = timezone(timedelta(hours=5))
    now = utcnow().astimezone(plus5)
    async with open_storage(url(tmp_path / "j.db")) as storage:
        await storage.enqueue(Job.new("m", 1))
        (job,) = await claim(storage, now=now)
        stored = await storage.get(job.id)
    assert stored is not None
    assert isinstance(stored.state, Processing)
    assert stored.state.started_at == now
    assert stored.state.started_at.utcoffset() == timedelta(0)
    assert stored.created_at.utcoffset() == timedelta(0)


def stored_state_data(path: Path, job_id: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(
            conn.execute("SELECT state_data FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        )
    finally:
        conn.close()


async def test_stored_state_json_is_encode_states(tmp_path: Path) -> None:
    """The fast encoders on the claim/apply path write what encode_state writes."""
    path = tmp_path / "j.db"
    now = utcnow()
    states = [
        Enqueued(now),
        Scheduled(now),
        Processing(now, 'w"1', "srv\\ü#1"),
        Succeeded({"a": [1, None, "é"]}, 0.25),
        Failed("boom"),
        AwaitingRetry(now, "e"),
        Deleted(),
    ]
    async with open_storage(url(path)) as storage:
        jobs = [Job.new("m", i) for i in range(len(states))]
        for job, state in zip(jobs, states, strict=True):
            job.state = state
        await storage.enqueue_many(jobs)
        claimable = Job.new("m", "c", queue="c")
        await storage.enqueue(claimable)
        (claimed,) = await storage.claim(
            queues=["c"], worker_ids=['w"x'], server_name="s\\ü", now=now
        )
        assert claimed.id == claimable.id
        assert (
            stored_state_data(path, claimed.id) == encode_state(Processing(now, 'w"x', "s\\ü"))[1]
        )
        (applied,) = await storage.apply(
            [Transition(claimed.id, claimed.version, Succeeded({"k": "ü"}, 1.0, now))]
        )
        assert applied is not None
    conn = sqlite3.connect(path)
    stored = dict(conn.execute("SELECT id, state_data FROM jobs"))
    conn.close()
    for job, state in zip(jobs, states, strict=True):
        assert stored[job.id] == encode_state(state)[1]
        assert decode_state(state.name, stored[job.id]) == state
    assert stored[claimed.id] == encode_state(Succeeded({"k": "ü"}, 1.0, now))[1]


async def test_apply_chains_within_a_batch_and_handles_big_batches(tmp_path: Path) -> None:
    async with open_storage(url(tmp_path / "j.db")) as storage:
        jobs = [Job.new("m", i) for i in range(1203)]  # more than one IN (...) chunk
        await storage.enqueue_many(jobs)
        claimed = await storage.claim(
            queues=[], worker_ids=[str(i) for i in range(2000)], server_name="s", now=utcnow()
        )
        assert len(claimed) == len(jobs)
        head = claimed[0]
        transitions = [
            Transition(head.id, head.version, AwaitingRetry(utcnow(), "e")),
            Transition(head.id, head.version + 1, Failed("chained"), attempts=7),
            *(Transition(job.id, job.version, Succeeded(None, 0.0)) for job in claimed[1:]),
            Transition("missing", 0, Failed("x")),
        ]
        results = await storage.apply(transitions)
        assert results[-1] is None
        assert all(job is not None for job in results[:-1])
        stored = await storage.get(head.id)
        assert stored is not None
        assert stored.state == Failed("chained")
        assert (stored.attempts, stored.version) == (7, head.version + 2)
        assert (await storage.count_by_state())["succeeded"] == len(jobs) - 1


@pytest.mark.parametrize("before", [None, "some-id"])
@pytest.mark.parametrize(
    ("state", "queue", "method"),
    [
        (None, None, None),
        (Failed, None, None),
        (None, "q", None),
        (Failed, "q", None),
        (None, None, "m"),
        (None, "q", "m"),
    ],
)
def test_list_jobs_pages_walk_an_index_without_sorting(
    state: type[Failed] | None, queue: str | None, method: str | None, before: str | None
) -> None:
    # A page must cost the same at the millionth job: no sort of all matches.
    conn = migrated_in_memory()
    sql, params = _list_sql(state, queue, method, 100, before, True)
    plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "TEMP B-TREE" not in plan
