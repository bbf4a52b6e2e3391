"""Properties of the SQLite claim and outcome statements, against a model.

The claim is one ``UPDATE ... RETURNING`` in the common case and the older
SELECT-admit-UPDATE path under flow control (a candidate holding a lock) or
on an SQLite without RETURNING; outcomes are one ``UPDATE ... FROM (VALUES
...)`` with the version check in its WHERE, or the read-then-write loop when
a batch changes one job twice. Random interleavings of enqueues, claims,
outcome batches (some stale, some changing a job twice) and requeues run on
both paths, and every step is checked against a plain model: a job is handed
out at most once until it is requeued, in priority-then-age order, to the
workers in order, and a stale outcome changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_monitor.jobs import Job, Processing, Succeeded, Transition
from trio_monitor.jobs._backends._rows import processing_updates, state_update
from trio_monitor.jobs._backends._sqlite import SQLiteStorage
from trio_monitor.jobs._backends._sqlite import _storage as sqlite_storage
from trio_monitor.jobs._model import utcnow

QUEUES = ["a", "b"]


@dataclass
class Model:
    """A job as the model sees it."""

    id: str
    queue: str
    priority: int
    lock: str | None
    state: str = "enqueued"
    version: int = 0
    attempts: int = 0
    worker: str | None = None


def model_claim(jobs: list[Model], queues: list[str], count: int) -> list[Model]:
    """What a claim of ``count`` workers from ``queues`` takes: the flow-control rules
    for locks (a lock held by a Processing job keeps its jobs waiting, in place)."""
    held = {j.lock for j in jobs if j.state == "processing" and j.lock is not None}
    candidates = [j for j in jobs if j.state == "enqueued" and (not queues or j.queue in queues)]
    candidates.sort(key=lambda j: -j.priority)  # stable: age (enqueue order) within a priority
    taken: list[Model] = []
    for job in candidates:
        if len(taken) == count:
            break
        if job.lock is not None:
            if job.lock in held:
                continue
            held.add(job.lock)
        taken.append(job)
    return taken


enqueue = st.tuples(
    st.just("enqueue"),
    st.integers(1, 4),  # how many
    st.integers(-1, 1),  # priority
    st.sampled_from(QUEUES),
    st.sampled_from([None, None, None, "x", "y"]),  # lock
)
claim = st.tuples(
    st.just("claim"), st.integers(1, 6), st.sampled_from([[], ["a"], ["b"], ["a", "b"]])
)
# Outcomes: (index among the Processing jobs, version offset); offset 0 is the
# version read, anything else is stale. A repeated index changes a job twice.
outcomes = st.tuples(
    st.just("outcomes"),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0, 0, 0, -1, 1])), max_size=6),
)
requeue = st.tuples(st.just("requeue"))
steps = st.lists(st.one_of(enqueue, claim, outcomes, requeue), max_size=25)


async def check(storage: SQLiteStorage, jobs: list[Model]) -> None:
    stored = {job.id: job for job in await storage.list_jobs()}
    for model in jobs:
        job = stored[model.id]
        assert (job.state.name, job.version, job.attempts) == (
            model.state,
            model.version,
            model.attempts,
        ), model


async def play(drawn: list[tuple[Any, ...]]) -> None:
    storage = await SQLiteStorage.open(":memory:")
    jobs: list[Model] = []
    try:
        for step in drawn:
            now = utcnow()
            if step[0] == "enqueue":
                _, n, priority, queue, lock = step
                new = [Job.new("m", i, queue, priority, lock=lock) for i in range(n)]
                await storage.enqueue_many(new)
                jobs += [Model(j.id, j.queue, j.priority, j.lock) for j in new]
            elif step[0] == "claim":
                _, count, queues = step
                workers = [f"w{i}" for i in range(count)]
                expected = model_claim(jobs, queues, count)
                got = await storage.claim(
                    queues=queues,
                    worker_ids=workers,
                    server_name="srv",
                    now=now,
                )
                assert [j.id for j in got] == [m.id for m in expected]
                for job, model, worker in zip(got, expected, workers, strict=False):
                    model.state, model.worker = "processing", worker
                    model.version += 1
                    model.attempts += 1
                    assert job.state == Processing(now, worker, "srv")
                    assert (job.version, job.attempts) == (model.version, model.attempts)
            elif step[0] == "outcomes":
                running = [m for m in jobs if m.state == "processing"]
                picks = [(running[i], off) for i, off in step[1] if i < len(running)]
                versions = {m.id: m.version for m, _ in picks}  # as read before the batch
                transitions = [
                    Transition(m.id, versions[m.id] + off, Succeeded(m.id, 0.5)) for m, off in picks
                ]
                results = await storage.apply(transitions)
                for (model, _), transition, result in zip(picks, transitions, results, strict=True):
                    if transition.expected_version != model.version:
                        assert result is None  # stale: refused
                        continue
                    model.state = "succeeded"
                    model.version += 1
                    assert result is not None
                    assert result.state == Succeeded(model.id, 0.5)
                    assert (result.version, result.attempts) == (model.version, model.attempts)
            else:
                changed = await storage.requeue_stale(now + timedelta(hours=1), now)
                back = [m for m in jobs if m.state == "processing"]
                assert sorted(t.job.id for t in changed) == sorted(m.id for m in back)
                for model in back:
                    model.state = "enqueued"
                    model.version += 1
            await check(storage, jobs)
    finally:
        await storage.aclose()


@pytest.mark.parametrize("one_statement", [True, False], ids=["returning", "select-update"])
@settings(max_examples=60, deadline=None)
@given(drawn=steps)
def test_claims_and_outcomes_follow_the_model(
    one_statement: bool, drawn: list[tuple[Any, ...]]
) -> None:
    """Each job is claimed at most once until requeued, in order; stale outcomes are refused."""
    with mock.patch.object(sqlite_storage, "_RETURNING", one_statement):
        trio.run(play, drawn)


@given(
    workers=st.lists(st.text(max_size=8), min_size=1, max_size=6),
    server=st.text(max_size=30),
)
def test_processing_columns_built_once_equal_one_per_worker(
    workers: list[str], server: str
) -> None:
    """The claim's columns, encoded once per batch, are those of one encoding per worker."""
    now = utcnow()
    one_by_one = [state_update(Processing(now, w, server), lambda d: d) for w in workers]
    assert processing_updates(now, workers, server, lambda d: d) == one_by_one


def test_processing_columns_with_the_mark_in_the_server_name() -> None:
    now = utcnow()
    server = "a\x00trio_monitor worker\x00b"  # the placeholder the encoding splits on
    workers = ["w0", "\x00trio_monitor worker\x00"]
    one_by_one = [state_update(Processing(now, w, server), lambda d: d) for w in workers]
    assert processing_updates(now, workers, server, lambda d: d) == one_by_one


async def race(path: str, jobs: int, claims: list[tuple[int, int]]) -> None:
    storages = [await SQLiteStorage.open(path) for _ in range(2)]
    try:
        await storages[0].enqueue_many([Job.new("m", i) for i in range(jobs)])
        taken: list[str] = []

        async def claim(which: int, count: int) -> None:
            got = await storages[which].claim(
                queues=[],
                worker_ids=[f"w{i}" for i in range(count)],
                server_name=f"s{which}",
                now=utcnow(),
            )
            taken.extend(job.id for job in got)
            # Finish half of them at once, so later claims race with outcomes too.
            await storages[which].apply(
                [Transition(j.id, j.version, Succeeded(None, 0.0)) for j in got[::2]]
            )

        async with trio.open_nursery() as nursery:
            for which, count in claims:
                nursery.start_soon(claim, which, count)
        assert len(taken) == len(set(taken))  # no job handed out twice
        assert len(taken) == min(jobs, sum(count for _, count in claims))
    finally:
        for storage in storages:
            await storage.aclose()


@pytest.mark.parametrize("one_statement", [True, False], ids=["returning", "select-update"])
@settings(max_examples=25, deadline=None)
@given(
    jobs=st.integers(0, 60),
    claims=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 6)), min_size=1, max_size=16),
)
def test_concurrent_claims_through_two_connections_are_disjoint(
    tmp_path_factory: pytest.TempPathFactory,
    one_statement: bool,
    jobs: int,
    claims: list[tuple[int, int]],
) -> None:
    """Two storages on one file (two connections, two threads) claiming and finishing
    at once, on both claim paths: no job is handed out twice, none is lost. (Two
    processes racing for the write lock: ``test_two_processes_claim_disjoint_jobs``.)"""
    path = tmp_path_factory.mktemp("race") / "jobs.db"
    with mock.patch.object(sqlite_storage, "_RETURNING", one_statement):
        trio.run(race, str(path), jobs, claims)


async def test_a_claim_bigger_than_one_statement_takes_the_other_path() -> None:
    storage = await SQLiteStorage.open(":memory:")
    try:
        count = sqlite_storage._MAX_ONE_STATEMENT_CLAIM + 10
        enqueued = [Job.new("m", i, priority=i % 3) for i in range(count + 5)]
        await storage.enqueue_many(enqueued)
        got = await storage.claim(
            queues=["default"],
            worker_ids=[f"w{i}" for i in range(count)],
            server_name="srv",
            now=utcnow(),
        )
        order = sorted(enqueued, key=lambda j: -j.priority)  # stable: age within a priority
        assert [j.id for j in got] == [j.id for j in order[:count]]
        assert [j.state.worker_id for j in got] == [f"w{i}" for i in range(count)]  # type: ignore[union-attr]
    finally:
        await storage.aclose()
