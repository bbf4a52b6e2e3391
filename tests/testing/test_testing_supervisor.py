"""FailOnDemand and assert_restarts against the real supervisor."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

import trio_monitor as tm
from trio_monitor import testing

FAST = tm.Backoff(initial=1.0, multiplier=2.0, max=10.0, jitter=0.0)


async def test_a_child_fails_on_demand_and_is_restarted(autojump_clock: MockClock) -> None:
    child = testing.FailOnDemand()
    async with tm.open_supervisor(max_restarts=5, within=60.0, backoff=FAST) as sup:
        failures = sup.subscribe()
        handle = await sup.start("worker", child)
        await child.wait_started(1)
        testing.assert_restarts(sup, 0, name="worker")
        child.fail()
        await child.wait_started(2)
        child.fail(OSError("disk full"))
        await child.wait_started(3)
        testing.assert_restarts(sup, 2, name="worker")
        testing.assert_restarts(handle, 2)
        testing.assert_restarts(sup, 2)
        first, second = failures.receive_nowait(), failures.receive_nowait()
        assert isinstance(first.reason, tm.Panic)
        assert isinstance(first.reason.exception, testing.ChildFailure)
        assert isinstance(second.reason, tm.Panic)
        assert isinstance(second.reason.exception, OSError)
        assert child.is_running


async def test_the_wrapped_function_keeps_its_readiness_and_shutdown(
    autojump_clock: MockClock,
) -> None:
    seen: list[object] = []

    async def serve(
        port: int,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
        shutdown: tm.ShutdownToken,
    ) -> None:
        task_status.started(port)
        try:
            await shutdown.wait()
            seen.append("graceful")
        except trio.Cancelled:
            seen.append("cancelled")
            raise

    child = testing.FailOnDemand(serve)
    async with tm.open_supervisor(backoff=FAST) as sup:
        handle = await sup.start("api", child, 8080)
        assert handle.value == 8080
        child.fail()
        await child.wait_started(2)
        assert seen == ["cancelled"]  # fail() cancels the code, then raises
        assert handle.value == 8080
    assert seen == ["cancelled", "graceful"]  # the end of the block stops it gracefully


async def test_a_failure_before_ready_makes_start_raise(autojump_clock: MockClock) -> None:
    async def slow_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(10)
        task_status.started()

    child = testing.FailOnDemand(slow_start)
    async with tm.open_supervisor() as sup, trio.open_nursery() as nursery:

        async def fail_while_starting() -> None:
            await child.wait_started(1)
            child.fail(ConnectionRefusedError("db down"))

        nursery.start_soon(fail_while_starting)
        with pytest.raises(ConnectionRefusedError, match="db down"):
            await sup.start("db", child)


async def test_code_that_swallows_the_cancellation_still_fails(
    autojump_clock: MockClock,
) -> None:
    async def stubborn() -> str:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            return "swallowed"  # hostile: never do this
        return "unreachable"

    child = testing.FailOnDemand(stubborn)
    async with tm.open_supervisor(backoff=FAST) as sup:
        failures = sup.subscribe()
        await sup.start("stubborn", child)
        child.fail()
        await child.wait_started(2)
        failure = failures.receive_nowait()
        assert isinstance(failure.reason, tm.Panic)


async def test_intensity_is_reached_by_failing_on_demand(autojump_clock: MockClock) -> None:
    child = testing.FailOnDemand()

    async def fail_three_times() -> None:
        async with tm.open_supervisor(max_restarts=2, within=100.0, backoff=FAST) as sup:
            await sup.start("flaky", child)
            for run in (1, 2, 3):
                await child.wait_started(run)
                child.fail()
            await trio.sleep_forever()

    with pytest.raises(tm.RestartIntensityExceeded):
        await fail_three_times()
    assert child.starts == 3


async def test_assert_restarts_failure_lists_the_children(autojump_clock: MockClock) -> None:
    child = testing.FailOnDemand()
    async with tm.open_supervisor(backoff=FAST) as sup:
        await sup.start("a", child)
        await sup.start("b", testing.FailOnDemand())
        child.fail()
        await child.wait_started(2)
        with pytest.raises(AssertionError) as info:
            testing.assert_restarts(sup, 3, name="a")
        message = str(info.value)
        assert "expected 3 restart(s) of child 'a', got 1." in message
        assert "a: running, 1 restart(s), last failure: " in message
        assert "b: running, 0 restart(s), last failure: None" in message


async def test_bad_arguments(autojump_clock: MockClock) -> None:
    child = testing.FailOnDemand()
    with pytest.raises(RuntimeError, match="no run to fail"):
        child.fail()
    with pytest.raises(TypeError, match="async function"):
        testing.FailOnDemand(42)  # type: ignore[arg-type]
    async with tm.open_supervisor() as sup:
        handle = await sup.start("a", child)
        with pytest.raises(KeyError, match="no child 'z'"):
            testing.assert_restarts(sup, 0, name="z")
        with pytest.raises(TypeError, match="ChildHandle"):
            testing.assert_restarts(handle, 0, name="a")
        with pytest.raises(TypeError, match="Supervisor or a ChildHandle"):
            testing.assert_restarts(object(), 0)  # type: ignore[arg-type]
