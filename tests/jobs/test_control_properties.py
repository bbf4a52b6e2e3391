"""Property tests of flow control and unique keys under concurrent claimers.

Several storages opened on one database (one SQLite file, or one PostgreSQL
database) act as several servers: each has its own connection, so the
database alone keeps them apart, as it keeps processes apart. Claimers run
at once, claim batches, check the database, and finish some of their jobs.

Invariants, checked on snapshots the database reads atomically (a
violation in any snapshot is a real one):

* no two Processing jobs hold the same ``lock``;
* a queue never has more than ``max_running`` Processing jobs;
* no ``rate=(n, s)`` window ever sees more than ``n`` starts (checked on
  every start, with the claim times the claimers gave);
* a unique key never has two live jobs, whatever the interleaving of
  enqueues.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
import trio
import trio.lowlevel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.jobs.storage_backends import BACKENDS, Backend
from tests.pg_cluster import PgCluster
from trio_monitor.jobs import (
    Job,
    Processing,
    Storage,
    Succeeded,
    Transition,
    open_storage,
)
from trio_monitor.jobs._model import LIVE_STATE_NAMES, utcnow
from trio_monitor.jobs._storage import _backend

SHARED = [pytest.param(b, id=b.name, marks=list(b.marks)) for b in BACKENDS if b.shared]
PROPERTY_SETTINGS = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(params=SHARED)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


class Clock:
    """A shared fake wall clock that only moves forward, a little per reading."""

    def __init__(self) -> None:
        self.at = utcnow()

    def now(self) -> datetime:
        self.at += timedelta(milliseconds=7)
        return self.at


async def check_snapshot(storage: Storage, max_running: int | None) -> None:
    running = await storage.list_jobs(state=Processing)  # one atomic read
    locks = [job.lock for job in running if job.lock is not None]
    assert len(locks) == len(set(locks)), f"two Processing jobs share a lock: {sorted(locks)}"
    if max_running is not None:
        limited = [job for job in running if job.queue == "limited"]
        assert len(limited) <= max_running


async def work(
    storage: Storage,
    name: str,
    batch: int,
    clock: Clock,
    max_running: int | None,
    starts: list[datetime],
    seed: int,
) -> None:
    rng = random.Random(seed)
    mine: list[Job] = []
    idle = 0
    while idle < 40:
        now = clock.now()
        got = await storage.claim(
            queues=[], worker_ids=[f"{name}-{i}" for i in range(batch)], server_name=name, now=now
        )
        starts.extend(now for job in got if job.queue == "rated")
        await check_snapshot(storage, max_running)
        mine += got
        idle = 0 if got or mine else idle + 1
        done = [job for job in mine if rng.random() < 0.5]
        if done:
            await storage.apply(
                [Transition(job.id, job.version, Succeeded(None, 0.0)) for job in done]
            )
            mine = [job for job in mine if job not in done]
        await trio.lowlevel.checkpoint()
    await storage.apply([Transition(job.id, job.version, Succeeded(None, 0.0)) for job in mine])


def check_rate(starts: list[datetime], count: int, seconds: float) -> None:
    times = sorted(starts)
    for i in range(len(times) - count):
        assert times[i + count] - times[i] >= timedelta(seconds=seconds), (
            f"{count + 1} starts within {seconds}s: {times[i : i + count + 1]}"
        )


@PROPERTY_SETTINGS
@given(
    locks=st.lists(st.one_of(st.none(), st.sampled_from("abc")), min_size=5, max_size=30),
    limited=st.integers(0, 15),
    max_running=st.integers(1, 3),
    rate=st.tuples(st.integers(1, 4), st.sampled_from([0.02, 0.05])),
    claimers=st.integers(2, 4),
    batch=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
async def test_concurrent_claimers_keep_locks_limits_and_rates(
    backend: Backend,
    request: pytest.FixtureRequest,
    locks: list[str | None],
    limited: int,
    max_running: int,
    rate: tuple[int, float],
    claimers: int,
    batch: int,
    seed: int,
) -> None:
    url = fresh_url(backend, request)
    clock = Clock()
    starts: list[datetime] = []
    async with open_storage(url) as setup:
        await setup.set_queue_limits("limited", max_running, None)
        await setup.set_queue_limits("rated", None, rate)
        jobs = [Job.new("m", i, lock=lock) for i, lock in enumerate(locks)]
        jobs += [Job.new("m", i, queue="limited") for i in range(limited)]
        jobs += [Job.new("m", i, queue="rated", lock=locks[i % len(locks)]) for i in range(6)]
        await setup.enqueue_many(jobs)
        storages = [await stack_open(url) for _ in range(claimers)]
        try:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i, storage in enumerate(storages):
                        nursery.start_soon(
                            work, storage, f"s{i}", batch, clock, max_running, starts, seed + i
                        )
        finally:
            for storage in storages:
                await storage.aclose()
        left = await setup.list_jobs(state=Processing)
        assert left == []
        assert len(await setup.list_jobs(state=Succeeded)) == len(jobs)
    check_rate(starts, *rate)


@PROPERTY_SETTINGS
@given(
    keys=st.lists(st.sampled_from(["k1", "k2", "k3"]), min_size=2, max_size=12),
    producers=st.integers(2, 4),
    finish_every=st.integers(2, 5),
)
async def test_a_unique_key_never_has_two_live_jobs(
    backend: Backend,
    request: pytest.FixtureRequest,
    keys: list[str],
    producers: int,
    finish_every: int,
) -> None:
    url = fresh_url(backend, request)
    storages = [await stack_open(url) for _ in range(producers + 1)]
    finisher = storages[-1]
    try:

        async def produce(storage: Storage) -> None:
            for key in keys:
                await storage.enqueue(Job.new("m", key, unique_key=key))
                await check_unique(storage)

        async def finish() -> None:
            for _ in range(len(keys) // finish_every + 1):
                got = await finisher.claim(
                    queues=[], worker_ids=["w"], server_name="f", now=utcnow()
                )
                await finisher.apply(
                    [Transition(job.id, job.version, Succeeded(None, 0.0)) for job in got]
                )
                await trio.lowlevel.checkpoint()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for storage in storages[:-1]:
                    nursery.start_soon(produce, storage)
                nursery.start_soon(finish)
        await check_unique(finisher)
    finally:
        for storage in storages:
            await storage.aclose()


async def check_unique(storage: Storage) -> None:
    live = [job for job in await storage.list_jobs() if job.state.name in LIVE_STATE_NAMES]
    keys = [job.unique_key for job in live]
    assert len(keys) == len(set(keys)), f"two live jobs share a unique key: {sorted(keys)}"


# -- a fresh database per hypothesis example ---------------------------------

_counter = iter(range(1_000_000))


def fresh_url(backend: Backend, request: pytest.FixtureRequest) -> str:
    """A new empty database for each example (function fixtures are shared by examples)."""
    if backend.name == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return f"sqlite:///{tmp_path / f'jobs{next(_counter)}.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database()


async def stack_open(url: str) -> Storage:
    """Open a storage without a context manager (closed by the test's ``finally``)."""
    return await _backend(url).open(url)
