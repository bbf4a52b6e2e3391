"""Tests of the task registry (SPEC section 3).

The first four tests port the seed's test suite; the rest check every
guarantee of the contract. Timing runs on the autojump mock clock.
"""

from __future__ import annotations

import gc
import logging
import math
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import attrs
import pytest
import trio
import trio.testing

import trio_monitor as tm
from tests.channels import drain_nowait
from tests.hostile import (
    Misbehaviour,
    assert_reported_readably,
    raise_unprintable,
    respawning,
    run_misbehaving,
)

LOGGER = "trio_monitor.registry"


async def forever() -> NoReturn:
    await trio.sleep_forever()


async def nothing() -> None:
    pass


async def until_token_then(token: tm.ShutdownToken, grace: float, done: list[str]) -> None:
    """A cooperative task: waits for the token, winds down for ``grace`` seconds."""
    await token.wait()
    await trio.sleep(grace)
    done.append("clean")


def registry_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


# -- the seed's tests ------------------------------------------------------


async def test_empty_on_construction(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        assert registry.is_empty()
        assert len(registry) == 0
        assert registry.snapshot() == []


async def test_spawn_registers(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        registry.spawn("t1", tm.TaskKind.BACKGROUND_LOOP, nothing)
        assert len(registry) == 1
        assert registry.snapshot()[0].name == "t1"
        assert registry.snapshot()[0].kind is tm.TaskKind.BACKGROUND_LOOP


async def test_join_all_awaits_fast_tasks(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        done: list[str] = []

        async def fast() -> None:
            await trio.sleep(0.005)
            done.append("fast")

        registry.spawn("fast", tm.TaskKind.BACKGROUND_LOOP, fast)
        start = trio.current_time()
        await registry.join_all(5.0)
        assert done == ["fast"]
        assert trio.current_time() - start == pytest.approx(0.005)
        assert registry.is_empty()


async def test_join_all_aborts_slow_tasks(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        registry.spawn("slow", tm.TaskKind.BACKGROUND_LOOP, trio.sleep, 60)
        start = trio.current_time()
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(0.02)
        assert info.value.pending == 1
        assert info.value.deadline == 0.02
        assert trio.current_time() - start == pytest.approx(0.02)
        assert registry.is_empty()


# -- join_all ----------------------------------------------------------------


async def test_join_all_does_not_set_the_token(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        done: list[str] = []
        registry.spawn(
            "watcher",
            tm.TaskKind.BACKGROUND_LOOP,
            until_token_then,
            registry.shutdown_token,
            0,
            done,
        )
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(1.0)
        assert not registry.shutdown_token.is_set()
        assert info.value.pending == 1
        assert done == []


async def test_join_all_counts_exactly_the_tasks_past_the_deadline(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async with tm.open_registry() as registry:
        token = registry.shutdown_token
        done: list[str] = []
        handles = [
            registry.spawn(f"ignores-{i}", tm.TaskKind.PEER_CONNECTION, forever) for i in range(3)
        ]
        handles += [
            registry.spawn(
                f"watches-{i}", tm.TaskKind.RPC_HANDLER, until_token_then, token, 0.5, done
            )
            for i in range(2)
        ]
        handles.append(registry.spawn("late", tm.TaskKind.MAINTENANCE, trio.sleep, 2.0))
        handles.append(registry.spawn("quick", tm.TaskKind.MAINTENANCE, trio.sleep, 0.1))
        token.set()
        start = trio.current_time()
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(1.0)
        assert info.value.pending == 4  # three that ignore the token, and "late"
        assert info.value.deadline == 1.0
        assert trio.current_time() - start == pytest.approx(1.0)
        assert done == ["clean", "clean"]
        assert all(h.is_finished() for h in handles)
        assert len(registry) == 0
    # Cancelled at the deadline is not a failure.
    assert registry_errors(caplog) == []


async def test_join_all_returns_once_everything_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        registry.spawn("a", tm.TaskKind.MAINTENANCE, trio.sleep, 1)
        registry.spawn("b", tm.TaskKind.MAINTENANCE, trio.sleep, 3)
        start = trio.current_time()
        await registry.join_all(10)
        assert trio.current_time() - start == pytest.approx(3)


async def test_join_all_includes_tasks_spawned_while_it_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        done: list[str] = []

        async def child() -> None:
            await trio.sleep(2)
            done.append("child")

        async def parent() -> None:
            await trio.sleep(0.5)
            registry.spawn("child", tm.TaskKind.RPC_HANDLER, child)

        registry.spawn("parent", tm.TaskKind.BACKGROUND_LOOP, parent)
        start = trio.current_time()
        await registry.join_all(5)
        assert done == ["child"]
        assert trio.current_time() - start == pytest.approx(2.5)


async def test_join_all_cancels_late_spawned_tasks_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:

        async def parent() -> None:
            await trio.sleep(0.5)
            registry.spawn("child", tm.TaskKind.RPC_HANDLER, forever)

        registry.spawn("parent", tm.TaskKind.BACKGROUND_LOOP, parent)
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(1)
        assert info.value.pending == 1
        assert registry.is_empty()


async def test_join_all_with_zero_deadline_cancels_every_live_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        for i in range(5):
            registry.spawn(f"t{i}", tm.TaskKind.RPC_HANDLER, forever)
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(0)
        assert info.value.pending == 5


async def test_join_all_on_an_empty_registry_is_a_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        with trio.CancelScope() as scope:
            scope.cancel()
            await registry.join_all(1)
        assert scope.cancelled_caught


async def test_registry_is_usable_after_join_all(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        registry.spawn("first", tm.TaskKind.RPC_HANDLER, forever)
        with pytest.raises(tm.ShutdownDeadlineExceeded):
            await registry.join_all(0)
        registry.spawn("second", tm.TaskKind.RPC_HANDLER, trio.sleep, 1)
        assert [s.name for s in registry.snapshot()] == ["second"]
        await registry.join_all(5)


# -- snapshot, len -----------------------------------------------------------


async def test_snapshot_lists_live_tasks_with_kind_name_and_aware_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        before = datetime.now(UTC)
        registry.spawn("short", tm.TaskKind.RPC_HANDLER, trio.sleep, 1)
        registry.spawn("loop", tm.TaskKind.BACKGROUND_LOOP, forever)
        registry.spawn("peer", tm.TaskKind.PEER_CONNECTION, forever)
        registry.spawn("compact", tm.TaskKind.MAINTENANCE, forever)
        after = datetime.now(UTC)
        snap = registry.snapshot()
        assert [(s.name, s.kind) for s in snap] == [
            ("short", tm.TaskKind.RPC_HANDLER),
            ("loop", tm.TaskKind.BACKGROUND_LOOP),
            ("peer", tm.TaskKind.PEER_CONNECTION),
            ("compact", tm.TaskKind.MAINTENANCE),
        ]
        for summary in snap:
            assert summary.spawned_at.utcoffset() == timedelta(0)
            # Stored as a float timestamp: allow for its rounding.
            slack = timedelta(milliseconds=1)
            assert before - slack <= summary.spawned_at <= after + slack
        await trio.sleep(2)
        assert [s.name for s in registry.snapshot()] == ["loop", "peer", "compact"]
        assert len(registry) == 3
        registry.shutdown_token.set()
        with pytest.raises(tm.ShutdownDeadlineExceeded):
            await registry.join_all(0)


async def test_task_summary_is_frozen(autojump_clock: trio.testing.MockClock) -> None:
    summary = tm.TaskSummary("x", tm.TaskKind.MAINTENANCE, datetime.now(UTC))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        summary.name = "y"  # type: ignore[misc]


async def test_len_and_is_empty_follow_tasks(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        assert (len(registry), registry.is_empty()) == (0, True)
        registry.spawn("a", tm.TaskKind.RPC_HANDLER, trio.sleep, 1)
        registry.spawn("b", tm.TaskKind.RPC_HANDLER, trio.sleep, 2)
        assert (len(registry), registry.is_empty()) == (2, False)
        await trio.sleep(1.5)
        assert (len(registry), registry.is_empty()) == (1, False)
        await trio.sleep(1)
        assert (len(registry), registry.is_empty()) == (0, True)


async def test_task_kind_members(autojump_clock: trio.testing.MockClock) -> None:
    assert {k.name for k in tm.TaskKind} == {
        "BACKGROUND_LOOP",
        "PEER_CONNECTION",
        "RPC_HANDLER",
        "MAINTENANCE",
    }


# -- failures ----------------------------------------------------------------


async def test_failing_task_is_logged_with_name_and_kind_and_siblings_go_on(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    done: list[str] = []

    async def boom() -> None:
        await trio.sleep(1)
        raise ValueError("bad peer")

    async def sibling() -> None:
        await trio.sleep(3)
        done.append("sibling")

    async with tm.open_registry() as registry:
        registry.spawn("gossip", tm.TaskKind.PEER_CONNECTION, boom)
        registry.spawn("sibling", tm.TaskKind.BACKGROUND_LOOP, sibling)
        await trio.sleep(2)
        assert [s.name for s in registry.snapshot()] == ["sibling"]
        errors = registry_errors(caplog)
        assert len(errors) == 1
        record = errors[0]
        assert record.levelno == logging.ERROR
        assert "'gossip'" in record.getMessage()
        assert "PEER_CONNECTION" in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)
        await registry.join_all(5)
    assert done == ["sibling"]


async def test_returning_tasks_are_not_logged(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with tm.open_registry() as registry:
        registry.spawn("ok", tm.TaskKind.RPC_HANDLER, nothing)
    assert [r for r in caplog.records if r.name == LOGGER] == []


async def test_failure_while_winding_down_is_logged(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async def fails_on_shutdown(token: tm.ShutdownToken) -> None:
        await token.wait()
        raise RuntimeError("flush failed")

    async with tm.open_registry() as registry:
        registry.spawn(
            "flusher", tm.TaskKind.MAINTENANCE, fails_on_shutdown, registry.shutdown_token
        )
    assert len(registry_errors(caplog)) == 1
    assert "'flusher'" in registry_errors(caplog)[0].getMessage()


async def test_subscribers_get_failures_as_panics(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async def boom() -> None:
        raise KeyError("k")

    async with tm.open_registry() as registry:
        failures = registry.subscribe()
        registry.spawn("boom", tm.TaskKind.RPC_HANDLER, boom)
        failure = await failures.receive()
        assert isinstance(failure, tm.TaskFailure)
        assert failure.task.name == "boom"
        assert isinstance(failure.reason, tm.Panic)
        assert isinstance(failure.reason.exception, KeyError)
        # Still logged, even with a subscriber.
        assert len(registry_errors(caplog)) == 1
    # The subscription ends with the registry.
    with pytest.raises(trio.EndOfChannel):
        await failures.receive()


async def test_subscriber_with_full_buffer_does_not_block_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def boom() -> None:
        raise ValueError

    async with tm.open_registry() as registry:
        failures = registry.subscribe(max_buffer_size=1)
        for i in range(3):
            registry.spawn(f"boom{i}", tm.TaskKind.RPC_HANDLER, boom)
        await registry.join_all(1)
        assert (await failures.receive()).task.name.startswith("boom")
        with pytest.raises(trio.WouldBlock):
            failures.receive_nowait()


# -- abort handle ------------------------------------------------------------


async def test_abort_handle(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    cleaned: list[str] = []

    async def raises_while_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            cleaned.append("cleanup")
            raise ValueError("during cancellation")

    async with tm.open_registry() as registry:
        failures = registry.subscribe()
        handle = registry.spawn("peer", tm.TaskKind.PEER_CONNECTION, raises_while_cancelled)
        other = registry.spawn("other", tm.TaskKind.PEER_CONNECTION, trio.sleep, 5)
        await trio.sleep(1)
        assert not handle.is_finished()
        handle.abort()
        handle.abort()  # idempotent
        await handle.wait()
        assert handle.is_finished()
        assert cleaned == ["cleanup"]
        assert [s.name for s in registry.snapshot()] == ["other"]
        assert not other.is_finished()
        # An aborted task is not counted by join_all.
        await registry.join_all(10)
        assert other.is_finished()
        handle.abort()  # after it finished: nothing happens
        with pytest.raises(trio.WouldBlock):
            failures.receive_nowait()
    assert registry_errors(caplog) == []


async def test_abort_before_the_task_starts(autojump_clock: trio.testing.MockClock) -> None:
    started: list[str] = []

    async def body() -> None:
        started.append("started")

    async with tm.open_registry() as registry:
        handle = registry.spawn("never", tm.TaskKind.RPC_HANDLER, body)
        handle.abort()
        await handle.wait()
    assert started == []
    assert "never" in repr(handle)
    assert "finished" in repr(handle)


async def test_wait_on_a_finished_task_is_a_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with tm.open_registry() as registry:
        handle = registry.spawn("quick", tm.TaskKind.RPC_HANDLER, nothing)
        await handle.wait()
        with trio.CancelScope() as scope:
            scope.cancel()
            await handle.wait()
        assert scope.cancelled_caught


# -- the async with block -------------------------------------------------------


async def test_exit_sets_the_token_then_joins(autojump_clock: trio.testing.MockClock) -> None:
    done: list[str] = []
    async with tm.open_registry(shutdown_deadline=10) as registry:
        token = registry.shutdown_token
        registry.spawn("w1", tm.TaskKind.BACKGROUND_LOOP, until_token_then, token, 1, done)
        registry.spawn("w2", tm.TaskKind.BACKGROUND_LOOP, until_token_then, token, 2, done)
        start = trio.current_time()
        assert not token.is_set()
    assert token.is_set()
    assert done == ["clean", "clean"]
    # The grace period ran to the slowest cooperative task, not to the deadline.
    assert trio.current_time() - start == pytest.approx(2)


async def test_exit_raises_the_deadline_error_bare(autojump_clock: trio.testing.MockClock) -> None:
    done: list[str] = []
    start = trio.current_time()
    with pytest.raises(tm.ShutdownDeadlineExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_registry(shutdown_deadline=3) as registry:
            registry.spawn("stuck", tm.TaskKind.PEER_CONNECTION, forever)
            registry.spawn("stuck2", tm.TaskKind.PEER_CONNECTION, forever)
            registry.spawn(
                "nice",
                tm.TaskKind.PEER_CONNECTION,
                until_token_then,
                registry.shutdown_token,
                1,
                done,
            )
    assert type(info.value) is tm.ShutdownDeadlineExceeded
    assert info.value.pending == 2
    assert info.value.deadline == 3
    assert done == ["clean"]
    assert trio.current_time() - start == pytest.approx(3)
    assert registry.is_empty()


async def test_body_exception_propagates_bare_after_two_phase_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[str] = []
    start = trio.current_time()
    with pytest.raises(ValueError, match="body failed") as info:  # noqa: PT012 - the block is the subject
        async with tm.open_registry(shutdown_deadline=3) as registry:
            registry.spawn("stuck", tm.TaskKind.PEER_CONNECTION, forever)
            registry.spawn(
                "nice",
                tm.TaskKind.PEER_CONNECTION,
                until_token_then,
                registry.shutdown_token,
                1,
                done,
            )
            raise ValueError("body failed")
    assert type(info.value) is ValueError
    # The token was set and the graceful phase ran; the stuck task was
    # cancelled at the deadline, but the body's error is what propagates.
    assert registry.shutdown_token.is_set()
    assert done == ["clean"]
    assert trio.current_time() - start == pytest.approx(3)
    assert registry.is_empty()


async def test_outer_cancellation_cancels_at_once(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    done: list[str] = []
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with tm.open_registry(shutdown_deadline=100) as registry:
            registry.spawn("stuck", tm.TaskKind.PEER_CONNECTION, forever)
            registry.spawn(
                "nice",
                tm.TaskKind.PEER_CONNECTION,
                until_token_then,
                registry.shutdown_token,
                1,
                done,
            )
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(1)
    assert done == []  # no grace period
    assert registry.is_empty()
    assert registry.shutdown_token.is_set()
    assert registry_errors(caplog) == []


async def test_outer_cancellation_during_the_grace_period_stops_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with tm.open_registry(shutdown_deadline=100) as registry:
            registry.spawn("stuck", tm.TaskKind.PEER_CONNECTION, forever)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(1)
    assert registry.is_empty()


async def test_keyboard_interrupt_in_a_task_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def interrupted() -> None:
        await trio.sleep(1)
        raise KeyboardInterrupt

    start = trio.current_time()
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the block is the subject
        async with tm.open_registry(shutdown_deadline=100) as registry:
            registry.spawn("ki", tm.TaskKind.RPC_HANDLER, interrupted)
            registry.spawn("stuck", tm.TaskKind.RPC_HANDLER, forever)
            await trio.sleep_forever()
    assert trio.current_time() - start == pytest.approx(1)


async def test_keyboard_interrupt_in_the_body_does_not_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the block is the subject
        async with tm.open_registry(shutdown_deadline=100) as registry:
            registry.spawn("stuck", tm.TaskKind.RPC_HANDLER, forever)
            raise KeyboardInterrupt
    assert trio.current_time() == start


async def test_spawn_after_exit_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        registry.spawn("late", tm.TaskKind.RPC_HANDLER, nothing)


# -- input validation --------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.001, math.inf, math.nan])
async def test_bad_shutdown_deadline_value(
    bad: float, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(ValueError, match="shutdown_deadline"):
        async with tm.open_registry(shutdown_deadline=bad):
            pass  # pragma: no cover


@pytest.mark.parametrize("bad", ["5", None, True])
async def test_bad_shutdown_deadline_type(
    bad: object, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(TypeError, match="shutdown_deadline"):
        async with tm.open_registry(shutdown_deadline=bad):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_bad_join_all_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        with pytest.raises(ValueError, match="deadline"):
            await registry.join_all(-1)
        with pytest.raises(TypeError, match="deadline"):
            await registry.join_all("1")  # type: ignore[arg-type]


async def test_bad_spawn_arguments(autojump_clock: trio.testing.MockClock) -> None:
    async with tm.open_registry() as registry:
        with pytest.raises(TypeError, match="name must be a str"):
            registry.spawn(1, tm.TaskKind.RPC_HANDLER, nothing)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="TaskKind"):
            registry.spawn("x", "RPC_HANDLER", nothing)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="async function"):
            registry.spawn("x", tm.TaskKind.RPC_HANDLER, None)  # type: ignore[arg-type]
        assert registry.is_empty()


# -- memory --------------------------------------------------------------------


async def test_finished_tasks_hold_no_memory(autojump_clock: trio.testing.MockClock) -> None:
    rounds, per_round = 20, 1000
    async with tm.open_registry() as registry:
        tracemalloc.start()
        try:
            sizes = []
            for _ in range(rounds):
                for _ in range(per_round):
                    registry.spawn("short", tm.TaskKind.RPC_HANDLER, nothing)
                await registry.join_all(1)
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
    # Trio's and the registry's tables reach their size in the first rounds
    # (one resize of about 100 kB); after that the only growth is Trio's
    # lazily pruned deadline heap, a few hundred bytes per join_all. The
    # seed's leak (a record per finished task until join) would be > 1 MB.
    assert sizes[-1] - sizes[0] < 250_000, sizes
    assert sizes[-1] - sizes[rounds // 2] < 20_000, sizes


# -- edges (issue 8) ---------------------------------------------------------


async def test_an_unprintable_exception_is_logged_reported_and_siblings_go_on(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_registry() as registry:
        failures = registry.subscribe()
        sibling = registry.spawn("sibling", tm.TaskKind.MAINTENANCE, trio.sleep, 10)
        await registry.spawn("bad", tm.TaskKind.RPC_HANDLER, raise_unprintable).wait()
        await sibling.wait()
        assert trio.current_time() == pytest.approx(10)
    [failure] = drain_nowait(failures)
    [record] = registry_errors(caplog)
    assert "'bad' (RPC_HANDLER" in record.getMessage()
    assert_reported_readably(failure, record)


async def test_spawn_refuses_non_async_callables_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def sync_fn() -> None:
        pass

    async with tm.open_registry() as registry:
        coro = nothing()
        with pytest.raises(TypeError, match="coroutine object"):
            registry.spawn("x", tm.TaskKind.RPC_HANDLER, coro)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="synchronous"):
            registry.spawn("x", tm.TaskKind.RPC_HANDLER, sync_fn)  # type: ignore[arg-type]
        assert registry.is_empty()


@pytest.mark.parametrize("extra_respawns", [0, 1, 3])
async def test_join_all_is_bounded_when_stragglers_respawn_themselves(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, extra_respawns: int
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    handles: list[tm.AbortHandle] = []
    starts = [0]

    async with tm.open_registry() as registry:

        def respawn() -> None:
            for _ in range(1 + extra_respawns):
                handles.append(registry.spawn("reconnect", tm.TaskKind.PEER_CONNECTION, loop))

        async def loop() -> None:
            starts[0] += 1
            await respawning(respawn)()

        respawn()
        registry.spawn("quick", tm.TaskKind.MAINTENANCE, trio.sleep, 1)
        start = trio.current_time()
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(5)
        assert trio.current_time() - start == pytest.approx(5)
        assert info.value.pending == 1 + extra_respawns
        assert registry.is_empty()
        assert starts == [1 + extra_respawns]
        assert all(h.is_finished() for h in handles)
        # The registry works normally again after join_all.
        again = registry.spawn("again", tm.TaskKind.MAINTENANCE, trio.sleep, 1)
        await again.wait()
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    stragglers = [m for m in warnings if "still running at the 5s deadline" in m]
    born_aborted = [m for m in warnings if "spawned while its component is stopping" in m]
    # Each straggler is named (as dig_service does); each replacement too.
    assert len(stragglers) == 1 + extra_respawns
    assert all("'reconnect'" in m for m in stragglers)
    assert len(born_aborted) == (1 + extra_respawns) ** 2


async def test_registry_exit_is_bounded_when_a_straggler_respawns_itself(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with pytest.raises(tm.ShutdownDeadlineExceeded) as info:  # noqa: PT012
        async with tm.open_registry(shutdown_deadline=2) as registry:
            failures = registry.subscribe()

            def respawn() -> None:
                registry.spawn("reconnect", tm.TaskKind.PEER_CONNECTION, respawning(respawn))

            respawn()
    assert info.value.pending == 1
    assert trio.current_time() == pytest.approx(2)
    assert drain_nowait(failures) == []
    assert registry_errors(caplog) == []
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("'reconnect'" in m and "2s deadline" in m for m in messages)


async def test_a_straggler_failing_while_cancelled_is_not_reported(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with tm.open_registry() as registry:
        failures = registry.subscribe()
        for how in Misbehaviour:
            registry.spawn(how.value, tm.TaskKind.RPC_HANDLER, run_misbehaving, how, math.inf)
        with pytest.raises(tm.ShutdownDeadlineExceeded) as info:
            await registry.join_all(1)
        assert info.value.pending == len(Misbehaviour)
    assert drain_nowait(failures) == []
    assert registry_errors(caplog) == []


def test_deadline_messages_name_the_argument() -> None:
    with pytest.raises(ValueError, match="shutdown_deadline must be >= 0 seconds, not -1"):
        trio.run(_open_with, -1)
    with pytest.raises(ValueError, match="shutdown_deadline must be a finite number"):
        trio.run(_open_with, math.inf)
    with pytest.raises(TypeError, match="shutdown_deadline must be a number of seconds"):
        trio.run(_open_with, "1")


async def _open_with(deadline: object) -> None:
    async with tm.open_registry(shutdown_deadline=deadline):  # type: ignore[arg-type]
        pass  # pragma: no cover
