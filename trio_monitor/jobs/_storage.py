"""The storage protocol of the job server, :func:`open_storage`, and the schema calls.

Storage knows how to keep jobs and change them atomically; it knows nothing
of scheduling, retries or workers (that is the server's business). Every
method is one round trip to the backend and one atomic unit: a method either
happens whole or not at all, and two servers calling it at once on the same
storage never both get the same job.

Times are passed in by the caller (``now``) so that one clock, the server's,
decides what is due. The contract that every backend passes is
``tests/jobs/test_storage_contract.py``.

This module imports no backend. :data:`BACKENDS` maps each URL scheme to the
module that implements it, imported only when a URL of that scheme is opened
(so ``psycopg`` is loaded only for ``postgresql://``). A backend module
provides ``async open(url) -> Storage`` and ``async schema_status(url) ->
SchemaStatus``; a new backend is one module (or package) and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Final, Literal, Protocol, cast, runtime_checkable

import attrs
import trio

from ._model import (
    Job,
    JobState,
    Progress,
    QueueInfo,
    RecurringJob,
    ServerInfo,
    Transition,
    Transitioned,
)

__all__ = [
    "BACKENDS",
    "AbortOutcome",
    "NextRun",
    "SchemaStatus",
    "SchemaVersionError",
    "WATCH_SECONDS",
    "Storage",
    "check_schema",
    "migrate",
    "open_storage",
]

#: ``next_run(cron, after)``: the first occurrence of ``cron`` strictly after
#: ``after``. For a template whose ``timezone`` is not ``"UTC"`` storage calls
#: ``next_run(cron, after, timezone)`` (the cron evaluated in that IANA zone).
NextRun = Callable[..., datetime]

#: How long a :meth:`Storage.watch_finish` registration lasts unless renewed.
WATCH_SECONDS: Final = 60.0

#: URL scheme -> the module implementing it (imported when first opened).
BACKENDS: Final[dict[str, str]] = {
    "memory": "trio_monitor.jobs._backends._memory",
    "sqlite": "trio_monitor.jobs._backends._sqlite",
    "postgresql": "trio_monitor.jobs._backends._postgres",
    "postgres": "trio_monitor.jobs._backends._postgres",
}

#: What :meth:`Storage.abort` did: ``"aborted"`` (it was Enqueued, Scheduled
#: or AwaitingRetry and is Aborted now), ``"requested"`` (it is Processing:
#: the abort flag is set, and the server running it must cancel it),
#: ``"finished"`` (already terminal: nothing changed), ``"missing"`` (no such job).
AbortOutcome = Literal["aborted", "requested", "finished", "missing"]

_URL_FORMS = "memory://, sqlite:///path/to/jobs.db, postgresql://user@host:port/db"


class SchemaVersionError(RuntimeError):
    """The database was written by a newer trio_monitor than this one.

    Raised when such a storage is opened; nothing was changed in it. Upgrade
    trio_monitor, or point the server at another database.
    """


@attrs.frozen
class SchemaStatus:
    """Where a database's job schema stands (see :func:`check_schema`).

    Attributes:
      current (int): The schema version the database has (0: none yet).
      latest (int): The version this trio_monitor writes.
    """

    current: int
    latest: int

    @property
    def up_to_date(self) -> bool:
        """True if opening the storage would migrate nothing."""
        return self.current == self.latest

    @property
    def too_new(self) -> bool:
        """True if the database was written by a newer trio_monitor (opening it fails)."""
        return self.current > self.latest


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
    * Cancellation stays with its caller: cancelling one call never makes
      another caller's call raise :class:`trio.Cancelled` or lose its write.
      A cancelled call either happened whole (it then returns its result,
      and the caller sees :class:`trio.Cancelled` at its next checkpoint) or
      not at all (it raises :class:`trio.Cancelled`).
    * After :meth:`aclose`, every call raises :class:`trio.ClosedResourceError`.
    """

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given (any state) and return its id.

        If ``job.unique_key`` is set and a live job (Enqueued, Scheduled,
        AwaitingRetry or Processing) holds that key, nothing is stored and
        that job's id is returned. The database decides (a partial unique
        index), so this holds across processes.

        Raises :class:`TypeError` if the payload is not JSON-serialisable
        (nothing is stored) and :class:`ValueError` if the id exists or the
        priority is outside the 32-bit signed range.
        Wakes :meth:`wait_for_work` waiters in this process if the job is
        :class:`Enqueued`.
        """
        ...

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """:meth:`enqueue` several jobs in one transaction: all or nothing.

        Slot ``i`` of the result is the id stored for ``jobs[i]``, or the id
        of the live job that already held its ``unique_key`` (an earlier job
        of the same call included).
        """
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        ...

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
        """Jobs in creation order (newest first if ``newest_first``), filtered.

        ``before`` (only with ``newest_first``) is a job id: only jobs
        created before that one are listed, which pages through any number
        of jobs by keyset (pass the last id of one page to get the next).
        An unknown ``before`` id lists nothing. TypeError for a ``state``
        that is not a state class.
        """
        ...

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs there are in each state, keyed by state ``name``."""
        ...

    async def counts(self) -> dict[tuple[str, str], int]:
        """How many jobs there are per ``(queue, state name)``; absent pairs are 0."""
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

        Only jobs in ``queues`` (all queues if empty; any number of queues).
        The i-th claimed job becomes ``Processing(now, worker_ids[i],
        server_name)`` with ``attempts + 1``. Returns the claimed jobs as
        stored now.

        Flow control is decided in the same transaction, so it holds across
        every server: nothing starts from a paused queue; a queue's
        ``max_running`` counts its Processing jobs; its ``rate=(n, s)``
        counts the jobs started in the last ``s`` seconds before ``now``;
        a job whose ``lock`` is held by a Processing job is skipped (and a
        batch takes at most one job per lock). Skipped jobs keep their
        place: the order is still priority, then age.
        """
        ...

    # -- job control -----------------------------------------------------

    async def abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        """Abort a job; see :data:`AbortOutcome` for what each answer means.

        A queued job becomes ``Aborted(reason, now)`` at once (version
        bumped). A Processing job keeps its state and version (so the
        server's compare-and-swap to Aborted still works) and gets its abort
        flag; waiters of :meth:`wait_for_abort` are woken (in this process,
        and on PostgreSQL in every process).
        """
        ...

    async def aborts_requested(self, server_name: str) -> list[tuple[str, str]]:
        """``(job id, reason)`` of the Processing jobs of ``server_name`` whose abort is requested.

        ``server_name`` is :attr:`Processing.server_name` (the server's
        identity). A job's flag is cleared when it leaves Processing.
        """
        ...

    async def wait_for_abort(self) -> None:
        """Return when an abort may have been requested (then call :meth:`aborts_requested`).

        Like :meth:`wait_for_work`: spurious wake-ups are allowed, the caller
        bounds the wait and polls (SQLite across processes has no push).
        """
        ...

    async def wait_for_finish(self) -> None:
        """Return when a job may have become terminal (Succeeded, Failed, Aborted, Deleted).

        Push in this process and on PostgreSQL (``trio_monitor_finished``);
        spurious wake-ups are allowed; the caller bounds the wait and polls.
        """
        ...

    async def watch_finish(self, job_id: str, token: str) -> None:
        """Note that waiter ``token`` waits for ``job_id`` to finish.

        Call it before reading the job, then :meth:`wait_for_finish`; renew
        it (call again) within 60 seconds (``WATCH_SECONDS``), and end it with
        :meth:`unwatch_finish`. A storage that pushes finishes across
        processes (PostgreSQL) announces only the finishes of watched jobs;
        an unrenewed registration expires. In-process hubs ignore it.
        """
        ...

    async def unwatch_finish(self, token: str) -> None:
        """End waiter ``token``'s registration (nothing if there is none)."""
        ...

    async def retry(self, job_id: str, now: datetime) -> bool:
        """A Failed or Aborted job back to ``Enqueued(now)`` with attempts 0; False otherwise."""
        ...

    async def delete(self, job_id: str, now: datetime) -> bool:
        """Mark a job :class:`Deleted`; False if it is unknown or already Deleted.

        A Processing job can't be taken from its worker this way: its abort
        is requested (reason ``"deleted"``, as :meth:`abort`), it ends
        Aborted, and it stays listed until deleted again or expired.
        """
        ...

    async def set_progress(self, job_id: str, progress: Progress) -> bool:
        """Store a Processing job's progress without bumping its version; False otherwise."""
        ...

    # -- queues ----------------------------------------------------------

    async def pause_queue(self, name: str) -> None:
        """Make every server start nothing from ``name`` until :meth:`resume_queue`."""
        ...

    async def resume_queue(self, name: str) -> None:
        """Undo :meth:`pause_queue` (no error if it was not paused)."""
        ...

    async def set_queue_limits(
        self, name: str, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        """Store a queue's limits (None: no limit); checked values only (see ``Client``)."""
        ...

    async def list_queues(self) -> list[QueueInfo]:
        """Every queue that has jobs or stored settings, by name."""
        ...

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Apply compare-and-swap transitions in one round trip.

        Each one succeeds independently iff the job exists and still has
        ``expected_version``. Returns, in order, the job as stored now, or
        None where the swap failed.
        """
        ...

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue :class:`Scheduled` and :class:`AwaitingRetry` jobs due at ``now``.

        A promoted job is requeued like any other: its attempts stay, and
        its ``expires_at`` is cleared, since cleanup must never delete a job
        that waits to run.
        """
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
        servers poll. Missed occurrences collapse into one job. A template
        whose ``next_run`` raises is logged and skipped (left as it is); the
        others go on, all in one atomic step.
        """
        ...

    # -- schema and lifecycle --------------------------------------------

    async def schema_status(self) -> SchemaStatus:
        """The schema version of the backing database, and the one this code writes."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


class _Backend(Protocol):
    """What a module named in :data:`BACKENDS` provides."""

    async def open(self, url: str) -> Storage: ...

    async def schema_status(self, url: str) -> SchemaStatus: ...


def _backend(url: object) -> _Backend:
    """The backend module for ``url`` (imported now), after the checks every URL gets."""
    if not isinstance(url, str):
        raise TypeError(f"storage URL must be a str, not {type(url).__name__}")
    if url != url.strip() or any(ord(ch) < 0x20 or ch == "\x7f" for ch in url):
        raise ValueError(
            f"storage URL {url!r} has whitespace or control characters around or in it"
        )
    scheme, separator, _ = url.partition("://")
    module = BACKENDS.get(scheme.lower()) if separator else None
    if module is None:
        raise ValueError(f"unsupported storage URL {url!r}: use one of {_URL_FORMS}")
    return cast(_Backend, importlib.import_module(module))


@asynccontextmanager
async def open_storage(url: str) -> AsyncGenerator[Storage, None]:
    """Open the storage a URL names, and close it at block exit.

    * ``memory://``: a new, private in-memory store (each call a new one).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``: an
      embedded SQLite database (created, schema migrated on open).
    * ``postgresql://user@host:port/db``: PostgreSQL (needs the ``postgres``
      extra: ``pip install trio-monitor[postgres]``). The first connection
      is made here, so a wrong host, database or role fails at once with
      the server's own message.

    Raises:
      ValueError: A malformed URL, an unknown scheme or option (the message
        names the problem).
      SchemaVersionError: The database was written by a newer trio_monitor.
    """
    storage = await _backend(url).open(url)
    try:
        yield storage
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


async def check_schema(url: str) -> SchemaStatus:
    """The schema version of the database ``url`` names, without changing it.

    Nothing is created or migrated (an SQLite file that does not exist is at
    version 0). ``check_schema(url).up_to_date`` is what ``migrate --check``
    reports.
    """
    return await _backend(url).schema_status(url)


async def migrate(url: str) -> SchemaStatus:
    """Bring the database ``url`` names to the latest schema, and return its status.

    Opening a storage migrates it too; this is the same step on its own, for
    deployments that migrate before they start servers.

    Raises:
      SchemaVersionError: The database was written by a newer trio_monitor.
    """
    async with open_storage(url) as storage:
        return await storage.schema_status()
