"""The supervisor, bullet by bullet of the contract (SPEC §5), in virtual time.

Every timing test runs on ``autojump_clock``: the clock jumps whenever all
tasks are blocked, so backoffs, windows, grace periods and heartbeats are
exact virtual times. Children record what happened to them in a shared
:class:`Log` (what started, when it became ready, when it was cancelled),
and the tests compare that account with the supervisor's reports.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trio_monitor as tm
from tests.channels import drain_nowait
from tests.hostile import UnprintableError

NO_BACKOFF = tm.Backoff(initial=0, jitter=0)


@attrs.define
class Log:
    """What children did, in order, with virtual times."""

    events: list[tuple[float, str, str]] = attrs.field(factory=list)

    def add(self, what: str, name: str) -> None:
        self.events.append((trio.current_time(), what, name))

    def of(self, what: str) -> list[str]:
        return [name for _, w, name in self.events if w == what]

    def times(self, what: str, name: str) -> list[float]:
        return [t for t, w, n in self.events if w == what and n == name]

    def backoffs(self, name: str) -> list[float]:
        """How long each failure of ``name`` waited for its restart."""
        fails, starts = self.times("fail", name), self.times("start", name)
        return [start - fail for fail, start in zip(fails, starts[1:], strict=False)]


def child(
    log: Log,
    name: str,
    *,
    fails_after: float | None = None,
    returns_after: float | None = None,
    startup: float = 0.0,
    error: type[Exception] = ValueError,
    failing_runs: int | None = None,
) -> Callable[..., Awaitable[None]]:
    """A child that logs its start, readiness and cancellation.

    It is ready after ``startup`` seconds, then raises ``error`` after
    ``fails_after`` seconds (in its first ``failing_runs`` runs only, if
    given), or returns after ``returns_after``, or runs for ever.
    """
    runs = 0

    async def run(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        log.add("start", name)
        try:
            await trio.sleep(startup)
            log.add("ready", name)
            task_status.started(f"{name}-value")
            if fails_after is not None and (failing_runs is None or runs <= failing_runs):
                await trio.sleep(fails_after)
                log.add("fail", name)
                raise error(f"{name} failed")
            if returns_after is not None:
                await trio.sleep(returns_after)
                log.add("return", name)
                return
            await trio.sleep_forever()
        except trio.Cancelled:
            log.add("cancelled", name)
            raise

    return run


def names(failures: list[tm.TaskFailure]) -> list[str]:
    return [f.task.name for f in failures]


# --- start and readiness ---


async def test_start_returns_once_the_child_is_ready(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        handle = await sup.start("db", child(log, "db", startup=2.0))
        assert trio.current_time() == 2.0
        assert log.of("ready") == ["db"]
        assert handle.value == "db-value"
        assert handle.name == "db"
        assert handle.is_running()
        assert handle.restarts == 0
        [info] = sup.children()
        assert info.name == "db"
        assert info.status == "running"
        assert info.started_at is not None
        assert info.started_at.tzinfo is not None


async def test_a_child_without_task_status_is_ready_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    started = trio.Event()

    async def plain(x: int) -> None:
        assert x == 7
        started.set()
        await trio.sleep_forever()

    async with tm.open_supervisor() as sup:
        handle = await sup.start("plain", plain, 7)
        assert trio.current_time() == 0
        assert handle.value is None
        assert handle.is_running()
        await started.wait()


async def test_start_passes_positional_arguments(autojump_clock: trio.abc.Clock) -> None:
    got: list[object] = []

    async def run(a: int, b: str, task_status: trio.TaskStatus[int]) -> None:
        got.extend([a, b])
        task_status.started(a * 2)
        await trio.sleep_forever()

    async with tm.open_supervisor() as sup:
        handle = await sup.start("args", run, 21, "x")
        assert handle.value == 42
        assert got == [21, "x"]


async def test_a_child_failing_before_ready_makes_start_raise_and_frees_its_name(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def broken(task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(1)
        raise OSError("no database")

    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
        with pytest.raises(OSError, match="no database"):
            await sup.start("db", broken)
        assert sup.children() == []
        # Not reported: start() raised it; and the name is free again.
        assert drain_nowait(failures) == []
        log = Log()
        await sup.start("db", child(log, "db"))
        assert [c.name for c in sup.children()] == ["db"]
        assert sup.statistics().restarts == 0


async def test_a_child_returning_before_ready_makes_start_raise(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def quits(task_status: trio.TaskStatus[None]) -> None:
        pass

    async with tm.open_supervisor() as sup:
        for restart in tm.Restart:
            with pytest.raises(RuntimeError, match=r"before it called task_status\.started"):
                await sup.start("q", quits, restart=restart)
        assert sup.children() == []


async def test_a_child_hanging_before_ready_makes_start_raise_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def stuck(task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep_forever()

    async with tm.open_supervisor() as sup:
        with pytest.raises(TimeoutError, match="no heartbeat for 3s"):
            await sup.start("stuck", stuck, liveness_timeout=3.0)
        assert trio.current_time() == 3.0
        assert sup.children() == []


async def test_cancelling_start_stops_the_child_unreported(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
        with trio.move_on_after(1):
            await sup.start("slow", child(log, "slow", startup=10))
        await trio.testing.wait_all_tasks_blocked()
        assert log.of("cancelled") == ["slow"]
        assert sup.children() == []
        assert drain_nowait(failures) == []


async def test_names_are_unique(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        await sup.start("a", child(log, "a"))
        with pytest.raises(ValueError, match="'a' is taken"):
            await sup.start("a", child(log, "a"))
        assert log.of("start") == ["a"]


async def test_start_refuses_non_async_functions_at_once() -> None:
    def sync() -> None:
        pass

    async def job() -> None:
        pass

    async with tm.open_supervisor() as sup:
        with pytest.raises(TypeError, match="synchronous"):
            await sup.start("s", sync)  # type: ignore[arg-type]
        coro = job()
        with pytest.raises(TypeError, match="coroutine object"):
            await sup.start("c", coro)  # type: ignore[arg-type]
        assert sup.children() == []


async def test_children_start_in_the_order_of_the_start_calls(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        for name in "abc":
            await sup.start(name, child(log, name, startup=1))
        assert log.of("ready") == ["a", "b", "c"]
        assert [c.name for c in sup.children()] == ["a", "b", "c"]


# --- restart kinds (OTP: permanent/transient/temporary x normal/abnormal) ---


async def test_permanent_child_returning_is_early_termination_and_restarted(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        handle = await sup.start("p", child(log, "p", returns_after=1))
        failure = await failures.receive()
        assert isinstance(failure.reason, tm.EarlyTermination)
        assert failure.task.name == "p"
        await trio.sleep(0.5)
        assert log.of("start") == ["p", "p"]
        assert handle.restarts == 1
        assert handle.is_running()


@pytest.mark.parametrize("restart", [tm.Restart.PERMANENT, tm.Restart.TRANSIENT])
async def test_child_raising_is_a_panic_and_restarted(
    autojump_clock: trio.abc.Clock, restart: tm.Restart
) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("c", child(log, "c", fails_after=1), restart=restart)
        failure = await failures.receive()
        assert isinstance(failure.reason, tm.Panic)
        assert failure.reason.message == "c failed"
        assert isinstance(failure.reason.exception, ValueError)
        await trio.sleep(0.5)
        assert log.of("start") == ["c", "c"]


async def test_transient_child_returning_ends_for_good(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        handle = await sup.start(
            "t", child(log, "t", returns_after=1), restart=tm.Restart.TRANSIENT
        )
        await trio.sleep(10)
        assert log.of("start") == ["t"]
        assert drain_nowait(failures) == []
        assert not handle.is_running()
        assert [c.status for c in sup.children()] == ["stopped"]


@pytest.mark.parametrize("ending", ["returns", "raises"])
async def test_temporary_child_is_never_restarted(
    autojump_clock: trio.abc.Clock, ending: str
) -> None:
    log = Log()
    body = (
        child(log, "t", returns_after=1) if ending == "returns" else child(log, "t", fails_after=1)
    )
    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("t", body, restart=tm.Restart.TEMPORARY)
        await trio.sleep(10)
        assert log.of("start") == ["t"]
        reported = drain_nowait(failures)
        # A temporary child's failure is still reported; returning is not one.
        assert names(reported) == (["t"] if ending == "raises" else [])
        assert sup.statistics().restarts == 0
        assert [c.status for c in sup.children()] == ["stopped"]


async def test_temporary_bystander_is_stopped_for_good_by_a_group_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    # OTP temporary_bystander: a temporary child stopped by a sibling's
    # group restart is not started again (it never is); permanent ones are.
    log = Log()
    async with tm.open_supervisor(strategy=tm.Strategy.ONE_FOR_ALL, backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("temp", child(log, "temp"), restart=tm.Restart.TEMPORARY)
        await sup.start("perm", child(log, "perm", fails_after=2, failing_runs=1))
        await sup.start("other", child(log, "other"))
        await trio.sleep(2.5)
        assert log.of("start") == ["temp", "perm", "other", "perm", "other"]
        assert log.of("cancelled") == ["other", "temp"]
        assert [c.status for c in sup.children()] == ["stopped", "running", "running"]
        assert names(drain_nowait(failures)) == ["perm"]


# --- strategies ---


async def test_one_for_one_restarts_only_the_failed_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("a", child(log, "a"))
        await sup.start("b", child(log, "b", fails_after=1))
        await sup.start("c", child(log, "c"))
        await failures.receive()
        await trio.sleep(0.5)
        assert log.of("start") == ["a", "b", "c", "b"]
        assert log.of("cancelled") == []
        assert [c.restarts for c in sup.children()] == [0, 1, 0]


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(strategy=tm.Strategy.ONE_FOR_ALL, backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("a", child(log, "a", startup=0.25))
        await sup.start("b", child(log, "b", startup=0.25, fails_after=1))
        await sup.start("c", child(log, "c", startup=0.25))
        await sup.start("d", child(log, "d", startup=0.25))
        log.events.clear()
        await failures.receive()
        await trio.sleep(1.1)
        assert log.of("cancelled") == ["d", "c", "a"]
        # Restarted in start order, each once the previous one is ready.
        assert log.of("ready")[:4] == ["a", "b", "c", "d"]
        starts = [(t, n) for t, w, n in log.events if w == "start"][:4]
        readies = [(t, n) for t, w, n in log.events if w == "ready"][:4]
        for (_, name), (ready_time, ready_name), (next_start, _) in zip(
            starts, readies, starts[1:], strict=False
        ):
            assert name == ready_name
            assert next_start >= ready_time
        # Stopped on purpose: only b's own failure was reported.
        assert drain_nowait(failures) == []
        assert [c.restarts for c in sup.children()] == [1, 1, 1, 1]
        assert sup.statistics().restarts == 1


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(strategy=tm.Strategy.REST_FOR_ONE, backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("a", child(log, "a"))
        await sup.start("b", child(log, "b", fails_after=1))
        await sup.start("c", child(log, "c"))
        await sup.start("d", child(log, "d"))
        log.events.clear()
        await failures.receive()
        await trio.sleep(0.5)
        assert log.of("cancelled") == ["d", "c"]
        assert log.of("start") == ["b", "c", "d"]
        assert drain_nowait(failures) == []
        assert [c.restarts for c in sup.children()] == [0, 1, 1, 1]


async def test_rest_for_one_other_child_fails_during_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    # OTP rest_for_one_other_child_fails_restart: an earlier child failing
    # while a later group waits for its backoff takes the group over; every
    # child ends up running once, none twice.
    log = Log()
    backoff = tm.Backoff(initial=2, jitter=0)
    async with tm.open_supervisor(strategy=tm.Strategy.REST_FOR_ONE, backoff=backoff) as sup:
        failures = sup.subscribe()
        a = await sup.start("a", child(log, "a", fails_after=1.5, failing_runs=1))
        b = await sup.start("b", child(log, "b", fails_after=1, failing_runs=1))
        await sup.start("c", child(log, "c"))
        await failures.receive()  # b at 1
        await failures.receive()  # a at 1.5, during b's backoff
        await trio.sleep(10)
        running = [c.name for c in sup.children() if c.status == "running"]
        assert running == ["a", "b", "c"]
        assert a.restarts == 1
        # b's own restart was taken over by a's: b started twice, not three times.
        assert b.restarts == 1
        assert log.of("start") == ["a", "b", "c", "a", "b", "c"]
        # Never two runs of one child at once.
        for name in "abc":
            alive = 0
            for _, what, n in log.events:
                if n != name:
                    continue
                alive += what == "start"
                alive -= what in ("cancelled", "fail")
                assert alive <= 1


async def test_one_for_all_other_child_fails_during_restart(
    autojump_clock: trio.abc.Clock,
) -> None:
    # OTP one_for_all_other_child_fails_restart: a sibling failing while the
    # group restarts (here: before it is ready again) is one more failure,
    # and the whole group restarts once more.
    log = Log()
    b_runs = 0

    async def b(task_status: trio.TaskStatus[None]) -> None:
        nonlocal b_runs
        b_runs += 1
        log.add("start", "b")
        await trio.sleep(0.25)
        if b_runs == 2:
            raise OSError("b cannot start again")
        task_status.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            log.add("cancelled", "b")
            raise

    async with tm.open_supervisor(
        strategy=tm.Strategy.ONE_FOR_ALL, backoff=tm.Backoff(initial=1, jitter=0)
    ) as sup:
        failures = sup.subscribe()
        await sup.start("a", child(log, "a", fails_after=2, failing_runs=1))
        await sup.start("b", b)
        await trio.sleep(20)
        assert names(drain_nowait(failures)) == ["a", "b"]
        assert log.of("start") == ["a", "b", "a", "b", "a", "b"]
        assert log.of("cancelled") == ["b", "a"]
        assert [c.status for c in sup.children()] == ["running", "running"]
        assert sup.statistics().restarts == 2


# --- children stopped by a strategy are never reported, even when hostile ---


@pytest.mark.parametrize("strategy", [tm.Strategy.ONE_FOR_ALL, tm.Strategy.REST_FOR_ONE])
@pytest.mark.parametrize("how", ["raise_in_finally", "swallow_and_return", "unprintable"])
async def test_siblings_stopped_by_a_strategy_are_never_reported(
    autojump_clock: trio.abc.Clock, strategy: tm.Strategy, how: str
) -> None:
    async def hostile(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if how == "swallow_and_return":
                return
            raise
        finally:
            if how == "raise_in_finally":
                raise ConnectionResetError("reset while closing")
            if how == "unprintable":
                raise UnprintableError

    log = Log()
    async with tm.open_supervisor(strategy=strategy, backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("failing", child(log, "failing", fails_after=1))
        await sup.start("hostile", hostile)
        await trio.sleep(1.5)
        assert names(drain_nowait(failures)) == ["failing"]
        assert [c.status for c in sup.children()] == ["running", "running"]


# --- backoff ---


async def test_backoff_grows_exponentially_up_to_max(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    backoff = tm.Backoff(initial=1, multiplier=2, max=5, jitter=0)
    async with tm.open_supervisor(max_restarts=100, within=1000, backoff=backoff) as sup:
        await sup.start("c", child(log, "c", fails_after=0.5))
        await trio.sleep(60)
    assert log.backoffs("c")[:6] == [1, 2, 4, 5, 5, 5]


async def test_backoff_jitter_stays_within_its_fraction(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    backoff = tm.Backoff(initial=4, multiplier=1, max=4, jitter=0.25)
    async with tm.open_supervisor(max_restarts=100, within=1000, backoff=backoff) as sup:
        await sup.start("c", child(log, "c", fails_after=0.5))
        await trio.sleep(100)
    waits = log.backoffs("c")
    assert len(waits) > 10
    assert all(3 <= w <= 5 for w in waits), waits
    assert len(set(waits)) > 1


async def test_backoff_resets_after_a_run_of_at_least_within(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    backoff = tm.Backoff(initial=1, multiplier=10, max=1000, jitter=0)
    runs = iter([0.5, 0.5, 10.0, 0.5, 0.5])

    async def c(task_status: trio.TaskStatus[None]) -> None:
        log.add("start", "c")
        task_status.started()
        await trio.sleep(next(runs, math.inf))
        log.add("fail", "c")
        raise ValueError

    async with tm.open_supervisor(max_restarts=100, within=5, backoff=backoff) as sup:
        await sup.start("c", c)
        await trio.sleep(200)
    # 1, 10, then the 10 s run resets the count: 1 again, then 10.
    assert log.backoffs("c") == [1, 10, 1, 10, 100]


async def test_a_backoff_never_blocks_other_children(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    backoff = tm.Backoff(initial=100, max=1000, jitter=0)
    async with tm.open_supervisor(max_restarts=10, within=1000, backoff=backoff) as sup:
        await sup.start("slow", child(log, "slow", fails_after=1))
        await sup.start("fast", child(log, "fast"))
        await trio.sleep(2)
        assert [c.status for c in sup.children()] == ["backing_off", "running"]
        # Another child can be started, stopped and restarted meanwhile.
        await sup.start("late", child(log, "late", startup=1))
        assert trio.current_time() == 3
        assert log.of("start") == ["slow", "fast", "late"]
        await trio.sleep(100)
        assert log.of("start") == ["slow", "fast", "late", "slow"]


# --- intensity ---


@pytest.mark.parametrize("max_restarts", [0, 1, 3, 5])
async def test_intensity_gives_up_at_max_restarts_plus_one(
    autojump_clock: trio.abc.Clock, max_restarts: int
) -> None:
    # triotp test_automatic_restart_crash / OTP one_for_one_escalation.
    log = Log()
    with pytest.raises(tm.RestartIntensityExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(
            max_restarts=max_restarts, within=5, backoff=NO_BACKOFF
        ) as sup:
            await sup.start("c", child(log, "c", fails_after=0.5))
            await sup.start("other", child(log, "other"))
            await trio.sleep_forever()
    exc = info.value
    assert log.of("start").count("c") == max_restarts + 1
    assert exc.max_restarts == max_restarts
    assert exc.within == 5
    assert len(exc.failures) == max_restarts + 1
    assert all(f.task.name == "c" for f in exc.failures)
    assert isinstance(exc, Exception)
    # Everything was stopped, the survivor on purpose.
    assert log.of("cancelled") == ["other"]


async def test_permanent_child_returning_escalates_like_triotp(
    autojump_clock: trio.abc.Clock,
) -> None:
    count = 0

    async def sample() -> None:
        nonlocal count
        count += 1

    with pytest.raises(tm.RestartIntensityExceeded):  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=3, within=5, backoff=NO_BACKOFF) as sup:
            await sup.start("sample", sample)
            await trio.sleep_forever()
    assert count == 4


async def test_intensity_counts_only_restarts_within_the_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(max_restarts=2, within=10, backoff=NO_BACKOFF) as sup:
        # One failure every 5 s: a restart 10 s ago has left the window
        # (the window is the last `within` seconds, that instant excluded),
        # so never more than 2 restarts are in it.
        await sup.start("c", child(log, "c", fails_after=5))
        await trio.sleep(28)
        assert len(log.of("fail")) == 5
        assert sup.statistics().restarts == 5


async def test_intensity_is_counted_across_the_whole_supervisor(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    with pytest.raises(tm.RestartIntensityExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=2, within=10, backoff=NO_BACKOFF) as sup:
            await sup.start("a", child(log, "a", fails_after=3))
            await sup.start("b", child(log, "b", fails_after=4))
            await trio.sleep_forever()
    # a at 3, b at 4, a at 6: the third restart in the window is refused.
    assert [(f.task.name) for f in info.value.failures] == ["a", "b", "a"]
    assert trio.current_time() == 6
    # The failure that was refused was not restarted.
    assert log.of("start") == ["a", "b", "a", "b"]


async def test_giving_up_stops_children_in_reverse_start_order_and_cancels_the_body(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    body_cancelled = False
    with pytest.raises(tm.RestartIntensityExceeded):  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=0) as sup:
            await sup.start("a", child(log, "a"))
            await sup.start("b", child(log, "b", fails_after=1))
            await sup.start("c", child(log, "c"))
            await sup.start("d", child(log, "d"))
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body_cancelled = True
                raise
    assert body_cancelled
    assert log.of("cancelled") == ["d", "c", "a"]


async def test_within_and_max_restarts_defaults_and_infinite_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    with pytest.raises(tm.RestartIntensityExceeded):  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=2, within=math.inf, backoff=NO_BACKOFF) as sup:
            await sup.start("c", child(log, "c", fails_after=100))
            await trio.sleep_forever()
    assert trio.current_time() == 300


# --- supervision trees ---


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of the run, from its root."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


def subtree(
    log: Log,
    name: str,
    strategy: tm.Strategy,
    children: list[tuple[str, Callable[..., Awaitable[None]]]],
    *,
    max_restarts: int = 1,
) -> Callable[..., Awaitable[None]]:
    """A supervisor run as a child: ready once its own children are."""

    async def run(task_status: trio.TaskStatus[None]) -> None:
        log.add("start", name)
        try:
            async with tm.open_supervisor(
                strategy=strategy, max_restarts=max_restarts, within=100, backoff=NO_BACKOFF
            ) as sup:
                for child_name, fn in children:
                    await sup.start(child_name, fn)
                task_status.started()
                await trio.sleep_forever()
        except tm.RestartIntensityExceeded:
            log.add("gave_up", name)
            raise
        except trio.Cancelled:
            log.add("cancelled", name)
            raise

    return run


async def test_a_three_level_tree_escalates_until_the_root_gives_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    leaf = child(log, "leaf", fails_after=1)
    sibling = child(log, "sibling")
    middle = subtree(log, "middle", tm.Strategy.ONE_FOR_ONE, [("leaf", leaf), ("sibling", sibling)])
    upper = subtree(log, "upper", tm.Strategy.ONE_FOR_ALL, [("middle", middle)])
    with pytest.raises(tm.RestartIntensityExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=1, within=100, backoff=NO_BACKOFF) as root:
            failures = root.subscribe()
            await root.start("upper", upper)
            await root.start("bystander", child(log, "bystander"))
            await trio.sleep_forever()
    # The leaf crashed twice per middle run (1 restart allowed), so middle
    # gave up twice per upper run, upper gave up twice, and the root gave up.
    assert log.of("start").count("upper") == 2
    assert log.of("start").count("middle") == 4
    assert log.of("start").count("leaf") == 8
    assert log.of("gave_up").count("middle") == 4
    assert log.of("gave_up").count("upper") == 2
    root_failures = info.value.failures
    assert [f.task.name for f in root_failures] == ["upper", "upper"]
    reason = root_failures[0].reason
    assert isinstance(reason, tm.Panic)
    assert isinstance(reason.exception, tm.RestartIntensityExceeded)
    # The root reported each of upper's failures once.
    assert names(drain_nowait(failures)) == ["upper", "upper"]
    assert log.of("cancelled").count("bystander") == 1


async def test_a_tree_leaves_no_task_running(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    leaf = child(log, "leaf", fails_after=1)
    middle = subtree(log, "middle", tm.Strategy.REST_FOR_ONE, [("leaf", leaf)])
    upper = subtree(log, "upper", tm.Strategy.ONE_FOR_ONE, [("middle", middle)])
    before = all_tasks()
    with pytest.raises(tm.RestartIntensityExceeded):  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=1, within=100, backoff=NO_BACKOFF) as root:
            await root.start("upper", upper)
            await trio.sleep_forever()
    await trio.testing.wait_all_tasks_blocked()
    assert all_tasks() == before
    # Every start was matched by an end.
    for name in ("leaf", "middle", "upper"):
        ends = log.of("fail").count(name) + log.of("cancelled").count(name)
        ends += log.of("gave_up").count(name)
        assert ends == log.of("start").count(name), name


# --- graceful stop ---


async def test_stopping_sets_the_token_and_waits_for_the_child(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: list[tuple[float, str]] = []

    async def graceful(shutdown: tm.ShutdownToken, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await shutdown.wait()
        events.append((trio.current_time(), "asked"))
        await trio.sleep(2)
        events.append((trio.current_time(), "done"))

    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
        await sup.start("g", graceful, shutdown_timeout=5)
        await trio.sleep(1)
    assert events == [(1, "asked"), (3, "done")]
    assert drain_nowait(failures) == []


async def test_a_child_past_its_shutdown_timeout_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()

    async def stubborn(shutdown: tm.ShutdownToken) -> None:
        await child(log, "s")()

    async with tm.open_supervisor() as sup:
        await sup.start("s", stubborn, shutdown_timeout=3)
    assert log.events[-1] == (3, "cancelled", "s")


async def test_a_child_without_shutdown_is_cancelled_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        await sup.start("c", child(log, "c"), shutdown_timeout=100)
    assert log.events[-1] == (0, "cancelled", "c")


async def test_block_end_stops_children_one_at_a_time_in_reverse_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    events: list[tuple[float, str, str]] = []

    def graceful(name: str) -> Callable[..., Awaitable[None]]:
        async def run(shutdown: tm.ShutdownToken) -> None:
            await shutdown.wait()
            events.append((trio.current_time(), "asked", name))
            await trio.sleep(1)
            events.append((trio.current_time(), "done", name))

        return run

    async with tm.open_supervisor() as sup:
        for name in "abc":
            await sup.start(name, graceful(name))
    assert events == [
        (0, "asked", "c"),
        (1, "done", "c"),
        (1, "asked", "b"),
        (2, "done", "b"),
        (2, "asked", "a"),
        (3, "done", "a"),
    ]


async def test_the_body_exception_propagates_bare_after_a_graceful_stop(
    autojump_clock: trio.abc.Clock,
) -> None:
    done: list[str] = []

    async def graceful(shutdown: tm.ShutdownToken) -> None:
        await shutdown.wait()
        await trio.sleep(1)
        done.append("stopped")

    with pytest.raises(KeyError) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor() as sup:
            await sup.start("g", graceful)
            raise KeyError("body")
    assert type(info.value) is KeyError
    assert done == ["stopped"]
    assert trio.current_time() == 1


async def test_outer_cancellation_stops_everything_at_once_and_reports_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    received: list[tm.TaskFailure] = []

    async def graceful(shutdown: tm.ShutdownToken) -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise ConnectionResetError("while cancelled")

    with trio.move_on_after(1) as scope:
        async with tm.open_supervisor() as sup:
            failures = sup.subscribe()
            await sup.start("a", child(log, "a"))
            await sup.start("g", graceful, shutdown_timeout=100)
            try:
                await trio.sleep_forever()
            finally:
                received.extend(drain_nowait(failures))
    assert scope.cancelled_caught
    assert trio.current_time() == 1
    assert received == []
    assert drain_nowait(failures) == []
    assert log.of("cancelled") == ["a"]


# --- liveness ---


async def test_a_child_that_misses_its_heartbeat_is_hung_and_restarted(
    autojump_clock: trio.abc.Clock,
) -> None:
    beats: list[float] = []

    async def poller(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        for _ in range(3):
            await trio.sleep(1)
            tm.heartbeat()
            beats.append(trio.current_time())
        await trio.sleep_forever()  # stuck

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        handle = await sup.start("poller", poller, liveness_timeout=2.0)
        failure = await failures.receive()
        assert failure.reason == tm.Hung(2.0)
        assert failure.reason.liveness_timeout == 2.0
        # Last heartbeat at 3: detected no later than 2 x 2 s after it.
        assert beats[:3] == [1, 2, 3]
        assert 3 + 2 <= trio.current_time() <= 3 + 2 * 2
        await trio.sleep(0.5)
        assert handle.restarts == 1


async def test_heartbeats_from_tasks_the_child_started_count(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def worker() -> None:
        while True:
            await trio.sleep(1)
            tm.heartbeat()

    async def parent() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)

    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
        await sup.start("p", parent, liveness_timeout=1.5)
        await trio.sleep(100)
        assert drain_nowait(failures) == []


async def test_a_hung_child_swallowing_its_cancel_is_still_reported_hung(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def hostile() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            raise UnprintableError from None

    async with tm.open_supervisor(backoff=NO_BACKOFF, max_restarts=10) as sup:
        failures = sup.subscribe()
        await sup.start("h", hostile, liveness_timeout=1, restart=tm.Restart.TRANSIENT)
        failure = await failures.receive()
        assert failure.reason == tm.Hung(1)


async def test_heartbeat_outside_a_child_does_nothing(autojump_clock: trio.abc.Clock) -> None:
    tm.heartbeat()

    async def no_liveness() -> None:
        tm.heartbeat()
        await trio.sleep_forever()

    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
        await sup.start("n", no_liveness)
        await trio.sleep(1000)
        assert drain_nowait(failures) == []


async def test_a_nested_supervisor_child_does_not_beat_for_its_parent(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def beating() -> None:
        while True:
            await trio.sleep(0.5)
            tm.heartbeat()

    async def nested(task_status: trio.TaskStatus[None]) -> None:
        async with tm.open_supervisor() as sup:
            await sup.start("inner", beating)
            task_status.started()
            await trio.sleep_forever()

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("outer", nested, liveness_timeout=2)
        failure = await failures.receive()
        assert failure.reason == tm.Hung(2)
        assert trio.current_time() == 2


# --- handles ---


async def test_handle_stop_is_for_good_and_not_a_failure(autojump_clock: trio.abc.Clock) -> None:
    log = Log()

    async def graceful(shutdown: tm.ShutdownToken, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await shutdown.wait()
        await trio.sleep(1)
        raise ConnectionResetError("hostile while stopping")

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        plain = await sup.start("plain", child(log, "plain"))
        slow = await sup.start("slow", graceful)
        plain.stop()
        slow.stop()
        assert not plain.is_running()
        assert [c.status for c in sup.children()] == ["stopping", "stopping"]
        await trio.sleep(5)
        assert [c.status for c in sup.children()] == ["stopped", "stopped"]
        assert drain_nowait(failures) == []
        assert log.of("start") == ["plain"]
        plain.stop()  # again: nothing happens
        assert sup.statistics().restarts == 0


async def test_handle_restart_returns_once_ready_and_is_not_a_failure(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor(max_restarts=0) as sup:
        failures = sup.subscribe()
        handle = await sup.start("c", child(log, "c", startup=1))
        await handle.restart()
        assert trio.current_time() == 2
        assert log.of("cancelled") == ["c"]
        assert log.of("ready") == ["c", "c"]
        assert handle.is_running()
        assert handle.restarts == 1
        assert handle.value == "c-value"
        # Not a failure, not counted: max_restarts=0 did not give up.
        assert drain_nowait(failures) == []
        assert sup.statistics().restarts == 0


async def test_handle_restart_starts_a_stopped_child_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    log = Log()
    async with tm.open_supervisor() as sup:
        handle = await sup.start("c", child(log, "c"))
        handle.stop()
        await trio.sleep(1)
        assert not handle.is_running()
        await handle.restart()
        assert handle.is_running()
        assert log.of("start") == ["c", "c"]


async def test_handle_restart_raises_when_the_new_run_fails_before_ready(
    autojump_clock: trio.abc.Clock,
) -> None:
    runs = 0

    async def flaky(task_status: trio.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            raise OSError("second run fails")
        task_status.started()
        await trio.sleep_forever()

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        handle = await sup.start("f", flaky)
        with pytest.raises(OSError, match="second run fails"):
            await handle.restart()
        # ...and it is a failure of a kept child: reported and restarted.
        assert names([await failures.receive()]) == ["f"]
        await trio.sleep(1)
        assert handle.is_running()
        assert runs == 3


async def test_handle_restart_cuts_a_backoff_short(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=tm.Backoff(initial=100, jitter=0)) as sup:
        failures = sup.subscribe()
        handle = await sup.start("c", child(log, "c", fails_after=1))
        await failures.receive()
        assert [c.status for c in sup.children()] == ["backing_off"]
        await handle.restart()
        assert trio.current_time() == 1
        assert log.of("start") == ["c", "c"]


async def test_children_and_statistics(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=tm.Backoff(initial=10, jitter=0)) as sup:
        failures = sup.subscribe(1)
        sup.subscribe(0).close()
        await sup.start("a", child(log, "a"))
        await sup.start("b", child(log, "b", fails_after=1))
        await sup.start("c", child(log, "c", fails_after=1.5))
        await trio.sleep(2)
        infos = sup.children()
        assert [i.status for i in infos] == ["running", "backing_off", "backing_off"]
        assert [i.restarts for i in infos] == [0, 1, 1]
        assert infos[0].last_failure is None
        assert infos[1].last_failure is not None
        assert infos[1].last_failure.task.name == "b"
        stats = sup.statistics()
        assert stats == tm.SupervisorStatistics(
            children=3, restarts=2, dropped_failures=1, subscribers=1
        )
        assert len(drain_nowait(failures)) == 1


# --- subscriptions ---


async def test_subscriptions_end_when_the_supervisor_closes() -> None:
    async with tm.open_supervisor() as sup:
        failures = sup.subscribe()
    got = [f async for f in failures]
    assert got == []
    late = sup.subscribe()
    assert [f async for f in late] == []


async def test_failures_without_subscriber_are_logged(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = Log()
    with caplog.at_level(logging.ERROR, logger="trio_monitor.supervisor"):
        async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
            await sup.start("c", child(log, "c", fails_after=1))
            await trio.sleep(1.5)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "'c'" in record.getMessage()
    assert "c failed" in record.getMessage()


async def test_an_unprintable_failure_is_reported_readably(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def unprintable() -> None:
        await trio.sleep(1)
        raise UnprintableError

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("u", unprintable)
        failure = await failures.receive()
        assert isinstance(failure.reason, tm.Panic)
        assert failure.reason.message == "<unprintable UnprintableError>"


async def test_a_panic_traceback_starts_at_the_childs_own_code(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def crashes() -> None:
        await trio.sleep(1)
        raise ValueError("own code")

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        await sup.start("c", crashes)
        reason = (await failures.receive()).reason
        assert isinstance(reason, tm.Panic)
        assert reason.traceback is not None
        assert "in crashes" in reason.traceback
        assert "trio_monitor" not in reason.traceback
        assert reason.traceback.endswith("ValueError: own code\n")


# --- invalid arguments ---


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"strategy": "one_for_one"}, TypeError, "strategy"),
        ({"max_restarts": -1}, ValueError, "max_restarts"),
        ({"max_restarts": 1.5}, TypeError, "max_restarts"),
        ({"max_restarts": True}, TypeError, "max_restarts"),
        ({"within": 0}, ValueError, "within"),
        ({"within": -1.0}, ValueError, "within"),
        ({"within": math.nan}, ValueError, "within"),
        ({"within": "5"}, TypeError, "within"),
        ({"backoff": 0.1}, TypeError, "backoff"),
    ],
)
async def test_open_supervisor_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        async with tm.open_supervisor(**kwargs):
            pass  # pragma: no cover


@pytest.mark.parametrize("attempt", [1, 2, 1_100, 10**6])
def test_a_zero_backoff_stays_zero_however_many_restarts(attempt: int) -> None:
    # 2.0 ** 1024 overflows: that must not turn "no backoff" into the cap.
    assert tm.Backoff(initial=0, jitter=0.5).delay(attempt) == 0
    assert tm.Backoff(initial=1, max=30, jitter=0).delay(attempt) == min(30, 2 ** (attempt - 1))


def test_backoff_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="initial"):
        tm.Backoff(initial=-1)
    with pytest.raises(ValueError, match="jitter"):
        tm.Backoff(jitter=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"restart": "permanent"}, TypeError, "restart"),
        ({"shutdown_timeout": -1}, ValueError, "shutdown_timeout"),
        ({"shutdown_timeout": None}, TypeError, "shutdown_timeout"),
        ({"liveness_timeout": 0}, ValueError, "liveness_timeout"),
        ({"liveness_timeout": -2}, ValueError, "liveness_timeout"),
    ],
)
async def test_start_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async def noop() -> None:
        await trio.sleep_forever()

    async with tm.open_supervisor() as sup:
        with pytest.raises(error, match=match):
            await sup.start("x", noop, **kwargs)
        with pytest.raises(TypeError, match="child name"):
            await sup.start(3, noop)  # type: ignore[arg-type]
        assert sup.children() == []


async def test_start_after_the_block_raises() -> None:
    async def noop() -> None:
        pass

    async with tm.open_supervisor() as sup:
        pass
    with pytest.raises(RuntimeError, match="stopping or closed"):
        await sup.start("late", noop)


def test_public_names_present_themselves_under_trio_monitor() -> None:
    for obj in (
        tm.open_supervisor,
        tm.Supervisor,
        tm.Strategy,
        tm.Restart,
        tm.ChildHandle,
        tm.ChildInfo,
        tm.SupervisorStatistics,
        tm.RestartIntensityExceeded,
        tm.Hung,
        tm.heartbeat,
    ):
        assert obj.__module__ == "trio_monitor", obj
    assert {s.name for s in tm.Strategy} == {"ONE_FOR_ONE", "ONE_FOR_ALL", "REST_FOR_ONE"}
    assert {r.name for r in tm.Restart} == {"PERMANENT", "TRANSIENT", "TEMPORARY"}


# --- OTP supervisor_SUITE scenarios that apply ---
#
# Ported by meaning, not by letter: OTP's exit reasons become how a Trio
# child ends (returns, raises), its shutdown specs a shutdown_timeout
# (brutal_kill: 0; infinity: math.inf). Not ported: ignore/init-return
# shapes, child specs as maps, simple_one_for_one and code_change (no
# equivalent API), and the "shutdown" exit reason (a Trio child has no exit
# reason besides returning or raising).


@pytest.mark.parametrize(
    ("restart", "ending", "restarted", "reported"),
    [
        (tm.Restart.PERMANENT, "normal", True, tm.EarlyTermination),  # permanent_normal
        (tm.Restart.TRANSIENT, "normal", False, None),  # transient_normal
        (tm.Restart.TEMPORARY, "normal", False, None),  # temporary_normal
        (tm.Restart.PERMANENT, "abnormal", True, tm.Panic),  # permanent_abnormal
        (tm.Restart.TRANSIENT, "abnormal", True, tm.Panic),  # transient_abnormal
        (tm.Restart.TEMPORARY, "abnormal", False, tm.Panic),  # temporary_abnormal
    ],
)
async def test_otp_restart_kinds_by_ending(
    autojump_clock: trio.abc.Clock,
    restart: tm.Restart,
    ending: str,
    restarted: bool,
    reported: type[object] | None,
) -> None:
    log = Log()
    first_run = (
        child(log, "c", returns_after=1) if ending == "normal" else child(log, "c", fails_after=1)
    )
    runs = 0

    async def body(task_status: trio.TaskStatus[str]) -> None:
        # Only the first run ends; a restarted one stays up.
        nonlocal runs
        runs += 1
        await (first_run if runs == 1 else child(log, "c"))(task_status=task_status)

    async with tm.open_supervisor(backoff=NO_BACKOFF) as sup:
        failures = sup.subscribe()
        handle = await sup.start("c", body, restart=restart)
        await trio.sleep(5)
        assert [type(f.reason) for f in drain_nowait(failures)] == ([reported] if reported else [])
        assert log.of("start") == (["c", "c"] if restarted else ["c"])
        assert handle.is_running() is restarted
        assert sup.statistics().restarts == int(restarted)


async def test_otp_sup_stop_infinity(autojump_clock: trio.abc.Clock) -> None:
    stopped_at: list[float] = []

    async def slow_to_stop(shutdown: tm.ShutdownToken) -> None:
        await shutdown.wait()
        await trio.sleep(3600)
        stopped_at.append(trio.current_time())

    async with tm.open_supervisor() as sup:
        await sup.start("slow", slow_to_stop, shutdown_timeout=math.inf)
    assert stopped_at == [3600]


async def test_otp_sup_stop_timeout_and_brutal_kill(autojump_clock: trio.abc.Clock) -> None:
    # child1 stops when asked; child2 sleeps through its token and is killed
    # at its timeout; child3 (brutal_kill) is cancelled without waiting.
    log = Log()

    async def polite(shutdown: tm.ShutdownToken) -> None:
        await shutdown.wait()
        log.add("stopped", "child1")

    async def sleeper(shutdown: tm.ShutdownToken) -> None:
        await child(log, "child2")()

    async def brutal(shutdown: tm.ShutdownToken) -> None:
        await child(log, "child3")()

    async with tm.open_supervisor() as sup:
        await sup.start("child1", polite, shutdown_timeout=1)
        await sup.start("child2", sleeper, shutdown_timeout=1)
        await sup.start("child3", brutal, shutdown_timeout=0)
    assert [(t, w, n) for t, w, n in log.events if w != "start" and w != "ready"] == [
        (0, "cancelled", "child3"),
        (1, "cancelled", "child2"),
        (1, "stopped", "child1"),
    ]


async def test_otp_child_adm(autojump_clock: trio.abc.Clock) -> None:
    # Start, list, stop, restart, start again under a taken name.
    log = Log()
    async with tm.open_supervisor() as sup:
        handle = await sup.start("child1", child(log, "child1"))
        assert [(c.name, c.status) for c in sup.children()] == [("child1", "running")]
        with pytest.raises(ValueError, match="taken"):
            await sup.start("child1", child(log, "child1"))
        handle.stop()
        await trio.testing.wait_all_tasks_blocked()
        assert [(c.name, c.status) for c in sup.children()] == [("child1", "stopped")]
        await handle.restart()
        assert [(c.name, c.status) for c in sup.children()] == [("child1", "running")]
        assert log.of("start") == ["child1", "child1"]


async def test_otp_count_children(autojump_clock: trio.abc.Clock) -> None:
    log = Log()
    async with tm.open_supervisor(backoff=tm.Backoff(initial=10, jitter=0)) as sup:
        await sup.start("worker", child(log, "worker"))
        await sup.start("crasher", child(log, "crasher", fails_after=1))
        await sup.start("done", child(log, "done", returns_after=1), restart=tm.Restart.TRANSIENT)
        await trio.sleep(2)
        assert sup.statistics().children == 3
        statuses = {c.name: c.status for c in sup.children()}
        assert statuses == {"worker": "running", "crasher": "backing_off", "done": "stopped"}


@pytest.mark.parametrize("strategy", list(tm.Strategy))
async def test_otp_escalation_for_every_strategy(
    autojump_clock: trio.abc.Clock, strategy: tm.Strategy
) -> None:
    # one_for_one_escalation, one_for_all_escalation, rest_for_one_escalation:
    # a child that keeps failing takes its supervisor down after
    # max_restarts restarts, and everything it ran is stopped.
    log = Log()
    with pytest.raises(tm.RestartIntensityExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(strategy=strategy, max_restarts=2, backoff=NO_BACKOFF) as sup:
            await sup.start("before", child(log, "before"))
            await sup.start("crasher", child(log, "crasher", fails_after=1))
            await sup.start("after", child(log, "after"))
            await trio.sleep_forever()
    assert log.of("start").count("crasher") == 3
    assert len(info.value.failures) == 3
    assert log.of("cancelled")[-2:] == ["after", "before"]
    assert all_tasks_ended(log)


def all_tasks_ended(log: Log) -> bool:
    """Every start in ``log`` was followed by its end (a failure or a cancel)."""
    open_runs: Counter[str] = Counter()
    for _, what, name in log.events:
        if what == "start":
            open_runs[name] += 1
        elif what in ("fail", "cancelled", "return"):
            open_runs[name] -= 1
    return all(n == 0 for n in open_runs.values())


async def test_otp_hanging_restart_loop(autojump_clock: trio.abc.Clock) -> None:
    # A child whose every restart fails before it is ready does not make the
    # supervisor hang: each is a failure, counted, until it gives up.
    runs = 0

    async def fails_to_restart(task_status: trio.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            raise OSError("cannot start again")
        task_status.started()
        await trio.sleep(1)
        raise ValueError("crash")

    with pytest.raises(tm.RestartIntensityExceeded) as info:  # noqa: PT012 - the block is the subject
        async with tm.open_supervisor(max_restarts=3, backoff=NO_BACKOFF) as sup:
            await sup.start("c", fails_to_restart)
            await trio.sleep_forever()
    assert runs == 4
    reasons = [f.reason for f in info.value.failures]
    assert all(isinstance(r, tm.Panic) for r in reasons)
    assert [type(r.exception) for r in reasons if isinstance(r, tm.Panic)] == [
        ValueError,
        OSError,
        OSError,
        OSError,
    ]
