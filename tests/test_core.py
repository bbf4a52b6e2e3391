"""Tests of the supervision core shared by every component.

``capture``, ``FailurePolicy``, ``SupervisedNursery`` (spawn, abort, join,
wait_idle, close) and ``open_component`` (graceful stop, what propagates).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_monitor import EarlyTermination, Error, Panic, TaskFailure
from trio_monitor._core import (
    FINITE,
    INFINITE,
    FailurePolicy,
    SupervisedNursery,
    capture,
    is_outer_cancelled,
    open_component,
)


async def nothing() -> None:
    pass


async def fail(message: str) -> None:
    raise ValueError(message)


# --- capture -----------------------------------------------------------------


async def test_capture_success_and_exception() -> None:
    assert await capture(nothing, ()) is None
    exc = await capture(fail, ("boom",))
    assert isinstance(exc, ValueError)
    assert str(exc) == "boom"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_capture_lets_base_exceptions_through(exc_type: type[BaseException]) -> None:
    async def raises() -> None:
        raise exc_type

    with pytest.raises(exc_type):
        await capture(raises, ())


async def test_capture_lets_cancellation_through(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1) as scope:
        await capture(trio.sleep_forever, ())
    assert scope.cancelled_caught


async def test_capture_returns_an_exception_group() -> None:
    async def group() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, "a")
            nursery.start_soon(fail, "b")

    exc = await capture(group, ())
    assert isinstance(exc, ExceptionGroup)
    assert sorted(str(e) for e in exc.exceptions) == ["a", "b"]


async def test_capture_splits_a_mixed_group() -> None:
    async def mixed() -> None:
        raise BaseExceptionGroup("mixed", [ValueError("x"), KeyboardInterrupt()])

    with pytest.raises(BaseExceptionGroup) as info:
        await capture(mixed, ())
    leaves = info.value.exceptions
    assert len(leaves) == 1
    assert isinstance(leaves[0], KeyboardInterrupt)


# --- classification ----------------------------------------------------------


class Listed(Exception):
    pass


def test_classify() -> None:
    fallible = FailurePolicy(runs_forever=False, errors=(Listed,))
    assert FINITE.classify(True, None) is None
    assert fallible.classify(True, None) is None
    assert isinstance(INFINITE.classify(True, None), EarlyTermination)
    assert INFINITE.classify(False, None) is None  # aborted before it started
    panic = FINITE.classify(False, ValueError("v"))
    assert isinstance(panic, Panic)
    assert panic.message == "v"
    assert isinstance(INFINITE.classify(False, Listed("l")), Panic)
    error = fallible.classify(False, Listed("l"))
    assert isinstance(error, Error)
    assert error.error == "l"
    assert isinstance(fallible.classify(False, KeyError("k")), Panic)


async def test_is_outer_cancelled() -> None:
    assert not is_outer_cancelled()
    with trio.CancelScope() as scope:  # noqa: ASYNC100 - no checkpoint on purpose
        scope.cancel()
        assert is_outer_cancelled()
        with trio.CancelScope(shield=True):  # noqa: ASYNC100
            assert not is_outer_cancelled()
    assert not is_outer_cancelled()


# --- SupervisedNursery --------------------------------------------------------------


async def test_supervisor_reports_synchronously_and_forgets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[TaskFailure] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        state = supervisor.spawn("f", fail, ("x",), FINITE)
        assert list(supervisor.tasks) == [state.id]
        await state.wait()
        assert state.done
        assert supervisor.tasks == {}
        assert [r.task for r in reports] == [state.info]
        supervisor.close()
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn("late", nothing, (), FINITE)


async def test_on_failure_sees_the_state_before_report(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[str, object]] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(
            nursery,
            lambda f: calls.append(("report", f.task.name)),
            lambda state, f: calls.append(("hook", state.meta)),
        )
        await supervisor.spawn("f", fail, ("x",), FINITE, meta="meta").wait()
        await supervisor.spawn("ok", nothing, (), FINITE, meta="ok").wait()
        supervisor.close()
    assert calls == [("hook", "meta"), ("report", "f")]


async def test_join_waits_then_aborts_the_rest(autojump_clock: trio.testing.MockClock) -> None:
    reports: list[TaskFailure] = []
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        quick = supervisor.spawn("quick", trio.sleep, (1,), FINITE)
        slow = [supervisor.spawn(f"slow{i}", trio.sleep_forever, (), INFINITE) for i in range(3)]
        start = trio.current_time()
        assert await supervisor.join(5) == 3
        assert trio.current_time() - start == pytest.approx(5)
        assert quick.done
        assert not quick.aborted
        assert all(s.done and s.aborted for s in slow)
        assert supervisor.tasks == {}
        supervisor.close()
    assert reports == []


async def test_join_returns_early_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)
        supervisor.spawn("a", trio.sleep, (2,), FINITE)
        start = trio.current_time()
        assert await supervisor.join(10) == 0
        assert trio.current_time() - start == pytest.approx(2)
        supervisor.close()


async def test_wait_idle_includes_tasks_spawned_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, lambda f: None)

        async def spawns_another() -> None:
            await trio.sleep(1)
            supervisor.spawn("second", trio.sleep, (3,), FINITE)

        supervisor.spawn("first", spawns_another, (), FINITE)
        await supervisor.wait_idle()
        assert trio.current_time() == pytest.approx(4)
        assert supervisor.tasks == {}
        supervisor.close()


async def test_close_stops_everything_without_reports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports: list[TaskFailure] = []

    async def fails_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ValueError("while closing")

    async with trio.open_nursery() as nursery:
        supervisor = SupervisedNursery(nursery, reports.append)
        states = [supervisor.spawn(f"t{i}", fails_when_cancelled, (), INFINITE) for i in range(3)]
        await trio.sleep(1)
        supervisor.close()
        assert supervisor.closing
    assert all(s.done for s in states)
    assert reports == []


# --- open_component ----------------------------------------------------------


class Component:
    def __init__(self, supervisor: SupervisedNursery) -> None:
        self.supervisor = supervisor
        self.events: list[str] = []


async def test_graceful_stop_then_on_close(autojump_clock: trio.testing.MockClock) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")
        assert not component.supervisor.closing
        await component.supervisor.join(1)

    async with open_component(
        Component,
        lambda f: None,
        graceful_stop=graceful_stop,
        on_close=lambda c: events.append("close"),
    ) as component:
        state = component.supervisor.spawn("t", trio.sleep, (0.5,), FINITE)
    assert events == ["stop", "close"]
    assert state.done
    assert not state.aborted


async def test_graceful_stop_runs_when_the_body_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")

    with pytest.raises(KeyError):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")
    assert events == ["stop"]


async def test_outer_cancellation_skips_the_graceful_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def graceful_stop(component: Component) -> None:
        events.append("stop")
        await trio.sleep(100)

    with trio.move_on_after(1) as outer:
        async with open_component(
            Component,
            lambda f: None,
            graceful_stop=graceful_stop,
            on_close=lambda c: events.append("close"),
        ):
            await trio.sleep_forever()
    assert outer.cancelled_caught
    assert events == ["close"]
    assert trio.current_time() == pytest.approx(1)


async def test_stop_error_is_raised_bare_when_the_body_succeeded() -> None:
    async def graceful_stop(component: Component) -> None:
        raise TimeoutError("drain took too long")

    with pytest.raises(TimeoutError, match="drain"):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            pass


async def test_body_error_wins_over_the_stop_error() -> None:
    async def graceful_stop(component: Component) -> None:
        raise TimeoutError("drain took too long")

    with pytest.raises(KeyError):
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")


async def test_cancellation_during_the_stop_wins_over_the_body_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def graceful_stop(component: Component) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1) as outer:
        async with open_component(Component, lambda f: None, graceful_stop=graceful_stop):
            raise KeyError("body")
    # The Cancelled propagated (and was caught by its scope), not the KeyError.
    assert outer.cancelled_caught


async def test_task_base_exception_wins_over_the_body_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def interrupt() -> None:
        await trio.sleep(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:  # noqa: PT012 - the block is the subject
        async with open_component(Component, lambda f: None) as component:
            component.supervisor.spawn("ki", interrupt, (), FINITE)
            try:
                await trio.sleep_forever()
            finally:
                raise KeyError("body")
    assert type(info.value) is KeyboardInterrupt
