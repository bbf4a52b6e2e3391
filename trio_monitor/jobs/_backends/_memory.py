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
    InsertRow,
    RecurringRow,
    ServerRow,
    check_state_class,
    identity,
    insert_row,
    job_from_row,
    next_occurrence,
    occurrence,
    recurring_row,
    requeue_columns,
    server_row,
    state_update,
    transition_columns,
    utc,
)
from ._wakeup import WakeUp

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


class MemoryStorage:
    """A :class:`~trio_monitor.jobs.Storage` kept in this process's memory.

    Open it with ``open_storage("memory://")``; each one is a separate store.
    """

    def __init__(self) -> None:
        # Insertion order is creation order (dicts keep it).
        self._jobs: dict[str, InsertRow] = {}
        self._servers: dict[str, ServerRow] = {}
        self._recurring: dict[str, RecurringRow] = {}
        self._wakeup = WakeUp()
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
        for row in rows:
            self._jobs[row.id] = row
        if any(row.state == "enqueued" for row in rows):
            self._wakeup.notify()
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
        found = [row for row in self._jobs.values() if name is None or row.state == name]
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
        claimed: list[Job] = []
        for row, worker_id in zip(claimable, worker_ids, strict=False):
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
        wake = False
        for transition, (columns, state) in zip(transitions, changes, strict=True):
            row = self._jobs.get(transition.job_id)
            if row is None or row.version != transition.expected_version:
                results.append(None)
                continue
            if columns["attempts"] is None:
                columns = {**columns, "attempts": row.attempts}
            new = self._jobs[row.id] = row._replace(**columns, version=row.version + 1)
            wake = wake or new.state == "enqueued"
            results.append(job_from_row(new.job_row(), identity, state))
        if wake:
            self._wakeup.notify()
        return results

    def _requeue(self, rows: list[InsertRow], now: datetime) -> list[Transitioned]:
        columns = requeue_columns(now, identity)
        changed: list[Transitioned] = []
        for row in rows:
            new = self._jobs[row.id] = row._replace(**columns, version=row.version + 1)
            changed.append(Transitioned(_job(new), decode_state(row.state, row.state_data)))
        if changed:
            self._wakeup.notify()
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

    # -- job control (not implemented yet on this backend) -----------------

    async def counts(self) -> dict[tuple[str, str], int]:
        raise NotImplementedError("counts")

    async def abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        raise NotImplementedError("abort")

    async def aborts_requested(self, server_name: str) -> list[tuple[str, str]]:
        raise NotImplementedError("aborts_requested")

    async def wait_for_abort(self) -> None:
        raise NotImplementedError("wait_for_abort")

    async def wait_for_finish(self) -> None:
        raise NotImplementedError("wait_for_finish")

    async def retry(self, job_id: str, now: datetime) -> bool:
        raise NotImplementedError("retry")

    async def delete(self, job_id: str, now: datetime) -> bool:
        raise NotImplementedError("delete")

    async def set_progress(self, job_id: str, progress: Progress) -> bool:
        raise NotImplementedError("set_progress")

    async def pause_queue(self, name: str) -> None:
        raise NotImplementedError("pause_queue")

    async def resume_queue(self, name: str) -> None:
        raise NotImplementedError("resume_queue")

    async def set_queue_limits(
        self, name: str, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        raise NotImplementedError("set_queue_limits")

    async def list_queues(self) -> list[QueueInfo]:
        raise NotImplementedError("list_queues")

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
        self._wakeup.notify()  # waiters return, and their next call is refused
        await trio.lowlevel.checkpoint()
