"""Claiming ahead of the idle workers: the ready queue, its worker ids, stops and aborts.

A server holds claimed jobs beyond its workers only while a claim's round
trip is long next to a job (``worker_count * claim time / job time``, at
most ``fetch_batch_size``). Here claims are made slow on purpose (a storage
whose claim sleeps), on a MockClock, so that the lead is there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from tests.jobs.server_helpers import Recorder, make_server, running
from trio_monitor import jobs
from trio_monitor.jobs._backends._memory import MemoryStorage

CLAIM_TRIP = 0.01  # seconds a claim takes
SHORT = 0.001  # a short job


class SlowClaims(MemoryStorage):
    """A memory storage whose claims take CLAIM_TRIP; records what each asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    async def claim(self, **kwargs: Any) -> list[jobs.Job]:
        self.asked.append(len(kwargs["worker_ids"]))
        await trio.sleep(CLAIM_TRIP)
        return await super().claim(**kwargs)


class LostWakeUps(MemoryStorage):
    """A claim answers at once, then takes CLAIM_TRIP to come back: wake-ups meanwhile
    reach nobody (the fetcher listens only once it is back)."""

    async def claim(self, **kwargs: Any) -> list[jobs.Job]:
        got = await super().claim(**kwargs)
        await trio.sleep(CLAIM_TRIP)
        return got


class Runs:
    """What the worker functions saw: starts (trio time), worker ids, jobs at once."""

    def __init__(self) -> None:
        self.started: dict[str, list[float]] = {}
        self.worker_ids: dict[str, list[str]] = {}
        self.running: dict[str, str] = {}  # job id -> ctx.worker_id
        self.clashes: list[str] = []
        self.release = trio.Event()

    def registry(self) -> jobs.WorkerRegistry:
        workers = jobs.WorkerRegistry()

        @workers.worker("sleep")
        async def sleep(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
            self._start(job, ctx)
            try:
                await trio.sleep(job.payload)
            finally:
                del self.running[job.id]
            return None

        @workers.worker("block")
        async def block(job: jobs.Job, ctx: jobs.WorkerContext) -> object:
            # Runs until the test releases it or the server stops.
            self._start(job, ctx)
            try:
                async with trio.open_nursery() as nursery:

                    async def until_stop() -> None:
                        await ctx.cancel.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_stop)
                    await self.release.wait()
                    nursery.cancel_scope.cancel()
            finally:
                del self.running[job.id]
            return None

        return workers

    def _start(self, job: jobs.Job, ctx: jobs.WorkerContext) -> None:
        if ctx.worker_id in self.running.values():
            self.clashes.append(ctx.worker_id)
        self.running[job.id] = ctx.worker_id
        self.started.setdefault(job.id, []).append(trio.current_time())
        self.worker_ids.setdefault(job.id, []).append(ctx.worker_id)


def claims(recorder: Recorder, job_id: str) -> list[jobs.Processing]:
    return [c.new for c in recorder.of(job_id) if isinstance(c.new, jobs.Processing)]


def claimed_at(recorder: Recorder, job_id: str) -> float:
    return next(c.at for c in recorder.of(job_id) if isinstance(c.new, jobs.Processing))


def slow_server(**config: Any) -> tuple[SlowClaims, Runs, Recorder, jobs.JobServer]:
    """A server on slow-claiming memory storage, with its runs and state changes recorded."""
    storage = SlowClaims()
    runs = Runs()
    recorder = Recorder()
    return storage, runs, recorder, make_server(storage, runs.registry(), recorder, **config)


async def until(predicate: Callable[[], bool], within: float = 100.0) -> None:
    """Poll ``predicate`` (for what no state change announces, such as a run starting)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - nothing announces these
            await trio.sleep(CLAIM_TRIP / 10)


async def finished(recorder: Recorder, ids: list[str], within: float = 1000) -> None:
    def done() -> bool:
        return all(
            any(isinstance(c.new, jobs.Succeeded | jobs.Aborted) for c in recorder.of(i))
            for i in ids
        )

    await recorder.wait_until(done, within=within)


async def test_short_jobs_are_claimed_ahead_under_their_stamped_worker_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, runs, recorder, server = slow_server(worker_count=2, fetch_batch_size=4)
    ids = [await server.enqueue("sleep", SHORT) for _ in range(60)]
    async with running(server):
        await finished(recorder, ids)
    # Claims asked for more jobs than there are workers: the lead.
    assert max(storage.asked) == 4
    assert sum(size > 2 for size in storage.asked) > 3
    # Each job ran once, under the worker id stamped on it at the claim.
    for job_id in ids:
        assert [state.worker_id for state in claims(recorder, job_id)] == runs.worker_ids[job_id]
    assert runs.clashes == []
    # At most worker_count + fetch_batch_size ids, the same name pattern.
    used = {w for ws in runs.worker_ids.values() for w in ws}
    assert used <= {f"test:worker:{i}" for i in range(6)}


async def test_claim_ahead_off_claims_for_idle_workers_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, _runs, recorder, server = slow_server(
        worker_count=2, fetch_batch_size=4, claim_ahead=False
    )
    ids = [await server.enqueue("sleep", SHORT) for _ in range(30)]
    async with running(server):
        await finished(recorder, ids)
    assert all(size <= 2 for size in storage.asked)


def test_claim_ahead_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="claim_ahead"):
        jobs.ServerConfig(claim_ahead=1)  # type: ignore[arg-type]


async def test_long_jobs_are_not_claimed_ahead(autojump_clock: trio.testing.MockClock) -> None:
    storage, runs, recorder, server = slow_server(worker_count=2, fetch_batch_size=4)
    ids = [await server.enqueue("sleep", 1.0) for _ in range(10)]
    async with running(server):
        await finished(recorder, ids)
    # Jobs far longer than a claim: no lead, every claim is for idle workers.
    assert all(size <= 2 for size in storage.asked)
    for job_id in ids:
        assert runs.started[job_id][0] - claimed_at(recorder, job_id) < 1e-6


async def test_a_claimed_ahead_job_never_waits_behind_a_long_one_while_a_worker_is_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Mixed short and long jobs: a ready job goes to whichever worker is free first."""
    storage, runs, recorder, server = slow_server(worker_count=2, fetch_batch_size=4)
    async with running(server):
        # A long job holds one worker; the short ones, claimed ahead in
        # batches, all go to the other.
        long_id = await server.enqueue("sleep", 100.0)
        short_ids = [await server.enqueue("sleep", SHORT) for _ in range(30)]
        await trio.sleep(50.0)
        short_ids += [await server.enqueue("sleep", SHORT) for _ in range(30)]
        await finished(recorder, [long_id, *short_ids], within=10_000)
    assert max(storage.asked) > 2  # claimed ahead
    # A short job waits at most for a claim trip and a few short jobs,
    # never for the long one: the other worker was free.
    waits = [runs.started[i][0] - claimed_at(recorder, i) for i in short_ids]
    assert max(waits) < 1.0, max(waits)
    assert max(runs.started[i][0] for i in short_ids) < 60.0
    assert runs.clashes == []


async def _lead_then_blocker(
    server: jobs.JobServer, recorder: Recorder, runs: Runs, behind: int
) -> tuple[str, list[str]]:
    """Build a lead with short jobs, then start a blocker with ``behind`` jobs after it."""
    shorts = [await server.enqueue("sleep", SHORT) for _ in range(20)]
    blocker = await server.enqueue("block", None)
    after = [await server.enqueue("sleep", SHORT) for _ in range(behind)]
    await finished(recorder, shorts)
    await until(lambda: blocker in runs.running)
    await until(lambda: sum(bool(claims(recorder, i)) for i in after) >= 2)
    return blocker, after


async def test_a_stop_releases_claimed_jobs_that_never_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, runs, recorder, server = slow_server(
        worker_count=1, fetch_batch_size=4, polling_interval=100.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        blocker, after = await _lead_then_blocker(server, recorder, runs, behind=6)
        ready = [i for i in after if claims(recorder, i)]
        await server.stop()
    for job_id in after:
        job = await storage.get(job_id)
        assert job is not None
        assert job_id not in runs.started
        assert isinstance(job.state, jobs.Enqueued), job.state
        assert job.attempts == 0  # the claim ahead is not counted
    assert ready  # some were claimed ahead, and went back
    assert isinstance((await storage.get(blocker)).state, jobs.Succeeded)  # type: ignore[union-attr]


async def test_an_abort_ends_a_claimed_ahead_job_at_once_without_running_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _storage, runs, recorder, server = slow_server(
        worker_count=1, fetch_batch_size=4, polling_interval=100.0
    )
    async with running(server):
        _blocker, after = await _lead_then_blocker(server, recorder, runs, behind=6)
        target = next(i for i in after if claims(recorder, i))
        assert await server.client.abort(target, "not wanted")
        change = await recorder.wait_state(target, jobs.Aborted, within=10)
        assert change.new.reason == "not wanted"  # type: ignore[union-attr]
        assert not runs.release.is_set()  # the worker is still on the blocker
        runs.release.set()
        await finished(recorder, [i for i in after if i != target])
    assert target not in runs.started


async def test_claimed_ahead_jobs_go_back_when_they_wait_a_polling_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage, runs, recorder, server = slow_server(
        worker_count=1, fetch_batch_size=4, polling_interval=5.0
    )
    async with running(server):
        _blocker, after = await _lead_then_blocker(server, recorder, runs, behind=6)
        ready = [i for i in after if claims(recorder, i)]
        await trio.sleep(6.0)
        for job_id in ready:
            job = await storage.get(job_id)
            assert job is not None
            assert isinstance(job.state, jobs.Enqueued), job.state
            assert job.attempts == 0
        # Nothing claims them again while the only worker is busy.
        await trio.sleep(50.0)
        assert all(len(claims(recorder, i)) == 1 for i in ready)
        runs.release.set()
        await finished(recorder, after)
    assert all(len(runs.started[i]) == 1 for i in after)


async def test_a_limited_queue_claims_again_when_our_own_job_frees_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_running admits fewer jobs than workers: an outcome we write wakes the fetcher.

    The storage's own wake-up fires while the claim that finds the queue
    full is still in flight, and is lost; the server counts its own
    outcomes, so the next claim goes at once, not a polling_interval later.
    """

    storage = LostWakeUps()
    runs = Runs()
    recorder = Recorder()
    server = make_server(
        storage, runs.registry(), recorder, worker_count=4, polling_interval=1000.0
    )
    await server.client.set_queue_limits("default", max_running=1)
    first = await server.enqueue("sleep", CLAIM_TRIP)
    async with running(server):
        await until(lambda: first in runs.running)
        await trio.sleep(CLAIM_TRIP / 5)
        # Its enqueue wakes the fetcher, whose claim finds the queue full;
        # the first job finishes while that claim is on its way back.
        second = await server.enqueue("sleep", CLAIM_TRIP)
        await finished(recorder, [first, second], within=100)
    assert runs.started[second][0] < 1.0


async def test_an_enqueue_during_a_claims_trip_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The wake-up of an enqueue made while a claim that found nothing travels back."""
    storage = LostWakeUps()
    runs = Runs()
    recorder = Recorder()
    server = make_server(storage, runs.registry(), recorder, polling_interval=1000.0)
    async with running(server):
        await trio.sleep(CLAIM_TRIP / 2)  # the first claim is on its way back, empty
        job_id = await server.enqueue("sleep", SHORT)
        await finished(recorder, [job_id], within=100)
    assert runs.started[job_id][0] < 1.0
