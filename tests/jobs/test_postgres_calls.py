"""The PostgreSQL call runner and listener, on their own (no storage around them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from trio_monitor.jobs._backends._postgres._calls import CallRunner, Listener  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[Any]:
    opened = psycopg_pool.ConnectionPool(
        pg_url, min_size=1, max_size=3, kwargs={"autocommit": True}, open=False
    )
    await trio.to_thread.run_sync(lambda: opened.open(wait=True, timeout=10))
    try:
        yield opened
    finally:
        await trio.to_thread.run_sync(lambda: opened.close(timeout=5))


def sleeping(seconds: float, result: str) -> Any:
    def run(conn: Any) -> str:
        conn.execute("SELECT pg_sleep(%s)", [seconds])
        return result

    return run


def active_sleeps(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE query LIKE 'SELECT pg_sleep%%' AND state = 'active'"
        ).fetchone()
        return int(row[0])


async def test_a_call_returns_its_result_or_raises_its_error(pool: Any) -> None:
    runner = CallRunner(pool, max_size=3, timeout=5.0)
    assert await runner.run(lambda conn: conn.execute("SELECT 41 + 1").fetchone()[0]) == 42
    with pytest.raises(psycopg.errors.UndefinedTable):
        await runner.run(lambda conn: conn.execute("SELECT * FROM nowhere"))
    assert await runner.run(sleeping(0, "still usable")) == "still usable"


async def test_a_cancelled_call_aborts_its_statement_at_once(pool: Any, pg_url: str) -> None:
    runner = CallRunner(pool, max_size=3, timeout=5.0)
    start = trio.current_time()
    with trio.move_on_after(0.2) as scope:
        await runner.run(sleeping(30, "never"))
    assert scope.cancelled_caught
    assert trio.current_time() - start < 5
    assert await trio.to_thread.run_sync(active_sleeps, pg_url) == 0
    assert await runner.run(sleeping(0, "next")) == "next"


async def test_cancelling_one_call_leaves_the_others_alone(pool: Any) -> None:
    runner = CallRunner(pool, max_size=3, timeout=5.0)
    results: dict[str, str] = {}
    cancelled = trio.CancelScope()

    async def call(name: str, seconds: float, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            results[name] = await runner.run(sleeping(seconds, name))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "kept", 0.5)
        nursery.start_soon(call, "cancelled", 30, cancelled)
        nursery.start_soon(call, "also kept", 0.5)
        await trio.sleep(0.2)
        cancelled.cancel()
    assert cancelled.cancelled_caught
    assert results == {"kept": "kept", "also kept": "also kept"}


async def test_a_call_waiting_for_a_connection_stops_when_cancelled(pool: Any) -> None:
    # More calls than connections: the limiter is as large as the pool, so
    # the fourth call waits for a slot, and a cancel there is immediate.
    runner = CallRunner(pool, max_size=3, timeout=5.0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(runner.run, sleeping(0.5, "busy"))
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.05) as scope:
            await runner.run(sleeping(0, "waiting"))
        assert scope.cancelled_caught


async def test_listener_wakes_on_notify_and_stops_promptly(pg_url: str, pool: Any) -> None:
    woken = trio.Event()
    count = 0

    def on_notify() -> None:
        nonlocal count
        count += 1
        woken.set()

    listener = Listener(pg_url, "test_channel", on_notify)
    listener.start()
    await listener.wait_ready(10)

    def notify(channel: str) -> None:
        with pool.connection(timeout=5) as conn:
            conn.execute("SELECT pg_notify(%s, '')", [channel])

    await trio.to_thread.run_sync(notify, "other_channel")
    await trio.to_thread.run_sync(notify, "test_channel")
    with trio.fail_after(5):
        await woken.wait()
    assert count == 1
    start = trio.current_time()
    await listener.aclose(notify)
    assert trio.current_time() - start < 1.0  # woken by its stop channel, not a poll
    await listener.aclose(notify)  # idempotent
