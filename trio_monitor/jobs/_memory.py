"""The in-memory storage backend (``memory://``): for tests and demos.

Everything lives in dicts of one process. Each method checkpoints once on
entry, like a real round trip, and then runs to completion without yielding,
which is what makes every call atomic under Trio's cooperative scheduling.
Jobs go in and come out as copies (payloads and states through JSON, as a
database would), so callers can never change a stored job behind its back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import datetime

import trio

from ._model import (
    AwaitingRetry,
    Enqueued,
    Job,
    JobState,
    Processing,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Transition,
    Transitioned,
    decode_state,
    dump_json,
    encode_state,
)
from ._storage import NextRun, WakeUp

__all__ = ["MemoryStorage"]


def _stored(job: Job) -> Job:
    """A private copy of ``job``, its payload and state round-tripped through JSON."""
    payload = json.loads(dump_json(job.payload))
    state = decode_state(*encode_state(job.state))
    return Job(
        id=job.id,
        method=job.method,
        payload=payload,
        queue=job.queue,
        priority=job.priority,
        attempts=job.attempts,
        created_at=job.created_at,
        state=state,
        expires_at=job.expires_at,
        version=job.version,
    )


class MemoryStorage:
    """A :class:`~trio_monitor.jobs.Storage` kept in this process's memory.

    Open it with ``open_storage("memory://")``; each one is a separate store.
    """

    def __init__(self) -> None:
        # Insertion order is creation order (dicts keep it).
        self._jobs: dict[str, Job] = {}
        self._servers: dict[str, ServerInfo] = {}
        self._recurring: dict[str, RecurringJob] = {}
        self._wakeup = WakeUp()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this storage is closed; open a new one with open_storage()")

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    def _change(self, job: Job, state: JobState) -> JobState:
        old = job.state
        job.state = state
        job.version += 1
        return old

    # -- jobs ------------------------------------------------------------

    def _insert(self, jobs: Sequence[Job]) -> list[str]:
        stored = [_stored(job) for job in jobs]  # TypeError before anything is stored
        ids = [job.id for job in stored]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate job ids in one enqueue_many call")
        for job_id in ids:
            if job_id in self._jobs:
                raise ValueError(f"a job with id {job_id!r} already exists")
        for job in stored:
            job.version = 1
            self._jobs[job.id] = job
        if any(isinstance(job.state, Enqueued) for job in stored):
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
        job = self._jobs.get(job_id)
        return copy.deepcopy(job)

    async def list_jobs(
        self, *, state: type[JobState] | None = None, limit: int | None = None
    ) -> list[Job]:
        await self._enter()
        found = [
            job for job in self._jobs.values() if state is None or isinstance(job.state, state)
        ]
        return copy.deepcopy(found[:limit] if limit is not None else found)

    async def count_by_state(self) -> dict[str, int]:
        await self._enter()
        counts: dict[str, int] = {}
        for job in self._jobs.values():
            counts[job.state.name] = counts.get(job.state.name, 0) + 1
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
        if not worker_ids:
            return []
        order = {job_id: index for index, job_id in enumerate(self._jobs)}
        claimable = [
            job
            for job in self._jobs.values()
            if isinstance(job.state, Enqueued) and (not queues or job.queue in queues)
        ]
        claimable.sort(key=lambda job: (-job.priority, order[job.id]))
        claimed = claimable[: len(worker_ids)]
        for job, worker_id in zip(claimed, worker_ids, strict=False):
            self._change(job, Processing(now, worker_id, server_name))
            job.attempts += 1
        return copy.deepcopy(claimed)

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        await self._enter()
        # Validate every new state first, so a bad one changes nothing.
        states = [decode_state(*encode_state(t.state)) for t in transitions]
        results: list[Job | None] = []
        wake = False
        for transition, state in zip(transitions, states, strict=True):
            job = self._jobs.get(transition.job_id)
            if job is None or job.version != transition.expected_version:
                results.append(None)
                continue
            self._change(job, state)
            if transition.attempts is not None:
                job.attempts = transition.attempts
            job.expires_at = transition.expires_at
            wake = wake or isinstance(state, Enqueued)
            results.append(copy.deepcopy(job))
        if wake:
            self._wakeup.notify()
        return results

    def _requeue(self, jobs: list[Job], now: datetime) -> list[Transitioned]:
        changed: list[Transitioned] = []
        for job in jobs:
            old = self._change(job, Enqueued(now))
            job.expires_at = None
            changed.append(Transitioned(copy.deepcopy(job), old))
        if changed:
            self._wakeup.notify()
        return changed

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        await self._enter()
        due = [
            job
            for job in self._jobs.values()
            if (isinstance(job.state, Scheduled) and job.state.enqueue_at <= now)
            or (isinstance(job.state, AwaitingRetry) and job.state.retry_at <= now)
        ]
        return self._requeue(due, now)

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        await self._enter()
        stale = [
            job
            for job in self._jobs.values()
            if isinstance(job.state, Processing) and job.state.started_at < started_before
        ]
        return self._requeue(stale, now)

    async def delete_expired(self, now: datetime) -> int:
        await self._enter()
        expired = [
            job.id
            for job in self._jobs.values()
            if job.expires_at is not None and job.expires_at <= now
        ]
        for job_id in expired:
            del self._jobs[job_id]
        return len(expired)

    async def wait_for_work(self) -> None:
        self._check_open()
        await self._wakeup.wait()

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        await self._enter()
        self._servers[info.id] = copy.deepcopy(info)

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        await self._enter()
        info = self._servers.get(server_id)
        if info is None:
            return False
        info.last_heartbeat = now
        return True

    async def deregister_server(self, server_id: str) -> None:
        await self._enter()
        self._servers.pop(server_id, None)

    async def list_servers(self) -> list[ServerInfo]:
        await self._enter()
        return copy.deepcopy(list(self._servers.values()))

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        await self._enter()
        dead = {
            sid for sid, info in self._servers.items() if info.last_heartbeat < heartbeat_before
        }
        if not dead:
            return []
        orphans = [
            job
            for job in self._jobs.values()
            if isinstance(job.state, Processing) and job.state.server_name in dead
        ]
        changed = self._requeue(orphans, now)
        for server_id in dead:
            del self._servers[server_id]
        return changed

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        await self._enter()
        dump_json(recurring.payload)
        self._recurring[recurring.id] = copy.deepcopy(recurring)

    async def remove_recurring(self, recurring_id: str) -> bool:
        await self._enter()
        return self._recurring.pop(recurring_id, None) is not None

    async def list_recurring(self) -> list[RecurringJob]:
        await self._enter()
        return copy.deepcopy(list(self._recurring.values()))

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        await self._enter()
        made: list[Job] = []
        for recurring in self._recurring.values():
            if recurring.next_run_at > now:
                continue
            following = next_run(recurring.cron, now)
            job = Job.new(recurring.method, recurring.payload, recurring.queue, recurring.priority)
            job.created_at = now
            job.state = Enqueued(now)
            self._insert([job])
            recurring.next_run_at = following
            made.append(copy.deepcopy(self._jobs[job.id]))
        return made

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()
