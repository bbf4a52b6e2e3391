"""What the components' state machines share.

Each machine (``tests/test_*_stateful.py``) runs one component in a
:class:`~tests.trio_host.TrioHost`, spawns hostile tasks into it
(:mod:`tests.hostile`), and checks after every rule that the component
agrees with the tasks' own accounts. This base holds the common frame: the
block that opens the component once the machine is configured and ends it on
request (normally, by an exception, or by outer cancellation), the collected
failure reports and log records, and the reconnect loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import trio
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

import trio_monitor as tm
from tests.hostile import Misbehaviour, Track, UnprintableError
from tests.trio_host import STEP, Records, TrioHost

#: How long a task sleeps (then it returns, or raises ``FAILS``).
SECONDS = st.sampled_from([0.0, STEP, 0.5, 1.0, 2.5, math.inf])
FAILS = st.sampled_from([None, ValueError, UnprintableError])
MISBEHAVIOURS = st.sampled_from(list(Misbehaviour))


class HostedMachine(RuleBasedStateMachine):
    """A component in a :class:`TrioHost`, opened by :meth:`configure`.

    Subclasses set :attr:`LOGGER`, implement :meth:`open_component` and
    :meth:`opened`, and call :meth:`configure` once their parameters are
    known (the block waits for it).
    """

    #: The component's logger: every record it writes is kept in ``logs``.
    LOGGER: ClassVar[str] = "trio_monitor"
    #: What the block's end may raise besides the body's own LookupError.
    BLOCK_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.stopped = False
        self.block_error: BaseException | None = None
        self.reports: list[tm.TaskFailure] = []
        self._how_to_end = "exit"
        self._configured = trio.Event()
        self._exit = trio.Event()
        self.exited = trio.Event()
        self._outer = trio.CancelScope()
        self.logs = Records()
        logging.getLogger(self.LOGGER).addHandler(self.logs)
        self.host = TrioHost(self._body)

    def open_component(self) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def opened(self, component: Any) -> None:
        raise NotImplementedError

    def configure(self) -> None:
        """Open the component (in the run) and wait until it is open."""
        self.host.call(self._configure)
        self.ready = True

    async def _configure(self) -> None:
        self._configured.set()

    async def _body(self, host: TrioHost) -> None:
        await self._configured.wait()
        with self._outer:
            try:
                async with self.open_component() as component:
                    self.component = component
                    self.failures = component.subscribe(math.inf)
                    self.opened(component)
                    await self._exit.wait()
                    if self._how_to_end == "raise":
                        raise LookupError("body")
            except (LookupError, *self.BLOCK_ERRORS) as exc:
                self.block_error = exc
        self.exited.set()

    async def end_block(self, how: str, limit: float) -> float:
        """End the block: "exit", "raise" (in the body) or "outer" (cancel it).

        Returns the virtual time it took to exit, at most ``limit``.
        """
        self.stopped = True
        if how == "outer":
            self._outer.cancel()
        else:
            self._how_to_end = how
            self._exit.set()
        elapsed = await self.host.advance(limit, until=self.exited.is_set)
        assert self.exited.is_set()
        if how == "raise":
            assert isinstance(self.block_error, LookupError)
        return elapsed

    def collect_reports(self) -> None:
        """Add the failures delivered since the last call to ``reports``."""
        while True:
            try:
                self.reports.append(self.failures.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    def errors_logged(self) -> list[logging.LogRecord]:
        """The ERROR records so far; every record must format without failing."""
        for record in self.logs.records:
            logging.Formatter().format(record)
        return [r for r in self.logs.records if r.levelno >= logging.ERROR]

    @precondition(lambda self: self.ready)
    @rule(steps=st.integers(1, 24))
    def advance(self, steps: int) -> None:
        self.host.call(self.host.advance, steps * STEP)

    def teardown(self) -> None:
        try:
            self.host.close()
        finally:
            logging.getLogger(self.LOGGER).removeHandler(self.logs)


class SubscribingMachine(HostedMachine):
    """A machine whose rules also add and drop subscriptions (buffer of 1).

    For components with ``subscribe()`` and ``statistics().subscribers``:
    a closed subscription is counted out at once, before any failure is
    published. ``extra`` holds the open ones (besides ``failures``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.extra: list[trio.MemoryReceiveChannel[tm.TaskFailure]] = []

    def subscribing(self) -> bool:
        return self.ready and not self.stopped and not self.exited.is_set()

    @precondition(lambda self: self.subscribing())
    @rule()
    def subscribe(self) -> None:
        self.extra.append(self.host.call(self._subscribe))

    async def _subscribe(self) -> trio.MemoryReceiveChannel[tm.TaskFailure]:
        channel: trio.MemoryReceiveChannel[tm.TaskFailure] = self.component.subscribe(1)
        return channel

    @precondition(lambda self: self.extra and self.subscribing())
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        channel = data.draw(st.sampled_from(self.extra))
        self.extra.remove(channel)
        self.host.call(self._unsubscribe, channel)

    async def _unsubscribe(self, channel: trio.MemoryReceiveChannel[tm.TaskFailure]) -> None:
        channel.close()
        assert self.component.statistics().subscribers == 1 + len(self.extra)


class TaskMachine(HostedMachine):
    """A machine whose component runs tasks with handles: aborts, reconnect loops.

    Subclasses list their unfinished tasks in :meth:`live_tasks` (each with a
    ``track``, a ``handle`` with ``abort()``, and a ``stopped`` flag), and
    spawn reconnect loops in :meth:`spawn_loop`. A reconnect loop runs for
    ever and, whenever it ends (for whatever reason), spawns its replacement
    from its ``finally``.
    """

    def live_tasks(self) -> list[Any]:
        raise NotImplementedError

    def spawn_loop(self, track: Track, loop: Callable[[], Awaitable[None]]) -> None:
        raise NotImplementedError

    @precondition(lambda self: self.ready and self.live_tasks())
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self.live_tasks()))
        self.host.call(self._abort, task)

    async def _abort(self, task: Any) -> None:
        if task.track.outcome is None:
            task.stopped = True
        task.handle.abort()

    @precondition(lambda self: self.ready and not self.stopped)
    @rule(how=MISBEHAVIOURS)
    def spawn_respawner(self, how: Misbehaviour) -> None:
        self.host.call(self._respawn_in_run, how)

    async def _respawn_in_run(self, how: Misbehaviour) -> None:
        self.respawn(how)

    def respawn(self, how: Misbehaviour) -> None:
        track = Track(how, math.inf)

        async def loop() -> None:
            try:
                await track.run(self.host.gate.block)
            finally:
                self.respawn(how)

        self.spawn_loop(track, loop)
