"""Property tests of the background runtime.

Hypothesis draws a configuration, a schedule of spawns (``spawn``,
``spawn_wait`` inline, ``spawn_wait`` from a task of its own) with job
durations and failures, and the moment of a shutdown with a random
``drain_timeout``. Each example runs in its own ``trio.run`` on a fresh
autojump clock, and checks:

1. when the drain succeeds, every accepted job ran exactly once (and when it
   times out, every job ran at most once, and the ones that never started
   are exactly ``not_started``);
2. at every job start and end, and after every spawn, waiting jobs never
   exceed ``max_queue_size`` and running jobs never exceed
   ``max_concurrent_tasks`` (and ``running`` is exact); no ``spawn_wait``
   caller waits while the queue has room;
3. the metrics balance: accepted = succeeded + failed + cancelled + not_started,
   with each term equal to what the jobs themselves saw;
4. once ``ShutdownTimeout`` is raised, no job code runs any more.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_monitor as tm
from trio_monitor._runtime import _Engine


@attrs.frozen
class Op:
    kind: str  # "spawn" | "wait" (inline spawn_wait) | "wait_task" (spawn_wait in a task)
    gap: int  # tenths of a second before the spawn
    duration: int  # tenths of a second; 0: the job never checkpoints
    fails: bool


@attrs.frozen
class Scenario:
    max_queue_size: int
    max_concurrent_tasks: int
    drain_timeout: float
    shutdown_at: int  # tenths of a second
    ops: list[Op]


ops = st.builds(
    Op,
    kind=st.sampled_from(["spawn", "wait", "wait_task"]),
    gap=st.integers(0, 3),
    duration=st.integers(0, 10),
    fails=st.booleans(),
)

scenarios = st.builds(
    Scenario,
    max_queue_size=st.integers(1, 4),
    max_concurrent_tasks=st.integers(1, 3),
    drain_timeout=st.sampled_from([0.0, 0.3, 1.0, 2.5, 10.0, math.inf]),
    shutdown_at=st.integers(0, 40),
    ops=st.lists(ops, max_size=30),
)


def run_scenario(scenario: Scenario) -> None:
    cfg = tm.RuntimeConfig(
        max_queue_size=scenario.max_queue_size,
        max_concurrent_tasks=scenario.max_concurrent_tasks,
        drain_timeout=scenario.drain_timeout,
    )
    starts: Counter[int] = Counter()
    ends: dict[int, str] = {}
    accepted: set[int] = set()
    violations: list[str] = []
    rejected = 0
    running = 0
    outcome: list[tm.ShutdownTimeout | None] = []
    stopped = False

    async def main() -> None:
        nonlocal rejected
        async with tm.open_runtime(cfg) as runtime:
            handle = runtime.handle()

            def sample(where: str) -> None:
                m = runtime.metrics()
                if m.queued > scenario.max_queue_size:
                    violations.append(f"{where}: queued {m.queued}")
                if m.running > scenario.max_concurrent_tasks:
                    violations.append(f"{where}: running {m.running}")
                if m.waiting and m.queued < scenario.max_queue_size:
                    violations.append(f"{where}: {m.waiting} waiting with room in the queue")
                if m.running != running:
                    violations.append(f"{where}: running {m.running}, jobs see {running}")

            async def job(i: int, op: Op) -> None:
                nonlocal running
                if stopped:
                    violations.append(f"job {i} started after ShutdownTimeout")
                starts[i] += 1
                running += 1
                sample(f"start of {i}")
                result = "cancelled"
                try:
                    if op.duration:
                        await trio.sleep(op.duration / 10)
                    if op.fails:
                        result = "failed"
                        raise ValueError(i)
                    result = "succeeded"
                finally:
                    sample(f"end of {i}")
                    running -= 1
                    ends[i] = result

            async def spawn_wait(i: int, op: Op) -> None:
                try:
                    await handle.spawn_wait(job, i, op)
                except tm.RuntimeClosed:
                    return
                accepted.add(i)

            async def producer(nursery: trio.Nursery) -> None:
                nonlocal rejected
                for i, op in enumerate(scenario.ops):
                    await trio.sleep(op.gap / 10)
                    if op.kind == "spawn":
                        try:
                            handle.spawn(job, i, op)
                        except tm.QueueFull:
                            rejected += 1
                        except tm.RuntimeClosed:
                            pass
                        else:
                            accepted.add(i)
                    elif op.kind == "wait":
                        await spawn_wait(i, op)
                    else:
                        nursery.start_soon(spawn_wait, i, op)
                    sample(f"after spawn {i}")

            async def stopper() -> None:
                nonlocal stopped
                await trio.sleep(scenario.shutdown_at / 10)
                try:
                    await runtime.shutdown()
                except tm.ShutdownTimeout as exc:
                    outcome.append(exc)
                    stopped = True
                else:
                    outcome.append(None)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer, nursery)
                nursery.start_soon(stopper)

        m = runtime.metrics()
        assert not violations, violations
        assert m.queued == m.running == 0
        assert m.rejected == rejected
        # (3) the balance, each term as the jobs saw it.
        assert m.accepted == len(accepted)
        assert m.succeeded + m.failed + m.cancelled + m.not_started == len(accepted)
        assert m.succeeded == sum(r == "succeeded" for r in ends.values())
        assert m.failed == sum(r == "failed" for r in ends.values())
        assert m.cancelled == sum(r == "cancelled" for r in ends.values())
        # (1) exactly once, and only accepted jobs.
        assert set(starts) <= accepted
        assert all(n == 1 for n in starts.values())
        assert set(ends) == set(starts)
        [result] = outcome
        if result is None:
            assert set(starts) == accepted
            assert m.cancelled == m.not_started == 0
        else:
            assert scenario.drain_timeout != math.inf
            assert (result.cancelled, result.not_started) == (m.cancelled, m.not_started)
            assert result.cancelled + result.not_started > 0
            assert len(accepted) - len(starts) == result.not_started

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=150, deadline=None)
@given(scenarios)
def test_runtime_invariants(scenario: Scenario) -> None:
    run_scenario(scenario)


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        Scenario,
        max_queue_size=st.integers(1, 4),
        max_concurrent_tasks=st.integers(1, 3),
        drain_timeout=st.just(math.inf),
        shutdown_at=st.integers(0, 40),
        ops=st.lists(ops, max_size=30),
    )
)
def test_an_unbounded_drain_runs_every_accepted_job(scenario: Scenario) -> None:
    # run_scenario asserts that the drain succeeded and every accepted job ran
    # once; with drain_timeout=inf it never times out.
    run_scenario(scenario)


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 3),
    queue=st.integers(1, 4),
    jobs=st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), max_size=20),
)
def test_a_worker_dying_by_a_bug_strands_nothing(
    workers: int, queue: int, jobs: list[tuple[int, bool, bool]]
) -> None:
    # Defence in depth: a bug in the runtime's bookkeeping of a job (here,
    # reporting its failure) kills the worker that ran it. The runtime
    # replaces the worker: every accepted job still runs exactly once, the
    # metrics balance, and the bounds hold.
    ran: Counter[int] = Counter()
    buggy: set[str] = {f"job{i}" for i, (_, fails, bug) in enumerate(jobs) if fails and bug}
    original = _Engine._job_failed

    def job_failed(self: _Engine, job: Any, exc: Exception, timed_out: bool) -> None:
        if job[2] in buggy:
            raise RuntimeError("a bug in the runtime")
        original(self, job, exc, timed_out)

    async def job(i: int, tenths: int, fails: bool) -> None:
        ran[i] += 1
        await trio.sleep(tenths / 10)
        if fails:
            raise ValueError(i)

    async def main() -> None:
        cfg = tm.RuntimeConfig(max_queue_size=queue, max_concurrent_tasks=workers)
        # Stranded jobs would leave spawn_wait waiting for ever: fail instead.
        with trio.fail_after(1000):
            async with tm.open_runtime(cfg) as runtime:
                handle = runtime.handle()
                for i, (tenths, fails, _) in enumerate(jobs):
                    await handle.spawn_wait(job, i, tenths, fails, name=f"job{i}")
                    m = runtime.metrics()
                    assert m.running <= workers
                    assert m.queued <= queue
        m = runtime.metrics()
        assert m.accepted == len(jobs)
        assert (m.queued, m.running, m.cancelled, m.not_started) == (0, 0, 0, 0)
        assert m.failed == sum(fails for _, fails, _ in jobs)
        assert m.succeeded == len(jobs) - m.failed

    _Engine._job_failed = job_failed  # type: ignore[method-assign]
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        _Engine._job_failed = original  # type: ignore[method-assign]
    assert ran == Counter(range(len(jobs)))
