"""PostgreSQL storage: the storage contract plus what only PostgreSQL does.

Runs against a throwaway cluster (tests/pg_cluster.py), a fresh database per
test, on the real clock (the storage talks to PostgreSQL through threads).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from tests.pg_cluster import PgCluster
from trio_monitor import jobs
from trio_monitor.jobs._model import (
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    Processing,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Succeeded,
    Transition,
    utcnow,
)

psycopg = pytest.importorskip("psycopg")
from trio_monitor.jobs._postgres import (  # noqa: E402
    SCHEMA_VERSION,
    PostgresStorage,
    _parse_url,
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


# -- the contract ---------------------------------------------------------------


async def test_open_storage_dispatches_postgres_urls(pg_url: str) -> None:
    async with jobs.open_storage(pg_url) as s:
        assert isinstance(s, PostgresStorage)
        assert isinstance(s, jobs.Storage)
        j = job({"x": 1})
        assert await s.enqueue(j) == j.id
        stored = await s.get(j.id)
        assert stored is not None
        assert stored.payload == {"x": 1}


async def test_enqueue_round_trips_every_state(storage: PostgresStorage) -> None:
    now = utcnow()
    states = [
        Enqueued(now),
        Scheduled(now + timedelta(seconds=5)),
        Processing(now, "w-1", "srv#1"),
        Succeeded({"r": [1, 2.5, None, "é"]}, 1.25),
        Failed("boom"),
        AwaitingRetry(now + timedelta(seconds=1), "bad"),
        Deleted(),
    ]
    for i, state in enumerate(states):
        j = Job(
            id=f"job-{i}",
            method="m",
            payload={"i": i, "nested": {"list": [1, "two", None, True]}, "nul": "a\x00b"},
            queue="q",
            priority=-i,
            attempts=i,
            created_at=now - timedelta(microseconds=i),
            state=state,
            expires_at=now + timedelta(days=1) if i % 2 else None,
            version=7,
        )
        await storage.enqueue(j)
        assert await storage.get(j.id) == j
    assert await storage.get("nope") is None


async def test_enqueue_refuses_duplicates_and_bad_payloads(storage: PostgresStorage) -> None:
    j = job(1)
    await storage.enqueue(j)
    with pytest.raises(ValueError, match="already exists"):
        await storage.enqueue(Job(id=j.id, method="other", payload=2))
    with pytest.raises(TypeError, match="JSON"):
        await storage.enqueue(job(object()))
    with pytest.raises(TypeError, match="JSON"):
        await storage.enqueue(job(float("nan")))
    fresh = job(3)
    with pytest.raises(ValueError, match="already exists"):
        await storage.enqueue_many([fresh, Job(id=j.id, method="m", payload=None)])
    # All or nothing.
    assert await storage.get(fresh.id) is None
    stored = await storage.get(j.id)
    assert stored is not None
    assert stored.method == "method"
    assert await storage.count_by_state() == {"enqueued": 1}
    assert await storage.enqueue_many([]) == []


async def test_list_and_count(storage: PostgresStorage) -> None:
    made = [job(i) for i in range(5)]
    made[1].state = Failed("x")
    made[3].state = Failed("y")
    assert await storage.enqueue_many(made) == [j.id for j in made]
    assert [j.id for j in await storage.list_jobs()] == [j.id for j in made]
    assert [j.id for j in await storage.list_jobs(limit=2)] == [made[0].id, made[1].id]
    assert [j.id for j in await storage.list_jobs(state=Failed)] == [made[1].id, made[3].id]
    assert await storage.list_jobs(state=Succeeded) == []
    assert await storage.count_by_state() == {"enqueued": 3, "failed": 2}


async def test_claim_order_queues_and_stamping(storage: PostgresStorage) -> None:
    low_old = job("low_old", priority=0)
    high = job("high", priority=5)
    low_new = job("low_new", priority=0)
    other_queue = job("other", queue="other", priority=9)
    scheduled = job("scheduled", priority=10)
    scheduled.state = Scheduled(utcnow())
    await storage.enqueue_many([low_old, high, low_new, other_queue, scheduled])
    now = utcnow()
    got = await storage.claim(queues=["default"], worker_ids=["w0", "w1"], server_name="s", now=now)
    assert [j.payload for j in got] == ["high", "low_old"]
    for i, j in enumerate(got):
        assert j.state == Processing(now, f"w{i}", "s")
        assert j.attempts == 1
        assert j.version == 1
        assert await storage.get(j.id) == j
    assert [
        j.payload
        for j in await storage.claim(
            queues=[], worker_ids=["a", "b", "c"], server_name="s", now=now
        )
    ] == ["other", "low_new"]
    assert await storage.claim(queues=[], worker_ids=["a"], server_name="s", now=now) == []
    assert await storage.claim(queues=["default"], worker_ids=[], server_name="s", now=now) == []


async def test_apply_is_compare_and_swap(storage: PostgresStorage) -> None:
    a, b, c = job("a"), job("b"), job("c")
    await storage.enqueue_many([a, b, c])
    now = utcnow()
    claimed = await storage.claim(queues=[], worker_ids=["w"] * 3, server_name="s", now=now)
    by_payload = {j.payload: j for j in claimed}
    ca, cb, cc = by_payload["a"], by_payload["b"], by_payload["c"]
    expiry = now + timedelta(hours=1)
    results = await storage.apply(
        [
            Transition(ca.id, ca.version, Succeeded(42, 0.5), expires_at=expiry),
            Transition(cb.id, cb.version - 1, Failed("stale")),  # wrong version
            Transition("missing", 0, Failed("x")),
            Transition(cc.id, cc.version, AwaitingRetry(now, "e"), attempts=7),
        ]
    )
    assert results[1] is None
    assert results[2] is None
    done, retry = results[0], results[3]
    assert done is not None
    assert retry is not None
    assert done.state == Succeeded(42, 0.5)
    assert done.expires_at == expiry
    assert done.version == ca.version + 1
    assert done.attempts == 1
    assert retry.attempts == 7
    assert retry.expires_at is None
    assert await storage.get(cb.id) == cb
    # The same swap again fails: the version moved on.
    assert await storage.apply([Transition(ca.id, ca.version, Failed("late"))]) == [None]
    # Two transitions of one job in one call apply in order.
    first, second = await storage.apply(
        [
            Transition(cb.id, cb.version, Enqueued(now)),
            Transition(cb.id, cb.version + 1, Deleted()),
        ]
    )
    assert first is not None
    assert isinstance(first.state, Enqueued)
    assert second is not None
    assert isinstance(second.state, Deleted)
    assert second.version == cb.version + 2
    assert await storage.apply([]) == []


async def test_promote_requeue_and_delete(storage: PostgresStorage) -> None:
    now = utcnow()
    due, later, retry, running, old_done, new_done = (job(i) for i in range(6))
    due.state = Scheduled(now - timedelta(seconds=1))
    later.state = Scheduled(now + timedelta(hours=1))
    retry.state = AwaitingRetry(now, "e")
    running.state = Processing(now - timedelta(minutes=10), "w", "s")
    old_done.state = Succeeded(None, 0.0)
    old_done.expires_at = now
    new_done.state = Succeeded(None, 0.0)
    new_done.expires_at = now + timedelta(seconds=1)
    await storage.enqueue_many([due, later, retry, running, old_done, new_done])

    promoted = await storage.promote_due(now)
    assert {t.job.id for t in promoted} == {due.id, retry.id}
    for t in promoted:
        assert t.job.state == Enqueued(now)
        assert t.job.version == 1
        assert t.old_state == (due.state if t.job.id == due.id else retry.state)
    assert await storage.promote_due(now) == []

    assert await storage.requeue_stale(now - timedelta(minutes=11), now) == []
    (requeued,) = await storage.requeue_stale(now - timedelta(minutes=5), now)
    assert requeued.job.id == running.id
    assert requeued.old_state == running.state
    assert requeued.job.state == Enqueued(now)
    assert requeued.job.attempts == running.attempts

    assert await storage.delete_expired(now) == 1
    assert await storage.get(old_done.id) is None
    assert await storage.get(new_done.id) is not None


async def test_servers_and_reclaim_dead(storage: PostgresStorage) -> None:
    now = utcnow()
    old = now - timedelta(minutes=5)
    dead = ServerInfo("a#1", "a", 2, ["default"], old, old)
    alive = ServerInfo("b#2", "b", 3, [], old, now)
    await storage.register_server(dead)
    await storage.register_server(alive)
    assert await storage.list_servers() == [dead, alive]
    bumped = ServerInfo("b#2", "b", 4, ["x", "y"], old, now)
    await storage.register_server(bumped)  # replaces
    assert await storage.list_servers() == [dead, bumped]
    assert await storage.heartbeat("b#2", now + timedelta(seconds=1))
    assert not await storage.heartbeat("zzz", now)

    a_job, b_job = job("a"), job("b")
    await storage.enqueue_many([a_job, b_job])
    (ja,) = await storage.claim(queues=[], worker_ids=["w"], server_name="a#1", now=now)
    (jb,) = await storage.claim(queues=[], worker_ids=["w"], server_name="b#2", now=now)

    (reclaimed,) = await storage.reclaim_dead(now - timedelta(minutes=1), now)
    assert reclaimed.job.id == ja.id
    assert reclaimed.old_state == ja.state
    assert reclaimed.job.state == Enqueued(now)
    assert reclaimed.job.attempts == 1
    assert [s.id for s in await storage.list_servers()] == ["b#2"]
    assert await storage.get(jb.id) == jb
    assert await storage.reclaim_dead(now - timedelta(minutes=1), now) == []
    await storage.deregister_server("b#2")
    await storage.deregister_server("b#2")
    assert await storage.list_servers() == []


async def test_recurring(storage: PostgresStorage) -> None:
    now = utcnow()
    template = RecurringJob("digest", "0 0 8 * * *", "send", {"k": 1}, "mail", now, priority=3)
    await storage.upsert_recurring(template)
    replaced = RecurringJob("digest", "0 0 9 * * *", "send", {"k": 2}, "mail", now, priority=4)
    await storage.upsert_recurring(replaced)
    future = RecurringJob("later", "* * * * * *", "m", None, "default", now + timedelta(hours=1))
    await storage.upsert_recurring(future)
    assert await storage.list_recurring() == [replaced, future]
    with pytest.raises(TypeError):
        await storage.upsert_recurring(RecurringJob("bad", "* * * * * *", "m", {1, 2}, "q", now))

    following = now + timedelta(days=1)
    calls: list[tuple[str, datetime]] = []

    def next_run(cron: str, after: datetime) -> datetime:
        calls.append((cron, after))
        return following

    (made,) = await storage.enqueue_due_recurring(now + timedelta(seconds=1), next_run)
    assert calls == [("0 0 9 * * *", now + timedelta(seconds=1))]
    assert (made.method, made.payload, made.queue, made.priority) == ("send", {"k": 2}, "mail", 4)
    assert isinstance(made.state, Enqueued)
    assert await storage.get(made.id) == made
    assert (await storage.list_recurring())[0].next_run_at == following
    assert await storage.enqueue_due_recurring(now + timedelta(seconds=2), next_run) == []
    assert await storage.remove_recurring("digest")
    assert not await storage.remove_recurring("digest")
    assert [r.id for r in await storage.list_recurring()] == ["later"]


async def test_aclose_is_idempotent_and_final(pg_url: str) -> None:
    s = await PostgresStorage.open(pg_url)
    await s.aclose()
    await s.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await s.get("x")


# -- PostgreSQL specifics -------------------------------------------------------------


async def test_concurrent_claims_are_disjoint(pg_url: str) -> None:
    n_jobs = 600
    async with opened(pg_url) as a, opened(pg_url) as b, opened(pg_url) as c:
        await a.enqueue_many([job(i) for i in range(n_jobs)])
        claimed: list[str] = []

        async def claimer(storage: PostgresStorage, name: str) -> None:
            while True:
                got = await storage.claim(
                    queues=["default"],
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
        assert await a.count_by_state() == {"processing": n_jobs}
        # Every job claimed exactly once: one attempt each.
        assert {j.attempts for j in await a.list_jobs()} == {1}


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


def _locks_of_others(url: str, blocker_pid: int) -> int:
    with raw(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = current_database() AND l.pid NOT IN (pg_backend_pid(), %s) "
            "AND l.locktype IN ('relation', 'tuple', 'transactionid') ",
            [blocker_pid],
        ).fetchone()
        assert row is not None
        return int(row[0])


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
        assert _locks_of_others(pg_url, blocker_pid) == 0
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
        assert _locks_of_others(pg_url, blocker_pid) == 0
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


async def test_newer_schema_is_refused(pg_url: str) -> None:
    async with opened(pg_url):
        pass
    with raw(pg_url) as conn:
        conn.execute(
            "INSERT INTO trio_monitor_schema_version (version) VALUES (%s)", [SCHEMA_VERSION + 1]
        )
    with pytest.raises(RuntimeError, match=f"version {SCHEMA_VERSION + 1}, newer"):
        await PostgresStorage.open(pg_url)


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
    url, options = _parse_url(
        "postgresql://u@h:5/db?pool_max_size=3&pool_min_size=1&sslmode=disable"
    )
    assert url == "postgresql://u@h:5/db?sslmode=disable"
    assert options == {"max_size": 3, "min_size": 1, "timeout": 30.0}
    with pytest.raises(ValueError, match="pool_max_size"):
        _parse_url("postgresql://h/db?pool_max_size=0")
    with pytest.raises(ValueError, match="pool_max_size"):
        _parse_url("postgresql://h/db?pool_max_size=many")
    with pytest.raises(ValueError, match="pool_min_size"):
        _parse_url("postgresql://h/db?pool_max_size=2&pool_min_size=3")


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "trio_monitor.jobs._postgres")
    with pytest.raises(ImportError, match=r"trio-monitor\[postgres\]"):
        importlib.import_module("trio_monitor.jobs._postgres")
    monkeypatch.undo()
    assert importlib.import_module("trio_monitor.jobs._postgres").PostgresStorage
