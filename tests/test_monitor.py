"""Tests of the task monitor (SPEC section 1).

The first seven tests port the seed's test suite; the rest check every
guarantee of the contract. Timing runs on the autojump mock clock.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest
import trio
import trio.testing

import trio_monitor as tm
from tests.channels import drain_nowait
from tests.hostile import UnprintableError, raise_unprintable, respawning


async def forever() -> NoReturn:
    await trio.sleep_forever()


async def nothing() -> None:
    pass


async def receive_or_none(
    channel: trio.MemoryReceiveChannel[tm.TaskFailure], seconds: float = 1
) -> tm.TaskFailure | None:
    with trio.move_on_after(seconds):
        return await channel.receive()
    return None


@pytest.fixture
def unraisable() -> Iterator[list[Any]]:
    caught: list[Any] = []
    old = sys.unraisablehook
    sys.unraisablehook = caught.append
    try:
        yield caught
    finally:
        sys.unraisablehook = old


# --- the seed's tests, in Trio idiom -----------------------------------------


async def test_early_termination_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_infinite("test_task", nothing)
        failure = await receive_or_none(failures)
    assert failure is not None
    assert failure.task.name == "test_task"
    assert isinstance(failure.reason, tm.EarlyTermination)


async def test_panic_is_captured(autojump_clock: trio.testing.MockClock) -> None:
    async def panicking() -> None:
        raise RuntimeError("test panic message")

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_infinite("panicking_task", panicking)
        failure = await receive_or_none(failures)
    assert failure is not None
    assert failure.task.name == "panicking_task"
    reason = failure.reason
    assert isinstance(reason, tm.Panic)
    assert reason.message == "test panic message"
    assert isinstance(reason.exception, RuntimeError)
    assert reason.exception.args == ("test panic message",)
    assert reason.traceback is not None
    assert "RuntimeError: test panic message" in reason.traceback
    assert "panicking" in reason.traceback


async def test_error_is_captured(autojump_clock: trio.testing.MockClock) -> None:
    async def fallible() -> None:
        raise OSError("test error message")

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_fallible("fallible_task", fallible, errors=(OSError,))
        failure = await receive_or_none(failures)
    assert failure is not None
    assert failure.task.name == "fallible_task"
    reason = failure.reason
    assert isinstance(reason, tm.Error)
    assert "test error message" in reason.error
    assert isinstance(reason.exception, OSError)


async def test_successful_fallible_task_no_failure(autojump_clock: trio.testing.MockClock) -> None:
    async def succeeds() -> int:
        await trio.sleep(0.01)
        return 42

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_fallible("success_task", succeeds, errors=(OSError,))
        assert await receive_or_none(failures, 0.1) is None
        assert handle.is_finished()


async def test_abort_does_not_report_failure(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_infinite("aborted_task", forever)
        await trio.sleep(0.01)
        assert not handle.is_finished()
        handle.abort()
        assert await receive_or_none(failures, 0.1) is None
        assert handle.is_finished()


async def test_abort_on_drop_does_not_report_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped = trio.Event()

    async def runs() -> None:
        try:
            await forever()
        finally:
            stopped.set()

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_infinite("aborted_task", runs).abort_on_drop()
        await trio.sleep(0.01)
        del handle
        gc.collect()
        with trio.fail_after(1):
            await stopped.wait()
        assert await receive_or_none(failures, 0.1) is None
        assert monitor.active_tasks() == []


async def test_spawn_finite_task(autojump_clock: trio.testing.MockClock) -> None:
    completed = False

    async def job() -> None:
        nonlocal completed
        await trio.sleep(0.01)
        completed = True

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_finite("one-shot job", job)
        await trio.sleep(0.02)
        assert await receive_or_none(failures, 0.1) is None
        assert completed


# --- intentional stops are never reported ------------------------------------


async def raises_while_cancelled() -> None:
    try:
        await forever()
    finally:
        raise ValueError("raised while being cancelled")


async def swallows_cancellation() -> None:
    try:
        await forever()
    except trio.Cancelled:
        return


BEHAVIOURS = [forever, raises_while_cancelled, swallows_cancellation]


@pytest.mark.parametrize("body", BEHAVIOURS)
@pytest.mark.parametrize("spawn", ["infinite", "finite", "fallible"])
@pytest.mark.parametrize("how", ["abort", "drop", "with", "shutdown", "outer"])
async def test_intentional_stop_is_never_reported(
    autojump_clock: trio.testing.MockClock,
    body: Any,
    spawn: str,
    how: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The body may do anything while being cancelled: no report, ever.
    caplog.set_level(logging.DEBUG, logger="trio_monitor")
    exited = trio.Event()

    async def task() -> None:
        try:
            await body()
        finally:
            exited.set()

    failures: trio.MemoryReceiveChannel[tm.TaskFailure] | None = None
    with trio.CancelScope() as outer:
        async with tm.open_monitor() as monitor:
            failures = monitor.subscribe(math.inf)
            spawn_fn = getattr(monitor, f"spawn_{spawn}")
            handle = spawn_fn("victim", task)
            if how == "drop":
                handle.abort_on_drop()
            await trio.sleep(1)
            assert not exited.is_set()
            if how == "abort":
                handle.abort()
            elif how == "drop":
                del handle
                gc.collect()
            elif how == "with":
                with handle:
                    pass
            elif how == "outer":
                outer.cancel()
                await trio.sleep(1)
                pytest.fail("outer cancellation did not reach the body")
            if how in ("abort", "drop", "with"):
                await exited.wait()
                await trio.sleep(1)
            assert drain_nowait(failures) == []
    assert outer.cancelled_caught == (how == "outer")
    assert exited.is_set()
    assert failures is not None
    assert [f async for f in failures] == []
    # Nothing was logged either: the stop was intentional.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("how", ["abort", "drop", "with"])
async def test_task_aborted_before_it_ran_never_runs(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    ran = False

    async def body() -> None:
        nonlocal ran
        ran = True

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_infinite("never", body)
        if how == "abort":
            handle.abort()
        elif how == "with":
            with handle:
                pass
        else:
            handle.abort_on_drop()
            del handle
            gc.collect()
        await trio.sleep(1)
        assert monitor.active_tasks() == []
        assert drain_nowait(failures) == []
    assert not ran


async def test_abort_after_finish_is_harmless(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_infinite("early", nothing)
        await handle.wait()
        handle.abort()
        handle.abort()
        first = await receive_or_none(failures)
        assert first is not None
        assert isinstance(first.reason, tm.EarlyTermination)
        assert handle.is_finished()


async def test_infinite_task_returning_after_abort_is_not_early_termination(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        handle = monitor.spawn_infinite("swallow", swallows_cancellation)
        await trio.sleep(1)
        handle.abort()
        await handle.wait()
        # A sibling that does return early is still reported: the channel works.
        monitor.spawn_infinite("early", nothing)
        failure = await receive_or_none(failures)
        assert failure is not None
        assert failure.task.name == "early"
        assert drain_nowait(failures) == []


async def test_abort_on_drop_from_another_thread(autojump_clock: trio.testing.MockClock) -> None:
    stopped = trio.Event()

    async def runs() -> None:
        try:
            await forever()
        finally:
            stopped.set()

    def drop_in_thread(box: list[tm.TaskHandle]) -> None:
        box.clear()
        gc.collect()

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        box = [monitor.spawn_infinite("threaded", runs).abort_on_drop()]
        await trio.sleep(1)
        assert not stopped.is_set()
        await trio.to_thread.run_sync(drop_in_thread, box)
        with trio.fail_after(5):
            await stopped.wait()
        await trio.sleep(1)
        assert drain_nowait(failures) == []
        assert monitor.active_tasks() == []


def test_drop_after_the_run_ended_is_silent(
    unraisable: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    handles: list[tm.TaskHandle] = []

    async def main() -> None:
        async with tm.open_monitor() as monitor:
            handles.append(monitor.spawn_infinite("a", forever).abort_on_drop())
            handles.append(monitor.spawn_finite("b", nothing).abort_on_drop())
            await trio.sleep(1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert all(h.is_finished() for h in handles)
    handles.clear()
    gc.collect()
    assert unraisable == []
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_drop_after_the_run_ended_while_the_task_was_unfinished(unraisable: list[Any]) -> None:
    # A run that ends by an exception: the handle outlives everything.
    handles: list[tm.TaskHandle] = []

    async def main() -> None:
        async with tm.open_monitor() as monitor:
            handles.append(monitor.spawn_infinite("a", forever).abort_on_drop())
            await trio.sleep(1)
            raise LookupError("body failed")

    with pytest.raises(LookupError):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    handles.clear()
    gc.collect()
    assert unraisable == []


# --- failures reach every subscriber -----------------------------------------


async def test_every_failure_reaches_every_subscriber_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fail(i: int) -> None:
        await trio.sleep(i)
        raise ValueError(f"failure {i}")

    async with tm.open_monitor() as monitor:
        subscribers = [monitor.subscribe(16) for _ in range(3)]
        handles = [monitor.spawn_finite(f"t{i}", fail, i) for i in range(5)]
        ids = [h.info.id for h in handles]
        await trio.sleep(10)
    for channel in subscribers:
        got = [f async for f in channel]
        assert [f.task.id for f in got] == ids
        assert [f.reason.message for f in got if isinstance(f.reason, tm.Panic)] == [
            f"failure {i}" for i in range(5)
        ]


async def test_subscriber_gets_only_failures_after_it_subscribed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_monitor() as monitor:
        early = monitor.subscribe()
        monitor.spawn_infinite("first", nothing)
        await trio.sleep(1)
        late = monitor.subscribe()
        monitor.spawn_infinite("second", nothing)
        await trio.sleep(1)
    assert [f.task.name async for f in early] == ["first", "second"]
    assert [f.task.name async for f in late] == ["second"]


async def test_slow_subscriber_never_blocks_a_task(autojump_clock: trio.testing.MockClock) -> None:
    count = 10
    async with tm.open_monitor() as monitor:
        slow = monitor.subscribe(max_buffer_size=1)
        fast = monitor.subscribe(max_buffer_size=count)
        got: list[tm.TaskFailure] = []

        async def read_fast() -> None:
            async for failure in fast:
                got.append(failure)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_fast)
            await trio.sleep(1)
            handles = [monitor.spawn_infinite(f"t{i}", nothing) for i in range(count)]
            with trio.fail_after(1):
                for handle in handles:
                    await handle.wait()
            await trio.sleep(1)
            assert len(got) == count
            stats = monitor.statistics()
            assert stats.dropped_failures == count - 1
            assert stats.subscribers == 2
            nursery.cancel_scope.cancel()
    # Tasks finishing in one scheduling batch report in Trio's order.
    assert sorted(f.task.name for f in got) == sorted(f"t{i}" for i in range(count))
    assert [f.task.name async for f in slow] == [got[0].task.name]


async def test_closing_a_channel_unsubscribes(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        keep = monitor.subscribe()
        gone = monitor.subscribe()
        assert monitor.statistics().subscribers == 2
        gone.close()
        monitor.spawn_infinite("t", nothing)
        await trio.sleep(1)
        assert monitor.statistics().subscribers == 1
        assert monitor.statistics().dropped_failures == 0
        assert [f.task.name for f in drain_nowait(keep)] == ["t"]


async def test_subscriptions_end_when_the_monitor_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    names: list[str] = []
    ended = trio.Event()
    async with trio.open_nursery() as nursery:
        async with tm.open_monitor() as monitor:
            failures = monitor.subscribe()

            async def read() -> None:
                async for failure in failures:
                    names.append(failure.task.name)
                names.append("<end>")
                ended.set()

            nursery.start_soon(read)
            monitor.spawn_infinite("t", nothing)
            await trio.sleep(1)
            assert names == ["t"]
        with trio.fail_after(1):
            await ended.wait()
    assert names == ["t", "<end>"]


async def test_subscribe_after_close_is_ended(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        pass
    late = monitor.subscribe()
    with pytest.raises(trio.EndOfChannel):
        await late.receive()
    assert monitor.statistics().subscribers == 0


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (-1, ValueError),
        (1.5, TypeError),
        ("8", TypeError),
        (True, TypeError),
        (math.nan, TypeError),
        (-math.inf, TypeError),
    ],
)
async def test_subscribe_rejects_bad_buffer_size(
    autojump_clock: trio.testing.MockClock, size: Any, error: type[Exception]
) -> None:
    # Trio's rule for memory channels: an int >= 0 or math.inf; a wrong type
    # is a TypeError, a negative int a ValueError.
    async with tm.open_monitor() as monitor:
        with pytest.raises(error, match="max_buffer_size"):
            monitor.subscribe(max_buffer_size=size)
        assert monitor.statistics().subscribers == 0


async def test_unbounded_subscriber(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe(math.inf)
        for i in range(100):
            monitor.spawn_infinite(f"t{i}", nothing)
        await trio.sleep(1)
        assert len(drain_nowait(failures)) == 100
        assert monitor.statistics().dropped_failures == 0


# --- classification ----------------------------------------------------------


class Listed(Exception):
    pass


async def test_unlisted_error_in_fallible_is_panic(autojump_clock: trio.testing.MockClock) -> None:
    async def fails() -> None:
        raise KeyError("not listed")

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_fallible("f", fails, errors=(Listed, OSError))
        failure = await receive_or_none(failures)
    assert failure is not None
    assert isinstance(failure.reason, tm.Panic)
    assert isinstance(failure.reason.exception, KeyError)


async def test_fallible_accepts_one_type_and_subclasses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fails() -> None:
        raise FileNotFoundError("missing")

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_fallible("f", fails, errors=OSError)
        failure = await receive_or_none(failures)
    assert failure is not None
    assert isinstance(failure.reason, tm.Error)
    assert failure.reason.error == "missing"


async def test_fallible_default_errors_is_exception(autojump_clock: trio.testing.MockClock) -> None:
    async def fails() -> None:
        raise KeyError("k")

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_fallible("f", fails)
        failure = await receive_or_none(failures)
    assert failure is not None
    assert isinstance(failure.reason, tm.Error)


async def test_finite_return_value_is_ignored_and_exception_is_panic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fails() -> None:
        raise Listed

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_finite("ok", nothing)
        monitor.spawn_finite("bad", fails)
        failure = await receive_or_none(failures)
        assert failure is not None
        assert failure.task.name == "bad"
        assert isinstance(failure.reason, tm.Panic)
        # An exception with an empty message has no message.
        assert failure.reason.message is None
        assert await receive_or_none(failures) is None


@pytest.mark.parametrize(
    "errors", [(trio.Cancelled,), KeyboardInterrupt, (OSError, "x"), "OSError", [OSError], (1,)]
)
async def test_fallible_rejects_bad_errors(
    autojump_clock: trio.testing.MockClock, errors: Any
) -> None:
    async with tm.open_monitor() as monitor:
        with pytest.raises(TypeError, match="errors"):
            monitor.spawn_fallible("f", nothing, errors=errors)
        assert monitor.active_tasks() == []


async def test_name_must_be_a_string(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        with pytest.raises(TypeError, match="name"):
            monitor.spawn_finite(1, nothing)  # type: ignore[arg-type]


async def test_exception_group_from_a_task_nursery_is_a_panic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def fails() -> None:
        raise ValueError("inner")

    async def with_nursery() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fails)
            nursery.start_soon(forever)

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        monitor.spawn_finite("group", with_nursery)
        failure = await receive_or_none(failures)
    assert failure is not None
    assert isinstance(failure.reason, tm.Panic)
    assert isinstance(failure.reason.exception, ExceptionGroup)


# --- BaseExceptions are never swallowed --------------------------------------


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_base_exception_from_a_task_propagates_bare(
    autojump_clock: trio.testing.MockClock, exc_type: type[BaseException]
) -> None:
    sibling_cancelled = False

    async def sibling() -> None:
        nonlocal sibling_cancelled
        try:
            await forever()
        except trio.Cancelled:
            sibling_cancelled = True
            raise

    async def boom() -> None:
        await trio.sleep(1)
        raise exc_type()

    with pytest.raises(exc_type) as info:  # noqa: PT012 - the whole block is the subject
        async with tm.open_monitor() as monitor:
            failures = monitor.subscribe()
            monitor.spawn_infinite("sibling", sibling)
            monitor.spawn_finite("boom", boom)
            await trio.sleep_forever()
    assert type(info.value) is exc_type
    assert sibling_cancelled
    assert [f async for f in failures] == []


async def test_outer_cancellation_is_not_swallowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cancelled by a scope outside the monitor: the Cancelled reaches that scope.
    with trio.CancelScope() as outer:
        async with tm.open_monitor() as monitor:
            monitor.spawn_infinite("t", forever)
            await trio.sleep(1)
            outer.cancel()
            await trio.sleep_forever()
    assert outer.cancelled_caught


async def test_outer_cancellation_exits_promptly(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def slow_to_die() -> None:
        try:
            await forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.5)

    with trio.move_on_after(3) as outer:
        async with tm.open_monitor() as monitor:
            failures = monitor.subscribe()
            monitor.spawn_infinite("a", slow_to_die)
            monitor.spawn_finite("b", raises_while_cancelled)
            await trio.sleep_forever()
    assert outer.cancelled_caught
    # Only the task's own shielded cleanup is waited for.
    assert trio.current_time() - start == pytest.approx(3.5)
    assert [f async for f in failures] == []


# --- the body's exception propagates as itself -------------------------------


@pytest.mark.parametrize("with_tasks", [False, True])
async def test_body_exception_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock, with_tasks: bool
) -> None:
    with pytest.raises(LookupError, match="body") as info:  # noqa: PT012
        async with tm.open_monitor() as monitor:
            if with_tasks:
                monitor.spawn_infinite("a", forever)
                monitor.spawn_finite("b", forever)
                await trio.sleep(1)
            raise LookupError("body")
    assert type(info.value) is LookupError


async def test_body_exception_propagates_when_a_task_raises_during_shutdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(LookupError, match="body") as info:  # noqa: PT012
        async with tm.open_monitor() as monitor:
            failures = monitor.subscribe()
            monitor.spawn_infinite("a", raises_while_cancelled)
            await trio.sleep(1)
            raise LookupError("body")
    assert type(info.value) is LookupError
    assert [f async for f in failures] == []


async def test_body_exception_propagates_immediately_without_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def body_fails() -> None:
        async with tm.open_monitor():
            raise KeyError("k")

    with pytest.raises(KeyError):
        await body_fails()


# --- handles -----------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "panic", "error", "abort", "early"])
async def test_wait_returns_for_every_outcome(
    autojump_clock: trio.testing.MockClock, outcome: str
) -> None:
    async def body() -> None:
        await trio.sleep(1)
        if outcome == "panic":
            raise RuntimeError("panic")
        if outcome == "error":
            raise OSError("error")
        if outcome == "abort":
            await forever()

    async with tm.open_monitor() as monitor:
        monitor.subscribe()
        if outcome == "early":
            handle = monitor.spawn_infinite("t", body)
        else:
            handle = monitor.spawn_fallible("t", body, errors=OSError)
        assert not handle.is_finished()
        if outcome == "abort":
            await trio.sleep(2)
            handle.abort()
        with trio.fail_after(5):
            await handle.wait()
        assert handle.is_finished()
        # Waiting again returns at once, and still does not raise.
        await handle.wait()


async def test_many_waiters(autojump_clock: trio.testing.MockClock) -> None:
    woken = 0
    async with tm.open_monitor() as monitor:
        handle = monitor.spawn_finite("t", trio.sleep, 5)

        async def waiter() -> None:
            nonlocal woken
            await handle.wait()
            assert trio.current_time() == pytest.approx(5)
            woken += 1

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(waiter)
    assert woken == 3


async def test_active_tasks_and_infos(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe()
        a = monitor.spawn_infinite("a", forever)
        b = monitor.spawn_finite("b", trio.sleep, 1)
        c = monitor.spawn_fallible("c", trio.sleep, 2)
        infos = [a.info, b.info, c.info]
        assert [i.name for i in infos] == ["a", "b", "c"]
        assert len({i.id for i in infos}) == 3
        assert monitor.active_tasks() == infos
        assert monitor.statistics().active_tasks == 3
        await trio.sleep(1.5)
        assert monitor.active_tasks() == [a.info, c.info]
        a.abort()
        await a.wait()
        assert monitor.active_tasks() == [c.info]
        await c.wait()
        assert monitor.active_tasks() == []
        assert monitor.statistics().active_tasks == 0
        assert a.info == infos[0]
        assert "a" in repr(a)
        assert "finished" in repr(a)


async def test_task_ids_are_unique_across_monitors(autojump_clock: trio.testing.MockClock) -> None:
    ids = set()
    async with tm.open_monitor() as m1, tm.open_monitor() as m2:
        for i in range(50):
            ids.add(m1.spawn_finite(f"x{i}", nothing).info.id)
            ids.add(m2.spawn_finite(f"y{i}", nothing).info.id)
    assert len(ids) == 100


async def test_args_are_passed(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[object] = []

    async def body(a: int, b: str) -> None:
        seen.append((a, b))

    async with tm.open_monitor() as monitor:
        await monitor.spawn_finite("args", body, 1, "two").wait()
    assert seen == [(1, "two")]


# --- lifetime and memory -----------------------------------------------------


async def test_no_task_outlives_the_monitor(autojump_clock: trio.testing.MockClock) -> None:
    cleaned: list[str] = []

    async def body(name: str) -> None:
        try:
            await forever()
        finally:
            cleaned.append(name)

    before = trio.lowlevel.current_task().child_nurseries
    async with tm.open_monitor() as monitor:
        for kind in ("infinite", "finite", "fallible"):
            getattr(monitor, f"spawn_{kind}")(kind, body, kind)
        await trio.sleep(1)
        nurseries = trio.lowlevel.current_task().child_nurseries
        assert len(nurseries) == len(before) + 1
        assert len(nurseries[-1].child_tasks) == 3
    assert sorted(cleaned) == ["fallible", "finite", "infinite"]
    assert monitor.active_tasks() == []
    # The monitor's nursery, a child of this task during the block, is gone.
    assert trio.lowlevel.current_task().child_nurseries == before
    with pytest.raises(RuntimeError, match="closed"):
        monitor.spawn_finite("late", nothing)


async def test_finished_tasks_hold_no_memory(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        monitor.subscribe()

        async def batch(n: int) -> None:
            # Chunks of 100 keep the peak concurrency (and so the size of
            # Trio's own task sets) the same in every batch.
            for _ in range(n // 100):
                handles = [monitor.spawn_finite("t", nothing) for _ in range(100)]
                for handle in handles:
                    await handle.wait()

        await batch(5_000)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await batch(20_000)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert monitor.statistics().active_tasks == 0
        assert after - before < 200_000


# --- logging ----------------------------------------------------------------


async def test_failure_is_logged_when_nobody_listens(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def fails() -> None:
        raise RuntimeError("lonely")

    caplog.set_level(logging.DEBUG, logger="trio_monitor")
    async with tm.open_monitor() as monitor:
        await monitor.spawn_finite("lonely-task", fails).wait()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name.startswith("trio_monitor")
    assert "lonely-task" in errors[0].getMessage()
    assert errors[0].exc_info is not None


async def test_failure_is_not_logged_when_someone_listens(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails() -> None:
        raise RuntimeError("heard")

    caplog.set_level(logging.DEBUG, logger="trio_monitor")
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        await monitor.spawn_finite("heard-task", fails).wait()
        assert len(drain_nowait(failures)) == 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_failure_is_logged_when_every_subscriber_closed(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_monitor")
    async with tm.open_monitor() as monitor:
        monitor.subscribe().close()
        await monitor.spawn_infinite("unheard-task", nothing).wait()
        assert monitor.statistics().subscribers == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "unheard-task" in errors[0].getMessage()


async def test_default_buffer_holds_64_failures(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        for i in range(70):
            monitor.spawn_infinite(f"t{i}", nothing)
        await trio.sleep(1)
        assert len(drain_nowait(failures)) == 64
        assert monitor.statistics().dropped_failures == 6


# --- edges (issue 8) ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["infinite", "finite", "fallible"])
async def test_an_unprintable_exception_is_reported_and_siblings_go_on(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()
        sibling = monitor.spawn_finite("sibling", trio.sleep, 10)
        getattr(monitor, f"spawn_{kind}")("bad", raise_unprintable)
        await sibling.wait()
        assert trio.current_time() == pytest.approx(10)
    [failure] = drain_nowait(failures)
    assert failure.task.name == "bad"
    reason = failure.reason
    if kind == "fallible":
        assert isinstance(reason, tm.Error)
        assert reason.error == "<unprintable UnprintableError>"
    else:
        assert isinstance(reason, tm.Panic)
        assert reason.message == "<unprintable UnprintableError>"
        assert reason.traceback is not None
    assert isinstance(reason.exception, UnprintableError)


async def test_an_unprintable_failure_with_no_subscriber_is_logged_readably(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_monitor")
    failures: list[tm.TaskFailure] = []
    async with tm.open_monitor() as monitor:
        await monitor.spawn_finite("bad", raise_unprintable).wait()
        # Subscribed afterwards: the failure was logged, not delivered.
        failures.extend(drain_nowait(monitor.subscribe()))
    assert failures == []
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "'bad'" in record.getMessage()
    assert "UnprintableError" in logging.Formatter().format(record)


@pytest.mark.parametrize("kind", ["infinite", "finite", "fallible"])
async def test_spawn_refuses_non_async_callables_at_once(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    def sync_fn() -> None:
        pass

    async with tm.open_monitor() as monitor:
        spawn = getattr(monitor, f"spawn_{kind}")
        coro = nothing()
        with pytest.raises(TypeError, match="coroutine object"):
            spawn("coroutine", coro)
        with pytest.raises(TypeError, match="synchronous"):
            spawn("sync", sync_fn)
        # Wrong arguments: Python's own error, at once, like Trio's start_soon.
        with pytest.raises(TypeError, match="positional argument"):
            spawn("args", nothing, 1)
        assert monitor.active_tasks() == []
        await trio.sleep(1)
        assert monitor.active_tasks() == []


async def test_a_closed_subscription_stops_counting_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_monitor() as monitor:
        keep = monitor.subscribe()
        gone = monitor.subscribe()
        assert monitor.statistics().subscribers == 2
        gone.close()
        # No failure was published in between.
        assert monitor.statistics().subscribers == 1
        keep.close()
        assert monitor.statistics().subscribers == 0


async def test_a_task_respawning_itself_at_exit_never_runs_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_monitor")
    handles: list[tm.TaskHandle] = []
    starts = [0]

    async with tm.open_monitor() as monitor:
        failures = monitor.subscribe()

        def respawn() -> None:
            handles.append(monitor.spawn_infinite("reconnect", loop))

        async def loop() -> None:
            starts[0] += 1
            await respawning(respawn)()

        respawn()
        await trio.sleep(1)
    assert trio.current_time() == pytest.approx(1)
    assert starts == [1]
    assert [h.is_finished() for h in handles] == [True, True]
    assert drain_nowait(failures) == []
    [warning] = [r for r in caplog.records if r.name == "trio_monitor.monitor"]
    assert warning.levelno == logging.WARNING
    assert "'reconnect'" in warning.getMessage()
    assert "stopping" in warning.getMessage()


async def test_an_aborted_task_respawning_itself_is_not_a_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Aborting one task is not the monitor stopping: its replacement runs.
    handles: list[tm.TaskHandle] = []

    async with tm.open_monitor() as monitor:

        def respawn() -> None:
            handles.append(monitor.spawn_infinite("reconnect", respawning(respawn)))

        respawn()
        await trio.sleep(1)
        handles[0].abort()
        await trio.sleep(1)
        assert len(handles) == 2
        assert not handles[1].is_finished()
        assert [t.name for t in monitor.active_tasks()] == ["reconnect"]
