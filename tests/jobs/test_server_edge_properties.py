"""Properties of the job server with hostile jobs and every kind of stop.

Servers share one storage; their jobs misbehave when cancelled (raise from a
``finally``, swallow ``Cancelled`` and return or raise); the servers are
stopped past their ``shutdown_timeout``, stopped gracefully, cancelled from
outside and started again, at random times. Whatever happens:

* an intentional stop is never counted: no run whose code saw its
  cancellation ends in a counted outcome, and the ``attempts`` counter is
  exactly the number of counted outcomes;
* every claim ends in exactly one outcome, and no job ever runs on two
  workers at once (nothing runs twice);
* every accepted job ends in exactly one terminal state, the one its code
  decides; no live server is ever taken for dead.

Runs in virtual time (MockClock, and a TrioWallClock for the servers).
"""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile import Misbehaviour, run_misbehaving
from trio_monitor import jobs

IN_TRIO = [how for how in Misbehaviour if how is not Misbehaviour.BLOCK_IN_THREAD]
#: These raise from their ``finally`` however the run ends: they always fail.
ALWAYS_FAIL = {Misbehaviour.RAISE_IN_FINALLY, Misbehaviour.RAISE_UNPRINTABLE_IN_FINALLY}
MAX_ATTEMPTS = 3


@attrs.frozen
class JobPlan:
    how: Misbehaviour
    seconds: float


@attrs.frozen
class Toggle:
    after: float  # seconds since the previous toggle
    server: int
    kind: str  # "stop" (graceful, maybe past its timeout) or "cancel" (from outside)


scenarios = st.fixed_dictionaries(
    {
        "shutdown_timeouts": st.lists(st.sampled_from([0.0, 0.5, 3.0]), min_size=1, max_size=2),
        "jobs": st.lists(
            st.builds(
                JobPlan, how=st.sampled_from(IN_TRIO), seconds=st.sampled_from([0.5, 2.0, 6.0])
            ),
            min_size=1,
            max_size=8,
        ),
        "toggles": st.lists(
            st.builds(
                Toggle,
                after=st.floats(0.0, 5.0),
                server=st.integers(0, 1),
                kind=st.sampled_from(["stop", "cancel"]),
            ),
            max_size=6,
        ),
    }
)


@attrs.define
class Run:
    job_id: str
    saw_cancel: bool = False


class Host:
    """Runs one server in its own cancel scope, so a test can cancel it from outside."""

    def __init__(self, server: jobs.JobServer) -> None:
        self.server = server
        self.scope: trio.CancelScope | None = None
        self.exited = trio.Event()

    async def host(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.exited = trio.Event()
        try:
            with trio.CancelScope() as self.scope:
                await self.server.run(task_status=task_status)
        finally:
            self.exited.set()

    async def cancel(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        await self.exited.wait()


async def run_scenario(scenario: dict[str, Any]) -> tuple[int, int]:
    """Run one scenario, check the properties; return (runs that saw a stop, requeues)."""
    plans: list[JobPlan] = scenario["jobs"]
    runs: list[Run] = []
    running: set[str] = set()
    overlaps: list[str] = []
    changes: list[tuple[str, jobs.JobState, jobs.JobState]] = []
    terminal: dict[str, list[jobs.JobState]] = {}
    all_done = trio.Event()

    workers = jobs.WorkerRegistry()

    @workers.worker("job")
    async def job_fn(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
        plan = plans[job.payload]
        if job.id in running:
            overlaps.append(job.id)
        running.add(job.id)
        run = Run(job.id)
        runs.append(run)
        try:
            await run_misbehaving(
                plan.how, plan.seconds, on_cancel=lambda: setattr(run, "saw_cancel", True)
            )
            return job.payload
        finally:
            running.discard(job.id)

    def hook(job: jobs.Job, old: jobs.JobState, new: jobs.JobState) -> None:
        changes.append((job.id, old, new))
        if isinstance(new, jobs.Succeeded | jobs.Failed):
            terminal.setdefault(job.id, []).append(new)
            if len(terminal) == len(plans):
                all_done.set()

    clock = jobs.TrioWallClock()
    async with jobs.open_storage("memory://") as storage:
        hosts = [
            Host(
                jobs.JobServer(
                    jobs.ServerConfig(
                        server_name=f"s{i}",
                        worker_count=2,
                        shutdown_timeout=timeout,
                        polling_interval=0.5,
                        scheduler_poll_interval=0.5,
                        heartbeat_interval=1.0,
                        dead_server_timeout=5.0,
                        job_timeout=1000.0,  # no timeouts: every Cancelled seen is a stop
                    ),
                    storage,
                    workers,
                    retry_policy=jobs.RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.2),
                    on_state_change=hook,
                    clock=clock,
                )
            )
            for i, timeout in enumerate(scenario["shutdown_timeouts"])
        ]
        async with trio.open_nursery() as nursery:
            for host in hosts:
                await nursery.start(host.host)
            ids = [await hosts[0].server.enqueue("job", i) for i in range(len(plans))]
            for toggle in scenario["toggles"]:
                await trio.sleep(toggle.after)
                host = hosts[toggle.server % len(hosts)]
                if not host.server.is_running:
                    await nursery.start(host.host)
                elif toggle.kind == "stop":
                    await host.server.stop()
                else:
                    await host.cancel()
            for host in hosts:
                if not host.server.is_running:
                    await nursery.start(host.host)
            with trio.fail_after(10_000):
                await all_done.wait()
            for host in hosts:
                await host.server.stop()

        assert overlaps == []
        for job_id, plan in zip(ids, plans, strict=True):
            mine = [(old, new) for jid, old, new in changes if jid == job_id]
            claims = sum(isinstance(new, jobs.Processing) for _, new in mine)
            ends = [new for old, new in mine if isinstance(old, jobs.Processing)]
            requeues = sum(isinstance(new, jobs.Enqueued) for new in ends)
            counted = len(ends) - requeues
            job_runs = [run for run in runs if run.job_id == job_id]
            # Every claim ends once; stops never counted; attempts exact. (A
            # live server taken for dead would requeue with the attempt kept,
            # and break the last equality.)
            assert claims == len(ends)
            assert counted <= sum(not run.saw_cancel for run in job_runs)
            stored = await storage.get(job_id)
            assert stored is not None
            assert stored.attempts == counted
            # One terminal state, the one its code decides.
            assert len(terminal[job_id]) == 1
            assert stored.state == terminal[job_id][0]
            if plan.how in ALWAYS_FAIL:
                assert isinstance(stored.state, jobs.Failed)
                assert stored.state.error.startswith(("ConnectionResetError", "UnprintableError"))
                assert stored.attempts == MAX_ATTEMPTS
            else:
                assert stored.state == jobs.Succeeded(ids.index(job_id), stored.state.duration)  # type: ignore[union-attr]
    stopped_runs = sum(run.saw_cancel for run in runs)
    requeues = sum(
        isinstance(old, jobs.Processing) and isinstance(new, jobs.Enqueued)
        for _, old, new in changes
    )
    return stopped_runs, requeues


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios)
def test_intentional_stops_are_never_counted_and_nothing_runs_twice(
    scenario: dict[str, Any],
) -> None:
    trio.run(run_scenario, scenario, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_scenarios_exercise_every_kind_of_stop() -> None:
    # A fixed, nasty example: both servers stopped past a zero timeout and
    # cancelled from outside while swallowing and raising jobs run.
    scenario = {
        "shutdown_timeouts": [0.0, 0.5],
        "jobs": [JobPlan(how, 6.0) for how in IN_TRIO],
        "toggles": [
            Toggle(1.0, 0, "stop"),
            Toggle(0.5, 1, "cancel"),
            Toggle(0.1, 0, "stop"),
            Toggle(1.0, 1, "stop"),
            Toggle(1.0, 1, "cancel"),
        ],
    }
    stopped_runs, requeues = trio.run(
        run_scenario, scenario, clock=trio.testing.MockClock(autojump_threshold=0)
    )
    assert stopped_runs > 0
    assert requeues >= stopped_runs
