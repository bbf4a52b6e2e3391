"""The SQLite connection thread and its write combiner, on their own.

A plain :mod:`sqlite3` connection (a table ``t``) is handed to a
:class:`ConnectionThread`; calls are small functions, some gated on
:class:`threading.Event` s so a test knows what the thread is doing. The
number of transactions is counted with the connection's own trace callback.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cancellation import Caller, callers, run_callers
from trio_monitor.jobs._backends._sqlite._combiner import ConnectionThread


def new_connection(path: Path | str = ":memory:") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return conn


class Traced:
    """The statements a connection ran (its trace callback)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.statements: list[str] = []
        conn.set_trace_callback(self.statements.append)

    @property
    def transactions(self) -> int:
        return sum(s == "BEGIN IMMEDIATE" for s in self.statements)


@pytest.fixture
async def traced() -> AsyncIterator[tuple[ConnectionThread, Traced]]:
    conn = new_connection()
    trace = Traced(conn)
    thread = ConnectionThread(conn)
    try:
        yield thread, trace
    finally:
        await thread.aclose()


def insert(key: str) -> Callable[[sqlite3.Connection], str]:
    def run(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (key,))
        return key

    return run


def keys(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT k FROM t")}


def gate() -> tuple[threading.Event, threading.Event, Callable[[sqlite3.Connection], None]]:
    """A call that signals ``running`` and then waits for ``release``."""
    running, release = threading.Event(), threading.Event()

    def run(conn: sqlite3.Connection) -> None:
        running.set()
        release.wait(10)

    return running, release, run


async def until(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, 10)
    await trio.testing.wait_all_tasks_blocked()


async def test_writes_queued_together_share_a_transaction_and_fail_alone(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, trace = traced
    running, release, slow_read = gate()
    results: dict[str, object] = {}

    async def write(key: str) -> None:
        try:
            results[key] = await thread.write(insert(key))
        except sqlite3.IntegrityError as exc:
            results[key] = exc

    await thread.write(insert("taken"))
    assert trace.transactions == 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        for key in ("a", "taken", "b"):  # queued in this order
            nursery.start_soon(write, key)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert trace.transactions == 2  # a, taken (fails) and b: one transaction
    assert results["a"] == "a"
    assert results["b"] == "b"
    assert isinstance(results["taken"], sqlite3.IntegrityError)
    assert await thread.read(keys) == {"taken", "a", "b"}


@pytest.mark.parametrize("failing", [0, 1, 2])
async def test_a_failed_write_is_undone_alone_wherever_it_is_in_its_batch(
    traced: tuple[ConnectionThread, Traced], failing: int
) -> None:
    """The first write of a transaction runs without a savepoint; undoing it must
    still leave the writes after it (and a later failure) as they would be alone."""
    thread, trace = traced
    running, release, slow_read = gate()
    await thread.write(insert("taken"))

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half')")
        conn.execute("INSERT INTO t VALUES ('taken')")  # IntegrityError

    fns: list[Callable[[sqlite3.Connection], object]] = [insert(k) for k in ("a", "b", "c")]
    fns[failing] = half_then_fail
    results: list[object] = [None] * 3

    async def write(i: int) -> None:
        try:
            results[i] = await thread.write(fns[i])
        except sqlite3.IntegrityError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        for i in range(3):
            nursery.start_soon(write, i)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert isinstance(results[failing], sqlite3.IntegrityError)
    written = {k for i, k in enumerate("abc") if i != failing}
    assert [r for r in results if not isinstance(r, Exception)] == sorted(written)
    assert await thread.read(keys) == {"taken", *written}  # no 'half'
    # The first write failing costs a second transaction; otherwise one.
    assert trace.transactions == (3 if failing == 0 else 2)
    assert "SAVEPOINT write" in trace.statements


class LockedOnSecondBegin:
    """A connection whose second ``BEGIN IMMEDIATE`` finds the database locked."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.begins = 0

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "BEGIN IMMEDIATE":
            self.begins += 1
            if self.begins == 2:
                raise sqlite3.OperationalError("database is locked")
        return self._conn.execute(sql, *args)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def close(self) -> None:
        self._conn.close()


async def test_a_first_write_failing_then_a_locked_begin() -> None:
    """The first write fails, and beginning again for the others finds the lock
    taken: the first keeps its own error, the others get the lock error, nothing
    is written."""
    conn = new_connection()
    conn.execute("INSERT INTO t VALUES ('taken')")
    thread = ConnectionThread(LockedOnSecondBegin(conn), locked_hint="raise busy_timeout")  # type: ignore[arg-type]
    running, release, slow_read = gate()
    results: dict[str, object] = {}

    async def write(key: str) -> None:
        try:
            results[key] = await thread.write(insert(key))
        except sqlite3.Error as exc:
            results[key] = exc

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(thread.read, slow_read)
            await until(running)
            for key in ("taken", "a"):
                nursery.start_soon(write, key)
                await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert isinstance(results["taken"], sqlite3.IntegrityError)
        assert isinstance(results["a"], sqlite3.OperationalError)
        assert "raise busy_timeout" in str(results["a"])
        assert await thread.read(keys) == {"taken"}
    finally:
        await thread.aclose()


async def test_a_lone_write_runs_without_a_savepoint(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, trace = traced
    assert await thread.write(insert("a")) == "a"
    with pytest.raises(sqlite3.IntegrityError):
        await thread.write(insert("a"))
    assert await thread.read(keys) == {"a"}
    assert not any("SAVEPOINT" in s for s in trace.statements)


async def test_a_queued_call_cancelled_never_happens(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, _ = traced
    running, release, slow_read = gate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        with trio.move_on_after(0.01) as scope:
            await thread.write(insert("dropped"))
        assert scope.cancelled_caught  # at once, while the thread is still busy
        assert not release.is_set()
        release.set()
    assert await thread.read(keys) == set()


async def test_a_taken_call_cancelled_commits_and_returns_then_cancels(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, _ = traced
    running = threading.Event()
    release = threading.Event()
    returned: list[str] = []

    def slow_insert(conn: sqlite3.Connection) -> str:
        running.set()
        release.wait(10)
        return insert("landed")(conn)

    scope = trio.CancelScope()

    async def call() -> None:
        with scope:
            returned.append(await thread.write(slow_insert))
            await trio.lowlevel.checkpoint()
            pytest.fail("the checkpoint after a cancelled call must raise")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await until(running)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []  # still waiting, shielded, for its own commit
        release.set()
    assert scope.cancelled_caught
    assert returned == ["landed"]
    assert await thread.read(keys) == {"landed"}


async def test_cancelling_one_writer_never_reaches_the_others(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    """The regression: writers queued behind a slow read, one of them cancelled."""
    thread, trace = traced
    running, release, slow_read = gate()
    outcomes: dict[str, str] = {}

    async def writer(key: str, scope: trio.CancelScope) -> None:
        with scope:
            outcomes[key] = await thread.write(insert(key))
        if scope.cancelled_caught:
            outcomes[key] = "cancelled"

    scopes = {key: trio.CancelScope() for key in "abcd"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        for key, scope in scopes.items():
            nursery.start_soon(writer, key, scope)
        await trio.testing.wait_all_tasks_blocked()
        scopes["a"].cancel()  # the first of the batch-to-be
        scopes["c"].cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert outcomes == {"a": "cancelled", "b": "b", "c": "cancelled", "d": "d"}
    assert await thread.read(keys) == {"b", "d"}
    assert trace.transactions == 1


async def test_a_failed_begin_fails_each_writer_with_its_own_clear_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    new_connection(path).close()
    locker = sqlite3.connect(path, isolation_level=None)
    conn = new_connection(path)
    conn.execute("PRAGMA busy_timeout = 50")
    thread = ConnectionThread(conn, locked_hint="raise busy_timeout")
    try:
        locker.execute("BEGIN IMMEDIATE")
        errors: list[BaseException] = []

        async def write(key: str) -> None:
            with pytest.raises(sqlite3.OperationalError) as info:
                await thread.write(insert(key))
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            for key in "abc":
                nursery.start_soon(write, key)
        assert len({id(error) for error in errors}) == 3  # one each, not one shared
        for error in errors:
            assert "database is locked: raise busy_timeout" in str(error)
        locker.execute("ROLLBACK")
        assert await thread.write(insert("after")) == "after"  # still usable
    finally:
        locker.close()
        await thread.aclose()


async def test_aclose_runs_what_was_accepted_then_refuses(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, _ = traced
    running, release, slow_read = gate()
    done: list[str] = []

    async def write(key: str) -> None:
        done.append(await thread.write(insert(key)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        nursery.start_soon(write, "accepted")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(thread.aclose)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.ClosedResourceError):
            await thread.write(insert("late"))
        release.set()
    assert done == ["accepted"]
    with pytest.raises(trio.ClosedResourceError):
        await thread.read(keys)
    await thread.aclose()  # idempotent


async def test_a_base_exception_in_a_call_goes_to_its_caller_only(
    traced: tuple[ConnectionThread, Traced],
) -> None:
    thread, _ = traced
    running, release, slow_read = gate()

    def interrupted(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half')")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await thread.read(interrupted)
    await thread.write(lambda conn: conn.execute("DELETE FROM t"))  # the read autocommitted
    results: dict[str, object] = {}

    async def write(key: str, fn: Callable[[sqlite3.Connection], object]) -> None:
        try:
            results[key] = await thread.write(fn)
        except KeyboardInterrupt as exc:
            results[key] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(thread.read, slow_read)
        await until(running)
        nursery.start_soon(write, "a", insert("a"))
        nursery.start_soon(write, "interrupted", interrupted)
        nursery.start_soon(write, "b", insert("b"))
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert results["a"] == "a"
    assert results["b"] == "b"
    assert isinstance(results["interrupted"], KeyboardInterrupt)
    assert await thread.read(keys) == {"a", "b"}  # the interrupted write was rolled back alone


# -- the property ----------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=callers(["write", "failing", "read"], max_size=12), slow_first=st.booleans())
def test_cancellation_stays_with_its_caller(drawn: list[Caller], slow_first: bool) -> None:
    """Callers cancelled at random points; the others always finish as if alone.

    A caller that was not cancelled never sees ``Cancelled``; its write is
    stored exactly when it succeeded. A cancelled write is stored iff its call
    returned (taken before the cancel), never half.
    """

    async def main() -> None:
        conn = new_connection()
        thread = ConnectionThread(conn)
        running, release, slow_read = gate()
        try:
            await thread.write(insert("k0-dup"))

            async def call(i: int, kind: str) -> object:
                if kind == "read":
                    return await thread.read(keys)
                if kind == "write":
                    return await thread.write(insert(f"k{i}"))
                with pytest.raises(sqlite3.IntegrityError):
                    await thread.write(insert("k0-dup"))
                return None

            async with trio.open_nursery() as nursery:
                if slow_first:
                    nursery.start_soon(thread.read, slow_read)
                    await until(running)
                returned = await run_callers(drawn, call, then=release.set)
            stored = await thread.read(keys)
        finally:
            release.set()
            await thread.aclose()
        for i, (kind, _) in enumerate(drawn):
            if kind == "write":
                assert (f"k{i}" in stored) == (i in returned)

    trio.run(main)
