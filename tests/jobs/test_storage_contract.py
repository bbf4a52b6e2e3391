"""The storage contract: every backend passes this same suite.

Backends come from ``tests/jobs/storage_backends.py`` (``BACKENDS``); each
test runs once per backend. Tests that need two storages on one database
(what two processes sharing it see) run only for backends that share a URL.
Storage talks to threads and servers, so these run on the real clock; no test
sleeps except the ``wait_for_work`` blocking test (50 ms).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cancellation import Caller, callers, run_callers
from tests.jobs.storage_backends import Backend, backend_params
from trio_monitor.jobs import (
    Aborted,
    AwaitingRetry,
    Client,
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    Processing,
    Progress,
    RecurringJob,
    Scheduled,
    SchemaStatus,
    SchemaVersionError,
    ServerInfo,
    Storage,
    Succeeded,
    Transition,
    check_schema,
    migrate,
    open_storage,
)
from trio_monitor.jobs._model import utcnow

STATE_NAMES = {
    "enqueued",
    "scheduled",
    "processing",
    "succeeded",
    "failed",
    "awaiting_retry",
    "deleted",
}


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def storage_url(backend: Backend, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty store of the backend under test."""
    return backend.make_url(request)


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    async with open_storage(storage_url) as opened:
        yield opened


@pytest.fixture
def shared_url(backend: Backend, storage_url: str) -> str:
    """``storage_url``, for tests that open it twice (skipped where not shared)."""
    if not backend.shared:
        pytest.skip(f"{backend.name} storages do not share data across open_storage calls")
    return storage_url


def counts(raw: dict[str, int]) -> dict[str, int]:
    """``count_by_state`` without zero entries (backends may list them or not)."""
    return {name: n for name, n in raw.items() if n}


def make_job(
    *,
    priority: int = 0,
    queue: str = "default",
    created_at: datetime | None = None,
    state: JobState | None = None,
    payload: Any = None,
) -> Job:
    job = Job.new("work", {"n": 1} if payload is None else payload, queue, priority)
    if created_at is not None:
        job.created_at = created_at
    if state is not None:
        job.state = state
    return job


def processing(server: str, started_at: datetime, worker: str = "w") -> Processing:
    return Processing(started_at, worker, server)


# -- enqueue / get ---------------------------------------------------------

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

EVERY_STATE: list[JobState] = [
    Enqueued(T0),
    Scheduled(T0 + timedelta(hours=1)),
    Processing(T0, "worker-3", "srv#abc"),
    Succeeded({"answer": [42, "x", None, 1.5]}, 1.25),
    Failed("ValueError: boom"),
    AwaitingRetry(T0 + timedelta(seconds=30), "TimeoutError"),
    Deleted(),
]


@pytest.mark.parametrize("state", EVERY_STATE, ids=lambda s: s.name)
async def test_enqueue_get_round_trip_keeps_every_field(storage: Storage, state: JobState) -> None:
    job = Job(
        id=str(uuid.uuid4()),
        method="send_email",
        payload={"to": "a@example.org", "n": [1, 2.5, None, True], "ü": "ß"},
        queue="mail",
        priority=-7,
        attempts=2,
        created_at=T0 - timedelta(days=1),
        state=state,
        expires_at=T0 + timedelta(days=7),
    )
    assert await storage.enqueue(job) == job.id
    got = await storage.get(job.id)
    assert got is not None
    assert isinstance(got.state, type(state))
    assert (got.id, got.method, got.payload, got.queue, got.priority, got.attempts) == (
        job.id,
        job.method,
        job.payload,
        job.queue,
        job.priority,
        job.attempts,
    )
    assert got.created_at == job.created_at
    assert got.expires_at == job.expires_at
    assert got.state == state
    for value in (got.created_at, got.expires_at):
        assert value is not None
        assert value.utcoffset() == timedelta(0)


async def test_non_utc_timestamps_keep_their_instant(storage: Storage) -> None:
    plus2 = timezone(timedelta(hours=2))
    job = make_job(
        created_at=T0.astimezone(plus2),
        state=Scheduled((T0 + timedelta(hours=1)).astimezone(plus2)),
    )
    await storage.enqueue(job)
    got = await storage.get(job.id)
    assert got is not None
    assert got.created_at == T0
    assert got.state == Scheduled(T0 + timedelta(hours=1))
    assert got.created_at.tzinfo is not None


async def test_get_unknown_id_is_none(storage: Storage) -> None:
    assert await storage.get("no-such-job") is None


async def test_duplicate_id_is_value_error_and_changes_nothing(storage: Storage) -> None:
    first = make_job(payload={"v": 1})
    await storage.enqueue(first)
    before = await storage.count_by_state()
    clash = make_job(payload={"v": 2}, state=Failed("x"))
    clash.id = first.id
    with pytest.raises(ValueError, match="exist"):
        await storage.enqueue(clash)
    assert await storage.count_by_state() == before
    got = await storage.get(first.id)
    assert got is not None
    assert got.payload == {"v": 1}
    assert isinstance(got.state, Enqueued)


def deeply_nested(depth: int = 5000) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


@pytest.mark.parametrize(
    "payload",
    [object(), {"x": {1, 2}}, float("nan"), {"when": T0}, deeply_nested()],
    ids=["object", "set", "nan", "datetime", "5000-deep"],
)
async def test_non_json_payload_is_type_error_and_stores_nothing(
    storage: Storage, payload: object
) -> None:
    await storage.enqueue(make_job())
    before = await storage.count_by_state()
    bad = make_job(payload=payload)
    with pytest.raises(TypeError, match="JSON"):
        await storage.enqueue(bad)
    assert await storage.get(bad.id) is None
    assert await storage.count_by_state() == before


async def test_enqueue_many_is_all_or_nothing(storage: Storage) -> None:
    existing = make_job()
    await storage.enqueue(existing)
    before = await storage.count_by_state()

    good = [make_job() for _ in range(3)]
    with pytest.raises(TypeError):
        await storage.enqueue_many([*good, make_job(payload={"bad": object()})])
    assert await storage.count_by_state() == before

    clash = make_job()
    clash.id = existing.id
    with pytest.raises(ValueError, match="exist"):
        await storage.enqueue_many([*good, clash])
    assert await storage.count_by_state() == before

    twin = make_job()
    twin.id = good[0].id
    with pytest.raises(ValueError, match=r"duplicate|exist"):
        await storage.enqueue_many([*good, twin])
    assert await storage.count_by_state() == before
    for job in good:
        assert await storage.get(job.id) is None

    assert await storage.enqueue_many(good) == [job.id for job in good]
    assert counts(await storage.count_by_state()) == {"enqueued": 4}
    assert await storage.enqueue_many([]) == []


async def test_list_jobs_in_creation_order_with_filter_and_limit(storage: Storage) -> None:
    jobs = [make_job(priority=i % 3) for i in range(6)]
    jobs[1].state = Failed("x")
    jobs[4].state = Failed("y")
    for job in jobs:
        await storage.enqueue(job)
    assert [j.id for j in await storage.list_jobs()] == [j.id for j in jobs]
    assert [j.id for j in await storage.list_jobs(limit=2)] == [jobs[0].id, jobs[1].id]
    assert [j.id for j in await storage.list_jobs(state=Failed)] == [jobs[1].id, jobs[4].id]
    assert [j.id for j in await storage.list_jobs(state=Enqueued, limit=1)] == [jobs[0].id]
    assert await storage.list_jobs(state=Succeeded) == []


async def test_count_by_state_keys_are_state_names(storage: Storage) -> None:
    assert await storage.count_by_state() == {}  # states without jobs are left out
    for state in EVERY_STATE:
        await storage.enqueue(make_job(state=state))
        await storage.enqueue(make_job(state=state))
    raw = await storage.count_by_state()
    assert set(raw) <= STATE_NAMES
    assert counts(raw) == dict.fromkeys(STATE_NAMES, 2)


# -- claim -----------------------------------------------------------------


async def claim(
    storage: Storage,
    n: int = 1,
    *,
    queues: list[str] | None = None,
    server: str = "srv",
    now: datetime | None = None,
) -> list[Job]:
    return await storage.claim(
        queues=["default"] if queues is None else queues,
        worker_ids=[f"w{i}" for i in range(n)],
        server_name=server,
        now=utcnow() if now is None else now,
    )


async def test_claim_takes_highest_priority_then_oldest(storage: Storage) -> None:
    jobs = [make_job(priority=p) for p in (0, 5, 0, 9, 5, -1, 9)]
    await storage.enqueue_many(jobs)
    expected = [jobs[i].id for i in (3, 6, 1, 4, 0, 2, 5)]
    taken = [job.id for _ in jobs for job in await claim(storage)]
    assert taken == expected
    assert await claim(storage) == []


async def test_claim_order_within_one_batch(storage: Storage) -> None:
    jobs = [make_job(priority=p) for p in (1, 3, 1, 3, 2)]
    await storage.enqueue_many(jobs)
    batch = await claim(storage, 4)
    assert [job.id for job in batch] == [jobs[i].id for i in (1, 3, 4, 0)]
    assert [job.state.worker_id for job in batch if isinstance(job.state, Processing)] == [
        "w0",
        "w1",
        "w2",
        "w3",
    ]


async def test_claim_filters_queues_and_empty_means_all(storage: Storage) -> None:
    a1, b1, c1 = make_job(queue="a"), make_job(queue="b", priority=1), make_job(queue="c")
    a2, b2 = make_job(queue="a", priority=2), make_job(queue="b")
    await storage.enqueue_many([a1, b1, c1, a2, b2])
    assert [j.id for j in await claim(storage, 5, queues=["zzz"])] == []
    assert [j.id for j in await claim(storage, 1, queues=["b"])] == [b1.id]
    # Several queues: merged by priority, then age; duplicates are harmless.
    assert [j.id for j in await claim(storage, 5, queues=["a", "b", "a"])] == [
        a2.id,
        a1.id,
        b2.id,
    ]
    assert [j.id for j in await claim(storage, 5, queues=[])] == [c1.id]


async def test_claim_limit_stamps_and_bumps(storage: Storage) -> None:
    jobs = [make_job() for _ in range(5)]
    jobs[0].attempts = 3
    await storage.enqueue_many(jobs)
    before = {job.id: await storage.get(job.id) for job in jobs}
    now = utcnow()
    batch = await storage.claim(
        queues=["default"], worker_ids=["wa", "wb", "wc"], server_name="srv#1", now=now
    )
    assert len(batch) == 3
    for job, worker in zip(batch, ["wa", "wb", "wc"], strict=True):
        old = before[job.id]
        assert old is not None
        assert job.state == Processing(now, worker, "srv#1")
        assert job.attempts == old.attempts + 1
        assert job.version > old.version
        stored = await storage.get(job.id)
        assert stored is not None
        assert stored.state == job.state
        assert (stored.attempts, stored.version, stored.payload) == (
            job.attempts,
            job.version,
            old.payload,
        )
    assert batch[0].attempts == 4
    assert counts(await storage.count_by_state()) == {"processing": 3, "enqueued": 2}
    assert await storage.claim(queues=[], worker_ids=[], server_name="s", now=now) == []


async def test_claim_skips_jobs_not_enqueued(storage: Storage) -> None:
    now = utcnow()
    for state in EVERY_STATE:
        await storage.enqueue(make_job(state=state))
    batch = await claim(storage, 10, now=now)
    assert len(batch) == 1
    assert batch[0].state == Processing(now, "w0", "srv")


async def claim_all(storage: Storage, tasks: int, found: list[str], batch: int = 3) -> None:
    async def worker(k: int) -> None:
        while True:
            got = await claim(storage, batch, server=f"s{k}")
            if not got:
                return
            found.extend(job.id for job in got)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for k in range(tasks):
            nursery.start_soon(worker, k)


async def test_concurrent_claims_never_share_a_job(storage: Storage) -> None:
    jobs = [make_job(priority=i % 4) for i in range(60)]
    await storage.enqueue_many(jobs)
    found: list[str] = []
    await claim_all(storage, 8, found)
    assert sorted(found) == sorted(job.id for job in jobs)


async def test_two_storages_on_one_database_never_share_a_job(shared_url: str) -> None:
    jobs = [make_job(priority=i % 4) for i in range(80)]
    found: list[str] = []
    async with open_storage(shared_url) as one, open_storage(shared_url) as two:
        await one.enqueue_many(jobs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_all, one, 4, found, 2)
            nursery.start_soon(claim_all, two, 4, found, 2)
    assert sorted(found) == sorted(job.id for job in jobs)


# -- apply -----------------------------------------------------------------


async def test_apply_is_compare_and_swap(storage: Storage) -> None:
    await storage.enqueue_many([make_job(), make_job()])
    first, second = await claim(storage, 2)
    now = utcnow()
    expires = now + timedelta(days=1)
    results = await storage.apply(
        [
            Transition(first.id, first.version, Succeeded({"ok": True}, 0.5), expires_at=expires),
            Transition(second.id, second.version - 1, Failed("stale")),
            Transition("missing", 0, Failed("nobody")),
        ]
    )
    done, stale, missing = results
    assert stale is None
    assert missing is None
    assert done is not None
    assert done.state == Succeeded({"ok": True}, 0.5)
    assert done.version > first.version
    assert done.expires_at == expires
    assert (done.attempts, done.payload, done.method) == (first.attempts, first.payload, "work")
    assert await storage.get(first.id) == done
    # The stale swap changed nothing.
    assert await storage.get(second.id) == second
    # The old version of `first` is now stale too.
    assert await storage.apply([Transition(first.id, first.version, Failed("late"))]) == [None]
    assert await storage.get(first.id) == done
    assert await storage.apply([]) == []


async def test_apply_batch_applies_in_order(storage: Storage) -> None:
    """Transitions of one job in one batch apply one after the other."""
    await storage.enqueue(make_job())
    (job,) = await claim(storage)
    v = job.version
    first, again = await storage.apply(
        [
            Transition(job.id, v, AwaitingRetry(utcnow(), "e")),
            Transition(job.id, v, Failed("lost the race")),
        ]
    )
    assert first is not None
    assert first.version > v
    assert again is None
    assert await storage.get(job.id) == first


async def test_a_result_too_deep_to_store_is_type_error_and_applies_nothing(
    storage: Storage,
) -> None:
    await storage.enqueue(make_job())
    (job,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=utcnow())
    with pytest.raises(TypeError, match="JSON"):
        await storage.apply([Transition(job.id, job.version, Succeeded(deeply_nested(), 0.1))])
    assert await storage.get(job.id) == job


async def test_apply_sets_or_keeps_attempts_and_expiry(storage: Storage) -> None:
    await storage.enqueue(make_job())
    (job,) = await claim(storage)
    retry_at = utcnow() + timedelta(seconds=30)
    (kept,) = await storage.apply([Transition(job.id, job.version, AwaitingRetry(retry_at, "e"))])
    assert kept is not None
    assert kept.attempts == 1
    assert kept.expires_at is None
    assert kept.state == AwaitingRetry(retry_at, "e")
    expires = utcnow() + timedelta(hours=1)
    (reset,) = await storage.apply(
        [Transition(job.id, kept.version, Enqueued(utcnow()), attempts=0, expires_at=expires)]
    )
    assert reset is not None
    assert reset.attempts == 0
    assert reset.expires_at == expires
    (cleared,) = await storage.apply([Transition(job.id, reset.version, Deleted())])
    assert cleared is not None
    assert cleared.expires_at is None
    assert await storage.get(job.id) == cleared


async def test_apply_to_enqueued_makes_the_job_claimable(storage: Storage) -> None:
    await storage.enqueue(make_job())
    (job,) = await claim(storage)
    assert await claim(storage) == []
    (back,) = await storage.apply([Transition(job.id, job.version, Enqueued(utcnow()))])
    assert back is not None
    (again,) = await claim(storage)
    assert again.id == job.id
    assert again.attempts == 2


# -- scheduler, stale claims, cleanup --------------------------------------


async def test_promote_due_enqueues_only_due_scheduled_and_retries(storage: Storage) -> None:
    now = utcnow()
    past, future = now - timedelta(seconds=1), now + timedelta(hours=1)
    due_scheduled = make_job(state=Scheduled(past))
    at_now = make_job(state=Scheduled(now))
    due_retry = make_job(state=AwaitingRetry(past, "e"))
    due_retry.attempts = 1
    later = [make_job(state=Scheduled(future)), make_job(state=AwaitingRetry(future, "e"))]
    others = [
        make_job(state=s) for s in EVERY_STATE if not isinstance(s, Scheduled | AwaitingRetry)
    ]
    for s in others:
        if isinstance(s.state, Enqueued):
            s.state = Enqueued(past)
    await storage.enqueue_many([due_scheduled, at_now, due_retry, *later, *others])
    before = {j.id: await storage.get(j.id) for j in (due_scheduled, at_now, due_retry)}

    changed = await storage.promote_due(now)
    assert {t.job.id for t in changed} == {due_scheduled.id, at_now.id, due_retry.id}
    for t in changed:
        old = before[t.job.id]
        assert old is not None
        assert t.old_state == old.state
        assert isinstance(t.job.state, Enqueued)
        assert t.job.version > old.version
        assert t.job.attempts == old.attempts
        assert await storage.get(t.job.id) == t.job
    for job in [*later, *others]:
        stored = await storage.get(job.id)
        assert stored is not None
        assert stored.state == job.state
    assert await storage.promote_due(now) == []


async def test_requeue_stale_by_claim_time(storage: Storage) -> None:
    now = utcnow()
    old = make_job(state=processing("srv", now - timedelta(seconds=10)))
    old.attempts = 2
    fresh = make_job(state=processing("srv", now - timedelta(seconds=1)))
    at_cutoff = make_job(state=processing("srv", now - timedelta(seconds=5)))  # not *before*
    await storage.enqueue_many(
        [old, fresh, at_cutoff, make_job(state=Scheduled(now - timedelta(hours=1)))]
    )
    changed = await storage.requeue_stale(now - timedelta(seconds=5), now)
    assert [t.job.id for t in changed] == [old.id]
    (t,) = changed
    assert t.old_state == old.state
    assert isinstance(t.job.state, Enqueued)
    assert t.job.attempts == 2
    assert await storage.get(old.id) == t.job
    stored_fresh = await storage.get(fresh.id)
    assert stored_fresh is not None
    assert stored_fresh.state == fresh.state
    (claimed,) = await claim(storage)
    assert claimed.id == old.id
    assert claimed.attempts == 3


async def test_delete_expired_at_or_before_now(storage: Storage) -> None:
    now = utcnow()
    jobs = []
    for expires in (now - timedelta(days=1), now, now + timedelta(seconds=1), None):
        job = make_job(state=Succeeded(None, 0.1))
        job.expires_at = expires
        jobs.append(job)
    await storage.enqueue_many(jobs)
    assert await storage.delete_expired(now) == 2
    assert [await storage.get(j.id) is None for j in jobs] == [True, True, False, False]
    assert await storage.delete_expired(now) == 0


# -- servers ---------------------------------------------------------------


def server(server_id: str, heartbeat: datetime, queues: list[str] | None = None) -> ServerInfo:
    return ServerInfo(
        id=server_id,
        name=server_id.split("#")[0],
        worker_count=4,
        queues=["default", "mail"] if queues is None else queues,
        started_at=heartbeat - timedelta(minutes=5),
        last_heartbeat=heartbeat,
    )


async def test_server_rows(storage: Storage) -> None:
    now = utcnow()
    a, b = server("a#1", now), server("b#2", now, queues=[])
    await storage.register_server(a)
    await storage.register_server(b)
    assert sorted(
        (s.id, s.name, s.worker_count, s.queues) for s in await storage.list_servers()
    ) == [
        ("a#1", "a", 4, ["default", "mail"]),
        ("b#2", "b", 4, []),
    ]
    later = now + timedelta(seconds=10)
    assert await storage.heartbeat("a#1", later) is True
    assert await storage.heartbeat("zz#9", later) is False
    rows = {s.id: s for s in await storage.list_servers()}
    assert rows["a#1"].last_heartbeat == later
    assert rows["a#1"].started_at == a.started_at
    assert rows["b#2"].last_heartbeat == now
    # Registering again replaces the row.
    await storage.register_server(server("a#1", now, queues=["x"]))
    assert {s.id: s.queues for s in await storage.list_servers()}["a#1"] == ["x"]
    await storage.deregister_server("a#1")
    await storage.deregister_server("a#1")
    assert [s.id for s in await storage.list_servers()] == ["b#2"]
    assert await storage.heartbeat("a#1", later) is False


async def test_reclaim_dead_requeues_only_dead_servers_jobs(storage: Storage) -> None:
    now = utcnow()
    cutoff = now - timedelta(seconds=60)
    await storage.register_server(server("dead#1", now - timedelta(seconds=120)))
    await storage.register_server(server("live#2", now - timedelta(seconds=5)))
    dead_jobs = [
        make_job(state=processing("dead#1", now - timedelta(seconds=200))) for _ in range(2)
    ]
    dead_jobs[0].attempts = 3
    live_job = make_job(state=processing("live#2", now - timedelta(seconds=200)))
    unknown = make_job(state=processing("never-registered", now - timedelta(seconds=200)))
    other = make_job(state=Failed("x"))
    await storage.enqueue_many([*dead_jobs, live_job, unknown, other])

    changed = await storage.reclaim_dead(cutoff, now)
    assert sorted(t.job.id for t in changed) == sorted(j.id for j in dead_jobs)
    for t in changed:
        assert isinstance(t.old_state, Processing)
        assert t.old_state.server_name == "dead#1"
        assert isinstance(t.job.state, Enqueued)
        assert await storage.get(t.job.id) == t.job
    reclaimed = {t.job.id: t.job for t in changed}
    assert reclaimed[dead_jobs[0].id].attempts == 3
    for job in (live_job, unknown, other):
        stored = await storage.get(job.id)
        assert stored is not None
        assert stored.state == job.state
    assert [s.id for s in await storage.list_servers()] == ["live#2"]
    assert await storage.reclaim_dead(cutoff, now) == []


async def test_reclaim_dead_removes_rows_without_jobs(storage: Storage) -> None:
    now = utcnow()
    await storage.register_server(server("idle#1", now - timedelta(hours=1)))
    assert await storage.reclaim_dead(now - timedelta(seconds=60), now) == []
    assert await storage.list_servers() == []


# -- recurring -------------------------------------------------------------


def template(rid: str, next_run_at: datetime, cron: str = "*/5 * * * * *") -> RecurringJob:
    return RecurringJob(
        id=rid,
        cron=cron,
        method="digest",
        payload={"kind": rid},
        queue="reports",
        next_run_at=next_run_at,
        priority=3,
    )


async def test_recurring_upsert_replace_remove_list(storage: Storage) -> None:
    now = utcnow()
    await storage.upsert_recurring(template("a", now))
    await storage.upsert_recurring(template("b", now))
    assert sorted(r.id for r in await storage.list_recurring()) == ["a", "b"]
    replaced = template("a", now + timedelta(hours=1), cron="0 0 8 * * *")
    await storage.upsert_recurring(replaced)
    rows = {r.id: r for r in await storage.list_recurring()}
    assert rows["a"] == replaced
    assert rows["b"] == template("b", now)
    assert await storage.remove_recurring("a") is True
    assert await storage.remove_recurring("a") is False
    assert [r.id for r in await storage.list_recurring()] == ["b"]


async def test_recurring_payload_must_be_json(storage: Storage) -> None:
    bad = template("bad", utcnow())
    bad.payload = {"x": object()}
    with pytest.raises(TypeError):
        await storage.upsert_recurring(bad)
    assert await storage.list_recurring() == []


def fixed_next_run(step: timedelta) -> tuple[Callable[[str, datetime], datetime], list[Any]]:
    calls: list[Any] = []

    def next_run(cron: str, after: datetime) -> datetime:
        calls.append((cron, after))
        return after + step

    return next_run, calls


async def test_enqueue_due_recurring_once_per_occurrence(storage: Storage) -> None:
    now = utcnow()
    await storage.upsert_recurring(template("due", now - timedelta(minutes=10)))
    await storage.upsert_recurring(template("later", now + timedelta(minutes=10)))
    next_run, calls = fixed_next_run(timedelta(seconds=5))

    made = await storage.enqueue_due_recurring(now, next_run)
    assert len(made) == 1
    (job,) = made
    assert (job.method, job.payload, job.queue, job.priority) == (
        "digest",
        {"kind": "due"},
        "reports",
        3,
    )
    assert isinstance(job.state, Enqueued)
    stored = await storage.get(job.id)
    assert stored is not None
    assert (stored.method, stored.payload, stored.queue) == ("digest", {"kind": "due"}, "reports")
    assert isinstance(stored.state, Enqueued)
    assert calls == [("*/5 * * * * *", now)]  # missed occurrences collapse into one
    rows = {r.id: r for r in await storage.list_recurring()}
    assert rows["due"].next_run_at == now + timedelta(seconds=5)
    assert rows["later"].next_run_at == now + timedelta(minutes=10)
    # Same instant again: nothing is due any more.
    assert await storage.enqueue_due_recurring(now, next_run) == []
    # The next occurrence.
    assert len(await storage.enqueue_due_recurring(now + timedelta(seconds=5), next_run)) == 1
    assert counts(await storage.count_by_state()) == {"enqueued": 2}


async def test_enqueue_due_recurring_concurrent_callers_enqueue_once(storage: Storage) -> None:
    now = utcnow()
    for rid in ("a", "b", "c"):
        await storage.upsert_recurring(template(rid, now - timedelta(seconds=1)))
    next_run, _ = fixed_next_run(timedelta(minutes=1))
    made: list[Job] = []

    async def poll() -> None:
        made.extend(await storage.enqueue_due_recurring(now, next_run))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(poll)
    assert sorted(job.payload["kind"] for job in made) == ["a", "b", "c"]
    assert counts(await storage.count_by_state()) == {"enqueued": 3}


async def test_enqueue_due_recurring_across_storages_enqueues_once(shared_url: str) -> None:
    now = utcnow()
    next_run, _ = fixed_next_run(timedelta(minutes=1))
    made: list[Job] = []
    async with open_storage(shared_url) as one, open_storage(shared_url) as two:
        for rid in ("a", "b", "c", "d"):
            await one.upsert_recurring(template(rid, now - timedelta(seconds=1)))

        async def poll(storage: Storage) -> None:
            made.extend(await storage.enqueue_due_recurring(now, next_run))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(poll, one)
                nursery.start_soon(poll, two)
        assert sorted(job.payload["kind"] for job in made) == ["a", "b", "c", "d"]
        assert counts(await two.count_by_state()) == {"enqueued": 4}


# -- wait_for_work, lifecycle ----------------------------------------------


async def test_wait_for_work_wakes_on_enqueue(storage: Storage) -> None:
    woke = trio.Event()

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await storage.wait_for_work()
        woke.set()

    with trio.fail_after(10):  # only a wake-up returns: the wait itself has no end
        async with trio.open_nursery() as nursery:
            await nursery.start(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await storage.enqueue(make_job())
            await woke.wait()


async def test_wait_for_work_wakes_on_promotion(storage: Storage) -> None:
    now = utcnow()
    await storage.enqueue(make_job(state=Scheduled(now - timedelta(seconds=1))))
    woke = trio.Event()

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await storage.wait_for_work()
        woke.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert len(await storage.promote_due(now)) == 1
            await woke.wait()


async def test_wait_for_work_blocks_without_work(storage: Storage) -> None:
    with trio.move_on_after(0.05) as scope:
        await storage.wait_for_work()
    assert scope.cancelled_caught


async def test_aclose_is_idempotent(storage_url: str) -> None:
    async with open_storage(storage_url) as storage:
        await storage.enqueue(make_job())
        await storage.aclose()
        await storage.aclose()
    await storage.aclose()


async def test_data_survives_reopen(shared_url: str) -> None:
    job = make_job(state=Scheduled(T0))
    async with open_storage(shared_url) as storage:
        await storage.enqueue(job)
    async with open_storage(shared_url) as storage:
        got = await storage.get(job.id)
    assert got is not None
    assert got.state == Scheduled(T0)


@pytest.mark.parametrize("url", ["mysql://x", "", "redis://h/0", "memory:", "jobs.db"])
async def test_open_storage_unknown_scheme(url: str) -> None:
    with pytest.raises(ValueError, match="memory://") as info:
        async with open_storage(url):
            pass
    assert "sqlite:///" in str(info.value)
    assert "postgresql://" in str(info.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("memory://typo", "memory:// takes no path"),
        ("memory:// ", "whitespace"),
        ("sqlite:///x.db ", "whitespace"),
        (" sqlite:///x.db", "whitespace"),
        ("sqlite:///x\n.db", "control characters"),
        ("sqlite://relative.db", "three slashes"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout must be seconds"),
        ("sqlite:///x.db?timeout=1", "unknown SQLite URL option"),
        ("postgresql://h:port/db", "malformed PostgreSQL URL"),
        ("postgresql://h/db?pool_max_size=ten", "bad value for pool_max_size"),
        ("postgresql://h/db?lock_timeout=-1", "lock_timeout must be >= 0"),
        ("postgresql://h/db?pool_timeout=inf", "pool_timeout must be finite"),
    ],
)
async def test_malformed_urls_are_value_errors_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        async with open_storage(url):
            pass
    with pytest.raises(ValueError, match=problem):
        await check_schema(url)


async def test_storage_url_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        async with open_storage(b"memory://"):  # type: ignore[arg-type]
            pass


# -- rules every backend shares --------------------------------------------


def every_call(now: datetime) -> list[tuple[str, Callable[[Storage], Any]]]:
    """One invocation of every protocol call (besides ``aclose``)."""
    job = make_job()
    info = ServerInfo("s#1", "s", 1, [], now, now)
    next_run, _ = fixed_next_run(timedelta(seconds=1))
    return [
        ("enqueue", lambda s: s.enqueue(job)),
        ("enqueue_many", lambda s: s.enqueue_many([make_job()])),
        ("enqueue_many_empty", lambda s: s.enqueue_many([])),
        ("get", lambda s: s.get(job.id)),
        ("list_jobs", lambda s: s.list_jobs()),
        ("count_by_state", lambda s: s.count_by_state()),
        (
            "claim",
            lambda s: s.claim(queues=[], worker_ids=["w"], server_name="s#1", now=now),
        ),
        (
            "claim_nobody",
            lambda s: s.claim(queues=[], worker_ids=[], server_name="s#1", now=now),
        ),
        ("apply", lambda s: s.apply([Transition(job.id, 1, Failed("x"))])),
        ("apply_empty", lambda s: s.apply([])),
        ("promote_due", lambda s: s.promote_due(now)),
        ("requeue_stale", lambda s: s.requeue_stale(now, now)),
        ("delete_expired", lambda s: s.delete_expired(now)),
        ("wait_for_work", lambda s: s.wait_for_work()),
        ("register_server", lambda s: s.register_server(info)),
        ("heartbeat", lambda s: s.heartbeat(info.id, now)),
        ("deregister_server", lambda s: s.deregister_server(info.id)),
        ("list_servers", lambda s: s.list_servers()),
        ("reclaim_dead", lambda s: s.reclaim_dead(now, now)),
        ("upsert_recurring", lambda s: s.upsert_recurring(template("r", now))),
        ("remove_recurring", lambda s: s.remove_recurring("r")),
        ("list_recurring", lambda s: s.list_recurring()),
        ("enqueue_due_recurring", lambda s: s.enqueue_due_recurring(now, next_run)),
        ("schema_status", lambda s: s.schema_status()),
    ]


async def test_every_call_on_a_closed_storage_is_closed_resource_error(storage_url: str) -> None:
    async with open_storage(storage_url) as storage:
        pass
    for name, call in every_call(utcnow()):
        try:
            await call(storage)
        except trio.ClosedResourceError:
            continue
        pytest.fail(f"{name} worked on a closed storage")


async def test_bad_stored_cron_is_logged_and_skipped_and_the_rest_go_on(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    now = utcnow()
    before = now - timedelta(seconds=1)
    for rid, cron in (("a", "good"), ("broken", "bad"), ("c", "good")):
        await storage.upsert_recurring(template(rid, before, cron=cron))

    def next_run(cron: str, after: datetime) -> datetime:
        if cron == "bad":
            raise ValueError("this stored cron can't be evaluated")
        return after + timedelta(minutes=1)

    with caplog.at_level("ERROR", logger="trio_monitor.jobs.storage"):
        made = await storage.enqueue_due_recurring(now, next_run)
    assert sorted(job.payload["kind"] for job in made) == ["a", "c"]
    assert any("'broken'" in record.getMessage() for record in caplog.records)
    rows = {r.id: r for r in await storage.list_recurring()}
    assert rows["a"].next_run_at == rows["c"].next_run_at == now + timedelta(minutes=1)
    assert rows["broken"].next_run_at == before  # left as it was, tried again next poll
    assert counts(await storage.count_by_state()) == {"enqueued": 2}
    # The next poll: only the broken one is due, and it is skipped again.
    assert await storage.enqueue_due_recurring(now, next_run) == []


@pytest.mark.parametrize(
    "state",
    [Scheduled(T0 - timedelta(minutes=1)), AwaitingRetry(T0 - timedelta(minutes=1), "e")],
    ids=lambda s: s.name,
)
async def test_promotion_keeps_attempts_and_clears_expiry(
    storage: Storage, state: JobState
) -> None:
    job = make_job(state=state)
    job.attempts = 2
    job.expires_at = T0 - timedelta(seconds=1)  # would be deleted by cleanup if it stayed
    await storage.enqueue(job)
    (promoted,) = await storage.promote_due(T0)
    assert promoted.old_state == state
    assert promoted.job.state == Enqueued(T0)
    assert (promoted.job.attempts, promoted.job.expires_at) == (2, None)
    stored = await storage.get(job.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.expires_at) == (Enqueued(T0), 2, None)
    assert await storage.delete_expired(T0 + timedelta(days=1)) == 0


async def test_requeued_stale_claim_keeps_its_attempt_and_payload(storage: Storage) -> None:
    job = make_job(payload={"keep": [1, 2]}, priority=4)
    await storage.enqueue(job)
    (claimed,) = await storage.claim(queues=[], worker_ids=["w"], server_name="s", now=T0)
    (requeued,) = await storage.requeue_stale(T0 + timedelta(seconds=1), T0 + timedelta(minutes=1))
    assert requeued.old_state == Processing(T0, "w", "s")
    stored = await storage.get(job.id)
    assert stored is not None
    assert stored == requeued.job
    assert (stored.state, stored.attempts, stored.payload, stored.priority) == (
        Enqueued(T0 + timedelta(minutes=1)),
        1,
        {"keep": [1, 2]},
        4,
    )
    assert stored.version == claimed.version + 1


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, 2**63])
async def test_priority_outside_32_bits_is_value_error_and_stores_nothing(
    storage: Storage, priority: int
) -> None:
    good = make_job()
    with pytest.raises(ValueError, match="32 bits"):
        await storage.enqueue_many([good, make_job(priority=priority)])
    with pytest.raises(ValueError, match="32 bits"):
        await storage.upsert_recurring(attrs.evolve(template("r", utcnow()), priority=priority))
    assert await storage.list_jobs() == []
    assert await storage.list_recurring() == []
    for edge in (2**31 - 1, -(2**31)):
        await storage.enqueue(make_job(priority=edge))
    assert len(await storage.list_jobs()) == 2


async def test_claim_from_more_queues_than_sqlite_compounds(storage: Storage) -> None:
    queues = [f"q{i}" for i in range(600)]
    jobs = [make_job(queue=queue, priority=i % 3) for i, queue in enumerate(queues[::50])]
    await storage.enqueue_many(jobs)
    await storage.enqueue(make_job(queue="not-listed", priority=9))
    got = await storage.claim(
        queues=queues, worker_ids=[f"w{i}" for i in range(20)], server_name="s", now=utcnow()
    )
    expected = sorted(range(len(jobs)), key=lambda i: (-jobs[i].priority, i))
    assert [job.id for job in got] == [jobs[i].id for i in expected]


async def test_schema_status_check_and_migrate(backend: Backend, storage_url: str) -> None:
    before = await check_schema(storage_url)
    assert before.latest >= before.current >= 0
    after = await migrate(storage_url)
    assert after.up_to_date
    assert not after.too_new
    assert after.latest == before.latest
    assert await check_schema(storage_url) == after
    async with open_storage(storage_url) as storage:
        assert await storage.schema_status() == after
    if backend.shared:
        assert before.current == 0  # a new database: nothing created by checking


async def test_newer_schema_is_refused_with_schema_version_error(
    backend: Backend, storage_url: str
) -> None:
    if not backend.shared:
        pytest.skip(f"{backend.name} storage has no schema")
    status = await migrate(storage_url)
    await make_schema_newer(backend, storage_url, status.latest + 3)
    assert await check_schema(storage_url) == SchemaStatus(status.latest + 3, status.latest)
    assert (await check_schema(storage_url)).too_new
    with pytest.raises(SchemaVersionError, match="newer trio_monitor"):
        async with open_storage(storage_url):
            pass
    with pytest.raises(SchemaVersionError):
        await migrate(storage_url)


async def make_schema_newer(backend: Backend, url: str, version: int) -> None:
    """Stamp the database at ``url`` as written by a future trio_monitor."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()
        return
    import psycopg

    def stamp() -> None:
        # Our own URL options (claim_synchronous_commit) are not libpq's.
        with psycopg.connect(url.partition("?")[0], autocommit=True) as conn:
            conn.execute("INSERT INTO trio_monitor_schema_version (version) VALUES (%s)", [version])

    await trio.to_thread.run_sync(stamp)


# -- a property: random enqueue / claim / apply against a model ------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(-2, 2), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("claim"), st.integers(1, 4), st.booleans()),
        st.tuples(
            st.just("apply"), st.integers(0, 50), st.sampled_from(["done", "retry", "stale"])
        ),
    ),
    max_size=25,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_random_operations_match_a_model(storage_url: str, ops: list[tuple[Any, ...]]) -> None:
    """No job is claimed while claimed; claims follow the order; versions only grow.

    Each example uses its own two queues, so examples can share one store;
    a claim names the first queue, or both (the order then runs across them).
    """
    queue, other = f"q-{uuid.uuid4()}", f"q-{uuid.uuid4()}"
    seq = itertools.count()

    async def main() -> None:
        # id -> (priority, creation rank, state name, version, attempts, queue)
        model: dict[str, list[Any]] = {}
        async with open_storage(storage_url) as storage:
            for op in ops:
                if op[0] == "enqueue":
                    into = other if op[3] else queue
                    jobs = [make_job(priority=op[1], queue=into) for _ in range(op[2])]
                    await storage.enqueue_many(jobs)
                    for job in jobs:
                        stored = await storage.get(job.id)
                        assert stored is not None
                        model[job.id] = [
                            job.priority,
                            next(seq),
                            "enqueued",
                            stored.version,
                            0,
                            into,
                        ]
                elif op[0] == "claim":
                    queues = [queue] if op[2] else [queue, other]
                    claimable = sorted(
                        (m for m in model.items() if m[1][2] == "enqueued" and m[1][5] in queues),
                        key=lambda m: (-m[1][0], m[1][1]),
                    )
                    got = await storage.claim(
                        queues=queues,
                        worker_ids=[f"w{i}" for i in range(op[1])],
                        server_name="srv",
                        now=utcnow(),
                    )
                    assert [j.id for j in got] == [m[0] for m in claimable[: op[1]]]
                    for job in got:
                        entry = model[job.id]
                        assert job.version > entry[3]
                        assert job.attempts == entry[4] + 1
                        entry[2:5] = ["processing", job.version, job.attempts]
                else:
                    held = [k for k, m in model.items() if m[2] == "processing"]
                    if not held:
                        continue
                    job_id = held[op[1] % len(held)]
                    entry = model[job_id]
                    version = entry[3] - 1 if op[2] == "stale" else entry[3]
                    state: JobState = (
                        Succeeded(op[1], 0.1) if op[2] == "done" else Enqueued(utcnow())
                    )
                    (result,) = await storage.apply([Transition(job_id, version, state)])
                    if op[2] == "stale":
                        assert result is None
                    else:
                        assert result is not None
                        assert result.version > entry[3]
                        entry[2:4] = [state.name, result.version]
            for job_id, entry in model.items():
                stored = await storage.get(job_id)
                assert stored is not None
                assert (stored.state.name, stored.version, stored.attempts) == (
                    entry[2],
                    entry[3],
                    entry[4],
                )

    trio.run(main)


# -- a property: cancellation stays with its caller ------------------------

ISOLATION_CALLS = [
    "enqueue",
    "claim",
    "apply",
    "get",
    "list_jobs",
    "count_by_state",
    "promote_due",
    "requeue_stale",
    "delete_expired",
    "register_server",
    "heartbeat",
    "list_servers",
    "reclaim_dead",
    "upsert_recurring",
    "remove_recurring",
    "list_recurring",
    "enqueue_due_recurring",
    "schema_status",
    "wait_for_work",
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=callers(ISOLATION_CALLS))
def test_cancellation_stays_with_its_caller(storage_url: str, drawn: list[Caller]) -> None:
    """Random callers of every call, some cancelled mid-call, all at once.

    A caller that is not cancelled never sees ``Cancelled`` and finishes; a
    cancelled call either happened whole (it returned) or not at all, so
    what was accepted is stored and nothing else: an enqueue or upsert is
    stored iff it returned, a claim took its job iff it returned.
    """
    tag = uuid.uuid4().hex  # examples share the store: every id is this example's own
    past = T0 - timedelta(days=3650)  # sweeps that find nothing of anybody's
    next_run, _ = fixed_next_run(timedelta(minutes=1))

    async def main() -> None:
        async with open_storage(storage_url) as storage:
            claimable = {i: make_job(queue=f"{tag}-{i}") for i, _ in enumerate(drawn)}
            held = {i: make_job(queue=f"{tag}-held-{i}") for i, _ in enumerate(drawn)}
            await storage.enqueue_many([*claimable.values(), *held.values()])
            holds = {
                job.queue: job
                for job in await storage.claim(
                    queues=[job.queue for job in held.values()],
                    worker_ids=["w"] * len(held),
                    server_name=f"{tag}-s",
                    now=utcnow(),
                )
            }
            new_jobs = {i: make_job(queue=tag) for i, _ in enumerate(drawn)}

            def call(i: int, name: str) -> Any:
                now = utcnow()
                server = ServerInfo(f"{tag}-{i}", "s", 1, [], now, now)
                return {
                    "enqueue": lambda: storage.enqueue(new_jobs[i]),
                    "claim": lambda: storage.claim(
                        queues=[claimable[i].queue], worker_ids=["w"], server_name="s", now=now
                    ),
                    "apply": lambda: storage.apply(
                        [Transition(held[i].id, holds[held[i].queue].version, Failed("x"))]
                    ),
                    "get": lambda: storage.get(claimable[i].id),
                    "list_jobs": lambda: storage.list_jobs(limit=5),
                    "count_by_state": storage.count_by_state,
                    "promote_due": lambda: storage.promote_due(past),
                    "requeue_stale": lambda: storage.requeue_stale(past, now),
                    "delete_expired": lambda: storage.delete_expired(past),
                    "register_server": lambda: storage.register_server(server),
                    "heartbeat": lambda: storage.heartbeat(server.id, now),
                    "list_servers": storage.list_servers,
                    "reclaim_dead": lambda: storage.reclaim_dead(past, now),
                    "upsert_recurring": lambda: storage.upsert_recurring(
                        template(f"{tag}-{i}", now + timedelta(days=1))
                    ),
                    "remove_recurring": lambda: storage.remove_recurring(f"{tag}-none"),
                    "list_recurring": storage.list_recurring,
                    "enqueue_due_recurring": lambda: storage.enqueue_due_recurring(past, next_run),
                    "schema_status": storage.schema_status,
                    "wait_for_work": storage.wait_for_work,
                }[name]()

            returned = await run_callers(drawn, call, never_return={"wait_for_work"})

            recurring = {r.id for r in await storage.list_recurring()}
            for i, (name, _) in enumerate(drawn):
                if name == "enqueue":
                    stored = await storage.get(new_jobs[i].id)
                    assert (stored is not None) == (i in returned), (i, name)
                elif name == "upsert_recurring":
                    assert (f"{tag}-{i}" in recurring) == (i in returned), (i, name)
                elif name == "claim":
                    job = await storage.get(claimable[i].id)
                    assert job is not None
                    assert isinstance(job.state, Processing) == (i in returned), (i, name)
                elif name == "apply":
                    job = await storage.get(held[i].id)
                    assert job is not None
                    assert isinstance(job.state, Failed) == (i in returned), (i, name)

    trio.run(main)


# -- job control (SPEC section 6) ------------------------------------------


def client_of(storage: Storage) -> Client:
    return Client(storage)


async def test_unique_key_returns_the_live_job_and_frees_when_it_ends(storage: Storage) -> None:
    client = client_of(storage)
    first = await client.enqueue("m", 1, unique_key="k")
    assert await client.enqueue("m", 2, unique_key="k") == first
    assert await client.enqueue("m", 3, unique_key="k", delay=60) == first
    assert len(await storage.list_jobs()) == 1
    (claimed,) = await claim(storage)
    assert await client.enqueue("m", 4, unique_key="k") == first  # Processing is live
    await storage.apply([Transition(first, claimed.version, Succeeded(None, 0.1))])
    second = await client.enqueue("m", 5, unique_key="k")
    assert second != first
    other = await client.enqueue("m", 6, unique_key="other")
    assert other not in (first, second)
    # A job stored in a state that is not live never blocks the key.
    done = make_job(state=Failed("x"))
    done.unique_key = "k"
    assert await storage.enqueue(done) == done.id


async def test_enqueue_many_gives_unique_hits_the_live_id(storage: Storage) -> None:
    live = Job.new("m", 0, unique_key="a")
    await storage.enqueue(live)
    batch = [
        Job.new("m", 1, unique_key="a"),
        Job.new("m", 2, unique_key="b"),
        Job.new("m", 3, unique_key="b"),
        Job.new("m", 4),
    ]
    ids = await storage.enqueue_many(batch)
    assert ids == [live.id, batch[1].id, batch[1].id, batch[3].id]
    assert len(await storage.list_jobs()) == 3


async def test_enqueue_many_with_a_bad_job_stores_nothing(storage: Storage) -> None:
    client = client_of(storage)
    good = Job.new("m", 1, unique_key="u")
    bad = Job.new("m", {"x": object()})
    with pytest.raises(TypeError):
        await client.enqueue_many([good, bad])
    with pytest.raises(TypeError):
        await client.enqueue_many([good, "not a job"])  # type: ignore[list-item]
    existing = Job.new("m", 0)
    await storage.enqueue(existing)
    clash = Job.new("m", 2)
    clash.id = existing.id
    with pytest.raises(ValueError, match="already exist"):
        await client.enqueue_many([good, clash])
    assert [job.id for job in await storage.list_jobs()] == [existing.id]


async def test_two_storages_enqueueing_one_unique_key_store_one_job(shared_url: str) -> None:
    async with open_storage(shared_url) as a, open_storage(shared_url) as b:
        ids: list[str] = []

        async def enqueue(storage: Storage, n: int) -> None:
            for i in range(n):
                ids.append(await storage.enqueue(Job.new("m", i, unique_key="one")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, a, 10)
            nursery.start_soon(enqueue, b, 10)
        assert len(set(ids)) == 1
        assert len(await a.list_jobs()) == 1


async def test_paused_queue_starts_nothing_until_resumed(storage: Storage) -> None:
    client = client_of(storage)
    await storage.enqueue_many([make_job(queue="mail"), make_job(queue="other")])
    await client.pause_queue("mail")
    got = await claim(storage, 5, queues=[])
    assert [job.queue for job in got] == ["other"]
    assert await claim(storage, 5, queues=["mail"]) == []
    (info,) = [q for q in await client.queues() if q.name == "mail"]
    assert info.paused
    await client.resume_queue("mail")
    assert [job.queue for job in await claim(storage, 5, queues=["mail"])] == ["mail"]


async def test_max_running_caps_processing_jobs_of_a_queue(storage: Storage) -> None:
    client = client_of(storage)
    await client.set_queue_limits("q", max_running=2)
    jobs = [make_job(queue="q", priority=p) for p in range(5)]
    await storage.enqueue_many(jobs)
    first = await claim(storage, 5, queues=["q"])
    assert [job.id for job in first] == [jobs[4].id, jobs[3].id]  # order kept
    assert await claim(storage, 5, queues=["q"]) == []
    await storage.apply([Transition(first[0].id, first[0].version, Succeeded(None, 0.0))])
    assert [job.id for job in await claim(storage, 5, queues=["q"])] == [jobs[2].id]
    (info,) = await client.queues()
    assert (info.name, info.max_running, info.rate) == ("q", 2, None)
    assert info.counts == {"processing": 2, "succeeded": 1, "enqueued": 2}


async def test_rate_caps_starts_in_a_sliding_window(storage: Storage) -> None:
    client = client_of(storage)
    await client.set_queue_limits("q", rate=(2, 60.0))
    await storage.enqueue_many([make_job(queue="q") for _ in range(6)])
    t = utcnow()
    assert len(await claim(storage, 5, queues=["q"], now=t)) == 2
    assert await claim(storage, 5, queues=["q"], now=t + timedelta(seconds=30)) == []
    assert await claim(storage, 5, queues=["q"], now=t + timedelta(seconds=59)) == []
    assert len(await claim(storage, 5, queues=["q"], now=t + timedelta(seconds=61))) == 2
    await client.set_queue_limits("q")  # no limits
    assert len(await claim(storage, 5, queues=["q"], now=t + timedelta(seconds=62))) == 2


async def test_lock_allows_one_processing_job_per_key(storage: Storage) -> None:
    jobs = [Job.new("m", i, lock=lock) for i, lock in enumerate(["a", "a", "b", None, "a"])]
    await storage.enqueue_many(jobs)
    got = await claim(storage, 5)
    assert [job.id for job in got] == [jobs[0].id, jobs[2].id, jobs[3].id]
    assert await claim(storage, 5) == []
    await storage.apply([Transition(got[0].id, got[0].version, Failed("x"))])
    assert [job.id for job in await claim(storage, 5)] == [jobs[1].id]


async def test_abort_each_state(storage: Storage) -> None:
    client = client_of(storage)
    queued = Job.new("m", 1)
    scheduled = Job.new("m", 2, delay=3600)
    running = Job.new("m", 3, queue="run")
    done = make_job(state=Succeeded(1, 0.1))
    await storage.enqueue_many([queued, scheduled, running, done])
    (claimed,) = await claim(storage, queues=["run"], server="srv#1")
    assert await client.abort(queued.id, "no longer needed")
    got = await storage.get(queued.id)
    assert got is not None
    assert got.state == Aborted("no longer needed")
    assert await client.abort(scheduled.id)
    assert await storage.abort(claimed.id, "stop", utcnow()) == "requested"
    still = await storage.get(claimed.id)
    assert still is not None
    assert isinstance(still.state, Processing)
    assert still.version == claimed.version  # the server's CAS still works
    assert await storage.aborts_requested("srv#1") == [(claimed.id, "stop")]
    assert await storage.aborts_requested("srv#2") == []
    (ended,) = await storage.apply([Transition(claimed.id, claimed.version, Aborted("stop"))])
    assert ended is not None
    assert await storage.aborts_requested("srv#1") == []
    assert not await client.abort(done.id)
    assert not await client.abort(claimed.id)
    assert not await client.abort("no-such-job")
    assert await storage.abort("no-such-job", "x", utcnow()) == "missing"
    assert await claim(storage, 5, queues=[]) == []  # nothing aborted runs


async def test_a_requeued_job_whose_abort_was_requested_ends_aborted(storage: Storage) -> None:
    job = Job.new("m", 1)
    await storage.enqueue(job)
    t = utcnow()
    assert len(await claim(storage, now=t)) == 1
    assert await storage.abort(job.id, "stop", t) == "requested"
    (changed,) = await storage.requeue_stale(t + timedelta(seconds=1), t + timedelta(seconds=2))
    assert changed.job.state == Aborted("stop")
    assert await claim(storage, 5) == []


async def test_wait_for_abort_wakes_in_process(storage: Storage) -> None:
    job = Job.new("m", 1)
    await storage.enqueue(job)
    await claim(storage)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def abort_soon() -> None:
                await trio.sleep(0.02)
                await storage.abort(job.id, "x", utcnow())

            nursery.start_soon(abort_soon)
            await storage.wait_for_abort()


async def test_retry_failed_or_aborted_only(storage: Storage) -> None:
    client = client_of(storage)
    failed = make_job(state=Failed("x"))
    failed.attempts = 3
    aborted = make_job(state=Aborted("y"))
    succeeded = make_job(state=Succeeded(1, 0.1))
    queued = make_job()
    await storage.enqueue_many([failed, aborted, succeeded, queued])
    assert await client.retry(failed.id)
    again = await storage.get(failed.id)
    assert again is not None
    assert isinstance(again.state, Enqueued)
    assert again.attempts == 0
    assert await client.retry(aborted.id)
    assert not await client.retry(succeeded.id)
    assert not await client.retry(queued.id)
    assert not await client.retry("missing")


async def test_retry_refused_while_its_unique_key_is_live(storage: Storage) -> None:
    old = make_job(state=Failed("x"))
    old.unique_key = "k"
    await storage.enqueue(old)
    live = await storage.enqueue(Job.new("m", 1, unique_key="k"))
    assert live != old.id
    assert not await storage.retry(old.id, utcnow())


async def test_delete(storage: Storage) -> None:
    client = client_of(storage)
    queued = make_job()
    running = make_job(queue="run")
    await storage.enqueue_many([queued, running])
    (claimed,) = await claim(storage, queues=["run"], server="s")
    assert await client.delete(queued.id)
    got = await storage.get(queued.id)
    assert got is not None
    assert isinstance(got.state, Deleted)
    assert not await client.delete(queued.id)
    assert not await client.delete("missing")
    assert await client.delete(claimed.id)  # running: aborted
    assert await storage.aborts_requested("s") == [(claimed.id, "deleted")]


async def test_set_progress_keeps_the_version(storage: Storage) -> None:
    job = make_job()
    await storage.enqueue(job)
    assert not await storage.set_progress(job.id, Progress(0.1))
    (claimed,) = await claim(storage)
    assert await storage.set_progress(job.id, Progress(0.5, "half"))
    got = await storage.get(job.id)
    assert got is not None
    assert got.progress == Progress(0.5, "half")
    assert got.version == claimed.version
    assert not await storage.set_progress("missing", Progress(1.0))


async def test_list_jobs_newest_first_with_filters_and_paging(storage: Storage) -> None:
    client = client_of(storage)
    ids = [await client.enqueue("a" if i % 2 else "b", i, queue=f"q{i % 3}") for i in range(10)]
    newest = list(reversed(ids))
    assert [job.id for job in await client.list_jobs()] == newest
    page1 = await client.list_jobs(limit=4)
    page2 = await client.list_jobs(limit=4, before=page1[-1].id)
    page3 = await client.list_jobs(limit=4, before=page2[-1].id)
    assert [job.id for job in page1 + page2 + page3] == newest
    assert [job.id for job in await client.list_jobs(method="a")] == newest[0::2]
    assert [job.id for job in await client.list_jobs(queue="q0")] == [ids[i] for i in (9, 6, 3, 0)]
    assert [job.id for job in await client.list_jobs(queue="q0", method="b", limit=1)] == [ids[6]]
    assert await client.list_jobs(state=Failed) == []
    assert len(await client.list_jobs(state="enqueued")) == 10


async def test_counts_keyed_by_queue_and_state_name(storage: Storage) -> None:
    client = client_of(storage)
    await storage.enqueue_many(
        [make_job(queue="a"), make_job(queue="a"), make_job(queue="b", state=Failed("x"))]
    )
    assert {k: v for k, v in (await client.counts()).items() if v} == {
        ("a", "enqueued"): 2,
        ("b", "failed"): 1,
    }
    await client.set_queue_limits("c", max_running=1, rate=(5, 1.5))
    infos = await client.queues()
    assert [q.name for q in infos] == ["a", "b", "c"]
    assert infos[2].rate == (5, 1.5)
    assert infos[2].counts == {}


async def test_wait_returns_the_finished_job(storage: Storage) -> None:
    client = client_of(storage)
    job_id = await client.enqueue("m", 1)
    with pytest.raises(KeyError):
        await client.wait("missing")
    (claimed,) = await claim(storage)

    async def finish() -> None:
        await trio.sleep(0.05)
        await storage.apply([Transition(job_id, claimed.version, Succeeded(7, 0.1))])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish)
            done = await client.wait(job_id)
    assert done.state == Succeeded(7, 0.1)


async def test_wait_registrations_are_accepted_and_renewable(storage: Storage) -> None:
    job_id = await client_of(storage).enqueue("m", 1)
    await storage.watch_finish(job_id, "a")
    await storage.watch_finish(job_id, "a")  # renewal
    await storage.watch_finish("missing", "b")  # the wait then finds no job
    await storage.unwatch_finish("a")
    await storage.unwatch_finish("a")  # nothing left: nothing to do
    await storage.unwatch_finish("b")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.enqueue("", 1), ValueError),
        (lambda c: c.enqueue("m", 1, priority=2**40), ValueError),
        (lambda c: c.enqueue("m", 1, delay=-1), ValueError),
        (lambda c: c.enqueue("m", 1, delay=1, run_at=utcnow()), ValueError),
        (lambda c: c.enqueue("m", 1, run_at=datetime(2030, 1, 1)), ValueError),
        (lambda c: c.enqueue("m", 1, timeout=0), ValueError),
        (lambda c: c.enqueue("m", 1, timeout=math.inf), ValueError),
        (lambda c: c.enqueue("m", 1, headers={"a": 1}), TypeError),
        (lambda c: c.enqueue("m", 1, unique_key=""), ValueError),
        (lambda c: c.enqueue("m", 1, lock=5), TypeError),
        (lambda c: c.enqueue("m", object()), TypeError),
        (lambda c: c.set_queue_limits("q", max_running=-1), ValueError),
        (lambda c: c.set_queue_limits("q", rate=(0, 1.0)), ValueError),
        (lambda c: c.set_queue_limits("q", rate=(1, -1.0)), ValueError),
        (lambda c: c.set_queue_limits("q", rate=(1,)), TypeError),
        (lambda c: c.set_queue_limits("q", rate="1/s"), TypeError),
        (lambda c: c.set_queue_limits("", max_running=1), ValueError),
        (lambda c: c.list_jobs(state="finished"), ValueError),
        (lambda c: c.list_jobs(state=int), TypeError),
        (lambda c: c.list_jobs(limit=-1), ValueError),
        (lambda c: c.pause_queue(3), TypeError),
    ],
)
async def test_client_bad_input_changes_nothing(
    storage: Storage, call: Callable[[Client], Any], error: type[Exception]
) -> None:
    client = client_of(storage)
    await client.set_queue_limits("q", max_running=3)
    before = (await storage.list_jobs(), await client.queues())
    with pytest.raises(error):
        await call(client)
    assert (await storage.list_jobs(), await client.queues()) == before


def test_job_new_makes_scheduled_jobs_and_checks_progress() -> None:
    now = utcnow()
    job = Job.new("m", 1, delay=10, now=now)
    assert job.state == Scheduled(now + timedelta(seconds=10))
    assert Job.new("m", 1, run_at=now - timedelta(1), now=now).state == Enqueued(now)
    with pytest.raises(ValueError, match="fraction"):
        Progress(1.5)
    with pytest.raises(TypeError):
        Progress(0.5, 3)  # type: ignore[arg-type]
