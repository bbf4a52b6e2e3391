"""The real job server in virtual time: :func:`open_test_server` and ``drain()``.

``drain()`` reads the storage to learn what is outstanding, waits while the
server works, and when nothing is due or running it moves time straight to
the next due time with :meth:`trio.testing.MockClock.jump`. One jump wakes
every server loop whose deadline it passed once, so an hour costs one poll
of each loop, not one per polling interval. While the server works, time
moves only by autojump, that is only while every task waits on time; the
storage's thread hop holds autojump while I/O is in flight (see
:mod:`trio_monitor.jobs._io_hold`), so on SQLite virtual time never races
ahead of the database.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import attrs
import trio
from trio.testing import MockClock

from .. import jobs
from .._validate import check_seconds
from ..jobs import (
    AwaitingRetry,
    Client,
    Enqueued,
    Job,
    JobServer,
    JobState,
    Processing,
    RecurringJob,
    Scheduled,
    ServerConfig,
    WorkerRegistry,
    open_storage,
)
from ..jobs._io_hold import HoldAutojump
from ._recording import RecordingStorage

__all__ = ["DrainStalled", "TestServer", "open_test_server"]

#: The server name of a test server (unless ``config`` says otherwise).
TEST_SERVER_NAME = "test-server"


class DrainStalled(AssertionError):
    """:meth:`TestServer.drain` saw jobs waiting that nothing ran for ``stall_timeout``.

    Typically a job in a queue the server does not serve, a paused queue,
    or a job claimed by another (dead) server. The message lists the jobs.
    """


class _Changes:
    """An event set by the next job change (a transition or an enqueue)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self, *_: object) -> None:
        self._event.set()

    def arm(self) -> trio.Event:
        if self._event.is_set():
            self._event = trio.Event()
        return self._event


def _due_at(state: JobState) -> datetime:
    if isinstance(state, Scheduled):
        return state.enqueue_at
    assert isinstance(state, AwaitingRetry), state
    return state.retry_at


@attrs.frozen
class _Outstanding:
    """What a storage holds that the server still has to deal with."""

    ready: list[Job]  # Enqueued in a served queue
    running: list[Job]  # Processing
    waiting: list[Job]  # Scheduled / AwaitingRetry in a served queue
    recurring: list[RecurringJob]

    def busy(self, now: datetime) -> list[Job | RecurringJob]:
        """What is running, ready or due at ``now``."""
        due: list[Job | RecurringJob] = [job for job in self.waiting if _due_at(job.state) <= now]
        due.extend(r for r in self.recurring if r.next_run_at <= now)
        return [*self.running, *self.ready, *due]

    def next_job_due(self) -> datetime | None:
        return min((_due_at(job.state) for job in self.waiting), default=None)

    def next_occurrence(self) -> datetime | None:
        return min((r.next_run_at for r in self.recurring), default=None)


def _describe(item: Job | RecurringJob) -> str:
    if isinstance(item, RecurringJob):
        return f"recurring {item.id!r} ({item.method}) due at {item.next_run_at.isoformat()}"
    return f"{item.method}({item.payload!r}) queue={item.queue!r} {item.state!r} id={item.id}"


class TestServer:
    """A running :class:`~trio_monitor.jobs.JobServer` under test; see :func:`open_test_server`.

    Attributes:
      server (trio_monitor.jobs.JobServer): The real server, running.
      client (trio_monitor.jobs.Client): ``server.client``, the job-control
        client on the server's (recording) storage.
      storage (RecordingStorage): Its storage, which records every job
        enqueued through it (see :func:`assert_enqueued`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, server: JobServer, storage: RecordingStorage, changes: _Changes) -> None:
        self.server = server
        self.storage = storage
        self.client: Client = server.client
        self._changes = changes

    def __repr__(self) -> str:
        return f"<TestServer {self.server!r} on {self.storage.wrapped!r}>"

    @property
    def enqueued(self) -> list[Job]:
        """Every job enqueued through :attr:`storage` so far, oldest first."""
        return list(self.storage.enqueued)

    async def drain(self, until: datetime | None = None, *, stall_timeout: float = 3600.0) -> None:
        """Run every due job to completion, jumping time over delays, retries and backoffs.

        Returns once no job is running, ready or due, and none becomes due
        before the next recurring occurrence (``until=None``), or, with
        ``until``, once time has reached ``until`` and every job due by then
        (recurring occurrences included) has run. Jobs the server does not
        serve (other queues, or any while ``worker_count=0``) are ignored.

        Under :class:`trio.testing.MockClock` (use ``autojump_threshold=0``)
        the waits take no wall time: time jumps to each next due time, and
        moves by autojump while jobs run. Under a real clock ``drain``
        really waits.

        Args:
          until: An aware datetime on the server's clock
            (:meth:`JobServer.now <trio_monitor.jobs.JobServer.now>`).
          stall_timeout: Virtual seconds that ready or due jobs may wait,
            with none running and nothing changing, before ``drain`` gives
            up.

        Raises:
          DrainStalled: jobs stayed ready or due, unrun, for ``stall_timeout``.
          RuntimeError: the server is not running, or its wall clock does
            not follow :func:`trio.current_time`.
          ValueError: a naive ``until``, a bad ``stall_timeout``.
        """
        if until is not None and (not isinstance(until, datetime) or until.tzinfo is None):
            raise ValueError(f"until must be an aware datetime (UTC), got {until!r}")
        stall_timeout = check_seconds("stall_timeout", stall_timeout, positive=True)
        if not self.server.is_running:
            raise RuntimeError("drain() needs the server running; it was stopped")
        poll = self.server.config.polling_interval
        quiet_since = trio.current_time()
        while True:
            changed = self._changes.arm()
            outstanding = await self._outstanding()
            busy = outstanding.busy(self.server.now())
            if busy:
                if outstanding.running:
                    quiet_since = trio.current_time()
                elif trio.current_time() - quiet_since >= stall_timeout:
                    raise DrainStalled(
                        f"drain(): nothing ran for {stall_timeout:g}s while these waited:\n"
                        + "\n".join(f"  {_describe(item)}" for item in busy)
                    )
                # Until the next change; the timeout catches changes no hook
                # reports (another process sharing the storage, say).
                with trio.move_on_after(poll):
                    await changed.wait()
                if changed.is_set():
                    quiet_since = trio.current_time()
                continue
            target = self._next_stop(outstanding, until)
            if target is None:
                return
            await self._advance_to(target)
            quiet_since = trio.current_time()

    async def _outstanding(self) -> _Outstanding:
        config = self.server.config
        storage = self.storage.wrapped
        # Templates first, then every job in one call (one atomic read): a job
        # moving between states, or an occurrence being enqueued, is seen on
        # one side of its change, never missed between two reads.
        recurring = await storage.list_recurring() if config.enable_recurring else []
        ready: list[Job] = []
        running: list[Job] = []
        waiting: list[Job] = []
        for job in await storage.list_jobs():
            served = not config.queues or job.queue in config.queues
            if isinstance(job.state, Processing):
                running.append(job)
            elif isinstance(job.state, Enqueued) and served and config.worker_count:
                ready.append(job)
            elif (
                isinstance(job.state, Scheduled | AwaitingRetry)
                and served
                and config.enable_scheduler
            ):
                waiting.append(job)
        return _Outstanding(ready=ready, running=running, waiting=waiting, recurring=recurring)

    def _next_stop(self, outstanding: _Outstanding, until: datetime | None) -> datetime | None:
        """Where time goes next, or None when the drain is over."""
        job_due = outstanding.next_job_due()
        occurrence = outstanding.next_occurrence()
        if until is None:
            # Stop before the next recurring occurrence: drain() alone never runs one.
            if job_due is None or (occurrence is not None and occurrence <= job_due):
                return None
            return job_due
        soonest = min((t for t in (job_due, occurrence) if t is not None), default=until)
        if soonest <= until:
            return soonest
        return until if self.server.now() < until else None

    async def _advance_to(self, target: datetime) -> None:
        before = self.server.now()
        seconds = (target - before).total_seconds()
        if seconds <= 0:
            await trio.lowlevel.checkpoint()
            return
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, MockClock):
            # A microsecond more, so the target is reached despite rounding.
            clock.jump(seconds + 1e-6)
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep(seconds)
        if self.server.now() <= before:
            raise RuntimeError(
                "drain(): the server's wall clock did not move with trio.current_time(); "
                "give it a clock that does (jobs.TrioWallClock, the default of "
                "open_test_server)"
            )


@asynccontextmanager
async def open_test_server(
    workers: WorkerRegistry,
    url: str = "memory://",
    config: ServerConfig | None = None,
    **server_kwargs: Any,
) -> AsyncGenerator[TestServer, None]:
    """Open a storage and run a real :class:`~trio_monitor.jobs.JobServer` on it.

    ::

        async with testing.open_test_server(workers) as t:
            await t.client.enqueue("send_email", {"to": "a@example.org"}, delay=3600)
            await t.drain()

    The server runs for the ``async with`` block and is stopped gracefully
    at its end (at once if the block is cancelled); the storage is closed
    after it. Its wall clock is a :class:`~trio_monitor.jobs.TrioWallClock`
    (unless ``server_kwargs`` has a ``clock``), which follows
    :func:`trio.current_time`, so under a
    :class:`trio.testing.MockClock` delays, retries, TTLs and cron follow
    virtual time. If the run's clock is a ``MockClock``, its autojump is
    held while storage I/O is in flight (see the how-to), so SQLite and
    PostgreSQL storages work in virtual time too.

    Args:
      workers: The worker functions under test.
      url: The storage (see :func:`~trio_monitor.jobs.open_storage`).
        Every ``memory://`` is a fresh store; so is a new SQLite file.
      config: The server's configuration (default: the defaults, named
        ``"test-server"``).
      server_kwargs: Passed to :class:`~trio_monitor.jobs.JobServer`
        (``retry_policy``, ``middleware``, ``on_state_change``...).

    Yields:
      TestServer: with ``server``, ``client``, ``storage`` and ``drain()``.
    """
    if config is None:
        config = ServerConfig(server_name=TEST_SERVER_NAME)
    hold = HoldAutojump.install()
    try:
        async with open_storage(url) as backend:
            changes = _Changes()
            storage = RecordingStorage(backend, on_enqueue=changes.fire)
            user_hook = server_kwargs.pop("on_state_change", None)

            def on_state_change(job: Job, old: JobState, new: JobState) -> None:
                changes.fire()
                if user_hook is not None:
                    user_hook(job, old, new)

            # The server's wall clock follows virtual time, unless the test gives one.
            server_kwargs.setdefault("clock", jobs.TrioWallClock())
            server = JobServer(
                config,
                storage.as_storage(),
                workers,
                on_state_change=on_state_change,
                **server_kwargs,
            )
            body_error: BaseException | None = None
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                try:
                    yield TestServer(server, storage, changes)
                except BaseException as exc:
                    body_error = exc
                if isinstance(body_error, Exception | None):
                    await server.stop()
                else:
                    nursery.cancel_scope.cancel()
            if body_error is not None:
                raise body_error
    finally:
        if hold is not None:
            hold.uninstall()
