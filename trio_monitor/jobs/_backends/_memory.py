"""The in-memory storage backend (``memory://``): for tests and demos.

Everything lives in dicts of one process, stored as the same rows the SQL
backends write (:mod:`._rows`), so a job comes back as a fresh copy and every
rule (state columns, requeues, recurring occurrences) is the shared one. Each
method checkpoints once on entry, like a real round trip, and then runs to
completion without yielding, which is what makes every call atomic under
Trio's cooperative scheduling. A method that raises has changed nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import trio

from .._model import (
    LIVE_STATE_NAMES,
    Aborted,
    Deleted,
    Job,
    JobState,
    Processing,
    Progress,
    QueueInfo,
    RecurringJob,
    ServerInfo,
    Transition,
    Transitioned,
    decode_state,
)
from .._storage import AbortOutcome, NextRun, SchemaStatus
from ._rows import (
    QUEUED,
    TERMINAL,
    Admission,
    InsertRow,
    QueueRow,
    RecurringRow,
    ServerRow,
    aborted_requeue_columns,
    check_state_class,
    default_queue,
    identity,
    insert_row,
    job_from_row,
    next_occurrence,
    occurrence,
    progress_json,
    queue_infos,
    rate_prune_before,
    rate_window_start,
    recurring_row,
    requeue_columns,
    server_row,
    state_update,
    transition_columns,
    utc,
)
from ._wakeup import InProcessPush, WakeUp

__all__ = ["MemoryStorage", "open", "schema_status"]

_NO_SCHEMA = SchemaStatus(current=0, latest=0)


def _check_url(url: str) -> None:
    if url.lower() != "memory://":
        raise ValueError(f"memory:// takes no path or options, got {url!r}")


async def open(url: str) -> MemoryStorage:
    """A new, private memory storage (``url`` must be exactly ``memory://``)."""
    _check_url(url)
    await trio.lowlevel.checkpoint()
    return MemoryStorage()


async def schema_status(url: str) -> SchemaStatus:
    """Memory has no schema to migrate."""
    _check_url(url)
    await trio.lowlevel.checkpoint()
    return _NO_SCHEMA


def _job(row: InsertRow) -> Job:
    return job_from_row(row.job_row(), identity)


class MemoryStorage(InProcessPush):
    """A :class:`~trio_monitor.jobs.Storage` kept in this process's memory.

    Open it with ``open_storage("memory://")``; each one is a separate store.
    """

    def __init__(self) -> None:
        # Insertion order is creation order (dicts keep it).
        self._jobs: dict[str, InsertRow] = {}
        self._servers: dict[str, ServerRow] = {}
        self._recurring: dict[str, RecurringRow] = {}
        self._queues: dict[str, QueueRow] = {}
        # Per rate-limited queue: when its jobs started (pruned to the window).
        self._starts: dict[str, list[datetime]] = {}
        self._wakeup = WakeUp()
        self._aborts = WakeUp()
        self._finished = WakeUp()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(
                "this storage is closed; open a new one with open_storage()"
            )

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    # -- jobs ------------------------------------------------------------

    def _insert(self, jobs: Sequence[Job]) -> list[str]:
        rows = [insert_row(job, identity) for job in jobs]  # raises before anything is stored
        ids = [row.id for row in rows]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate job ids in one enqueue_many call")
        for job_id in ids:
            if job_id in self._jobs:
                raise ValueError(f"a job with id {job_id!r} already exists")
        stored: list[InsertRow] = []
        for index, row in enumerate(rows):
            if row.unique_key is not None and row.state in LIVE_STATE_NAMES:
                holder = self._live_holder(row.unique_key)
                if holder is not None:
                    ids[index] = holder
                    continue
            self._jobs[row.id] = row
            stored.append(row)
        if any(row.state == "enqueued" for row in stored):
            self._wakeup.notify()
        if any(row.state in TERMINAL for row in stored):
            self._finished.notify()
        return ids

    async def enqueue(self, job: Job) -> str:
        await self._enter()
        return self._insert([job])[0]

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        await self._enter()
        return self._insert(jobs)

    async def get(self, job_id: str) -> Job | None:
        await self._enter()
        row = self._jobs.get(job_id)
        return None if row is None else _job(row)

    async def list_jobs(
        self,
        *,
        state: type[JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int | None = None,
        before: str | None = None,
        newest_first: bool = False,
    ) -> list[Job]:
        await self._enter()
        name = None if state is None else check_state_class(state)
        rows = list(self._jobs.values())
        if newest_first:
            rows.reverse()
            if before is not None:
                ids = [row.id for row in rows]
                rows = rows[ids.index(before) + 1 :] if before in ids else []
        found = [
            row
            for row in rows
            if (name is None or row.state == name)
            and (queue is None or row.queue == queue)
            and (method is None or row.method == method)
        ]
        return [_job(row) for row in (found[:limit] if limit is not None else found)]

    async def count_by_state(self) -> dict[str, int]:
        await self._enter()
        counts: dict[str, int] = {}
        for row in self._jobs.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    async def claim(
        self,
        *,
        queues: Sequence[str],
        worker_ids: Sequence[str],
        server_name: str,
        now: datetime,
    ) -> list[Job]:
        await self._enter()
        if isinstance(queues, str):
            raise TypeError("queues must be a sequence of queue names, not a str")
        if not worker_ids:
            return []
        wanted = set(queues)
        order = {job_id: index for index, job_id in enumerate(self._jobs)}
        claimable = [
            row
            for row in self._jobs.values()
            if row.state == "enqueued" and (not wanted or row.queue in wanted)
        ]
        claimable.sort(key=lambda row: (-row.priority, order[row.id]))
        admission = self._admission(now)
        admitted: list[InsertRow] = []
        for row in claimable:
            if len(admitted) == len(worker_ids):
                break
            if admission.admit(row.queue, row.lock_key):
                admitted.append(row)
                if row.queue in self._starts or self._queue(row.queue).rate_count is not None:
                    self._starts.setdefault(row.queue, []).append(utc(now))
        claimed: list[Job] = []
        for row, worker_id in zip(admitted, worker_ids, strict=False):
            columns, state = state_update(Processing(utc(now), worker_id, server_name), identity)
            new = self._jobs[row.id] = row._replace(
                **columns, attempts=row.attempts + 1, version=row.version + 1
            )
            claimed.append(job_from_row(new.job_row(), identity, state))
        return claimed

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        await self._enter()
        # Encode every new state first, so a bad one changes nothing.
        changes = [transition_columns(t, identity) for t in transitions]
        results: list[Job | None] = []
        wake = finished = False
        for transition, (columns, state) in zip(transitions, changes, strict=True):
            row = self._jobs.get(transition.job_id)
            if row is None or row.version != transition.expected_version:
                results.append(None)
                continue
            if columns["attempts"] is None:
                columns = {**columns, "attempts": row.attempts}
            new = self._jobs[row.id] = row._replace(**columns, version=row.version + 1)
            # A job leaving Processing may free a lock or a max_running slot.
            wake = wake or new.state == "enqueued" or row.state == "processing"
            finished = finished or new.state in TERMINAL
            results.append(job_from_row(new.job_row(), identity, state))
        if wake:
            self._wakeup.notify()
        if finished:
            self._finished.notify()
        return results

    def _requeue(self, rows: list[InsertRow], now: datetime) -> list[Transitioned]:
        columns = requeue_columns(now, identity)
        changed: list[Transitioned] = []
        for row in rows:
            change = columns
            if row.abort_reason is not None:
                change = aborted_requeue_columns(row.abort_reason, now, identity)
            new = self._jobs[row.id] = row._replace(**change, version=row.version + 1)
            changed.append(Transitioned(_job(new), decode_state(row.state, row.state_data)))
        if changed:
            self._wakeup.notify()
            self._finished.notify()
        return changed

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        await self._enter()
        now = utc(now)
        due = [
            row
            for row in self._jobs.values()
            if row.state in ("scheduled", "awaiting_retry") and row.due_at <= now
        ]
        due.sort(key=lambda row: row.due_at)  # stable: creation order among equals
        return self._requeue(due, now)

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        await self._enter()
        cutoff = utc(started_before)
        stale = [
            row
            for row in self._jobs.values()
            if row.state == "processing" and row.started_at < cutoff
        ]
        stale.sort(key=lambda row: row.started_at)
        return self._requeue(stale, now)

    async def delete_expired(self, now: datetime) -> int:
        await self._enter()
        now = utc(now)
        expired = [
            job_id
            for job_id, row in self._jobs.items()
            if row.expires_at is not None and row.expires_at <= now
        ]
        for job_id in expired:
            del self._jobs[job_id]
        return len(expired)

    async def wait_for_work(self) -> None:
        self._check_open()
        await self._wakeup.wait()

    # -- job control -----------------------------------------------------

    async def counts(self) -> dict[tuple[str, str], int]:
        await self._enter()
        return self._counts()

    def _counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for row in self._jobs.values():
            key = (row.queue, row.state)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        await self._enter()
        row = self._jobs.get(job_id)
        if row is None:
            return "missing"
        if row.state in QUEUED:
            columns, _ = state_update(Aborted(reason, utc(now)), identity)
            self._jobs[job_id] = row._replace(**columns, version=row.version + 1)
            self._finished.notify()
            return "aborted"
        if row.state == "processing":
            self._jobs[job_id] = row._replace(abort_reason=reason)
            self._aborts.notify()
            return "requested"
        return "finished"

    async def aborts_requested(self, server_name: str) -> list[tuple[str, str]]:
        await self._enter()
        return [
            (row.id, row.abort_reason)
            for row in self._jobs.values()
            if row.state == "processing"
            and row.server_name == server_name
            and row.abort_reason is not None
        ]

    async def retry(self, job_id: str, now: datetime) -> bool:
        await self._enter()
        row = self._jobs.get(job_id)
        if row is None or row.state not in ("failed", "aborted"):
            return False
        if row.unique_key is not None and self._live_holder(row.unique_key) is not None:
            return False
        columns = requeue_columns(now, identity)
        self._jobs[job_id] = row._replace(**columns, attempts=0, version=row.version + 1)
        self._wakeup.notify()
        return True

    async def delete(self, job_id: str, now: datetime) -> bool:
        await self._enter()
        row = self._jobs.get(job_id)
        if row is None or row.state == "deleted":
            return False
        if row.state == "processing":
            self._jobs[job_id] = row._replace(abort_reason="deleted")
            self._aborts.notify()
            return True
        columns, _ = state_update(Deleted(), identity)
        self._jobs[job_id] = row._replace(**columns, version=row.version + 1)
        self._finished.notify()
        return True

    async def set_progress(self, job_id: str, progress: Progress) -> bool:
        text = progress_json(progress)
        await self._enter()
        row = self._jobs.get(job_id)
        if row is None or row.state != "processing":
            return False
        self._jobs[job_id] = row._replace(progress=text)
        return True

    async def pause_queue(self, name: str) -> None:
        await self._enter()
        self._queues[name] = self._queue(name)._replace(paused=True)

    async def resume_queue(self, name: str) -> None:
        await self._enter()
        self._queues[name] = self._queue(name)._replace(paused=False)
        self._wakeup.notify()

    async def set_queue_limits(
        self, name: str, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        await self._enter()
        count, seconds = (None, None) if rate is None else rate
        self._queues[name] = self._queue(name)._replace(
            max_running=max_running, rate_count=count, rate_seconds=seconds
        )
        self._wakeup.notify()

    async def list_queues(self) -> list[QueueInfo]:
        await self._enter()
        return queue_infos(self._queues.values(), self._counts())

    def _queue(self, name: str) -> QueueRow:
        return self._queues.get(name) or default_queue(name)

    def _live_holder(self, unique_key: str) -> str | None:
        for row in self._jobs.values():
            if row.unique_key == unique_key and row.state in LIVE_STATE_NAMES:
                return row.id
        return None

    def _admission(self, now: datetime) -> Admission:
        settings = {name: row for name, row in self._queues.items() if row.limits_claims}
        running: dict[str, int] = {}
        held: set[str] = set()
        for row in self._jobs.values():
            if row.state == "processing":
                running[row.queue] = running.get(row.queue, 0) + 1
                if row.lock_key is not None:
                    held.add(row.lock_key)
        started: dict[str, int] = {}
        for name, queue in settings.items():
            start = rate_window_start(queue, now)
            prune = rate_prune_before(queue, now)
            if start is not None and prune is not None:
                log = self._starts[name] = [at for at in self._starts.get(name, []) if at > prune]
                started[name] = sum(1 for at in log if at > start)
        return Admission(settings, running, started, held)

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        await self._enter()
        self._servers[info.id] = server_row(info, identity)

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        await self._enter()
        row = self._servers.get(server_id)
        if row is None:
            return False
        self._servers[server_id] = row._replace(last_heartbeat=utc(now))
        return True

    async def deregister_server(self, server_id: str) -> None:
        await self._enter()
        self._servers.pop(server_id, None)

    async def list_servers(self) -> list[ServerInfo]:
        await self._enter()
        rows = sorted(self._servers.values(), key=lambda row: (row.started_at, row.id))
        return [row.to_server(identity) for row in rows]

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        await self._enter()
        cutoff = utc(heartbeat_before)
        dead = {sid for sid, row in self._servers.items() if row.last_heartbeat < cutoff}
        if not dead:
            return []
        orphans = [
            row
            for row in self._jobs.values()
            if row.state == "processing" and row.server_name in dead
        ]
        changed = self._requeue(orphans, now)
        for server_id in dead:
            del self._servers[server_id]
        return changed

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        await self._enter()
        self._recurring[recurring.id] = recurring_row(recurring, identity)

    async def remove_recurring(self, recurring_id: str) -> bool:
        await self._enter()
        return self._recurring.pop(recurring_id, None) is not None

    async def list_recurring(self) -> list[RecurringJob]:
        await self._enter()
        return [self._recurring[key].to_recurring(identity) for key in sorted(self._recurring)]

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        await self._enter()
        now = utc(now)
        due = sorted(
            (row for row in self._recurring.values() if row.next_run_at <= now),
            key=lambda row: (row.next_run_at, row.id),
        )
        made: list[Job] = []
        for template in due:
            following = next_occurrence(template, now, next_run)
            if following is None:
                continue
            job = occurrence(template, now)
            self._insert([job])
            self._recurring[template.id] = template._replace(next_run_at=following)
            made.append(_job(self._jobs[job.id]))
        return made

    # -- schema and lifecycle --------------------------------------------

    async def schema_status(self) -> SchemaStatus:
        await self._enter()
        return _NO_SCHEMA

    async def aclose(self) -> None:
        self._closed = True
        self._aborts.notify()
        self._finished.notify()
        self._wakeup.notify()  # waiters return, and their next call is refused
        await trio.lowlevel.checkpoint()
