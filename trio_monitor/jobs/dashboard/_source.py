"""What the dashboard reads and changes, and where it gets it today.

The dashboard talks to a :class:`DashboardSource`: the part of the job
control client (``jobs.Client``, SPEC §6) it needs, and nothing else. Once
that client exists, :func:`source_for` returns it as is. Until then
:class:`StorageSource` provides the same interface over the
:class:`~trio_monitor.jobs.Storage` protocol: everything to look at, plus
the actions the storage protocol can already express (retry and delete are
compare-and-swap transitions). Aborting jobs and pausing or limiting queues
need the client's storage support; there they raise :exc:`ActionUnavailable`
and the pages show the buttons disabled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol, cast

import attrs

from .._model import (
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    RecurringJob,
    ServerInfo,
    Transition,
    utcnow,
)
from .._storage import Storage

__all__ = [
    "ActionUnavailable",
    "DashboardSource",
    "QueueSummary",
    "QueueView",
    "StorageSource",
    "source_for",
]

#: The actions a source may lack, by the name the pages use.
ACTIONS = ("retry", "abort", "delete", "pause", "resume", "limits")

#: How long :class:`StorageSource` keeps a deleted job (the server's default failed TTL).
DELETED_TTL = timedelta(days=7)


class ActionUnavailable(NotImplementedError):
    """The storage behind the dashboard cannot do this action yet.

    Aborting a job and pausing, resuming or limiting a queue need job
    control (``jobs.Client``); the page says so instead of failing.
    """


class QueueView(Protocol):
    """One queue as the queues page shows it (``jobs.QueueInfo`` has this shape)."""

    @property
    def name(self) -> str: ...
    @property
    def paused(self) -> bool: ...
    @property
    def max_running(self) -> int | None: ...
    @property
    def rate(self) -> tuple[int, float] | None: ...
    @property
    def counts(self) -> Mapping[str, int]: ...


@attrs.frozen
class QueueSummary:
    """A queue as :class:`StorageSource` can describe it (never paused or limited)."""

    name: str
    counts: Mapping[str, int]
    paused: bool = False
    max_running: int | None = None
    rate: tuple[int, float] | None = None


class DashboardSource(Protocol):
    """Everything the dashboard reads and changes; a subset of ``jobs.Client``.

    Listings are newest first; ``before`` is the id of the last job of the
    previous page (a keyset cursor). ``counts`` is keyed ``(queue, state
    name)``. The actions return False when the job is not in a state the
    action applies to (or does not exist), and raise
    :exc:`ActionUnavailable` when the source cannot do them at all.
    """

    async def list_jobs(
        self,
        *,
        state: type[JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]: ...

    async def counts(self) -> dict[tuple[str, str], int]: ...

    async def queues(self) -> Sequence[QueueView]: ...

    async def servers(self) -> list[ServerInfo]: ...

    async def recurring(self) -> list[RecurringJob]: ...

    async def retry(self, job_id: str) -> bool: ...

    async def abort(self, job_id: str) -> bool: ...

    async def delete(self, job_id: str) -> bool: ...

    async def pause_queue(self, name: str) -> None: ...

    async def resume_queue(self, name: str) -> None: ...

    async def set_queue_limits(
        self, name: str, *, max_running: int | None, rate: tuple[int, float] | None
    ) -> None: ...


def source_for(storage: Storage) -> DashboardSource:
    """``jobs.Client(storage)`` if this version has job control, else a :class:`StorageSource`."""
    from trio_monitor import jobs

    client_class: Any = getattr(jobs, "Client", None)
    if client_class is not None:
        return cast("DashboardSource", client_class(storage))
    return StorageSource(storage)


def unavailable_actions(source: DashboardSource) -> frozenset[str]:
    """The actions ``source`` cannot do (the pages disable their buttons)."""
    return frozenset(getattr(source, "unavailable_actions", frozenset[str]()))


#: Retry and delete re-read the job and try again when it changed meanwhile.
_CAS_ATTEMPTS = 5


class StorageSource:
    """A :class:`DashboardSource` over the storage protocol, until ``jobs.Client`` exists.

    Honest about its limits: the storage protocol lists jobs oldest first
    and filters by state only, so a newest-first page, a queue or method
    filter and per-queue counts each read every job of the state asked for
    (fine for thousands of jobs, slow for millions; the client's keyset
    listing is what makes that fast). Counts by queue are given only while
    the database holds at most :attr:`PER_QUEUE_LIMIT` jobs; above that,
    counts come under the queue ``"*"`` (all queues).
    """

    #: Up to this many jobs, per-queue counts are worked out from a full listing.
    PER_QUEUE_LIMIT = 10_000
    unavailable_actions = frozenset({"abort", "pause", "resume", "limits"})

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    async def list_jobs(
        self,
        *,
        state: type[JobState] | None = None,
        queue: str | None = None,
        method: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[Job]:
        # The cursor means "created before that job", whatever its state is
        # now (a bulk retry moves the jobs it pages through out of Failed):
        # find it among all jobs.
        rows = await self.storage.list_jobs(state=None if before is not None else state)
        rows.reverse()  # newest first
        if before is not None:
            cut = next((i for i, job in enumerate(rows) if job.id == before), None)
            rows = rows[cut + 1 :] if cut is not None else []
        page: list[Job] = []
        for job in rows:
            if len(page) >= limit:
                break
            if (
                (state is None or isinstance(job.state, state))
                and (queue is None or job.queue == queue)
                and (method is None or job.method == method)
            ):
                page.append(job)
        return page

    async def counts(self) -> dict[tuple[str, str], int]:
        by_state = await self.storage.count_by_state()
        if sum(by_state.values()) > self.PER_QUEUE_LIMIT:
            return {("*", state): n for state, n in by_state.items()}
        counts: dict[tuple[str, str], int] = {}
        for job in await self.storage.list_jobs():
            key = (job.queue, job.state.name)
            counts[key] = counts.get(key, 0) + 1
        return counts

    async def queues(self) -> list[QueueSummary]:
        by_queue: dict[str, dict[str, int]] = {}
        for (queue, state), n in (await self.counts()).items():
            by_queue.setdefault(queue, {})[state] = n
        return [QueueSummary(name, counts) for name, counts in sorted(by_queue.items())]

    async def servers(self) -> list[ServerInfo]:
        return await self.storage.list_servers()

    async def recurring(self) -> list[RecurringJob]:
        return await self.storage.list_recurring()

    async def retry(self, job_id: str) -> bool:
        """Failed -> Enqueued with its attempts reset, by compare-and-swap."""
        for _ in range(_CAS_ATTEMPTS):
            job = await self.storage.get(job_id)
            if job is None or not isinstance(job.state, Failed):
                return False
            transition = Transition(job.id, job.version, Enqueued(utcnow()), attempts=0)
            if (await self.storage.apply([transition]))[0] is not None:
                return True
        return False

    async def delete(self, job_id: str) -> bool:
        """Mark the job Deleted (kept for :data:`DELETED_TTL`), by compare-and-swap."""
        for _ in range(_CAS_ATTEMPTS):
            job = await self.storage.get(job_id)
            if job is None or isinstance(job.state, Deleted):
                return False
            expires = utcnow() + DELETED_TTL
            transition = Transition(job.id, job.version, Deleted(), expires_at=expires)
            if (await self.storage.apply([transition]))[0] is not None:
                return True
        return False

    async def abort(self, job_id: str) -> bool:
        raise ActionUnavailable("aborting a job needs trio-monitor job control (jobs.Client)")

    async def pause_queue(self, name: str) -> None:
        raise ActionUnavailable("pausing a queue needs trio-monitor job control (jobs.Client)")

    async def resume_queue(self, name: str) -> None:
        raise ActionUnavailable("resuming a queue needs trio-monitor job control (jobs.Client)")

    async def set_queue_limits(
        self, name: str, *, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        raise ActionUnavailable("queue limits need trio-monitor job control (jobs.Client)")
