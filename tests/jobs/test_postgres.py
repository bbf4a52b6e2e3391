"""PostgreSQL storage: what only PostgreSQL does (the contract is test_storage_contract.py).

Runs against a throwaway cluster (tests/pg_cluster.py), a fresh database per
test, on the real clock (the storage talks to PostgreSQL through threads).
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio

from tests.pg_cluster import PgCluster
from trio_monitor import jobs
from trio_monitor.jobs._model import (
    Failed,
    Job,
    Processing,
    Scheduled,
    Transition,
    utcnow,
)

psycopg = pytest.importorskip("psycopg")
from trio_monitor.jobs._backends._postgres import SCHEMA_VERSION, PostgresStorage  # noqa: E402
from trio_monitor.jobs._backends._postgres._storage import (  # noqa: E402
    _parse_url,
    _pick_sql,
)

pytestmark = pytest.mark.postgres


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStorage]:
    storage = await PostgresStorage.open(url)
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


@pytest.fixture
async def storage(pg_url: str) -> AsyncIterator[PostgresStorage]:
    async with opened(pg_url) as s:
        yield s


@contextmanager
def raw(url: str, autocommit: bool = True) -> Iterator[Any]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        yield conn


def job(payload: Any = None, **kwargs: Any) -> Job:
    return Job.new("method", payload, **kwargs)


# -- opening ------------------------------------------------------------------


async def test_open_storage_dispatches_postgres_urls(pg_url: str) -> None:
    async with jobs.open_storage(pg_url) as s:
        assert isinstance(s, PostgresStorage)
        assert isinstance(s, jobs.Storage)
        j = job({"x": 1})
        assert await s.enqueue(j) == j.id
        stored = await s.get(j.id)
        assert stored is not None
        assert stored.payload == {"x": 1}


# -- PostgreSQL specifics -------------------------------------------------------------


@pytest.mark.parametrize("option", ["", "?claim_synchronous_commit=off"])
@pytest.mark.parametrize("queues", [[], ["default"], ["other", "default"]])
async def test_concurrent_claims_are_disjoint(pg_url: str, option: str, queues: list[str]) -> None:
    n_jobs = 600
    url = pg_url + option
    async with opened(url) as a, opened(url) as b, opened(url) as c:
        await a.enqueue_many([job(i, queue=("default", "other")[i % 2]) for i in range(n_jobs)])
        if queues == ["default"]:
            n_jobs //= 2
        claimed: list[str] = []

        async def claimer(storage: PostgresStorage, name: str) -> None:
            while True:
                got = await storage.claim(
                    queues=queues,
                    worker_ids=[f"{name}-{i}" for i in range(3)],
                    server_name=name,
                    now=utcnow(),
                )
                if not got:
                    return
                claimed.extend(j.id for j in got)
                for j in got:
                    assert isinstance(j.state, Processing)
                    assert j.state.server_name == name

        async with trio.open_nursery() as nursery:
            for s_i, s in enumerate((a, b, c)):
                for t in range(4):
                    nursery.start_soon(claimer, s, f"s{s_i}t{t}")
        assert len(claimed) == n_jobs
        assert len(set(claimed)) == n_jobs
        assert (await a.count_by_state())["processing"] == n_jobs
        # Every job claimed exactly once: one attempt each.
        assert {j.attempts for j in await a.list_jobs(state=Processing)} == {1}
        # Compare-and-swap on the claimed version: one outcome per job, whoever tries.
        processing = await a.list_jobs(state=Processing)
        first = await b.apply([succeed(j) for j in processing])
        again = await c.apply([succeed(j) for j in processing])
        assert all(j is not None for j in first)
        assert again == [None] * n_jobs


def _scanned_rows(plan: dict[str, Any]) -> list[int]:
    """Actual rows of every scan of the jobs table in an EXPLAIN (ANALYZE, FORMAT JSON) plan."""
    rows = [plan["Actual Rows"]] if plan.get("Relation Name") == "trio_monitor_jobs" else []
    for child in plan.get("Plans", []):
        rows += _scanned_rows(child)
    return rows


@pytest.mark.parametrize("queues", [[], ["default"], ["other", "default"]])
async def test_a_claim_reads_only_the_head_of_a_long_queue(
    storage: PostgresStorage, pg_url: str, queues: list[str]
) -> None:
    enqueued = [job(i, queue=("default", "other")[i % 2], priority=i % 3) for i in range(3000)]
    await storage.enqueue_many(enqueued)
    sql = _pick_sql(bool(queues))
    with raw(pg_url) as conn:
        if not queues:
            # All queues: one ordered scan of the claim index, which the
            # planner chooses once the table has statistics (autovacuum's
            # ANALYZE); before that it may read and sort the whole queue.
            conn.execute("ANALYZE trio_monitor_jobs")
        for _ in range(7):  # psycopg prepares from the 5th run: the generic plan too
            ((plan,),) = conn.execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", {"queues": queues, "limit": 10}
            ).fetchall()
            scanned = _scanned_rows(plan[0]["Plan"])
            assert scanned
            assert max(scanned) <= 10, scanned
    # The rows come in claim order across the queues: priority, then age.
    got = await storage.claim(queues=queues, worker_ids=["w"] * 5, server_name="s", now=utcnow())
    wanted = [j for j in enqueued if not queues or j.queue in queues]
    first = sorted(wanted, key=lambda j: -j.priority)[:5]  # stable: oldest first
    assert [j.id for j in got] == [j.id for j in first]


async def test_claim_skips_rows_locked_elsewhere(storage: PostgresStorage, pg_url: str) -> None:
    first, second = job("first", priority=1), job("second")
    await storage.enqueue_many([first, second])
    with raw(pg_url, autocommit=False) as conn:
        conn.execute("SELECT id FROM trio_monitor_jobs WHERE id = %s FOR UPDATE", [first.id])
        with trio.fail_after(5):  # skipped, not waited on
            got = await storage.claim(
                queues=[], worker_ids=["w", "w"], server_name="s", now=utcnow()
            )
        assert [j.id for j in got] == [second.id]
        conn.rollback()
    (late,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
    assert late.id == first.id


def _count_locks_of_others(url: str, blocker_pid: int) -> int:
    with raw(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = current_database() AND l.pid NOT IN (pg_backend_pid(), %s) "
            "AND l.locktype IN ('relation', 'tuple', 'transactionid') ",
            [blocker_pid],
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _locks_of_others(url: str, blocker_pid: int, *, within: float = 5.0) -> int:
    """Locks held or awaited by other sessions, once they are gone or ``within`` s passed.

    The server learns of a cancelled statement asynchronously (a cancel
    request on another socket), so a loaded machine may need a moment. The
    wait yields to Trio, so the storage's own cancel path can run meanwhile.
    """
    count = -1  # not read yet
    with trio.move_on_after(within):
        # Polling another system (PostgreSQL): no event to wait on.
        while count := await trio.to_thread.run_sync(_count_locks_of_others, url, blocker_pid):  # noqa: ASYNC110
            await trio.sleep(0.05)
        return 0
    return count


async def test_cancelled_apply_blocked_on_a_row_lock_leaves_nothing(
    storage: PostgresStorage, pg_url: str
) -> None:
    j = job("x")
    await storage.enqueue(j)
    with raw(pg_url, autocommit=False) as blocker:
        blocker_pid = blocker.info.backend_pid
        blocker.execute("SELECT id FROM trio_monitor_jobs WHERE id = %s FOR UPDATE", [j.id])
        start = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await storage.apply([Transition(j.id, j.version, Failed("never"))])
        assert scope.cancelled_caught
        assert trio.current_time() - start < 5
        # Our statement is gone from the server: no locks, nothing waiting.
        assert await _locks_of_others(pg_url, blocker_pid) == 0
        blocker.rollback()
    assert await storage.get(j.id) == j  # the cancelled swap did not happen
    with raw(pg_url, autocommit=False) as other:
        other.execute("SELECT id FROM trio_monitor_jobs WHERE id = %s FOR UPDATE NOWAIT", [j.id])
        other.rollback()
    # The storage still works (the cancelled connection was replaced).
    done = await storage.apply([Transition(j.id, j.version, Failed("now"))])
    assert done[0] is not None


async def test_cancelled_claim_blocked_on_a_table_lock_leaves_nothing(
    storage: PostgresStorage, pg_url: str
) -> None:
    j = job("x")
    await storage.enqueue(j)
    with raw(pg_url, autocommit=False) as blocker:
        blocker_pid = blocker.info.backend_pid
        blocker.execute("LOCK TABLE trio_monitor_jobs IN ACCESS EXCLUSIVE MODE")
        with trio.move_on_after(0.3) as scope:
            await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
        assert scope.cancelled_caught
        assert await _locks_of_others(pg_url, blocker_pid) == 0
        blocker.rollback()
    # The job is still claimable, and nobody holds its row.
    with raw(pg_url, autocommit=False) as other:
        row = other.execute(
            "SELECT state FROM trio_monitor_jobs WHERE id = %s FOR UPDATE NOWAIT", [j.id]
        ).fetchone()
        assert row == ("enqueued",)
        other.rollback()
    (claimed,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
    assert claimed.attempts == 1


async def test_cancellation_is_raised_even_with_many_blocked_calls(
    storage: PostgresStorage, pg_url: str
) -> None:
    # More blocked calls than pool connections: those waiting for the limiter
    # are cancelled there, the others through PostgreSQL.
    j = job("x")
    await storage.enqueue(j)
    with raw(pg_url, autocommit=False) as blocker:
        blocker.execute("LOCK TABLE trio_monitor_jobs IN ACCESS EXCLUSIVE MODE")
        with trio.move_on_after(0.3) as scope:
            async with trio.open_nursery() as nursery:
                for _ in range(15):
                    nursery.start_soon(storage.get, j.id)
        assert scope.cancelled_caught
        blocker.rollback()
    assert await storage.get(j.id) == j


async def test_notify_wakes_another_storage(pg_url: str) -> None:
    async with opened(pg_url) as a, opened(pg_url) as b:

        async def woken_by(action: Any) -> float:
            async with trio.open_nursery() as nursery:
                done = trio.Event()
                elapsed: list[float] = []

                async def waiter() -> None:
                    start = trio.current_time()
                    await a.wait_for_work()
                    elapsed.append(trio.current_time() - start)
                    done.set()

                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                await action()
                with trio.fail_after(5):
                    await done.wait()
            return elapsed[0]

        assert await woken_by(lambda: b.enqueue(job(1))) < 1.0
        scheduled = job(2)
        scheduled.state = Scheduled(utcnow())
        await b.enqueue(scheduled)
        assert await woken_by(lambda: b.promote_due(utcnow())) < 1.0


async def test_wait_for_work_blocks_without_work(storage: PostgresStorage) -> None:
    with trio.move_on_after(0.2) as scope:
        await storage.wait_for_work()
    assert scope.cancelled_caught


async def test_concurrent_migrations(pg_cluster: PgCluster) -> None:
    url = pg_cluster.create_database()
    storages: list[PostgresStorage] = []

    async def open_one() -> None:
        storages.append(await PostgresStorage.open(url))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(open_one)
        assert len(storages) == 6
        with raw(url) as conn:
            rows = conn.execute("SELECT version FROM trio_monitor_schema_version").fetchall()
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        await storages[0].enqueue(j := job(1))
        assert await storages[5].get(j.id) == j
    finally:
        for s in storages:
            await s.aclose()
        pg_cluster.drop_database(url.rsplit("/", 1)[1])


async def test_survives_a_postgres_restart(pg_cluster: PgCluster, pg_url: str) -> None:
    async with opened(pg_url) as a, opened(pg_url) as b:
        j = job("before")
        await a.enqueue(j)
        await trio.to_thread.run_sync(pg_cluster.restart)
        failures = 0
        with trio.fail_after(30):
            while True:
                try:
                    assert await a.get(j.id) == j
                    break
                except psycopg.OperationalError:
                    failures += 1
                    await trio.sleep(0.05)
        assert failures <= 1
        # Every later call works at once: the broken idle connections were dropped.
        for _ in range(20):
            assert await a.get(j.id) == j
        # The listener reconnected and delivers notifications again.
        with trio.fail_after(15):
            while True:
                async with trio.open_nursery() as nursery:
                    woke = trio.Event()

                    async def waiter(woke: trio.Event) -> None:
                        await a.wait_for_work()
                        woke.set()

                    nursery.start_soon(waiter, woke)
                    await trio.sleep(0.05)
                    try:
                        await b.enqueue(job("after"))
                    except psycopg.OperationalError:
                        nursery.cancel_scope.cancel()
                        continue
                    with trio.move_on_after(1.0):
                        await woke.wait()
                    nursery.cancel_scope.cancel()
                if woke.is_set():
                    break
        # Nothing was lost: the job from before the restart is still there to claim.
        got = await a.claim(queues=[], worker_ids=["w"] * 50, server_name="s", now=utcnow())
        payloads = [x.payload for x in got]
        assert payloads[0] == "before"
        assert set(payloads[1:]) == {"after"}


def test_url_options() -> None:
    url, options, claim_commit = _parse_url(
        "postgresql://u@h:5/db?pool_max_size=3&pool_min_size=1&sslmode=disable&lock_timeout=0.5"
    )
    assert url == "postgresql://u@h:5/db?sslmode=disable"
    assert claim_commit is None  # the session's synchronous_commit, unchanged
    assert options == {
        "pool_max_size": 3,
        "pool_min_size": 1,
        "pool_timeout": 30.0,
        "lock_timeout": 0.5,
        "statement_timeout": 60.0,
    }
    with pytest.raises(ValueError, match="pool_max_size"):
        _parse_url("postgresql://h/db?pool_max_size=0")
    with pytest.raises(ValueError, match="pool_max_size"):
        _parse_url("postgresql://h/db?pool_max_size=many")
    with pytest.raises(ValueError, match="pool_min_size"):
        _parse_url("postgresql://h/db?pool_max_size=2&pool_min_size=3")
    for level in ("off", "local", "remote_write", "on", "remote_apply"):
        url, _, claim_commit = _parse_url(f"postgresql://h/db?claim_synchronous_commit={level}")
        assert (url, claim_commit) == ("postgresql://h/db", level)
    for bad in ("", "OFF", "false", "maybe"):
        with pytest.raises(ValueError, match="claim_synchronous_commit must be one of"):
            _parse_url(f"postgresql://h/db?claim_synchronous_commit={bad}")


# -- claim_synchronous_commit ---------------------------------------------------

# A deferred trigger runs at commit, after the whole statement: it records the
# synchronous_commit the claim's transaction commits with.
_RECORD_COMMIT_LEVEL = """
CREATE TABLE IF NOT EXISTS commit_levels (level text NOT NULL);
CREATE OR REPLACE FUNCTION record_commit_level() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO commit_levels VALUES (current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER record_commit_level AFTER UPDATE ON trio_monitor_jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION record_commit_level();
"""


def commit_levels(url: str) -> list[str]:
    with raw(url) as conn:
        levels = [level for (level,) in conn.execute("SELECT level FROM commit_levels")]
        conn.execute("DELETE FROM commit_levels")
    return levels


@pytest.mark.parametrize("queues", [[], ["default"], ["default", "other"]])
async def test_claims_commit_at_the_configured_level(pg_url: str, queues: list[str]) -> None:
    with raw(pg_url) as conn:
        # The test cluster runs with synchronous_commit off: make "on" the default here.
        conn.execute(f"ALTER DATABASE {pg_url.rsplit('/', 1)[1]} SET synchronous_commit = on")
    for option, expected in (("", "on"), ("?claim_synchronous_commit=off", "off")):
        async with opened(pg_url + option) as storage:
            with raw(pg_url) as conn:
                conn.execute("DROP TRIGGER IF EXISTS record_commit_level ON trio_monitor_jobs")
                conn.execute(_RECORD_COMMIT_LEVEL)
            await storage.enqueue_many([job(1), job(2)])
            got = await storage.claim(
                queues=queues, worker_ids=["w", "w"], server_name="s", now=utcnow()
            )
            assert len(got) == 2
            assert commit_levels(pg_url) == [expected, expected]
            # Only the claim: the outcome commits at the session's level.
            await storage.apply([succeed(got[0])])
            assert commit_levels(pg_url) == ["on"]
            # A claim decided under flow control (a job with a lock) too.
            await storage.enqueue(job(3, lock="k"))
            (third,) = await storage.claim(
                queues=queues, worker_ids=["w"], server_name="s", now=utcnow()
            )
            assert commit_levels(pg_url) == [expected]
            await storage.apply([succeed(got[1]), succeed(third)])
            assert commit_levels(pg_url) == ["on", "on"]
            # The session keeps its own level after a claim.
            assert await storage._call(
                lambda conn: conn.execute("SHOW synchronous_commit").fetchone()
            ) == ("on",)


async def test_a_wrong_database_fails_at_open_with_its_reason(pg_url: str) -> None:
    wrong = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    start = trio.current_time()
    with pytest.raises(psycopg.OperationalError, match='database "no_such_database" does not'):
        async with jobs.open_storage(wrong):
            pass
    assert trio.current_time() - start < 5  # not the 30 s pool timeout
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        await jobs.check_schema(wrong)


async def test_an_unreachable_server_fails_at_open() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens here
    start = trio.current_time()
    with pytest.raises(psycopg.OperationalError, match="cannot open the PostgreSQL job storage"):
        async with jobs.open_storage(f"postgresql://u@127.0.0.1:{port}/db"):
            pass
    assert trio.current_time() - start < 5


async def test_lock_timeout_bounds_a_claim_behind_a_table_lock(pg_url: str) -> None:
    async with jobs.open_storage(f"{pg_url}?lock_timeout=0.2") as storage:
        await storage.enqueue(job("x"))
        with raw(pg_url, autocommit=False) as blocker:
            blocker.execute("LOCK TABLE trio_monitor_jobs IN ACCESS EXCLUSIVE MODE")
            start = trio.current_time()
            with pytest.raises(psycopg.errors.LockNotAvailable), trio.fail_after(5):
                await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
            assert trio.current_time() - start < 2
            blocker.rollback()
        (claimed,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
        assert claimed.attempts == 1


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for name in list(sys.modules):
        if name.startswith("trio_monitor.jobs._backends._postgres"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"trio-monitor\[postgres\]"):
        importlib.import_module("trio_monitor.jobs._backends._postgres")
    monkeypatch.undo()
    assert importlib.import_module("trio_monitor.jobs._backends._postgres").PostgresStorage


def test_psycopg_is_imported_only_for_postgresql_urls(tmp_path: Any) -> None:
    script = f"""
import sys, trio
from trio_monitor import jobs

async def main():
    async with jobs.open_storage("memory://"):
        pass
    async with jobs.open_storage("sqlite:///{tmp_path}/j.db"):
        pass
    await jobs.check_schema("sqlite:///{tmp_path}/j.db")

trio.run(main)
assert "psycopg" not in sys.modules, "psycopg was imported"
assert "trio_monitor.jobs._backends._postgres" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True)


async def test_abort_and_finish_are_pushed_to_other_storages(pg_url: str) -> None:
    async with opened(pg_url) as server_side, opened(pg_url) as web:
        client = jobs.Client(web)
        job_id = await client.enqueue("m", 1)
        (claimed,) = await server_side.claim(
            queues=[], worker_ids=["w"], server_name="srv#1", now=utcnow()
        )
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def abort_soon() -> None:
                    await trio.sleep(0.05)
                    assert await client.abort(job_id, "stop")

                nursery.start_soon(abort_soon)
                await server_side.wait_for_abort()  # pushed over NOTIFY
        assert await server_side.aborts_requested("srv#1") == [(job_id, "stop")]
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def finish_soon() -> None:
                    await trio.sleep(0.05)
                    await server_side.apply(
                        [jobs.Transition(job_id, claimed.version, jobs.Aborted("stop"))]
                    )

                nursery.start_soon(finish_soon)
                await web.watch_finish(job_id, "waiter")  # what Client.wait does first
                await web.wait_for_finish()  # pushed over NOTIFY
        await web.unwatch_finish("waiter")
        done = await client.wait(job_id)
        assert done.state == jobs.Aborted("stop")


# -- finish NOTIFY only for awaited jobs ------------------------------------------

FINISHED = "trio_monitor_finished"
WAITERS = "trio_monitor_waiters"


def waiter_rows(url: str) -> list[tuple[str, str]]:
    with raw(url) as conn:
        return [(r[0], r[1]) for r in conn.execute(f"SELECT token, job_id FROM {WAITERS}")]


@contextmanager
def listening(url: str) -> Iterator[Any]:
    """A raw connection LISTENing on the finish channel."""
    with raw(url) as conn:
        conn.execute(f"LISTEN {FINISHED}")
        yield conn


def heard(conn: Any, timeout: float) -> list[str]:
    return [note.channel for note in conn.notifies(timeout=timeout, stop_after=1)]


async def claimed_job(storage: PostgresStorage) -> Job:
    await storage.enqueue(job(1))
    (claimed,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
    return claimed


def succeed(claimed: Job) -> Transition:
    return Transition(claimed.id, claimed.version, jobs.Succeeded(1, 0.1))


async def test_no_finish_notify_without_a_waiter(storage: PostgresStorage, pg_url: str) -> None:
    unwatched, watched = await claimed_job(storage), await claimed_job(storage)
    with listening(pg_url) as conn:
        await storage.apply([succeed(unwatched)])
        assert await trio.to_thread.run_sync(heard, conn, 0.5) == []
        # Control: the same completion of a watched job is announced.
        await storage.watch_finish(watched.id, "t")
        await storage.apply([succeed(watched)])
        assert await trio.to_thread.run_sync(heard, conn, 5.0) == [FINISHED]
    await storage.unwatch_finish("t")
    assert waiter_rows(pg_url) == []


async def test_client_wait_in_another_storage_is_pushed(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No polling within the test's bounds: only the NOTIFY can wake the wait.
    monkeypatch.setattr("trio_monitor.jobs._client._FIRST_POLL", 60.0)
    monkeypatch.setattr("trio_monitor.jobs._client._MAX_POLL", 60.0)
    async with opened(pg_url) as server_side, opened(pg_url) as web:
        claimed = await claimed_job(server_side)
        waited: list[Job] = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def wait() -> None:
                    waited.append(await jobs.Client(web).wait(claimed.id))

                nursery.start_soon(wait)
                while not waiter_rows(pg_url):  # noqa: ASYNC110 (another process's table)
                    await trio.sleep(0.01)
                await trio.sleep(0.05)  # the wait has read Processing
                await server_side.apply([succeed(claimed)])
        assert [j.state for j in waited] == [jobs.Succeeded(1, 0.1)]
        assert waiter_rows(pg_url) == []


async def test_waiter_rows_are_removed_on_cancellation(
    storage: PostgresStorage, pg_url: str
) -> None:
    claimed = await claimed_job(storage)
    client = jobs.Client(storage)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.wait, claimed.id)
        nursery.start_soon(client.wait, claimed.id)
        with trio.fail_after(5):
            while len(waiter_rows(pg_url)) < 2:  # noqa: ASYNC110 (another process's table)
                await trio.sleep(0.01)
        # Two waits of one job: two registrations, one per wait.
        assert {job_id for _, job_id in waiter_rows(pg_url)} == {claimed.id}
        nursery.cancel_scope.cancel()
    assert waiter_rows(pg_url) == []
    with pytest.raises(KeyError):
        await client.wait("missing")
    assert waiter_rows(pg_url) == []


async def test_expired_waiter_rows_are_swept(storage: PostgresStorage, pg_url: str) -> None:
    with raw(pg_url) as conn:
        conn.execute(f"INSERT INTO {WAITERS} VALUES ('crashed', 'x', now() - interval '1 second')")
    await storage.watch_finish("y", "live")
    assert waiter_rows(pg_url) == [("live", "y")]
    await storage.watch_finish("y", "live")  # renewing keeps one row
    assert waiter_rows(pg_url) == [("live", "y")]


async def test_registration_waits_for_a_completion_in_flight(
    storage: PostgresStorage, pg_url: str
) -> None:
    """A completion not yet committed: registration waits, then reads the result."""
    claimed = await claimed_job(storage)
    with raw(pg_url, autocommit=False) as conn:
        conn.execute("UPDATE trio_monitor_jobs SET state = 'succeeded' WHERE id = %s", [claimed.id])
        with trio.move_on_after(0.3) as blocked:
            await storage.watch_finish(claimed.id, "t")
        assert blocked.cancelled_caught
        conn.commit()
    with trio.fail_after(5):
        await storage.watch_finish(claimed.id, "t")
    with raw(pg_url) as conn:
        row = conn.execute("SELECT state FROM trio_monitor_jobs WHERE id = %s", [claimed.id])
        assert row.fetchone() == ("succeeded",)  # what the wait's read then sees


async def test_completion_behind_a_registration_notifies(
    storage: PostgresStorage, pg_url: str
) -> None:
    """A registration not yet committed: the completion waits for it, then NOTIFYs."""
    claimed = await claimed_job(storage)
    with listening(pg_url) as listener, raw(pg_url, autocommit=False) as conn:
        conn.execute("SELECT 1 FROM trio_monitor_jobs WHERE id = %s FOR SHARE", [claimed.id])
        conn.execute(
            f"INSERT INTO {WAITERS} VALUES ('t', %s, now() + interval '1 minute')", [claimed.id]
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.apply, [succeed(claimed)])
            await trio.sleep(0.3)  # the completion's statement is blocked on the row
            conn.commit()
        assert await trio.to_thread.run_sync(heard, listener, 5.0) == [FINISHED]
