"""Property-based tests of the supervisor over random failure schedules.

Hypothesis draws a strategy, an intensity, a backoff and up to four
children. Each child has a restart kind, a schedule (how each of its runs
ends on its own: raise, return or run for ever, after whole seconds), a
grace behaviour (how long it takes to wind down once its shutdown token is
set, against its ``shutdown_timeout``), and a hostile behaviour when it is
cancelled (raise in cleanup, raise an exception whose ``__str__`` raises,
swallow ``Cancelled`` and return or raise). The block ends at a quarter
past some second, so it never ties with a child's own ending.

Every run keeps its own account, in one event log in the order things
happened; after the run of the program the supervisor's reports and its
ending must agree with it:

* no run stopped on purpose is reported; every other failure is reported
  exactly once, with the right reason, in order;
* a child never has two runs at once, and no task is left running;
* stops go one at a time; a child starting again (group strategies) or
  being stopped never has a later sibling alive;
* the supervisor gives up exactly when a failure would need restart number
  ``max_restarts + 1`` within ``within`` seconds, with those failures.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_monitor as tm
from tests.hostile import UnprintableError
from tests.trio_host import Records

ENDINGS = ("raise", "return", "forever")
HOSTILE = ("polite", "raise_in_cleanup", "raise_unprintable", "swallow_return", "swallow_raise")


@attrs.frozen
class ChildSpec:
    restart: tm.Restart
    #: How each run ends on its own: (ending, after seconds); runs beyond
    #: the schedule run for ever.
    schedule: tuple[tuple[str, int], ...]
    #: Seconds it takes to wind down once asked (its token is set).
    grace: float
    shutdown_timeout: float
    hostile: str


@attrs.frozen
class Program:
    strategy: tm.Strategy
    max_restarts: int
    within: float
    backoff: float
    children: tuple[ChildSpec, ...]
    #: The block's body ends at this time.
    end_at: float


child_specs = st.builds(
    ChildSpec,
    restart=st.sampled_from(list(tm.Restart)),
    schedule=st.lists(st.tuples(st.sampled_from(ENDINGS), st.integers(1, 4)), max_size=6).map(
        tuple
    ),
    grace=st.sampled_from([0.5, 2.0]),
    shutdown_timeout=st.sampled_from([0.0, 1.0]),
    hostile=st.sampled_from(HOSTILE),
)

programs = st.builds(
    Program,
    strategy=st.sampled_from(list(tm.Strategy)),
    max_restarts=st.integers(0, 4),
    within=st.sampled_from([2.0, 5.0, 10.0]),
    backoff=st.sampled_from([0.0, 0.5]),
    children=st.lists(child_specs, min_size=1, max_size=4).map(tuple),
    end_at=st.integers(1, 16).map(lambda s: s + 0.25),
)


@attrs.define
class Run:
    index: int  # the child's index in start order
    number: int  # 0 for the first run
    started: float
    #: "raised" / "returned" (on its own), "stopped" (asked or cancelled first).
    outcome: str | None = None
    ended: float | None = None


@attrs.define
class World:
    program: Program
    #: (event, child index, run number) in the order they happened: "start",
    #: "stopping" (the child saw its token or a Cancelled), "end".
    log: list[tuple[str, int, int]] = attrs.field(factory=list)
    runs: list[list[Run]] = attrs.field(factory=list)
    alive: set[int] = attrs.field(factory=set)
    stopping: set[int] = attrs.field(factory=set)
    reports: list[tm.TaskFailure] = attrs.field(factory=list)
    gave_up: tm.RestartIntensityExceeded | None = None
    violations: list[str] = attrs.field(factory=list)

    def event(self, what: str, index: int, number: int) -> None:
        self.log.append((what, index, number))
        later_alive = [j for j in self.alive if j > index]
        grouped = self.program.strategy is not tm.Strategy.ONE_FOR_ONE
        if what == "start":
            if index in self.alive:
                self.violations.append(f"child {index} started while running")
            if number > 0 and grouped and later_alive:
                self.violations.append(f"child {index} restarted before later {later_alive}")
            self.alive.add(index)
        elif what == "stopping":
            if later_alive:
                self.violations.append(f"child {index} stopped before later {later_alive}")
            if self.stopping:
                self.violations.append(f"child {index} stopped while {self.stopping} stop")
            self.stopping.add(index)
        else:
            self.alive.discard(index)
            self.stopping.discard(index)


def make_child(world: World, index: int, spec: ChildSpec) -> Any:
    runs: list[Run] = []
    world.runs.append(runs)

    async def body(shutdown: tm.ShutdownToken, task_status: trio.TaskStatus[None]) -> None:
        number = len(runs)
        run = Run(index, number, trio.current_time())
        runs.append(run)
        world.event("start", index, number)
        task_status.started()
        ending, after = spec.schedule[number] if number < len(spec.schedule) else ("forever", 0)
        try:
            try:
                with trio.move_on_after(math.inf if ending == "forever" else after) as own:
                    await shutdown.wait()
                if own.cancelled_caught and not shutdown.is_set():
                    run.outcome = "raised" if ending == "raise" else "returned"
                    if ending == "raise":
                        raise ValueError(f"child {index} run {number}")
                    return
                # Asked to stop: wind down (maybe past the grace period).
                run.outcome = "stopped"
                world.event("stopping", index, number)
                await trio.sleep(spec.grace)
            except trio.Cancelled:
                if run.outcome != "stopped":
                    run.outcome = "stopped"
                    world.event("stopping", index, number)
                if spec.hostile == "swallow_return":
                    return
                if spec.hostile == "swallow_raise":
                    raise ConnectionResetError("turned into an error") from None
                raise
            finally:
                if run.outcome == "stopped" and spec.hostile == "raise_in_cleanup":
                    raise ConnectionResetError("reset while closing")
                if run.outcome == "stopped" and spec.hostile == "raise_unprintable":
                    raise UnprintableError
        finally:
            run.ended = trio.current_time()
            world.event("end", index, number)

    return body


async def run_program(world: World) -> None:
    program = world.program
    backoff = tm.Backoff(initial=program.backoff, jitter=0)
    try:
        async with tm.open_supervisor(
            strategy=program.strategy,
            max_restarts=program.max_restarts,
            within=program.within,
            backoff=backoff,
        ) as sup:
            failures = sup.subscribe(math.inf)
            for index, spec in enumerate(program.children):
                await sup.start(
                    f"c{index}",
                    make_child(world, index, spec),
                    restart=spec.restart,
                    shutdown_timeout=spec.shutdown_timeout,
                )
            await trio.sleep_until(program.end_at)
    except tm.RestartIntensityExceeded as exc:
        world.gave_up = exc
    world.reports = [f async for f in failures]


def expected_reason(spec: ChildSpec, run: Run) -> type[Any] | None:
    if run.outcome == "raised":
        return tm.Panic
    if run.outcome == "returned" and spec.restart is tm.Restart.PERMANENT:
        return tm.EarlyTermination
    return None


def needs_restart(spec: ChildSpec, run: Run) -> bool:
    if spec.restart is tm.Restart.TEMPORARY:
        return False
    return run.outcome == "raised" or (
        run.outcome == "returned" and spec.restart is tm.Restart.PERMANENT
    )


def expected_give_up(world: World) -> float | None:
    """When the model says the supervisor gives up (the failure's time), if ever."""
    program = world.program
    failures = sorted(
        run.ended
        for index, runs in enumerate(world.runs)
        for run in runs
        if run.ended is not None
        and run.ended < program.end_at
        and needs_restart(program.children[index], run)
    )
    window: deque[float] = deque()
    for at in failures:
        while window and at - window[0] >= program.within:
            window.popleft()
        if len(window) >= program.max_restarts:
            return at
        window.append(at)
    return None


def check(world: World) -> None:
    program = world.program
    assert world.violations == [], world.violations
    assert world.alive == set(), "a child was still running after the block"
    # Reports: per child, exactly the failures of its own account, in order.
    for index, spec in enumerate(program.children):
        got = [type(f.reason) for f in world.reports if f.task.name == f"c{index}"]
        want = [r for r in (expected_reason(spec, run) for run in world.runs[index]) if r]
        assert got == want, (index, got, want, world.runs[index])
    for failure in world.reports:
        reason = failure.reason
        if isinstance(reason, tm.Panic) and isinstance(reason.exception, UnprintableError):
            raise AssertionError("an intentional stop was reported")
    # Intensity: exactly when the model says.
    give_up_at = expected_give_up(world)
    if give_up_at is None:
        assert world.gave_up is None, (world.gave_up, world.runs)
    else:
        assert world.gave_up is not None, (give_up_at, world.runs)
        assert len(world.gave_up.failures) == program.max_restarts + 1
        assert world.gave_up.max_restarts == program.max_restarts
        # After giving up nothing started again.
        assert all(run.started <= give_up_at for runs in world.runs for run in runs)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(programs)
def test_random_failure_schedules(program: Program) -> None:
    world = World(program)

    async def main() -> None:
        before = len(trio.lowlevel.current_root_task().child_nurseries)
        await run_program(world)
        await trio.testing.wait_all_tasks_blocked()
        assert len(trio.lowlevel.current_root_task().child_nurseries) == before

    records = Records()
    supervisor_logger = logging.getLogger("trio_monitor.supervisor")
    supervisor_logger.addHandler(records)
    supervisor_logger.propagate = False
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        supervisor_logger.removeHandler(records)
        supervisor_logger.propagate = True
    check(world)
    # Everything logged formats, even with unprintable exceptions around.
    for record in records.records:
        logging.Formatter().format(record)
    gave_up = [r for r in records.records if "gave up" in r.getMessage()]
    assert len(gave_up) == (world.gave_up is not None)


@settings(max_examples=200, deadline=None)
@given(
    beats=st.lists(st.integers(1, 12).map(lambda q: q / 4), max_size=12),
    timeout=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_hung_is_detected_within_twice_the_liveness_timeout(
    beats: list[float], timeout: float
) -> None:
    """A child beating after the given gaps, then stuck: Hung iff a gap was too long.

    Detection comes no sooner than ``timeout`` after the last heartbeat (or
    the start) and no later than twice that.
    """
    found: list[tuple[float, tm.TaskFailure]] = []
    beat_times: list[float] = []

    async def beating(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        for gap in beats:
            await trio.sleep(gap)
            tm.heartbeat()
            beat_times.append(trio.current_time())
        await trio.sleep_forever()

    async def main() -> None:
        async with tm.open_supervisor(max_restarts=0) as sup:
            failures = sup.subscribe()
            await sup.start("b", beating, liveness_timeout=timeout, restart=tm.Restart.TEMPORARY)
            failure = await failures.receive()
            found.append((trio.current_time(), failure))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    [(at, failure)] = found
    assert failure.reason == tm.Hung(timeout)
    # Not before a heartbeat was due, and no later than twice that.
    last_before = max([0.0] + [b for b in beat_times if b < at])
    assert timeout <= at - last_before <= 2 * timeout, (at, last_before)
    # The first gap longer than the timeout is caught.
    elapsed = 0.0
    for gap in beats:
        if gap > timeout:
            assert at <= elapsed + 2 * timeout
            break
        elapsed += gap
