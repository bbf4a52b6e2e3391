"""A Hypothesis state machine for the task monitor: hostile tasks, every stop.

Tasks misbehave when they are cancelled (:class:`tests.hostile.Misbehaviour`:
raise in ``finally``, raise an exception whose ``__str__`` raises, swallow
``Cancelled`` and return or raise, sit in a thread that ignores the
cancellation), fail on their own (plainly or unprintably), run for ever, or
respawn themselves from their ``finally`` (a reconnect loop). Rules spawn
them, abort them, drop abort-on-drop handles, subscribe and unsubscribe,
move the clock, and stop the monitor (block exit, exception in the block,
outer cancellation). Each task keeps its own account (:class:`Track`), and
after every rule the monitor must agree with it:

* no intentional stop (abort, drop, the monitor's own stop) is ever reported;
* every failure of a task that was not stopped is reported exactly once, as
  what the policy says (Panic, Error, EarlyTermination), with a readable
  message even when ``str()`` of the exception raises;
* a task only ever sees ``Cancelled`` when it was stopped on purpose;
* ``active_tasks()`` and ``statistics()`` match what is live and subscribed;
* the monitor's stop ends within its bound (at once) plus a step per
  thread, even with tasks respawning themselves;
* every log record the monitor writes can be formatted.

The clock and the threads are driven deterministically by
:class:`tests.trio_host.TrioHost`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

import trio_monitor as tm
from tests.hostile import Misbehaviour, Track, UnprintableError
from tests.machines import FAILS, MISBEHAVIOURS, SECONDS, SubscribingMachine, TaskMachine
from tests.trio_host import STEP

KINDS = st.sampled_from(["infinite", "finite", "fallible"])


@attrs.define(eq=False)
class Task:
    track: Track
    kind: str  # "infinite", "finite", "fallible" or "respawner"
    handle: tm.TaskHandle | None  # None once dropped
    info: tm.TaskInfo
    #: An abort, a drop or the monitor's stop came before the task ended.
    stopped: bool = False

    def expected(self) -> type[tm.Panic | tm.Error | tm.EarlyTermination] | None:
        """The report this task's own account calls for, if any."""
        track = self.track
        if self.stopped or track.outcome is None:
            return None
        if track.outcome == "raised":
            fallible = self.kind == "fallible" and isinstance(track.error, ValueError)
            return tm.Error if fallible else tm.Panic
        if track.outcome == "returned" and self.kind in ("infinite", "respawner"):
            return tm.EarlyTermination
        return None


class MonitorMachine(TaskMachine, SubscribingMachine):
    LOGGER = "trio_monitor"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[int, Task] = {}
        self.configure()

    def open_component(self) -> AbstractAsyncContextManager[tm.TaskMonitor]:
        return tm.open_monitor()

    def opened(self, component: tm.TaskMonitor) -> None:
        self.monitor = component

    # --- rules ---

    @precondition(lambda self: not self.stopped)
    @rule(kind=KINDS, how=MISBEHAVIOURS, seconds=SECONDS, fails=FAILS)
    def spawn(
        self, kind: str, how: Misbehaviour, seconds: float, fails: type[Exception] | None
    ) -> None:
        self.host.call(self._spawn, kind, Track(how, seconds, fails))

    async def _spawn(self, kind: str, track: Track) -> None:
        body = functools.partial(track.run, self.host.gate.block)
        if kind == "fallible":
            handle = self.monitor.spawn_fallible(kind, body, errors=(ValueError,))
        else:
            handle = getattr(self.monitor, f"spawn_{kind}")(kind, body)
        self.tasks[handle.info.id] = Task(track, kind, handle, handle.info)

    def spawn_loop(self, track: Track, loop: Callable[[], Awaitable[None]]) -> None:
        handle = self.monitor.spawn_infinite("respawner", loop)
        # Spawned during the monitor's stop: part of that intentional stop
        # (born aborted, or cancelled by the outer cancellation at once).
        self.tasks[handle.info.id] = Task(
            track, "respawner", handle, handle.info, stopped=self.stopped
        )

    def live_tasks(self) -> list[Task]:
        return [
            t for t in self.tasks.values() if t.handle is not None and not t.handle.is_finished()
        ]

    @precondition(lambda self: self.live_tasks())
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self.live_tasks()))
        self.host.call(self._drop, task)

    async def _drop(self, task: Task) -> None:
        if task.track.outcome is None:
            task.stopped = True
        assert task.handle is not None
        task.handle.abort_on_drop()
        # The last reference goes: the finalizer runs now.
        task.handle = None

    @precondition(lambda self: self.tasks and not self.stopped)
    @rule(how=st.sampled_from(["exit", "raise", "outer"]))
    def stop(self, how: str) -> None:
        self.host.call(self._stop, how)

    async def _stop(self, how: str) -> None:
        for task in self.tasks.values():
            if task.track.outcome is None:
                task.stopped = True
        elapsed = await self.end_block(how, 60)
        # The monitor aborts at once; a task in its thread holds it one step.
        assert elapsed <= 2 * STEP, elapsed
        assert all(t.handle is None or t.handle.is_finished() for t in self.tasks.values())

    # --- the account must agree ---

    @invariant()
    def agrees_with_the_tasks(self) -> None:
        self.host.call(self._check)

    async def _check(self) -> None:
        self.collect_reports()
        counts = Counter(r.task.id for r in self.reports)
        assert all(n == 1 for n in counts.values()), counts
        for report in self.reports:
            reason = report.reason
            if isinstance(reason, tm.Panic | tm.Error) and isinstance(
                reason.exception, UnprintableError
            ):
                text = reason.message if isinstance(reason, tm.Panic) else reason.error
                assert text == "<unprintable UnprintableError>"
        got = {r.task.id: type(r.reason) for r in self.reports}
        for task_id, task in self.tasks.items():
            assert got.get(task_id) is task.expected(), (task, got.get(task_id))
            if task.track.cancelled_at is not None:
                assert task.stopped, task
        if not self.stopped:
            live = {i for i, t in self.tasks.items() if t.track.outcome is None}
            assert {info.id for info in self.monitor.active_tasks()} == live
            stats = self.monitor.statistics()
            assert stats.active_tasks == len(live)
            assert stats.subscribers == 1 + len(self.extra)
        # Someone always listens, so nothing is logged at ERROR.
        assert self.errors_logged() == []


MonitorMachine.TestCase.settings = settings(max_examples=75, stateful_step_count=30, deadline=None)
TestMonitorMachine = MonitorMachine.TestCase
