"""A Hypothesis state machine for the supervisor: hostile children, every stop.

The children are the tasks of :mod:`tests.test_monitor_stateful` (each run
misbehaves when cancelled, fails plainly or unprintably, returns, runs for
ever, or sits in a thread that ignores its cancellation), run under a
supervisor whose strategy, intensity and backoff Hypothesis picks. Rules
start children of every restart kind, stop them and restart them by hand
(while they run, back off, or are being stopped), move the clock, and end
the block (normally, by an exception, or by outer cancellation). Each run
keeps its own account (:class:`~tests.hostile.Track`); after every rule the
supervisor must agree with them:

* a child never has two runs at once;
* every failure of a run is reported at most once, and every failure that
  no stop could have raced with (no stop, restart or other failure at that
  instant) exactly once; the reason is readable even when ``str()`` raises;
* a stop on purpose (``stop()``, ``restart()``, a strategy, the end) is
  never reported, whatever the run does while cancelled: the reports never
  outnumber the runs' own failures;
* ``children()`` agrees with the runs (a "running" child has a run going, a
  stopped or backing-off one has none), and ``statistics()`` with the
  subscriptions;
* the block's end stops children one at a time (a step per child sitting in
  a thread at most), raises ``RestartIntensityExceeded`` only after the
  supervisor logged that it gave up, and leaves no run going.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from contextlib import AbstractAsyncContextManager

import attrs
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

import trio_monitor as tm
from tests.hostile import Misbehaviour, Track, UnprintableError
from tests.machines import FAILS, MISBEHAVIOURS, SubscribingMachine
from tests.trio_host import STEP

#: How long each run lasts before it ends on its own (never for ever here:
#: a child whose runs never end tests nothing new).
RUN_SECONDS = st.sampled_from([STEP, 0.5, 1.0, 2.5, math.inf])


@attrs.define(eq=False)
class Child:
    name: str
    restart: tm.Restart
    how: Misbehaviour
    seconds: float
    fails: type[Exception] | None
    handle: tm.ChildHandle | None = None
    runs: list[Track] = attrs.field(factory=list)

    def own_failures(self) -> list[Track]:
        """Runs that ended on their own in a way the restart kind calls a failure."""
        failed = []
        for track in self.runs:
            if track.cancelled_at is not None:
                continue
            if track.outcome == "raised" or (
                track.outcome == "returned" and self.restart is tm.Restart.PERMANENT
            ):
                failed.append(track)
        return failed


class SupervisorMachine(SubscribingMachine):
    LOGGER = "trio_monitor.supervisor"
    BLOCK_ERRORS = (tm.RestartIntensityExceeded,)

    def __init__(self) -> None:
        super().__init__()
        self.children: list[Child] = []
        #: Instants at which something may have stopped a run on purpose.
        self.stop_instants: set[float] = set()
        self.settings: dict[str, object] = {}

    @initialize(
        strategy=st.sampled_from(list(tm.Strategy)),
        max_restarts=st.integers(0, 6),
        within=st.sampled_from([0.5, 2.0, 10.0]),
        backoff=st.sampled_from([0.0, STEP, 1.0]),
    )
    def open(self, strategy: tm.Strategy, max_restarts: int, within: float, backoff: float) -> None:
        self.settings = {
            "strategy": strategy,
            "max_restarts": max_restarts,
            "within": within,
            "backoff": tm.Backoff(initial=backoff, jitter=0),
        }
        self.configure()

    def open_component(self) -> AbstractAsyncContextManager[tm.Supervisor]:
        return tm.open_supervisor(**self.settings)  # type: ignore[arg-type]

    def opened(self, component: tm.Supervisor) -> None:
        self.sup = component

    def active(self) -> bool:
        return self.subscribing()

    # --- rules ---

    @precondition(lambda self: self.active() and len(self.children) < 6)
    @rule(
        restart=st.sampled_from(list(tm.Restart)),
        how=MISBEHAVIOURS,
        seconds=RUN_SECONDS,
        fails=FAILS,
    )
    def start(
        self,
        restart: tm.Restart,
        how: Misbehaviour,
        seconds: float,
        fails: type[Exception] | None,
    ) -> None:
        child = Child(f"c{len(self.children)}", restart, how, seconds, fails)
        self.host.call(self._start, child)

    async def _start(self, child: Child) -> None:
        gate = self.host.gate

        async def body(task_status: trio.TaskStatus[None]) -> None:
            track = Track(child.how, child.seconds, child.fails)
            child.runs.append(track)
            task_status.started()
            await track.run(gate.block)

        try:
            child.handle = await self.sup.start(child.name, body, restart=child.restart)
        except RuntimeError as exc:
            # The supervisor gave up in the meantime (its stop is under way).
            if "stopping or closed" not in str(exc):
                raise
            return
        self.children.append(child)

    def handled(self) -> list[Child]:
        return [c for c in self.children if c.handle is not None]

    @precondition(lambda self: self.active() and self.children)
    @rule(data=st.data())
    def stop_child(self, data: st.DataObject) -> None:
        child = data.draw(st.sampled_from(self.children))
        self.host.call(self._stop_child, child)

    async def _stop_child(self, child: Child) -> None:
        assert child.handle is not None
        self.stop_instants.add(trio.current_time())
        child.handle.stop()
        assert not child.handle.is_running()

    @precondition(lambda self: self.active() and self.children)
    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        child = data.draw(st.sampled_from(self.children))
        self.host.call(self._restart_child, child)

    async def _restart_child(self, child: Child) -> None:
        assert child.handle is not None
        assert self.host.nursery is not None
        handle = child.handle
        self.stop_instants.add(trio.current_time())

        async def restart() -> None:
            # Overtaken by a failure's restart, a stop, or the end: fine.
            with contextlib.suppress(RuntimeError):
                await handle.restart()

        self.host.nursery.start_soon(restart)

    @precondition(lambda self: self.active())
    @rule(how=st.sampled_from(["exit", "raise", "outer"]))
    def stop(self, how: str) -> None:
        self.host.call(self._stop, how)

    async def _stop(self, how: str) -> None:
        start = trio.current_time()
        self.stop_instants.add(start)
        gave_up_before = self.exited.is_set()
        elapsed = await self.end_block(how, 600)
        self.stop_instants.update(start + k * STEP for k in range(int(elapsed / STEP) + 1))
        # One child at a time, each at once but for a step in its thread.
        assert elapsed <= STEP * (len(self.children) + 2), elapsed
        if how == "exit" and not gave_up_before:
            assert self.block_error is None or isinstance(
                self.block_error, tm.RestartIntensityExceeded
            )

    # --- the accounts must agree ---

    @precondition(lambda self: self.ready)
    @invariant()
    def agrees_with_the_children(self) -> None:
        self.host.call(self._check)

    async def _check(self) -> None:
        self.collect_reports()
        for report in self.reports:
            reason = report.reason
            if isinstance(reason, tm.Panic) and isinstance(reason.exception, UnprintableError):
                assert reason.message == "<unprintable UnprintableError>"
            if isinstance(reason, tm.Panic):
                assert reason.traceback is not None
        per_name = Counter(r.task.name for r in self.reports)
        failures = [
            (c.name, t.ended_at) for c in self.children for t in c.own_failures() if t.ended_at
        ]
        # A stop (and a group's stops, a step per child in a thread) may
        # race with a run's own end for this long after what caused it.
        reach = STEP * (len(self.children) + 1)

        def raced(name: str, at: float) -> bool:
            causes = self.stop_instants | {x for n, x in failures if n != name}
            return any(0 <= at - x <= reach for x in causes)

        for child in self.children:
            runs = child.runs
            for before, after in itertools.pairwise(runs):
                assert before.ended_at is not None, (child, "two runs at once")
                assert after.started_at is not None
                assert after.started_at >= before.ended_at
            own = child.own_failures()
            got = per_name.get(child.name, 0)
            # Never more reports than own failures (stops are never reported)...
            assert got <= len(own), (child, got)
            # ...and every failure no stop could have raced with is reported.
            clear = [t for t in own if t.ended_at is not None and not raced(child.name, t.ended_at)]
            assert got >= len(clear), (child, got, own)
        if self.active():
            infos = {info.name: info for info in self.sup.children()}
            for child in self.children:
                info = infos[child.name]
                last = child.runs[-1] if child.runs else None
                if info.status == "running":
                    assert last is not None
                    assert last.running, (child, info)
                if info.status in ("stopped", "backing_off"):
                    assert last is None or not last.running, (child, info)
            stats = self.sup.statistics()
            assert stats.subscribers == 1 + len(self.extra)
            assert stats.children == len(self.children)
        if self.exited.is_set():
            for child in self.children:
                assert all(not t.running for t in child.runs), child
        # The only ERROR the supervisor logs with a subscriber is giving up.
        gave_up = [r for r in self.errors_logged() if "gave up" in r.getMessage()]
        assert len(self.errors_logged()) == len(gave_up) <= 1
        if isinstance(self.block_error, tm.RestartIntensityExceeded):
            assert len(gave_up) == 1
            assert len(self.block_error.failures) == self.block_error.max_restarts + 1


SupervisorMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestSupervisorMachine = SupervisorMachine.TestCase
