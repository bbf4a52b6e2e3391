"""A Hypothesis state machine for the background runtime: hostile jobs, every stop.

Jobs misbehave when they are cancelled (:class:`tests.hostile.Misbehaviour`),
fail on their own (plainly or unprintably), outlive ``job_timeout`` (also
while ignoring its cancellation), and are spawned both as plain async
functions (queued uncalled) and as callable objects (whose coroutine is made
at spawn time). Rules spawn jobs, move the clock, call ``shutdown()`` (which
the caller may cut short with its own timeout, and call again), and end the
block (normally, with an exception, or by outer cancellation). After every
rule the runtime must agree with the jobs' own accounts:

* the metrics balance (``accepted`` is what the test saw accepted) and
  ``running``, ``queued`` and the bounds match what the jobs see;
* a job stopped while it ran (the drain deadline, outer cancellation) counts
  as ``cancelled`` whatever it did with the cancellation, is never logged at
  ERROR and never reported;
* every other failure (an exception, or a run past ``job_timeout`` even if
  it ignored the cancellation) counts in ``failed``, is logged at ERROR once
  and reported exactly once (a builtin TimeoutError for a timeout), readably
  even when ``str()`` of the exception raises;
* a drain never cancels before its deadline, the deadline set by the first
  ``shutdown()`` call even if that call was cut short; it ends by that
  deadline plus a step per thread, and raises ``ShutdownTimeout`` exactly
  when jobs were cancelled or dropped, with their numbers.

As in the registry's machine, a job whose own end falls on the very instant
the drain deadline cancels the others may count either way.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import AbstractAsyncContextManager

import attrs
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

import trio_monitor as tm
from tests.hostile import Track, UnprintableError
from tests.machines import FAILS, MISBEHAVIOURS, HostedMachine
from tests.trio_host import STEP, TrioHost

# Longer jobs than the other machines', so that drains have work to cut.
SECONDS = st.sampled_from([0.0, STEP, 0.5, 1.0, 2.5, 5.0, math.inf, math.inf])
# A job: its track, and whether it is spawned as a callable object.
JOBS = st.tuples(st.builds(Track, MISBEHAVIOURS, SECONDS, FAILS), st.booleans())


class Runner:
    """A job as a callable object: the runtime must call it at spawn time."""

    def __init__(self, track: Track, host: TrioHost) -> None:
        self.track = track
        self.host = host

    async def __call__(self) -> None:
        await self.track.run(self.host.gate.block)


@attrs.define(eq=False)
class Job:
    track: Track
    name: str


@attrs.frozen
class Expected:
    """How the jobs' accounts say the runtime must have counted them."""

    running: int
    succeeded: set[str]
    failed: set[str]
    cancelled: set[str]
    #: Ended on their own at the instant the others were cancelled: either
    #: cancelled, or what their own account says (name -> "failed"/"succeeded").
    ties: dict[str, str]
    timed_out: set[str]


class RuntimeMachine(HostedMachine):
    LOGGER = "trio_monitor.runtime"
    BLOCK_ERRORS = (tm.ShutdownTimeout,)

    def __init__(self) -> None:
        super().__init__()
        self.config = tm.RuntimeConfig()
        self.jobs: dict[str, Job] = {}
        self.accepted = 0
        self.rejected = 0
        self.closed = False  # shutdown() was called, or the block ended
        self.drain_deadline: float | None = None
        self.drained = False
        # When the stops cancelled the running jobs, if they did.
        self.drain_cancel_at: float | None = None
        self.outer_at: float | None = None

    @initialize(
        queue=st.integers(1, 4),
        workers=st.integers(1, 3),
        drain=st.sampled_from([0.0, STEP, 1.0, 2.5]),
        job_timeout=st.sampled_from([None, 0.5, 1.5]),
    )
    def open(self, queue: int, workers: int, drain: float, job_timeout: float | None) -> None:
        self.config = tm.RuntimeConfig(
            max_queue_size=queue,
            max_concurrent_tasks=workers,
            drain_timeout=drain,
            job_timeout=job_timeout,
        )
        self.configure()

    def open_component(self) -> AbstractAsyncContextManager[tm.BackgroundRuntime]:
        return tm.open_runtime(self.config)

    def opened(self, component: tm.BackgroundRuntime) -> None:
        self.runtime = component
        self.handle = component.handle()

    # --- rules ---

    @precondition(lambda self: self.ready and not self.closed)
    @rule(batch=st.lists(JOBS, min_size=1, max_size=4))
    def spawn(self, batch: list[tuple[Track, bool]]) -> None:
        """Spawn a few jobs at once (in one instant, in this order)."""
        self.host.call(self._spawn_batch, batch)

    async def _spawn_batch(self, batch: list[tuple[Track, bool]]) -> None:
        for track, as_object in batch:
            await self._spawn(track, as_object)

    async def _spawn(self, track: Track, as_object: bool) -> None:
        name = f"j{self.accepted + self.rejected}"
        try:
            if as_object:
                self.handle.spawn(Runner(track, self.host), name=name)
            else:
                self.handle.spawn(track.run, self.host.gate.block, name=name)
        except tm.QueueFull:
            assert self.runtime.metrics().queued == self.config.max_queue_size
            self.rejected += 1
        else:
            self.accepted += 1
            self.jobs[name] = Job(track, name)

    @precondition(lambda self: self.closed)
    @rule()
    def spawn_when_closed(self) -> None:
        self.host.call(self._spawn_when_closed)

    async def _spawn_when_closed(self) -> None:
        async def job() -> None:
            raise AssertionError("a closed runtime ran a job")  # pragma: no cover

        try:
            self.handle.spawn(job)
        except tm.RuntimeClosed:
            pass
        else:  # pragma: no cover
            raise AssertionError("a closed runtime accepted a job")

    # Calls after the drain has ended return at once: one is enough.
    @precondition(lambda self: self.jobs and not self.stopped and not self.drained)
    @rule(cut=st.integers(0, 24) | st.none())
    def shutdown(self, cut: int | None) -> None:
        self.host.call(self._shutdown, cut)

    async def _shutdown(self, cut: int | None) -> None:
        assert self.host.nursery is not None
        start = trio.current_time()
        if self.drain_deadline is None:
            self.drain_deadline = start + self.config.drain_timeout
        self.closed = True
        limit = math.inf if cut is None else cut * STEP
        if start + limit == self.drain_deadline:
            # Cut at the very instant of the deadline, either may win: avoid.
            limit += STEP
        outcome: list[tm.ShutdownTimeout | str | None] = []
        done = trio.Event()

        async def call() -> None:
            try:
                with trio.move_on_after(limit) as scope:
                    await self.runtime.shutdown()
                outcome.append("cut" if scope.cancelled_caught else None)
            except tm.ShutdownTimeout as exc:
                outcome.append(exc)
            finally:
                done.set()

        self.host.nursery.start_soon(call)
        elapsed = await self.host.advance(limit + self.config.drain_timeout + 60, done.is_set)
        assert done.is_set()
        [result] = outcome
        if result == "cut":
            assert elapsed == limit
        self._drain_ran(start, start + elapsed, result)

    def _drain_ran(self, start: float, end: float, result: object) -> None:
        """Check what a shutdown call (or the block's exit) did from start to end."""
        deadline = self.drain_deadline
        assert deadline is not None
        if self.drained:
            # Done before: this call returned at once (a checkpoint, so a
            # zero timeout around it may still cut it).
            assert end == start
            assert result in (None, "dropped", "cut")
            return
        if end >= deadline and self.drain_cancel_at is None:
            # This call saw the deadline pass: the running jobs were
            # cancelled then (or at its start, if the deadline had passed).
            self.drain_cancel_at = max(deadline, start)
        if result == "cut":
            return
        self.drained = True
        assert end <= max(deadline, start) + 2 * STEP, (start, end, deadline)
        metrics = self.runtime.metrics()
        if result == "dropped":
            # The block raised: its exception won over a ShutdownTimeout.
            pass
        elif isinstance(result, tm.ShutdownTimeout):
            # Never sooner than the first call's deadline.
            assert end >= deadline
            assert (result.cancelled, result.not_started) == (
                metrics.cancelled,
                metrics.not_started,
            )
            assert result.cancelled + result.not_started > 0
        else:
            assert result is None
            assert (metrics.cancelled, metrics.not_started) == (0, 0)
        assert (metrics.queued, metrics.running) == (0, 0)

    @precondition(lambda self: self.jobs and not self.stopped)
    @rule(how=st.sampled_from(["exit", "raise", "outer"]))
    def stop(self, how: str) -> None:
        self.host.call(self._stop, how)

    async def _stop(self, how: str) -> None:
        start = trio.current_time()
        self.closed = True
        if how == "outer":
            self.outer_at = start
        elif self.drain_deadline is None:
            self.drain_deadline = start + self.config.drain_timeout
        elapsed = await self.end_block(how, self.config.drain_timeout + 60)
        if how == "outer":
            assert elapsed <= 2 * STEP
            assert self.block_error is None
        elif how == "raise":
            self._drain_ran(start, start + elapsed, "dropped")
        else:
            self._drain_ran(start, start + elapsed, self.block_error)
        metrics = self.runtime.metrics()
        assert (metrics.queued, metrics.running) == (0, 0)

    # --- the account must agree ---

    def _expected(self) -> Expected:
        stops = [t for t in (self.drain_cancel_at, self.outer_at) if t is not None]
        stop_at = min(stops, default=None)
        job_timeout = self.config.job_timeout
        running = 0
        succeeded: set[str] = set()
        failed: set[str] = set()
        cancelled: set[str] = set()
        ties: dict[str, str] = {}
        timed_out: set[str] = set()
        for name, job in self.jobs.items():
            track = job.track
            if track.started_at is None:
                continue
            if track.cancelled_at is not None:
                timeout_at = None if job_timeout is None else track.started_at + job_timeout
                if stop_at is not None and track.cancelled_at == stop_at == timeout_at:
                    # Its timeout and the stop in the same instant.
                    ties[name] = "failed"
                    timed_out.add(name)
                elif stop_at is not None and track.cancelled_at >= stop_at:
                    cancelled.add(name)
                else:
                    # Only its timeout may cancel a job outside a stop.
                    assert job_timeout is not None, job
                    assert track.cancelled_at >= track.started_at + job_timeout, job
                    failed.add(name)
                    timed_out.add(name)
                continue
            if track.ended_at is None:
                running += 1
                continue
            if job_timeout is not None and track.ended_at - track.started_at >= job_timeout:
                own = "failed"
                timed_out.add(name)
            else:
                own = "failed" if track.outcome == "raised" else "succeeded"
            if stop_at is not None and track.ended_at >= stop_at:
                assert track.ended_at == stop_at, job
                ties[name] = own
            else:
                (failed if own == "failed" else succeeded).add(name)
        return Expected(running, succeeded, failed, cancelled, ties, timed_out)

    @precondition(lambda self: self.ready)
    @invariant()
    def agrees_with_the_jobs(self) -> None:
        self.host.call(self._check)

    async def _check(self) -> None:
        self.collect_reports()
        m = self.runtime.metrics()
        assert m.accepted == self.accepted
        assert m.rejected == self.rejected
        assert m.queued <= self.config.max_queue_size
        assert m.running <= self.config.max_concurrent_tasks
        started = sum(job.track.started_at is not None for job in self.jobs.values())
        assert m.queued + m.not_started == self.accepted - started
        if self.stopped or self.drained:
            assert m.queued == 0

        want = self._expected()
        assert m.running == want.running
        tie_failed = {n for n, own in want.ties.items() if own == "failed"}
        tie_succeeded = {n for n, own in want.ties.items() if own == "succeeded"}
        assert len(want.cancelled) <= m.cancelled <= len(want.cancelled) + len(want.ties)
        assert len(want.failed) <= m.failed <= len(want.failed) + len(tie_failed)
        assert len(want.succeeded) <= m.succeeded <= len(want.succeeded) + len(tie_succeeded)
        assert m.cancelled + m.failed + m.succeeded == (
            len(want.cancelled) + len(want.failed) + len(want.succeeded) + len(want.ties)
        )

        names = Counter(r.task.name for r in self.reports)
        assert all(n == 1 for n in names.values()), names
        assert len(self.reports) == m.failed
        assert want.failed <= set(names) <= want.failed | tie_failed
        for report in self.reports:
            reason = report.reason
            assert isinstance(reason, tm.Panic)
            if report.task.name in want.timed_out:
                assert type(reason.exception) is TimeoutError
            elif isinstance(reason.exception, UnprintableError):
                assert reason.message == "<unprintable UnprintableError>"
        # Each failure is logged once at ERROR, and nothing else is.
        assert len(self.errors_logged()) == m.failed


RuntimeMachine.TestCase.settings = settings(max_examples=75, stateful_step_count=30, deadline=None)
TestRuntimeMachine = RuntimeMachine.TestCase
