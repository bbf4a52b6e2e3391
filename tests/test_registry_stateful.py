"""A Hypothesis state machine for the task registry: hostile tasks, every stop.

The tasks of :mod:`tests.test_monitor_stateful` (misbehaving when
cancelled, failing plainly or unprintably, sitting in threads, respawning
themselves from their ``finally``), under the registry's own stops:
``abort()``, ``join_all(deadline)`` in the middle of the block (after which
the registry goes on), and the block's end (normal, with an exception, or
by outer cancellation). After every rule the registry must agree with the
tasks' own accounts:

* no intentional stop is ever logged at ERROR or reported;
* every failure of a task that was not stopped is logged once at ERROR and
  reported exactly once, readably even when ``str()`` of it raises;
* a task only sees ``Cancelled`` when it was stopped on purpose;
* ``join_all`` and the exit end within their deadline plus a step per
  thread, even with tasks respawning themselves, and raise
  ``ShutdownDeadlineExceeded`` exactly when tasks had to be cancelled, with
  ``pending`` their number;
* ``snapshot()`` and ``len()`` list exactly the live tasks.

Only one thing is left open, because the virtual clock makes it a tie: a
task whose own end falls on the very instant of a deadline may count either
way (finished, or cancelled at the deadline).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import attrs
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

import trio_monitor as tm
from tests.hostile import Misbehaviour, Track, UnprintableError
from tests.machines import FAILS, MISBEHAVIOURS, SECONDS, TaskMachine
from tests.trio_host import STEP

DEADLINES = st.sampled_from([0.0, STEP, 1.0, 2.5])


@attrs.define(eq=False)
class Task:
    track: Track
    handle: tm.AbortHandle
    name: str
    #: An abort or a stop cancelled it on purpose.
    stopped: bool = False
    #: It ended on its own at the very instant a stop cancelled the rest.
    tie: bool = False

    def fails(self) -> bool:
        return self.track.outcome == "raised" and not self.stopped


class RegistryMachine(TaskMachine):
    LOGGER = "trio_monitor.registry"
    BLOCK_ERRORS = (tm.ShutdownDeadlineExceeded,)

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[Task] = []
        self.shutdown_deadline = 0.0

    @initialize(shutdown_deadline=DEADLINES)
    def open(self, shutdown_deadline: float) -> None:
        self.shutdown_deadline = shutdown_deadline
        self.configure()

    def open_component(self) -> AbstractAsyncContextManager[tm.TaskRegistry]:
        return tm.open_registry(self.shutdown_deadline)

    def opened(self, component: tm.TaskRegistry) -> None:
        self.registry = component

    # --- rules ---

    @precondition(lambda self: self.ready and not self.stopped)
    @rule(kind=st.sampled_from(list(tm.TaskKind)), how=MISBEHAVIOURS, seconds=SECONDS, fails=FAILS)
    def spawn(
        self, kind: tm.TaskKind, how: Misbehaviour, seconds: float, fails: type[Exception] | None
    ) -> None:
        self.host.call(self._spawn, kind, Track(how, seconds, fails))

    async def _spawn(self, kind: tm.TaskKind, track: Track) -> None:
        name = f"t{len(self.tasks)}"
        handle = self.registry.spawn(name, kind, functools.partial(track.run, self.host.gate.block))
        self.tasks.append(Task(track, handle, name))

    def spawn_loop(self, track: Track, loop: Callable[[], Awaitable[None]]) -> None:
        name = f"t{len(self.tasks)}"
        handle = self.registry.spawn(name, tm.TaskKind.PEER_CONNECTION, loop)
        # Spawned while the registry stops, it is either born aborted (it never
        # starts) or waited for and cancelled at the deadline like the rest:
        # _stopped_at counts it then.
        self.tasks.append(Task(track, handle, name))

    def live_tasks(self) -> list[Task]:
        return [t for t in self.tasks if not t.handle.is_finished()]

    @precondition(lambda self: self.ready and not self.stopped)
    @rule(deadline=DEADLINES)
    def join_all(self, deadline: float) -> None:
        self.host.call(self._join_all, deadline)

    async def _join_all(self, deadline: float) -> None:
        assert self.host.nursery is not None
        outcome: list[tm.ShutdownDeadlineExceeded | None] = []
        done = trio.Event()

        async def join() -> None:
            try:
                await self.registry.join_all(deadline)
            except tm.ShutdownDeadlineExceeded as exc:
                outcome.append(exc)
            else:
                outcome.append(None)
            finally:
                done.set()

        start = trio.current_time()
        self.host.nursery.start_soon(join)
        elapsed = await self.host.advance(deadline + 60, until=done.is_set)
        assert done.is_set()
        assert elapsed <= deadline + 2 * STEP, (elapsed, deadline)
        cancelled = self._stopped_at(start + deadline)
        [result] = outcome
        self._check_pending(result, cancelled)
        assert self.registry.is_empty()

    def _stopped_at(self, when: float) -> tuple[int, int]:
        """Mark the tasks a stop at ``when`` cancelled; (surely, at most) how many."""
        sure = ties = 0
        for task in self.tasks:
            track = task.track
            if task.stopped or track.started_at is None:
                continue
            if track.cancelled_at is not None and track.cancelled_at >= when:
                task.stopped = True
                sure += 1
            elif track.ended_at == when and track.started_at < when:
                task.tie = True
                ties += 1
        return sure, sure + ties

    @staticmethod
    def _check_pending(
        result: tm.ShutdownDeadlineExceeded | None, cancelled: tuple[int, int]
    ) -> None:
        pending = 0 if result is None else result.pending
        assert result is None or result.pending > 0
        assert cancelled[0] <= pending <= cancelled[1], (pending, cancelled)

    @precondition(lambda self: self.ready and self.tasks and not self.stopped)
    @rule(how=st.sampled_from(["exit", "raise", "outer"]))
    def stop(self, how: str) -> None:
        self.host.call(self._stop, how)

    async def _stop(self, how: str) -> None:
        start = trio.current_time()
        elapsed = await self.end_block(how, self.shutdown_deadline + 60)
        bound = 0 if how == "outer" else self.shutdown_deadline
        assert elapsed <= bound + 2 * STEP, (elapsed, bound)
        cancelled = self._stopped_at(start + bound)
        if how == "exit":
            error = self.block_error
            assert error is None or isinstance(error, tm.ShutdownDeadlineExceeded)
            self._check_pending(error, cancelled)
        for task in self.tasks:
            assert task.handle.is_finished()
            if task.track.outcome is None:
                task.stopped = True  # born aborted, never ran

    # --- the account must agree ---

    @precondition(lambda self: self.ready)
    @invariant()
    def agrees_with_the_tasks(self) -> None:
        self.host.call(self._check)

    async def _check(self) -> None:
        self.collect_reports()
        names = Counter(r.task.name for r in self.reports)
        assert all(n == 1 for n in names.values()), names
        by_name = {task.name: task for task in self.tasks}
        for report in self.reports:
            task = by_name[report.task.name]
            assert task.fails() or task.tie, task
            assert isinstance(report.reason, tm.Panic)
            if isinstance(report.reason.exception, UnprintableError):
                assert report.reason.message == "<unprintable UnprintableError>"
        for task in self.tasks:
            if task.fails() and not task.tie:
                assert names[task.name] == 1, task
            if task.track.cancelled_at is not None:
                assert task.stopped, task
        # Each failure is logged once at ERROR, and nothing else is.
        assert len(self.errors_logged()) == len(self.reports)
        if not self.stopped:
            live = [t.name for t in self.tasks if t.track.running]
            assert sorted(s.name for s in self.registry.snapshot()) == sorted(live)
            assert len(self.registry) == len(live)


RegistryMachine.TestCase.settings = settings(max_examples=75, stateful_step_count=30, deadline=None)
TestRegistryMachine = RegistryMachine.TestCase
