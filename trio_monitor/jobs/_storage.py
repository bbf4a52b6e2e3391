"""The storage protocol of the job server, and :func:`open_storage`.

Storage knows how to keep jobs and change them atomically; it knows nothing
of scheduling, retries or workers (that is the server's business). Every
method is one round trip to the backend and one atomic unit: a method either
happens whole or not at all, and two servers calling it at once on the same
storage never both get the same job.

Times are passed in by the caller (``now``) so that one clock, the server's,
decides what is due. The contract that every backend passes is
``tests/jobs/test_storage_contract.py``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Protocol, runtime_checkable

import trio

from ._model import Job, JobState, RecurringJob, ServerInfo, Transition, Transitioned

__all__ = ["NextRun", "Storage", "WakeUp", "open_storage"]

#: ``next_run(cron, after)``: the first occurrence of ``cron`` strictly after ``after``.
NextRun = Callable[[str, datetime], datetime]

SUPPORTED_SCHEMES = ("memory://", "sqlite:///", "postgresql://")


@runtime_checkable
class Storage(Protocol):
    """What the job server needs from a backend.

    Guarantees every implementation gives (and the contract suite checks):

    * Each method is atomic. Concurrent callers, in this process or in others
      sharing the backend, see each call happen entirely before or after the
      other.
    * :meth:`claim` never hands one job to two callers.
    * Every change bumps ``Job.version``; :meth:`apply` changes a job only if
      its version is still the expected one.
    * Orders: claims take the highest ``priority`` first, then the oldest job
      (creation order).
    """

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given (any state) and return its id.

        Raises :class:`TypeError` if the payload is not JSON-serialisable
        (nothing is stored) and :class:`ValueError` if the id exists.
        Wakes :meth:`wait_for_work` waiters in this process if the job is
        :class:`Enqueued`.
        """
        ...

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """:meth:`enqueue` several jobs in one atomic round trip."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        ...

    async def list_jobs(
        self, *, state: type[JobState] | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state``."""
        ...

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs there are in each state, keyed by state ``name``."""
        ...

    async def claim(
        self,
        *,
        queues: Sequence[str],
        worker_ids: Sequence[str],
        server_name: str,
        now: datetime,
    ) -> list[Job]:
        """Claim up to ``len(worker_ids)`` :class:`Enqueued` jobs atomically.

        Only jobs in ``queues`` (all queues if empty). The i-th claimed job
        becomes ``Processing(now, worker_ids[i], server_name)`` with
        ``attempts + 1``. Returns the claimed jobs as stored now.
        """
        ...

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Apply compare-and-swap transitions in one round trip.

        Each one succeeds independently iff the job exists and still has
        ``expected_version``. Returns, in order, the job as stored now, or
        None where the swap failed.
        """
        ...

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue :class:`Scheduled` and :class:`AwaitingRetry` jobs due at ``now``."""
        ...

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        """Put :class:`Processing` jobs claimed before ``started_before`` back to Enqueued.

        The attempt they used stays counted.
        """
        ...

    async def delete_expired(self, now: datetime) -> int:
        """Remove jobs whose ``expires_at`` is at or before ``now``; return how many."""
        ...

    async def wait_for_work(self) -> None:
        """Return when a job may have become claimable.

        In-process enqueues and promotions wake waiters at once; backends
        that can hear other processes (PostgreSQL's LISTEN/NOTIFY) wake them
        too. Spurious wake-ups are allowed; callers then poll. There is no
        timeout argument: as everywhere in Trio, the caller bounds the wait
        with a cancel scope (``with trio.move_on_after(polling_interval):``).
        """
        ...

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        """Insert or replace the heartbeat row ``info.id``."""
        ...

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        """Bump the row's heartbeat; False if it no longer exists."""
        ...

    async def deregister_server(self, server_id: str) -> None:
        """Remove the row (no error if absent)."""
        ...

    async def list_servers(self) -> list[ServerInfo]:
        """All heartbeat rows."""
        ...

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        """Re-enqueue the Processing jobs of servers whose heartbeat is older than the cut-off.

        In one atomic step: such servers' :class:`Processing` jobs go back to
        :class:`Enqueued` (the attempt stays counted), then their rows are
        removed, so a dead server's row never disappears before its jobs
        are reclaimed.
        """
        ...

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        """Insert or replace a recurring template (by id)."""
        ...

    async def remove_recurring(self, recurring_id: str) -> bool:
        """Remove a template; False if there was none."""
        ...

    async def list_recurring(self) -> list[RecurringJob]:
        """All recurring templates."""
        ...

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """Enqueue one job for each template due at ``now``; return them.

        For each template with ``next_run_at <= now``: advance
        ``next_run_at`` to ``next_run(cron, now)`` and insert one
        :class:`Enqueued` job, atomically and conditioned on ``next_run_at``
        being unchanged, so each occurrence is enqueued once however many
        servers poll. Missed occurrences collapse into one job.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


class WakeUp:
    """Wakes every waiter at once; the shared in-process half of ``wait_for_work``."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


@asynccontextmanager
async def open_storage(url: str) -> AsyncGenerator[Storage, None]:
    """Open the storage a URL names, and close it at block exit.

    * ``memory://``: a new, private in-memory store (each call a new one).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: an
      embedded SQLite database (created, schema migrated on open).
    * ``postgresql://user@host:port/db``: PostgreSQL (needs the ``postgres``
      extra: ``pip install trio-monitor[postgres]``).
    """
    storage = await _connect(url)
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


async def _connect(url: str) -> Storage:
    if not isinstance(url, str):
        raise TypeError(f"storage URL must be a str, not {type(url).__name__}")
    if url == "memory://" or url.startswith("memory://"):
        from ._memory import MemoryStorage

        return MemoryStorage()
    if url.startswith("sqlite:///"):
        from ._sqlite import SQLiteStorage

        return await SQLiteStorage.open(url[len("sqlite:///") :])
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStorage

        return await PostgresStorage.open(url)
    raise ValueError(
        f"unsupported storage URL {url!r}: supported schemes are " + ", ".join(SUPPORTED_SCHEMES)
    )
