"""The storage I/O hook: a MockClock's autojump is held while a thread works."""

from __future__ import annotations

import math
import sqlite3
import time

import pytest
import trio
from trio.testing import MockClock

from trio_monitor.jobs._backends._sqlite._combiner import ConnectionThread
from trio_monitor.jobs._io_hold import HoldAutojump, io_in_flight


def _slow_read(conn: sqlite3.Connection) -> int:
    time.sleep(0.2)  # real I/O taking real time
    return int(conn.execute("SELECT 1").fetchone()[0])


async def _virtual_time_during_slow_read() -> float:
    """How far virtual time moved while a storage call took 0.2 s of real time."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    thread = ConnectionThread(conn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10.0)  # a deadline autojump could jump to
            before = trio.current_time()
            assert await thread.read(_slow_read) == 1
            moved = trio.current_time() - before
            nursery.cancel_scope.cancel()
    finally:
        await thread.aclose()
    return moved


def test_without_the_hold_autojump_races_ahead_of_a_storage_thread() -> None:
    # The problem the hook solves (NOTES: MockClock autojumps while a task
    # waits on a thread).
    moved = trio.run(_virtual_time_during_slow_read, clock=MockClock(autojump_threshold=0))
    assert moved >= 10.0


def test_with_the_hold_virtual_time_waits_for_the_storage_thread() -> None:
    async def main() -> float:
        hold = HoldAutojump.install()
        assert hold is not None
        try:
            return await _virtual_time_during_slow_read()
        finally:
            hold.uninstall()

    clock = MockClock(autojump_threshold=0)
    assert trio.run(main, clock=clock) == 0.0
    assert clock.autojump_threshold == 0  # put back


async def test_the_threshold_is_raised_while_in_flight_and_restored_after(
    autojump_clock: MockClock,
) -> None:
    hold = HoldAutojump.install()
    assert hold is not None
    try:
        with io_in_flight():
            with io_in_flight():
                assert autojump_clock.autojump_threshold == math.inf
                assert hold.in_flight == 2
            assert autojump_clock.autojump_threshold == math.inf
        assert autojump_clock.autojump_threshold == 0
        with pytest.raises(KeyError), io_in_flight():
            raise KeyError("a failing call")
        assert autojump_clock.autojump_threshold == 0
        assert hold.in_flight == 0
    finally:
        hold.uninstall()


async def test_installs_nest_and_the_last_uninstall_removes_the_hold(
    autojump_clock: MockClock,
) -> None:
    outer = HoldAutojump.install()
    inner = HoldAutojump.install()
    assert outer is inner is not None
    inner.uninstall()
    assert io_in_flight() is outer
    outer.uninstall()
    with io_in_flight():  # the no-op
        assert autojump_clock.autojump_threshold == 0


async def test_no_hold_on_a_real_clock() -> None:
    assert HoldAutojump.install() is None
    with io_in_flight():
        await trio.lowlevel.checkpoint()


async def test_a_cancelled_call_in_flight_restores_the_threshold(
    autojump_clock: MockClock,
) -> None:
    hold = HoldAutojump.install()
    assert hold is not None
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    thread = ConnectionThread(conn)
    try:

        async def cancel_soon(scope: trio.CancelScope) -> None:
            await trio.lowlevel.checkpoint()
            assert hold.in_flight == 1
            scope.cancel()

        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_soon, scope)
                await thread.read(_slow_read)
                await trio.lowlevel.checkpoint()
            assert scope.cancelled_caught
        assert autojump_clock.autojump_threshold == 0
        assert hold.in_flight == 0
    finally:
        await thread.aclose()
        hold.uninstall()
