"""A Hypothesis state machine for job servers with hostile jobs, stops and clock steps.

Two servers share one memory storage in a :class:`~tests.trio_host.TrioHost`
(virtual time that moves only when a rule says so). Rules enqueue jobs that
misbehave when cancelled (raise in ``finally``, swallow ``Cancelled``, block
in a thread that ignores cancellation), start servers, stop them (past their
``shutdown_timeout`` or not), cancel them from outside, step one server's
wall clock by two minutes either way, and let time pass. After every rule:

* no job runs on two workers at once;
* the ``attempts`` counter of every job is exactly its counted outcomes (plus
  the claim under way): an intentional stop is never counted, and no live
  server is taken for dead (that would requeue with the attempt kept);
* no run whose code saw its cancellation ended in a counted outcome;
* every stop ends within its bound.

At the end every server runs until every job is terminal, and each job ends
once, as its code decides.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.hostile import Misbehaviour, run_misbehaving
from tests.jobs.test_server_edge_properties import ALWAYS_FAIL, MAX_ATTEMPTS, Host
from tests.trio_host import STEP, TrioHost
from trio_monitor import jobs
from trio_monitor.jobs._server import SHIELDED_CALL_TIMEOUT

SERVERS = 2
SHUTDOWN_TIMEOUTS = (0.0, 1.0)
#: The longest a stop may take: the graceful phase, the grace for stopped
#: jobs' cleanup, a claim in flight, then a step for a thread to return.
STOP_BOUND = max(SHUTDOWN_TIMEOUTS) + 3 * SHIELDED_CALL_TIMEOUT + 2 * STEP


@attrs.define
class Run:
    job_id: str
    saw_cancel: bool = False
    ended: bool = False


class JobServerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.plans: dict[str, tuple[Misbehaviour, float]] = {}
        self.runs: list[Run] = []
        self.running: set[str] = set()
        self.overlaps: list[str] = []
        self.changes: list[tuple[str, jobs.JobState, jobs.JobState]] = []
        self.offsets = [0.0] * SERVERS
        self.clocks = [jobs.TrioWallClock() for _ in range(SERVERS)]
        self._ready = trio.Event()
        self.storage: jobs.Storage | None = None
        self.host = TrioHost(self._body)
        self.host.call(self._ready.wait)
        self.hosts = [Host(self._server(i)) for i in range(SERVERS)]

    async def _body(self, host: TrioHost) -> None:
        async with jobs.open_storage("memory://") as storage:
            self.storage = storage
            self._ready.set()
            await trio.sleep_forever()

    def _server(self, i: int) -> jobs.JobServer:
        workers = jobs.WorkerRegistry()

        @workers.worker("job")
        async def job_fn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
            how, seconds = self.plans[job.id]
            if job.id in self.running:
                self.overlaps.append(job.id)
            self.running.add(job.id)
            run = Run(job.id)
            self.runs.append(run)
            try:
                await run_misbehaving(
                    how,
                    seconds,
                    on_cancel=lambda: setattr(run, "saw_cancel", True),
                    block=self.host.gate.block,
                )
                return "done"
            finally:
                run.ended = True
                self.running.discard(job.id)

        def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
            self.changes.append((job.id, old, new))

        assert self.storage is not None
        return jobs.JobServer(
            jobs.ServerConfig(
                server_name=f"s{i}",
                worker_count=2,
                shutdown_timeout=SHUTDOWN_TIMEOUTS[i],
                polling_interval=0.5,
                scheduler_poll_interval=0.5,
                recurring_poll_interval=10.0,
                cleanup_interval=10.0,
                heartbeat_interval=1.0,
                dead_server_timeout=5.0,
                job_timeout=1000.0,  # no timeouts: every Cancelled seen is a stop
            ),
            self.storage,
            workers,
            retry_policy=jobs.RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.5),
            on_state_change=hook,
            clock=self.clocks[i],
        )

    # -- rules ---------------------------------------------------------------------

    @rule(
        how=st.sampled_from(list(Misbehaviour)),
        seconds=st.sampled_from([0.0, STEP, 1.0, 3.0]),
    )
    def enqueue(self, how: Misbehaviour, seconds: float) -> None:
        async def enqueue() -> None:
            assert self.storage is not None
            job = jobs.Job.new("job", None, now=self.clocks[0]())
            self.plans[job.id] = (how, seconds)
            await self.storage.enqueue(job)

        self.host.call(enqueue)

    @rule(i=st.integers(0, SERVERS - 1))
    def start(self, i: int) -> None:
        host = self.hosts[i]
        if host.server.is_running:
            return
        assert self.host.nursery is not None
        self.host.call(self.host.nursery.start, host.host)
        assert host.server.is_running

    @rule(i=st.integers(0, SERVERS - 1), outer=st.booleans())
    def stop(self, i: int, outer: bool) -> None:
        host = self.hosts[i]
        if not host.server.is_running:
            return

        async def begin() -> None:
            assert self.host.nursery is not None
            self.host.nursery.start_soon(host.cancel if outer else host.server.stop)

        self.host.call(begin)
        took = self.host.call(self.host.advance, STOP_BOUND, lambda: host.exited.is_set())
        assert host.exited.is_set(), f"stop of s{i} still going after {took}s"
        assert not host.server.is_running

    @rule(i=st.integers(0, SERVERS - 1), offset=st.sampled_from([-120.0, 0.0, 120.0]))
    def step_clock(self, i: int, offset: float) -> None:
        self.clocks[i].step(offset - self.offsets[i])
        self.offsets[i] = offset

    @rule(steps=st.integers(1, 40))
    def advance(self, steps: int) -> None:
        self.host.call(self.host.advance, steps * STEP)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def nothing_runs_twice_at_once(self) -> None:
        assert self.overlaps == []

    @invariant()
    def stops_are_never_counted(self) -> None:
        stored = self.host.call(self._stored)
        for job_id, job in stored.items():
            ends = [
                new for jid, old, new in self.changes if jid == job_id and old.name == "processing"
            ]
            counted = sum(not isinstance(new, jobs.Enqueued) for new in ends)
            claimed = isinstance(job.state, jobs.Processing)
            assert job.attempts == counted + claimed, (job, ends)
            finished_runs = [r for r in self.runs if r.job_id == job_id and r.ended]
            assert counted <= sum(not r.saw_cancel for r in finished_runs) + claimed

    async def _stored(self) -> dict[str, jobs.Job]:
        assert self.storage is not None
        return {job.id: job for job in await self.storage.list_jobs()}

    def teardown(self) -> None:
        try:
            if self.storage is not None and self.plans:
                for i in range(SERVERS):
                    self.start(i)

                def all_terminal() -> bool:
                    done = {
                        jid
                        for jid, _, new in self.changes
                        if isinstance(new, jobs.Succeeded | jobs.Failed)
                    }
                    return done >= set(self.plans)

                self.host.call(self.host.advance, 2000.0, all_terminal)
                assert all_terminal()
                stored = self.host.call(self._stored)
                for job_id, (how, _) in self.plans.items():
                    ends = [
                        new
                        for jid, _, new in self.changes
                        if jid == job_id and isinstance(new, jobs.Succeeded | jobs.Failed)
                    ]
                    assert len(ends) == 1, ends
                    job = stored[job_id]
                    assert job.state == ends[0]
                    if how in ALWAYS_FAIL:
                        assert isinstance(job.state, jobs.Failed)
                        assert job.attempts == MAX_ATTEMPTS
                    else:
                        assert isinstance(job.state, jobs.Succeeded)
                for host in self.hosts:
                    self.stop(self.hosts.index(host), outer=False)
        finally:
            self.host.close()


def _settings(**kwargs: Any) -> settings:
    return settings(max_examples=40, stateful_step_count=25, deadline=None, **kwargs)


JobServerMachine.TestCase.settings = _settings()
test_job_servers = JobServerMachine.TestCase
