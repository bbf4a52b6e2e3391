"""The embedded SQLite backend: stdlib :mod:`sqlite3` on one worker thread.

Design, in short:

* One connection per storage, used by one thread at a time: every call hops
  to a worker thread through :func:`trio.to_thread.run_sync` with the
  storage's own ``CapacityLimiter(1)``. A hop costs about 120 µs, so the hot
  methods (:meth:`~SQLiteStorage.claim`, :meth:`~SQLiteStorage.apply`,
  :meth:`~SQLiteStorage.enqueue_many`) do a whole batch in one hop and one
  transaction.
* WAL journal, ``synchronous=NORMAL`` and a busy timeout, so several
  processes can share one database file. Every method that writes runs in
  one ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the
  first read, so two processes never read the same claimable job and both
  take it. A method that fails rolls its transaction back and the connection
  stays usable; "database is locked" (after the busy timeout) propagates as
  :class:`sqlite3.OperationalError` for the caller to back off on.
* Writes that are waiting at the same time share one hop and one
  transaction (each in its own ``SAVEPOINT``, so one that fails is rolled
  back alone): the job server's claim and its batch of outcomes usually go
  together.
* Calls are not abandoned on cancellation (``abandon_on_cancel=False``), so
  a cancelled Trio task never leaves a transaction half done: once its call
  has reached the worker thread it waits for the commit or rollback, gets
  the call's result like any uncancellable Trio call, and sees
  :class:`trio.Cancelled` at its next checkpoint. A write cancelled before
  it was taken into a transaction is dropped and raises at once. A caller
  cancelled right after a claim returns therefore holds the claimed jobs;
  if it drops them, the job server's recovery paths (stale claims, dead
  servers, requeue on stop) bring them back.
* Timestamps are stored as integer microseconds since the Unix epoch (exact,
  and cheap to compare in indexes); they come back as UTC datetimes. Payloads
  and states are JSON text (:func:`~trio_monitor.jobs._model.encode_state`),
  with the fields the queries need (due time, claim time, claiming server)
  copied into indexed columns.
* The schema is versioned with ``PRAGMA user_version`` and migrated on open.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar, cast
from urllib.parse import parse_qsl

import attrs
import trio

from ._model import (
    AwaitingRetry,
    Deleted,
    Enqueued,
    Failed,
    Job,
    JobState,
    Processing,
    RecurringJob,
    Scheduled,
    ServerInfo,
    Succeeded,
    Transition,
    Transitioned,
    decode_state,
)
from ._storage import NextRun, WakeUp

__all__ = ["SCHEMA_VERSION", "SQLiteStorage", "SchemaVersionError"]

logger = logging.getLogger("trio_monitor.jobs.sqlite")

_T = TypeVar("_T")

# -- schema ----------------------------------------------------------------

#: Migration steps: ``MIGRATIONS[i]`` takes a database from version ``i`` to
#: ``i + 1``. Append new steps; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # Timestamps are integer microseconds since the epoch, UTC.
        """
        CREATE TABLE jobs (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            id          TEXT    NOT NULL UNIQUE,
            method      TEXT    NOT NULL,
            payload     TEXT    NOT NULL,
            queue       TEXT    NOT NULL,
            priority    INTEGER NOT NULL,
            attempts    INTEGER NOT NULL,
            created_at  INTEGER NOT NULL,
            state       TEXT    NOT NULL,
            state_data  TEXT    NOT NULL,
            due_at      INTEGER,
            started_at  INTEGER,
            server_name TEXT,
            expires_at  INTEGER,
            version     INTEGER NOT NULL
        )
        """,
        # Claims: the best claimable job of one queue, or of all queues.
        "CREATE INDEX jobs_claim_queue ON jobs (queue, priority DESC, seq)"
        " WHERE state = 'enqueued'",
        "CREATE INDEX jobs_claim_any ON jobs (priority DESC, seq) WHERE state = 'enqueued'",
        # The scheduler: Scheduled / AwaitingRetry jobs by due time.
        "CREATE INDEX jobs_due ON jobs (due_at) WHERE state IN ('scheduled', 'awaiting_retry')",
        # Cleanup.
        "CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL",
        # list_jobs(state=...), count_by_state, and the Processing jobs for
        # stale and dead-server claims (few: at most one per worker). Every
        # index costs pages written on every claim and completion, so there
        # is no separate index on claim time or claiming server.
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        """
        CREATE TABLE servers (
            id             TEXT PRIMARY KEY,
            name           TEXT    NOT NULL,
            worker_count   INTEGER NOT NULL,
            queues         TEXT    NOT NULL,
            started_at     INTEGER NOT NULL,
            last_heartbeat INTEGER NOT NULL
        )
        """,
        "CREATE INDEX servers_heartbeat ON servers (last_heartbeat)",
        """
        CREATE TABLE recurring (
            id          TEXT PRIMARY KEY,
            cron        TEXT    NOT NULL,
            method      TEXT    NOT NULL,
            payload     TEXT    NOT NULL,
            queue       TEXT    NOT NULL,
            priority    INTEGER NOT NULL,
            next_run_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX recurring_due ON recurring (next_run_at)",
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

DEFAULT_BUSY_TIMEOUT: Final = 5.0


class SchemaVersionError(RuntimeError):
    """The database was written by a newer trio_monitor than this one.

    Nothing was changed in it. Upgrade trio_monitor, or point the server at
    another database.
    """


# -- time ------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


def _to_us(value: datetime, what: str = "timestamp") -> int:
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value!r}")
    return (value - _EPOCH) // _ONE_US


def _opt_us(value: datetime | None, what: str) -> int | None:
    return None if value is None else _to_us(value, what)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# -- state columns ---------------------------------------------------------

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dump(value: object, what: str = "payload") -> str:
    """:func:`~trio_monitor.jobs._model.dump_json`, without building an encoder per call."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job {what} must be JSON-serialisable: {exc}") from None


# Per state class: its fields in order, and whether each is a datetime.
_STATE_FIELDS: Final[dict[type[Any], tuple[tuple[str, bool], ...]]] = {
    cls: tuple((f.name, f.type in ("datetime", datetime)) for f in attrs.fields(cls))
    for cls in (Enqueued, Scheduled, Processing, Succeeded, Failed, AwaitingRetry, Deleted)
}

# (state name, state JSON, due_at, started_at, server_name, the state in UTC)
_StateRow = tuple[str, str, int | None, int | None, str | None, JobState]


def _state_row(state: JobState) -> _StateRow:
    """The columns that store ``state``; TypeError if it does not encode.

    The JSON is :func:`~trio_monitor.jobs._model.encode_state`'s (so
    :func:`~trio_monitor.jobs._model.decode_state` reads it) with datetimes
    in UTC, built with less per-call overhead: this is on the claim/apply path.
    """
    try:
        plan = _STATE_FIELDS[type(state)]
    except KeyError:
        raise TypeError(f"not a job state: {state!r}") from None
    fields: dict[str, Any] = {}
    non_utc = False
    for name, is_datetime in plan:
        value = getattr(state, name)
        if is_datetime:
            if value.tzinfo is not UTC:
                value = _utc(value)
                non_utc = True
            fields[name] = value.isoformat()
        else:
            fields[name] = value
    data = _dump(fields, "result")
    if non_utc:
        state = decode_state(state.name, data)
    if isinstance(state, Processing):
        return state.name, data, None, _to_us(state.started_at), state.server_name, state
    if isinstance(state, Scheduled):
        return state.name, data, _to_us(state.enqueue_at), None, None, state
    if isinstance(state, AwaitingRetry):
        return state.name, data, _to_us(state.retry_at), None, None, state
    return state.name, data, None, None, None, state


def _enqueued_row(now: datetime) -> _StateRow:
    return _state_row(Enqueued(now))


# -- rows ------------------------------------------------------------------

_JOB_COLUMNS: Final = (
    "id, method, payload, queue, priority, attempts, created_at, state, state_data,"
    " expires_at, version"
)


def _job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        method=row[1],
        payload=json.loads(row[2]),
        queue=row[3],
        priority=row[4],
        attempts=row[5],
        created_at=_EPOCH + timedelta(microseconds=row[6]),
        state=decode_state(row[7], row[8]),
        expires_at=None if row[9] is None else _EPOCH + timedelta(microseconds=row[9]),
        version=row[10],
    )


def _insert_params(job: Job) -> tuple[Any, ...]:
    """The INSERT parameters of ``job``; TypeError/ValueError before any write."""
    if not isinstance(job, Job):
        raise TypeError(f"expected a Job, got {type(job).__name__}")
    payload = _dump(job.payload)
    name, data, due_at, started_at, server_name, _ = _state_row(job.state)
    return (
        job.id,
        job.method,
        payload,
        job.queue,
        job.priority,
        job.attempts,
        _to_us(job.created_at, "Job.created_at"),
        name,
        data,
        due_at,
        started_at,
        server_name,
        _opt_us(job.expires_at, "Job.expires_at"),
        job.version,
    )


_INSERT_JOB: Final = (
    "INSERT INTO jobs (id, method, payload, queue, priority, attempts, created_at, state,"
    " state_data, due_at, started_at, server_name, expires_at, version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Requeue the given rows (by seq) as Enqueued; parameters (state_data, seq).
_REQUEUE: Final = (
    "UPDATE jobs SET state = 'enqueued', state_data = ?, due_at = NULL, started_at = NULL,"
    " server_name = NULL, version = version + 1 WHERE seq = ?"
)


def _parse_target(target: str) -> tuple[str, dict[str, str]]:
    """Split ``path?key=value`` into the path and its options."""
    path, _, query = target.partition("?")
    return path, dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))


# -- the storage -----------------------------------------------------------


class SQLiteStorage:
    """Job storage in an SQLite database file; see the module docstring.

    Open it with :func:`~trio_monitor.jobs.open_storage`
    (``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"``) or
    :meth:`open`, and close it with :meth:`aclose`.
    """

    # Claim ordering and batching live in SQL; these are the statements whose
    # text depends on the number of queues, cached per count.
    _claim_sql_cache: ClassVar[dict[int, str]] = {}

    def __init__(
        self, connection: sqlite3.Connection, path: str, limiter: trio.CapacityLimiter
    ) -> None:
        # Use open(): the connection must be configured and migrated, and
        # only ever used through ``limiter`` (one thread at a time).
        self._conn: sqlite3.Connection | None = connection
        self._path = path
        self._limiter = limiter
        self._wakeup = WakeUp()
        # Writes waiting for the next transaction, and who may start one.
        self._writes: list[_Write] = []
        self._write_lock = trio.Lock()

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float | None = None) -> SQLiteStorage:
        """Open (creating and migrating as needed) the database at ``path``.

        Args:
          path: A file path, relative to the working directory unless
            absolute, optionally followed by ``?busy_timeout=SECONDS``
            (``":memory:"`` gives a private in-memory database).
          busy_timeout: Seconds a call waits for another connection's write
            lock before it raises ``sqlite3.OperationalError("database is
            locked")``. Default 5.0 (or the URL's ``busy_timeout``).

        Raises:
          SchemaVersionError: The database has a newer schema than this code
            knows; it is left untouched.
          ValueError: Unknown or malformed URL options.
        """
        if not isinstance(path, str):
            raise TypeError(f"SQLite path must be a str, not {type(path).__name__}")
        file_path, options = _parse_target(path)
        if not file_path:
            raise ValueError("SQLite URL names no database file: use sqlite:///path/to/jobs.db")
        timeout = DEFAULT_BUSY_TIMEOUT
        for key, value in options.items():
            if key != "busy_timeout":
                raise ValueError(
                    f"unknown SQLite URL option {key!r}: the supported option is busy_timeout"
                )
            try:
                timeout = float(value)
            except ValueError:
                raise ValueError(f"busy_timeout must be seconds, got {value!r}") from None
        if busy_timeout is not None:
            timeout = busy_timeout
        if not timeout >= 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, got {timeout!r}")
        limiter = trio.CapacityLimiter(1)
        conn = await trio.to_thread.run_sync(_connect, file_path, timeout, limiter=limiter)
        return cls(conn, file_path, limiter)

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<SQLiteStorage {self._path!r} ({state})>"

    # -- plumbing ------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` on the storage's thread (not abandoned on cancel)."""
        if self._conn is None:
            raise trio.ClosedResourceError("this SQLite storage is closed")
        return await trio.to_thread.run_sync(self._in_thread, fn, limiter=self._limiter)

    def _in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._conn
        if conn is None:  # closed while this call waited for the thread
            raise trio.ClosedResourceError("this SQLite storage is closed")
        return fn(conn)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` in a ``BEGIN IMMEDIATE`` transaction.

        Writes queued while another is in flight, or in the same scheduling
        round, are combined: whoever gets the lock first runs them all in one
        hop, each inside its own savepoint. An ``Exception`` from ``fn``
        rolls back its own writes only, and is raised to its own caller.
        """
        write = _Write(fn)
        self._writes.append(write)
        try:
            # Acquiring is a schedule point, even when the lock is free: the
            # writers made runnable with us have queued theirs by now.
            async with self._write_lock:
                if write.result is None:
                    batch, self._writes = self._writes, []
                    try:
                        await self._call(lambda conn: _run_writes(conn, batch))
                    except BaseException as exc:
                        for other in batch:
                            if other.result is None:
                                other.result = (False, exc)
                        raise
                    finally:
                        for other in batch:
                            other.done.set()
        except BaseException as exc:
            if write in self._writes:  # not taken: nothing was done
                self._writes.remove(write)
                raise
            if not isinstance(exc, trio.Cancelled):
                raise
            # In another caller's transaction: wait for it, like any
            # uncancellable call; the next checkpoint raises Cancelled.
            with trio.CancelScope(shield=True):
                await write.done.wait()
        assert write.result is not None  # set before ``done``, and before the lock is free
        ok, value = write.result
        if ok:
            return cast(_T, value)
        assert isinstance(value, BaseException)
        raise value

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given; see :meth:`Storage.enqueue`."""
        await self.enqueue_many([job])
        return job.id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store several jobs in one transaction: all or none."""
        jobs = list(jobs)
        if not jobs:
            await trio.lowlevel.checkpoint()
            return []

        def run(conn: sqlite3.Connection) -> None:
            _insert_jobs(conn, [_insert_params(job) for job in jobs])

        await self._write(run)
        if any(isinstance(job.state, Enqueued) for job in jobs):
            self._wakeup.notify()
        return [job.id for job in jobs]

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""

        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            return None if row is None else _job_from_row(row)

        return await self._call(run)

    async def list_jobs(
        self, *, state: type[JobState] | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state``."""
        limit_value = -1 if limit is None else int(limit)
        if state is None:
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq LIMIT ?"
            params: tuple[Any, ...] = (limit_value,)
        else:
            if _STATE_FIELDS.get(state) is None:
                raise TypeError(f"state must be a job state class, got {state!r}")
            sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq LIMIT ?"
            params = (state.name, limit_value)

        def run(conn: sqlite3.Connection) -> list[Job]:
            return [_job_from_row(row) for row in conn.execute(sql, params)]

        return await self._call(run)

    async def count_by_state(self) -> dict[str, int]:
        """Jobs per state name; states with no job are left out."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))

        return await self._call(run)

    async def claim(
        self,
        *,
        queues: Sequence[str],
        worker_ids: Sequence[str],
        server_name: str,
        now: datetime,
    ) -> list[Job]:
        """Claim up to ``len(worker_ids)`` Enqueued jobs in one transaction."""
        worker_ids = list(worker_ids)
        if isinstance(queues, str):
            raise TypeError("queues must be a sequence of queue names, not a str")
        queue_list = list(dict.fromkeys(queues))  # duplicates would claim a job twice
        if not worker_ids:
            await trio.lowlevel.checkpoint()
            return []
        now = _utc(now)
        now_us = _to_us(now, "now")
        sql = self._claim_sql(len(queue_list))
        limit = len(worker_ids)
        params: list[Any] = []
        for queue in queue_list:
            params += (queue, limit)
        if len(queue_list) != 1:
            params.append(limit)
        # Processing's JSON, minus the worker id, is the same for every job.
        head = '{"started_at":"' + now.isoformat() + '","worker_id":'
        tail = ',"server_name":' + json.dumps(server_name) + "}"
        started = [Processing(now, worker_id, server_name) for worker_id in worker_ids]

        def claim(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(sql, params).fetchall()
            conn.executemany(
                "UPDATE jobs SET state = 'processing', state_data = ?, started_at = ?,"
                " server_name = ?, due_at = NULL, attempts = attempts + 1, version = version + 1"
                " WHERE seq = ?",
                [
                    (head + json.dumps(worker_id) + tail, now_us, server_name, row[0])
                    for row, worker_id in zip(rows, worker_ids, strict=False)
                ],
            )
            return [
                Job(
                    id=row[1],
                    method=row[2],
                    payload=json.loads(row[3]),
                    queue=row[4],
                    priority=row[5],
                    attempts=row[6] + 1,
                    created_at=_EPOCH + timedelta(microseconds=row[7]),
                    state=state,
                    expires_at=None if row[8] is None else _EPOCH + timedelta(microseconds=row[8]),
                    version=row[9] + 1,
                )
                for row, state in zip(rows, started, strict=False)
            ]

        return await self._write(claim)

    @classmethod
    def _claim_sql(cls, queue_count: int) -> str:
        sql = cls._claim_sql_cache.get(queue_count)
        if sql is not None:
            return sql
        columns = (
            "seq, id, method, payload, queue, priority, attempts, created_at, expires_at, version"
        )
        # INDEXED BY: without ANALYZE statistics the planner would pick
        # jobs_state and sort every claimable job; these are O(log n).
        select = f"SELECT {columns} FROM jobs"
        order = " ORDER BY priority DESC, seq LIMIT ?"
        if queue_count == 0:
            sql = f"{select} INDEXED BY jobs_claim_any WHERE state = 'enqueued'{order}"
        else:
            one = (
                f"{select} INDEXED BY jobs_claim_queue"
                f" WHERE state = 'enqueued' AND queue = ?{order}"
            )
            if queue_count == 1:
                sql = one
            else:
                # One index range per queue, merged.
                sql = " UNION ALL ".join([f"SELECT * FROM ({one})"] * queue_count) + order
        cls._claim_sql_cache[queue_count] = sql
        return sql

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Compare-and-swap each transition; all in one transaction."""
        transitions = list(transitions)
        if not transitions:
            await trio.lowlevel.checkpoint()
            return []

        def run(conn: sqlite3.Connection) -> list[Job | None]:
            # Encode everything first: a bad state raises before any write.
            params: list[tuple[Any, ...]] = []
            states: list[JobState] = []
            for t in transitions:
                name, data, due_at, started_at, server_name, state = _state_row(t.state)
                states.append(state)
                params.append(
                    (
                        name,
                        data,
                        due_at,
                        started_at,
                        server_name,
                        t.attempts,
                        _opt_us(t.expires_at, "Transition.expires_at"),
                    )
                )
            return _apply(conn, transitions, states, params)

        results = await self._write(run)
        if any(
            job is not None and isinstance(job.state, Enqueued) for job in results
        ):  # a retry made due at once, a requeue
            self._wakeup.notify()
        return results

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue the Scheduled and AwaitingRetry jobs due at ``now``."""
        now_us = _to_us(now, "now")
        enqueued = _enqueued_row(now)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            rows = conn.execute(
                f"SELECT seq, {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_due"
                " WHERE state IN ('scheduled', 'awaiting_retry') AND due_at <= ?"
                " ORDER BY due_at, seq",
                (now_us,),
            ).fetchall()
            return _requeue(conn, rows, enqueued)

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
        return changed

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        """Re-enqueue Processing jobs claimed before ``started_before``."""
        cutoff = _to_us(started_before, "started_before")
        enqueued = _enqueued_row(now)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            rows = conn.execute(
                f"SELECT seq, {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_state"
                " WHERE state = 'processing' AND started_at < ? ORDER BY started_at, seq",
                (cutoff,),
            ).fetchall()
            return _requeue(conn, rows, enqueued)

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
        return changed

    async def delete_expired(self, now: datetime) -> int:
        """Delete jobs whose ``expires_at`` is at or before ``now``."""
        now_us = _to_us(now, "now")

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_us,)
            ).rowcount

        return await self._write(run)

    async def wait_for_work(self) -> None:
        """Wait for an in-process enqueue/promotion/requeue.

        Other processes sharing the file are not heard; the caller's polling
        sees their jobs.
        """
        await self._wakeup.wait()

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        """Insert or replace the heartbeat row ``info.id``."""
        params = (
            info.id,
            info.name,
            info.worker_count,
            _dump(list(info.queues), "server queues"),
            _to_us(info.started_at, "ServerInfo.started_at"),
            _to_us(info.last_heartbeat, "ServerInfo.last_heartbeat"),
        )

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO servers"
                " (id, name, worker_count, queues, started_at, last_heartbeat)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )

        await self._write(run)

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        """Bump the row's heartbeat; False if it no longer exists."""
        now_us = _to_us(now, "now")

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE servers SET last_heartbeat = ? WHERE id = ?", (now_us, server_id)
            )
            return cur.rowcount > 0

        return await self._write(run)

    async def deregister_server(self, server_id: str) -> None:
        """Remove the row (no error if absent)."""
        await self._write(
            lambda conn: conn.execute("DELETE FROM servers WHERE id = ?", (server_id,))
        )

    async def list_servers(self) -> list[ServerInfo]:
        """All heartbeat rows, oldest registration first."""

        def run(conn: sqlite3.Connection) -> list[ServerInfo]:
            return [
                ServerInfo(
                    id=row[0],
                    name=row[1],
                    worker_count=row[2],
                    queues=json.loads(row[3]),
                    started_at=_from_us(row[4]),
                    last_heartbeat=_from_us(row[5]),
                )
                for row in conn.execute(
                    "SELECT id, name, worker_count, queues, started_at, last_heartbeat"
                    " FROM servers ORDER BY started_at, id"
                )
            ]

        return await self._call(run)

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        """Requeue dead servers' Processing jobs, then delete their rows; one transaction."""
        cutoff = _to_us(heartbeat_before, "heartbeat_before")
        enqueued = _enqueued_row(now)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            dead = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM servers WHERE last_heartbeat < ?", (cutoff,)
                )
            ]
            if not dead:
                return []
            changed: list[Transitioned] = []
            for server_id in dead:
                rows = conn.execute(
                    f"SELECT seq, {_JOB_COLUMNS} FROM jobs INDEXED BY jobs_state"
                    " WHERE state = 'processing' AND server_name = ? ORDER BY seq",
                    (server_id,),
                ).fetchall()
                changed += _requeue(conn, rows, enqueued)
            conn.executemany("DELETE FROM servers WHERE id = ?", [(s,) for s in dead])
            return changed

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
        return changed

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        """Insert or replace a recurring template (by id)."""
        params = (
            recurring.id,
            recurring.cron,
            recurring.method,
            _dump(recurring.payload),
            recurring.queue,
            recurring.priority,
            _to_us(recurring.next_run_at, "RecurringJob.next_run_at"),
        )

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO recurring"
                " (id, cron, method, payload, queue, priority, next_run_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                params,
            )

        await self._write(run)

    async def remove_recurring(self, recurring_id: str) -> bool:
        """Remove a template; False if there was none."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM recurring WHERE id = ?", (recurring_id,))
            return cur.rowcount > 0

        return await self._write(run)

    async def list_recurring(self) -> list[RecurringJob]:
        """All recurring templates, by id."""

        def run(conn: sqlite3.Connection) -> list[RecurringJob]:
            return [
                RecurringJob(
                    id=row[0],
                    cron=row[1],
                    method=row[2],
                    payload=json.loads(row[3]),
                    queue=row[4],
                    priority=row[5],
                    next_run_at=_from_us(row[6]),
                )
                for row in conn.execute(
                    "SELECT id, cron, method, payload, queue, priority, next_run_at"
                    " FROM recurring ORDER BY id"
                )
            ]

        return await self._call(run)

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """Enqueue one job per due template, advancing it; one transaction.

        ``next_run`` is called on the storage's worker thread, inside the
        transaction; it should be a quick, pure function (a cron parser).
        """
        now = _utc(now)
        now_us = _to_us(now, "now")
        enqueued = _enqueued_row(now)

        def run(conn: sqlite3.Connection) -> list[Job]:
            due = conn.execute(
                "SELECT id, cron, method, payload, queue, priority, next_run_at"
                " FROM recurring WHERE next_run_at <= ? ORDER BY next_run_at, id",
                (now_us,),
            ).fetchall()
            made: list[Job] = []
            for rid, cron, method, payload, queue, priority, next_run_at in due:
                following = _to_us(next_run(cron, now), "next_run(...) result")
                cur = conn.execute(
                    "UPDATE recurring SET next_run_at = ? WHERE id = ? AND next_run_at = ?",
                    (following, rid, next_run_at),
                )
                if cur.rowcount != 1:
                    continue
                job = Job(
                    id=str(uuid.uuid4()),
                    method=method,
                    payload=json.loads(payload),
                    queue=queue,
                    priority=priority,
                    created_at=now,
                    state=Enqueued(now),
                )
                conn.execute(
                    _INSERT_JOB,
                    # attempts 0, created now, no expiry, version 0
                    (job.id, method, payload, queue, priority, 0, now_us, *enqueued[:5], None, 0),
                )
                made.append(job)
            return made

        made = await self._write(run)
        if made:
            self._wakeup.notify()
        return made

    # -- lifecycle -------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection (after any call in flight). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            await trio.lowlevel.checkpoint()
            return
        # Shielded: a cancelled closer must still release the file.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


# -- thread-side helpers ---------------------------------------------------


def _connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open, configure and migrate the database (runs on a worker thread)."""
    if path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise FileNotFoundError(
            f"cannot create SQLite database {path!r}: its directory does not exist"
        )
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        _check_version(conn, path)  # before anything that could write
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and path != ":memory:":
            logger.warning("SQLite database %r is in journal mode %r, not WAL", path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        _transaction(conn, lambda c: _migrate(c, path))
    except BaseException:
        conn.close()
        raise
    return conn


def _check_version(conn: sqlite3.Connection, path: str) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"SQLite database {path!r} has job schema version {version}, but this "
            f"trio_monitor knows versions up to {SCHEMA_VERSION}: it was written by a newer "
            "trio_monitor. Upgrade trio_monitor; the database was not changed."
        )
    return version


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    # Read again under the write lock: another process may have migrated.
    version = _check_version(conn, path)
    for step in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[step]:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step + 1}")
        logger.info("migrated SQLite job database %r to schema version %d", path, step + 1)


class _Write:
    """One caller's write, waiting for (or done in) a combined transaction."""

    __slots__ = ("done", "fn", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        self.fn = fn
        #: ``(True, value)`` or ``(False, exception)`` once run.
        self.result: tuple[bool, object] | None = None
        self.done = trio.Event()


def _run_writes(conn: sqlite3.Connection, batch: list[_Write]) -> None:
    """Run ``batch`` in one transaction, each write in its own savepoint."""

    def run_each(conn: sqlite3.Connection) -> None:
        for write in batch:
            conn.execute("SAVEPOINT write")
            try:
                write.result = (True, write.fn(conn))
            except Exception as exc:
                conn.execute("ROLLBACK TO write")
                write.result = (False, exc)
            conn.execute("RELEASE write")

    try:
        _transaction(conn, run_each)
    except Exception as exc:  # BEGIN or COMMIT failed: nothing was written
        for write in batch:
            write.result = (False, exc)


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """``fn(conn)`` in one BEGIN IMMEDIATE transaction, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _insert_jobs(conn: sqlite3.Connection, params: list[tuple[Any, ...]]) -> None:
    try:
        conn.executemany(_INSERT_JOB, params)
    except sqlite3.IntegrityError:
        ids = [p[0] for p in params]
        seen: set[str] = set()
        clashes = {i for i in ids if i in seen or seen.add(i)}  # type: ignore[func-returns-value]
        placeholders = ", ".join("?" * len(ids))
        clashes.update(
            row[0] for row in conn.execute(f"SELECT id FROM jobs WHERE id IN ({placeholders})", ids)
        )
        raise ValueError(
            f"job id(s) already exist: {', '.join(sorted(clashes)) or '?'}; nothing was stored"
        ) from None


# Most ``?`` one IN (...) list gets; SQLite allows 32766 per statement.
_MAX_IN: Final = 500

_APPLY: Final = (
    "UPDATE jobs SET state = ?, state_data = ?, due_at = ?, started_at = ?, server_name = ?,"
    " attempts = ?, expires_at = ?, version = ? WHERE seq = ?"
)


def _apply(
    conn: sqlite3.Connection,
    transitions: list[Transition],
    states: list[JobState],
    params: list[tuple[Any, ...]],
) -> list[Job | None]:
    """Check each transition's version, then write the ones that hold.

    Inside the BEGIN IMMEDIATE transaction nobody else writes, so reading
    the versions first and writing after is a compare-and-swap; one SELECT
    and one ``executemany`` cost far less than an ``UPDATE ... RETURNING``
    per job.
    """
    # id -> [seq, method, payload, queue, priority, attempts, created_at, version]
    current: dict[str, list[Any]] = {}
    ids = list(dict.fromkeys(t.job_id for t in transitions))
    for start in range(0, len(ids), _MAX_IN):
        chunk = ids[start : start + _MAX_IN]
        for row in conn.execute(
            "SELECT id, seq, method, payload, queue, priority, attempts, created_at, version"
            f" FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            current[row[0]] = list(row[1:])
    updates: list[tuple[Any, ...]] = []
    results: list[Job | None] = []
    for t, state, p in zip(transitions, states, params, strict=True):
        row = current.get(t.job_id)
        if row is None or row[7] != t.expected_version:
            results.append(None)
            continue
        # Later transitions of the same job in this batch see this one.
        attempts = row[5] = row[5] if p[5] is None else p[5]
        version = row[7] = row[7] + 1
        updates.append((*p[:5], attempts, p[6], version, row[0]))
        results.append(
            Job(
                id=t.job_id,
                method=row[1],
                payload=json.loads(row[2]),
                queue=row[3],
                priority=row[4],
                attempts=attempts,
                created_at=_EPOCH + timedelta(microseconds=row[6]),
                state=state,
                expires_at=None if t.expires_at is None else _utc(t.expires_at),
                version=version,
            )
        )
    conn.executemany(_APPLY, updates)
    return results


def _requeue(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], enqueued: _StateRow
) -> list[Transitioned]:
    """Put the given rows (``seq`` + job columns) back to Enqueued."""
    if not rows:
        return []
    conn.executemany(_REQUEUE, [(enqueued[1], row[0]) for row in rows])
    new_state = enqueued[5]
    changed: list[Transitioned] = []
    for row in rows:
        old = _job_from_row(row[1:])
        job = attrs.evolve(old, state=new_state, version=old.version + 1)
        changed.append(Transitioned(job=job, old_state=old.state))
    return changed
