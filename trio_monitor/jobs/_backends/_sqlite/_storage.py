"""The embedded SQLite backend: stdlib :mod:`sqlite3` on a thread of its own.

Design, in short:

* One connection per storage, owned by one dedicated thread
  (:class:`~._combiner.ConnectionThread`): every call is handed to it and
  each caller waits for its own call. The hot methods
  (:meth:`~SQLiteStorage.claim`, :meth:`~SQLiteStorage.apply`,
  :meth:`~SQLiteStorage.enqueue_many`) do a whole batch in one call and one
  transaction, and writes queued together share one transaction, each in
  its own savepoint.
* WAL journal, ``synchronous=NORMAL`` and a busy timeout, so several
  processes can share one database file. Every method that writes runs in
  a ``BEGIN IMMEDIATE`` transaction: the write lock is taken before the
  first read, so two processes never read the same claimable job and both
  take it. A method that fails rolls its changes back and the connection
  stays usable; "database is locked" (another connection held the write
  lock past the busy timeout) raises :class:`sqlite3.OperationalError`
  saying so, for the caller to back off on.
* Cancellation stays with its caller: see :mod:`._combiner` for the rule.
  A caller cancelled right after its claim was taken by the thread gets the
  claimed jobs back; if it drops them, the job server's recovery paths
  (stale claims, dead servers, requeue on stop) bring them back.
* Timestamps are stored as integer microseconds since the Unix epoch (exact,
  and cheap to compare in indexes); they come back as UTC datetimes. Rows,
  state JSON and index columns are the shared ones of :mod:`.._rows`.
* The schema (:mod:`._schema`) is versioned with ``PRAGMA user_version`` and
  migrated on open.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl

import trio

from ..._io_hold import io_in_flight
from ..._model import (
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
from ..._storage import AbortOutcome, NextRun, SchemaStatus
from .._rows import (
    JOB_COLUMNS,
    LIVE_SQL,
    QUEUE_COLUMNS,
    QUEUED,
    RECURRING_COLUMNS,
    SERVER_COLUMNS,
    TERMINAL,
    Admission,
    InsertRow,
    JobRow,
    QueueRow,
    RecurringRow,
    ServerRow,
    aborted_requeue_columns,
    check_state_class,
    insert_row,
    job_from_row,
    next_occurrence,
    occurrence,
    processing_updates,
    progress_json,
    queue_infos,
    rate_prune_before,
    rate_window_start,
    recurring_row,
    requeue_columns,
    server_row,
    state_update,
    transition_columns,
    updated,
    utc,
)
from .._wakeup import InProcessPush, WakeUp
from ._combiner import ConnectionThread
from ._schema import SCHEMA_VERSION, connect, read_status

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStorage", "open", "schema_status"]

_T = TypeVar("_T")

DEFAULT_BUSY_TIMEOUT: Final = 5.0

_PREFIX: Final = "sqlite:///"

# -- time ------------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)


def to_us(value: datetime) -> int:
    """The stored form of a timestamp: integer microseconds since the epoch."""
    return (utc(value) - _EPOCH) // _ONE_US


def from_us(value: int) -> datetime:
    """The datetime (UTC) a stored timestamp stands for."""
    return _EPOCH + timedelta(microseconds=value)


# -- statements ------------------------------------------------------------

_INSERT_JOB: Final = (
    f"INSERT INTO jobs ({', '.join(InsertRow._fields)})"
    f" VALUES ({', '.join('?' * len(InsertRow._fields))})"
)


def _set_clause(columns: Sequence[str]) -> str:
    return ", ".join(f"{column} = :{column}" for column in columns)


_REQUEUE_SET: Final = _set_clause(list(requeue_columns(_EPOCH, to_us)))
_STATE_SET: Final = _set_clause(list(state_update(Processing(_EPOCH, "", ""), to_us)[0]))
_APPLY_SET: Final = _set_clause(
    [*transition_columns(Transition("", 0, Processing(_EPOCH, "", "")), to_us)[0], "version"]
)

# Most ``?`` one IN (...) list gets; SQLite allows 32766 per statement.
_MAX_IN: Final = 500
# Up to this many queues a claim merges one index range per queue (UNION
# ALL); beyond, it filters the all-queues index (SQLite allows at most 500
# terms in a compound SELECT).
_MAX_UNION_QUEUES: Final = 32
# UPDATE ... FROM and RETURNING (SQLite 3.35): claims and outcomes in one
# statement each; older libraries take the SELECT-then-UPDATE paths.
_RETURNING: Final = sqlite3.sqlite_version_info >= (3, 35, 0)
# Claims of up to this many jobs are one statement (its text cached per
# queue count and size); bigger ones read, then write.
_MAX_ONE_STATEMENT_CLAIM: Final = 256
# A claim under flow control looks at most this many claimable jobs (the
# refused ones keep their places; the next claim looks again).
_MAX_ADMISSION_SCAN: Final = 4096


def _job(row: Sequence[Any], state: JobState | None = None) -> Job:
    return job_from_row(row, from_us, state)


# Positions in a row of ``seq`` + job columns.
_PRIORITY_AT: Final = 1 + JobRow._fields.index("priority")
_STATE_DATA_AT: Final = 1 + JobRow._fields.index("state_data")


def _claim_order(row: Sequence[Any]) -> tuple[int, int]:
    """Claim order of a row of ``seq`` + job columns: priority first, then age."""
    return -row[_PRIORITY_AT], row[0]


def _parse_target(target: str) -> tuple[str, float]:
    """The file path and busy timeout of ``path?busy_timeout=SECONDS``."""
    path, _, query = target.partition("?")
    if not path:
        raise ValueError("SQLite URL names no database file: use sqlite:///path/to/jobs.db")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError(f"malformed SQLite URL options {query!r}") from None
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
    return path, timeout


def _path_of(url: str) -> str:
    if not url[: len(_PREFIX)].lower() == _PREFIX:
        raise ValueError(
            f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db (three slashes)"
            " or sqlite:////absolute/path.db (four)"
        )
    return url[len(_PREFIX) :]


async def open(url: str) -> SQLiteStorage:
    """Open (creating and migrating as needed) the database ``sqlite:///path`` names."""
    return await SQLiteStorage.open(_path_of(url))


async def schema_status(url: str) -> SchemaStatus:
    """The schema version of the file ``url`` names, read only."""
    path, _ = _parse_target(_path_of(url))
    with io_in_flight():
        return await trio.to_thread.run_sync(read_status, path)


# -- the storage -----------------------------------------------------------


class SQLiteStorage(InProcessPush):
    """Job storage in an SQLite database file; see the module docstring.

    Open it with :func:`~trio_monitor.jobs.open_storage`
    (``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"``) or
    :meth:`open`, and close it with :meth:`aclose`.
    """

    # Claim statements depend on the number of queues; cached per count.
    _claim_sql_cache: ClassVar[dict[int, str]] = {}
    _claim_update_cache: ClassVar[dict[tuple[int, int], str]] = {}

    def __init__(self, connection: sqlite3.Connection, path: str, busy_timeout: float) -> None:
        # Use open(): the connection must be configured and migrated.
        self._path = path
        self._thread = ConnectionThread(
            connection,
            name=f"sqlite {path}",
            locked_hint=(
                f"another connection held the write lock longer than busy_timeout"
                f" ({busy_timeout:g}s); nothing was written. Raise it with"
                " ?busy_timeout=SECONDS in the URL, or end the long transaction"
            ),
        )
        self._wakeup = WakeUp()
        self._aborts = WakeUp()
        self._finished = WakeUp()

    @classmethod
    async def open(cls, path: str, *, busy_timeout: float | None = None) -> SQLiteStorage:
        """Open (creating and migrating as needed) the database at ``path``.

        Args:
          path: A file path, relative to the working directory unless
            absolute, optionally followed by ``?busy_timeout=SECONDS``
            (``":memory:"`` gives a private in-memory database).
          busy_timeout: Seconds a write waits for another connection's write
            lock before it raises ``sqlite3.OperationalError("database is
            locked ...")``. Default 5.0 (or the URL's ``busy_timeout``).

        Raises:
          SchemaVersionError: The database has a newer schema than this code
            knows; it is left untouched.
          ValueError: Unknown or malformed URL options.
        """
        if not isinstance(path, str):
            raise TypeError(f"SQLite path must be a str, not {type(path).__name__}")
        file_path, timeout = _parse_target(path)
        if busy_timeout is not None:
            timeout = busy_timeout
        if not 0 <= timeout < 1e6:
            raise ValueError(f"busy_timeout must be >= 0 seconds (and finite), got {timeout!r}")
        with io_in_flight():
            conn = await trio.to_thread.run_sync(connect, file_path, timeout)
        return cls(conn, file_path, timeout)

    def __repr__(self) -> str:
        state = "closed" if self._thread.closing else "open"
        return f"<SQLiteStorage {self._path!r} ({state})>"

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread.read(fn)

    async def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._thread.write(fn)

    async def _upsert(self, table: str, row: ServerRow | RecurringRow) -> None:
        """Insert ``row`` into ``table``, or replace the row with its ``id``."""
        sql = (
            f"INSERT OR REPLACE INTO {table} ({', '.join(row._fields)})"
            f" VALUES ({', '.join('?' * len(row))})"
        )
        await self._write(lambda conn: conn.execute(sql, row))

    def _check_open(self) -> None:
        if self._thread.closing:
            raise trio.ClosedResourceError("this SQLite storage is closed")

    async def _nothing(self) -> None:
        """The checkpoint of a call with nothing to do (still refused once closed)."""
        self._check_open()
        await trio.lowlevel.checkpoint()

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given; see :meth:`Storage.enqueue`."""
        (job_id,) = await self.enqueue_many([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store several jobs in one transaction: all or none."""
        rows = [insert_row(job, to_us) for job in jobs]  # raises before anything is written
        if not rows:
            await self._nothing()
            return []
        if any(row.unique_key is not None for row in rows):
            ids, stored = await self._write(lambda conn: _insert_unique(conn, rows))
        else:
            await self._write(lambda conn: _insert_jobs(conn, rows))
            ids, stored = [row.id for row in rows], rows
        if any(row.state == "enqueued" for row in stored):
            self._wakeup.notify()
        if any(row.state in TERMINAL for row in stored):
            self._finished.notify()
        return ids

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""

        def run(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else _job(row)

        return await self._read(run)

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
        """Jobs in creation order, optionally only those in ``state``."""
        sql, params = _list_sql(state, queue, method, limit, before, newest_first)
        return await self._read(lambda conn: [_job(row) for row in conn.execute(sql, params)])

    async def count_by_state(self) -> dict[str, int]:
        """Jobs per state name; states with no job are left out."""
        return await self._read(
            lambda conn: dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
        )

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
            await self._nothing()
            return []
        limit = len(worker_ids)
        now = utc(now)
        changes = processing_updates(now, worker_ids, server_name, to_us)

        # The Processing columns all claimed rows share; only state_data
        # (it names the worker) differs from row to row.
        shared = changes[0][0]
        state_of = {columns["state_data"]: state for columns, state in changes}
        data = [columns["state_data"] for columns, _ in changes]

        def claim(conn: sqlite3.Connection) -> list[Job]:
            one_statement = _RETURNING and limit <= _MAX_ONE_STATEMENT_CLAIM
            rows = self._claim_at_once(conn, queue_list, data, shared) if one_statement else []
            if rows:
                # RETURNING gives rows in no set order: claim order is priority, then age.
                rows.sort(key=_claim_order)
                return [_job(row[1:], state_of[row[_STATE_DATA_AT]]) for row in rows]
            return self._claim_admitted(conn, queue_list, limit, now, changes)

        return await self._write(claim)

    def _claim_at_once(
        self,
        conn: sqlite3.Connection,
        queues: list[str],
        data: list[str],
        shared: dict[str, Any],
    ) -> list[tuple[Any, ...]]:
        """The common claim, as one statement: the best claimable rows, updated and returned.

        It claims nothing (and returns no rows) when a queue setting limits
        claims or a candidate holds a lock: :meth:`_claim_admitted` then
        decides, as it does when nothing is claimable.
        """
        sql = self._claim_update_sql(len(queues), len(data))
        shared_params = [shared["started_at"], shared["server_name"]]
        candidates = self._candidate_params(queues, len(data))
        # In the order they appear in the statement (see _claim_update_sql).
        if len(data) == 1:
            params = [*data, *shared_params, *candidates]
        else:
            params = [*data, *candidates, *shared_params]
        return conn.execute(sql, params).fetchall()

    def _claim_admitted(
        self,
        conn: sqlite3.Connection,
        queue_list: list[str],
        limit: int,
        now: datetime,
        changes: list[tuple[dict[str, Any], JobState]],
    ) -> list[Job]:
        """A claim under flow control (queue settings, locks): candidates read, admitted, then
        updated (see :meth:`_admitted`)."""
        settings = _queue_settings(conn, queue_list)
        wanted = queue_list
        if settings:
            # A paused queue's jobs are not even looked at.
            wanted = [q for q in queue_list if not (q in settings and settings[q].paused)]
            if queue_list and not wanted:
                return []
        rows = self._candidates(conn, wanted, limit)
        if settings or any(JobRow(*row[1:]).lock_key is not None for row in rows):
            rows = self._admitted(conn, settings, wanted, rows, limit, now)
        conn.executemany(
            f"UPDATE jobs SET {_STATE_SET}, attempts = attempts + 1,"
            " version = version + 1 WHERE seq = :seq",
            [{**columns, "seq": row[0]} for row, (columns, _) in zip(rows, changes, strict=False)],
        )
        claimed: list[Job] = []
        for row, (columns, state) in zip(rows, changes, strict=False):
            stored = updated(JobRow(*row[1:]), columns)
            stored = stored._replace(attempts=stored.attempts + 1, version=stored.version + 1)
            claimed.append(_job(stored, state))
        return claimed

    def _candidates(
        self, conn: sqlite3.Connection, queues: list[str], limit: int
    ) -> list[tuple[Any, ...]]:
        """The ``limit`` best claimable rows (``seq`` + job columns) of ``queues``, in order."""
        sql = self._claim_sql(len(queues))
        params = self._candidate_params(queues, limit)
        return conn.execute(sql, params).fetchall()

    @staticmethod
    def _candidate_params(queues: list[str], limit: int) -> list[Any]:
        """The parameters of :meth:`_claim_sql`."""
        if len(queues) > _MAX_UNION_QUEUES:
            return [json.dumps(queues), limit]
        params: list[Any] = []
        for queue in queues:
            params += (queue, limit)
        if len(queues) != 1:
            params.append(limit)
        return params

    def _admitted(
        self,
        conn: sqlite3.Connection,
        settings: dict[str, QueueRow],
        queues: list[str],
        rows: list[tuple[Any, ...]],
        limit: int,
        now: datetime,
    ) -> list[tuple[Any, ...]]:
        """The rows flow control lets start, in claim order (see :class:`.._rows.Admission`).

        Runs inside the claim's write transaction, so what it counts
        (Processing jobs, starts, held locks) can't change underneath it.
        Looks further down the claimable jobs, in growing steps, while jobs
        are refused and more exist.
        """
        running = dict(
            conn.execute(
                "SELECT queue, count(*) FROM jobs INDEXED BY jobs_state"
                " WHERE state = 'processing' GROUP BY queue"
            )
        )
        held = {
            key
            for (key,) in conn.execute(
                "SELECT lock_key FROM jobs INDEXED BY jobs_lock_held"
                " WHERE lock_key IS NOT NULL AND state = 'processing'"
            )
        }
        started: dict[str, int] = {}
        for name, queue in settings.items():
            start = rate_window_start(queue, now)
            prune = rate_prune_before(queue, now)
            if start is not None and prune is not None:
                conn.execute(
                    "DELETE FROM queue_starts WHERE queue = ? AND started_at <= ?",
                    (name, to_us(prune)),
                )
                started[name] = conn.execute(
                    "SELECT count(*) FROM queue_starts WHERE queue = ? AND started_at > ?",
                    (name, to_us(start)),
                ).fetchone()[0]
        admission = Admission(settings, running, started, held)
        admitted: list[tuple[Any, ...]] = []
        seen = 0
        fetch = limit
        while True:
            for row in rows[seen:]:
                job = JobRow(*row[1:])
                if admission.admit(job.queue, job.lock_key):
                    admitted.append(row)
                    if len(admitted) == limit:
                        break
            if len(admitted) == limit or len(rows) < fetch or fetch >= _MAX_ADMISSION_SCAN:
                break
            if queues and all(admission.closed(queue) for queue in queues):
                break  # further down are jobs of these queues only: none may start
            seen = len(rows)
            fetch = min(fetch * 4, _MAX_ADMISSION_SCAN)
            rows = self._candidates(conn, queues, fetch)
        starts = [
            (JobRow(*row[1:]).queue, to_us(now))
            for row in admitted
            if JobRow(*row[1:]).queue in started
        ]
        conn.executemany("INSERT INTO queue_starts (queue, started_at) VALUES (?, ?)", starts)
        return admitted

    @classmethod
    def _claim_sql(cls, queue_count: int) -> str:
        sql = cls._claim_sql_cache.get(queue_count)
        if sql is not None:
            return sql
        # INDEXED BY: without ANALYZE statistics the planner would pick
        # jobs_state and sort every claimable job; these are O(log n).
        select = f"SELECT seq, {JOB_COLUMNS} FROM jobs"
        order = " ORDER BY priority DESC, seq LIMIT ?"
        if queue_count == 0:
            sql = f"{select} INDEXED BY jobs_claim_any WHERE state = 'enqueued'{order}"
        elif queue_count > _MAX_UNION_QUEUES:
            sql = (
                f"{select} INDEXED BY jobs_claim_any WHERE state = 'enqueued'"
                f" AND queue IN (SELECT value FROM json_each(?)){order}"
            )
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
        if queue_count <= _MAX_UNION_QUEUES:
            cls._claim_sql_cache[queue_count] = sql
        return sql

    @classmethod
    def _claim_update_sql(cls, queue_count: int, limit: int) -> str:
        """The one-statement claim of ``limit`` jobs (see :meth:`_claim_at_once`).

        The candidates are :meth:`_claim_sql`'s (same indexes), ranked in
        claim order; candidate ``i`` gets the ``i``-th worker's state_data.
        Its parameters: one state_data per worker, then the candidates' and
        the shared started_at and server_name, in that order for several
        workers, after the state_data for one.
        """
        key = (queue_count, limit)
        sql = cls._claim_update_cache.get(key)
        if sql is not None:
            return sql
        candidates = cls._claim_sql(queue_count)
        if limit == 1:
            # One job: no ranking, no join (half the work of the general form).
            given, source = "", ""
            data = "?"
            where = f"seq = (SELECT seq FROM ({candidates}) WHERE lock_key IS NULL)"
        else:
            ranks = ", ".join(f"({rank}, ?)" for rank in range(1, limit + 1))
            given = (
                f"WITH given (rank, data) AS (VALUES {ranks}),"
                " picked AS (SELECT seq, lock_key,"
                " row_number() OVER (ORDER BY priority DESC, seq) AS rank"
                f" FROM ({candidates}))"
            )
            source = " FROM picked JOIN given USING (rank)"
            data = "given.data"
            where = (
                "jobs.seq = picked.seq"
                " AND NOT EXISTS (SELECT 1 FROM picked WHERE lock_key IS NOT NULL)"
            )
        sql = (
            f"{given} UPDATE jobs SET state = 'processing', state_data = {data}, due_at = NULL,"
            " started_at = ?, server_name = ?, abort_reason = NULL,"
            " attempts = attempts + 1, version = version + 1"
            f"{source} WHERE {where}"
            # Flow control decides in Python (_claim_admitted): claim nothing here.
            " AND NOT EXISTS (SELECT 1 FROM queues"
            " WHERE paused OR max_running IS NOT NULL OR rate_count IS NOT NULL)"
            f" RETURNING seq, {JOB_COLUMNS}"
        )
        if queue_count <= _MAX_UNION_QUEUES:
            cls._claim_update_cache[key] = sql
        return sql

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Compare-and-swap each transition; all in one transaction."""
        transitions = list(transitions)
        # Encode everything first: a bad state raises before any write.
        changes = [transition_columns(t, to_us) for t in transitions]
        if not transitions:
            await self._nothing()
            return []
        apply = _apply_at_once if _RETURNING else _apply
        if len({t.job_id for t in transitions}) < len(transitions):
            apply = _apply  # one job changed twice: the later change sees the first
        results = await self._write(lambda conn: apply(conn, transitions, changes))
        if any(job is not None and job.state.name == "enqueued" for job in results):
            self._wakeup.notify()  # a retry due at once, a requeue
        if any(job is not None and job.state.name in TERMINAL for job in results):
            self._finished.notify()
            # A job leaving Processing may free a lock or a max_running slot.
            self._wakeup.notify()
        return results

    async def _requeue(
        self, select: str, params: tuple[Any, ...], now: datetime
    ) -> list[Transitioned]:
        """Requeue the rows ``select`` (``seq`` + job columns) finds; one transaction."""
        columns = requeue_columns(now, to_us)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            rows = conn.execute(select, params).fetchall()
            return _requeue(conn, rows, columns, now)

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
            self._finished.notify()
        return changed

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue the Scheduled and AwaitingRetry jobs due at ``now``."""
        return await self._requeue(
            f"SELECT seq, {JOB_COLUMNS} FROM jobs INDEXED BY jobs_due"
            " WHERE state IN ('scheduled', 'awaiting_retry') AND due_at <= ?"
            " ORDER BY due_at, seq",
            (to_us(now),),
            now,
        )

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        """Re-enqueue Processing jobs claimed before ``started_before``."""
        return await self._requeue(
            f"SELECT seq, {JOB_COLUMNS} FROM jobs INDEXED BY jobs_state"
            " WHERE state = 'processing' AND started_at < ? ORDER BY started_at, seq",
            (to_us(started_before),),
            now,
        )

    async def delete_expired(self, now: datetime) -> int:
        """Delete jobs whose ``expires_at`` is at or before ``now``."""
        now_us = to_us(now)
        return await self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?", (now_us,)
                ).rowcount
            )
        )

    async def wait_for_work(self) -> None:
        """Wait for an in-process enqueue/promotion/requeue.

        Other processes sharing the file are not heard; the caller's polling
        sees their jobs.
        """
        self._check_open()
        await self._wakeup.wait()

    # -- job control -----------------------------------------------------

    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (queue, state name)."""
        return await self._read(_counts)

    async def abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        """Abort a queued job now, or flag a Processing one; see the protocol."""
        columns, _ = state_update(Aborted(reason, utc(now)), to_us)

        def run(conn: sqlite3.Connection) -> AbortOutcome:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return "missing"
            if row[0] in QUEUED:
                conn.execute(
                    f"UPDATE jobs SET {_STATE_SET}, version = version + 1 WHERE id = :id",
                    {**columns, "id": job_id},
                )
                return "aborted"
            if row[0] == "processing":
                conn.execute("UPDATE jobs SET abort_reason = ? WHERE id = ?", (reason, job_id))
                return "requested"
            return "finished"

        outcome = await self._write(run)
        self._signal(outcome)
        return outcome

    def _signal(self, outcome: AbortOutcome) -> None:
        if outcome == "aborted":
            self._finished.notify()
        elif outcome == "requested":
            self._aborts.notify()

    async def aborts_requested(self, server_name: str) -> list[tuple[str, str]]:
        """The flagged Processing jobs of ``server_name``."""
        sql = (
            "SELECT id, abort_reason FROM jobs INDEXED BY jobs_state WHERE state = 'processing'"
            " AND server_name = ? AND abort_reason IS NOT NULL ORDER BY seq"
        )
        return await self._read(
            lambda conn: [(r[0], r[1]) for r in conn.execute(sql, (server_name,))]
        )

    async def retry(self, job_id: str, now: datetime) -> bool:
        """A Failed or Aborted job back to Enqueued, attempts 0."""
        columns = requeue_columns(now, to_us)

        def run(conn: sqlite3.Connection) -> bool:
            try:
                return (
                    conn.execute(
                        f"UPDATE jobs SET {_REQUEUE_SET}, attempts = 0, version = version + 1"
                        " WHERE id = :id AND state IN ('failed', 'aborted')",
                        {**columns, "id": job_id},
                    ).rowcount
                    > 0
                )
            except sqlite3.IntegrityError:  # its unique key is held by a live job
                return False

        retried = await self._write(run)
        if retried:
            self._wakeup.notify()
        return retried

    async def delete(self, job_id: str, now: datetime) -> bool:
        """Mark Deleted (a Processing job: abort requested)."""
        columns, _ = state_update(Deleted(), to_us)

        def run(conn: sqlite3.Connection) -> AbortOutcome | bool:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] == "deleted":
                return False
            if row[0] == "processing":
                conn.execute("UPDATE jobs SET abort_reason = 'deleted' WHERE id = ?", (job_id,))
                return "requested"
            conn.execute(
                f"UPDATE jobs SET {_STATE_SET}, version = version + 1 WHERE id = :id",
                {**columns, "id": job_id},
            )
            return "aborted"

        outcome = await self._write(run)
        if outcome is False:
            return False
        self._signal("requested" if outcome == "requested" else "aborted")
        return True

    async def set_progress(self, job_id: str, progress: Progress) -> bool:
        """Store a Processing job's progress; the version stays."""
        text = progress_json(progress)
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'processing'",
                    (text, job_id),
                ).rowcount
                > 0
            )
        )

    async def _set_queue(self, name: str, **values: Any) -> None:
        assignments = ", ".join(f"{key} = :{key}" for key in values)
        sql = (
            f"INSERT INTO queues (name) VALUES (:name) ON CONFLICT (name) DO NOTHING;"
            f"UPDATE queues SET {assignments} WHERE name = :name"
        )
        insert, update = sql.split(";")
        params = {"name": name, **values}

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(insert, params)
            conn.execute(update, params)

        await self._write(run)
        self._wakeup.notify()

    async def pause_queue(self, name: str) -> None:
        """Store the queue as paused."""
        await self._set_queue(name, paused=1)

    async def resume_queue(self, name: str) -> None:
        """Store the queue as running."""
        await self._set_queue(name, paused=0)

    async def set_queue_limits(
        self, name: str, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        """Store the queue's limits."""
        count, seconds = (None, None) if rate is None else rate
        await self._set_queue(name, max_running=max_running, rate_count=count, rate_seconds=seconds)

    async def list_queues(self) -> list[QueueInfo]:
        """Queues with jobs or settings, by name."""

        def run(conn: sqlite3.Connection) -> list[QueueInfo]:
            rows = [
                QueueRow(r[0], bool(r[1]), *r[2:])
                for r in conn.execute(f"SELECT {QUEUE_COLUMNS} FROM queues")
            ]
            return queue_infos(rows, _counts(conn))

        return await self._read(run)

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        """Insert or replace the heartbeat row ``info.id``."""
        await self._upsert("servers", server_row(info, to_us))

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        """Bump the row's heartbeat; False if it no longer exists."""
        now_us = to_us(now)
        return await self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE servers SET last_heartbeat = ? WHERE id = ?", (now_us, server_id)
                ).rowcount
                > 0
            )
        )

    async def deregister_server(self, server_id: str) -> None:
        """Remove the row (no error if absent)."""
        await self._write(
            lambda conn: conn.execute("DELETE FROM servers WHERE id = ?", (server_id,))
        )

    async def list_servers(self) -> list[ServerInfo]:
        """All heartbeat rows, oldest registration first."""
        sql = f"SELECT {SERVER_COLUMNS} FROM servers ORDER BY started_at, id"
        return await self._read(
            lambda conn: [ServerRow(*row).to_server(from_us) for row in conn.execute(sql)]
        )

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        """Requeue dead servers' Processing jobs, then delete their rows; one transaction."""
        cutoff = to_us(heartbeat_before)
        columns = requeue_columns(now, to_us)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            dead = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM servers WHERE last_heartbeat < ?", (cutoff,)
                )
            ]
            changed: list[Transitioned] = []
            for server_id in dead:
                rows = conn.execute(
                    f"SELECT seq, {JOB_COLUMNS} FROM jobs INDEXED BY jobs_state"
                    " WHERE state = 'processing' AND server_name = ? ORDER BY seq",
                    (server_id,),
                ).fetchall()
                changed += _requeue(conn, rows, columns, now)
            conn.executemany("DELETE FROM servers WHERE id = ?", [(s,) for s in dead])
            return changed

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
        return changed

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        """Insert or replace a recurring template (by id)."""
        await self._upsert("recurring", recurring_row(recurring, to_us))

    async def remove_recurring(self, recurring_id: str) -> bool:
        """Remove a template; False if there was none."""
        return await self._write(
            lambda conn: (
                conn.execute("DELETE FROM recurring WHERE id = ?", (recurring_id,)).rowcount > 0
            )
        )

    async def list_recurring(self) -> list[RecurringJob]:
        """All recurring templates, by id."""
        sql = f"SELECT {RECURRING_COLUMNS} FROM recurring ORDER BY id"
        return await self._read(
            lambda conn: [RecurringRow(*row).to_recurring(from_us) for row in conn.execute(sql)]
        )

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """Enqueue one job per due template, advancing it; one transaction.

        ``next_run`` is called on the storage's thread, inside the
        transaction; it should be a quick, pure function (a cron parser).
        """
        now = utc(now)
        now_us = to_us(now)

        def run(conn: sqlite3.Connection) -> list[Job]:
            due = [
                RecurringRow(*row)
                for row in conn.execute(
                    f"SELECT {RECURRING_COLUMNS} FROM recurring WHERE next_run_at <= ?"
                    " ORDER BY next_run_at, id",
                    (now_us,),
                )
            ]
            made: list[Job] = []
            for template in due:
                following = next_occurrence(template, now, next_run)
                if following is None:
                    continue
                cur = conn.execute(
                    "UPDATE recurring SET next_run_at = ? WHERE id = ? AND next_run_at = ?",
                    (to_us(following), template.id, template.next_run_at),
                )
                if cur.rowcount != 1:
                    continue
                job = occurrence(template, now)
                row = insert_row(job, to_us)
                conn.execute(_INSERT_JOB, row)
                made.append(_job(row.job_row()))
            return made

        made = await self._write(run)
        if made:
            self._wakeup.notify()
        return made

    # -- schema and lifecycle --------------------------------------------

    async def schema_status(self) -> SchemaStatus:
        """The database's schema version (always the latest once opened)."""
        current: int = await self._read(
            lambda conn: conn.execute("PRAGMA user_version").fetchone()[0]
        )
        return SchemaStatus(current=current, latest=SCHEMA_VERSION)

    async def aclose(self) -> None:
        """Finish the calls in flight, then close the connection. Idempotent."""
        self._aborts.notify()
        self._finished.notify()
        self._wakeup.notify()  # waiters return, and their next call is refused
        await self._thread.aclose()


# -- thread-side helpers ---------------------------------------------------


def _insert_jobs(conn: sqlite3.Connection, rows: list[InsertRow]) -> None:
    try:
        conn.executemany(_INSERT_JOB, rows)
    except sqlite3.IntegrityError:
        ids = [row.id for row in rows]
        seen: set[str] = set()
        clashes = {i for i in ids if i in seen or seen.add(i)}  # type: ignore[func-returns-value]
        for start in range(0, len(ids), _MAX_IN):
            chunk = ids[start : start + _MAX_IN]
            clashes.update(
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
            )
        raise ValueError(
            f"job id(s) already exist: {', '.join(sorted(clashes)) or '?'}; nothing was stored"
        ) from None


def _apply(
    conn: sqlite3.Connection,
    transitions: list[Transition],
    changes: list[tuple[dict[str, Any], JobState]],
) -> list[Job | None]:
    """Check each transition's version, then write the ones that hold.

    Inside the BEGIN IMMEDIATE transaction nobody else writes, so reading
    the versions first and writing after is a compare-and-swap; one SELECT
    and one ``executemany`` cost far less than an ``UPDATE ... RETURNING``
    per job.
    """
    current: dict[str, tuple[int, JobRow]] = {}  # id -> (seq, row)
    ids = list(dict.fromkeys(t.job_id for t in transitions))
    for start in range(0, len(ids), _MAX_IN):
        chunk = ids[start : start + _MAX_IN]
        for row in conn.execute(
            f"SELECT seq, {JOB_COLUMNS} FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            current[row[1]] = (row[0], JobRow(*row[1:]))
    updates: list[dict[str, Any]] = []
    results: list[Job | None] = []
    for t, (columns, state) in zip(transitions, changes, strict=True):
        found = current.get(t.job_id)
        if found is None or found[1].version != t.expected_version:
            results.append(None)
            continue
        seq, row = found
        if columns["attempts"] is None:
            columns = {**columns, "attempts": row.attempts}
        # Later transitions of the same job in this batch see this one.
        row = updated(row, columns)._replace(version=row.version + 1)
        current[t.job_id] = (seq, row)
        updates.append({**columns, "version": row.version, "seq": seq})
        results.append(_job(row, state))
    conn.executemany(f"UPDATE jobs SET {_APPLY_SET} WHERE seq = :seq", updates)
    return results


# The columns an outcome writes, in the order of transition_columns (besides version).
_APPLY_COLUMNS: Final = list(
    transition_columns(Transition("", 0, Processing(_EPOCH, "", "")), to_us)[0]
)
# Most transitions one statement carries (each binds a row of parameters).
_MAX_APPLY_ROWS: Final = 256


@functools.lru_cache(maxsize=64)
def _apply_sql(count: int) -> str:
    """The compare-and-swap of ``count`` transitions of distinct jobs, as one statement.

    Parameters, per transition: its columns (``_APPLY_COLUMNS``), the job's
    id and the expected version. The rows it returns are the jobs written.
    """
    width = len(_APPLY_COLUMNS) + 2
    row = f"({', '.join('?' * width)})"
    sets = [
        f"{name} = coalesce(v.column{i}, jobs.attempts)"
        if name == "attempts"  # None: keep the stored count
        else f"{name} = v.column{i}"
        for i, name in enumerate(_APPLY_COLUMNS, 1)
    ]
    return (
        f"UPDATE jobs SET {', '.join(sets)}, version = jobs.version + 1"
        f" FROM (VALUES {', '.join([row] * count)}) AS v"
        f" WHERE jobs.id = v.column{width - 1} AND jobs.version = v.column{width}"
        f" RETURNING {JOB_COLUMNS}"
    )


def _apply_at_once(
    conn: sqlite3.Connection,
    transitions: list[Transition],
    changes: list[tuple[dict[str, Any], JobState]],
) -> list[Job | None]:
    """:func:`_apply` for transitions of distinct jobs: one ``UPDATE ... RETURNING``.

    The version check is in the statement's WHERE: a job whose version
    moved on is not written, and not returned.
    """
    written: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(transitions), _MAX_APPLY_ROWS):
        chunk = range(start, min(len(transitions), start + _MAX_APPLY_ROWS))
        params: list[Any] = []
        for i in chunk:
            params += changes[i][0].values()
            params += (transitions[i].job_id, transitions[i].expected_version)
        for row in conn.execute(_apply_sql(len(chunk)), params):
            written[row[0]] = row
    results: list[Job | None] = []
    for t, (_, state) in zip(transitions, changes, strict=True):
        row = written.get(t.job_id)
        results.append(None if row is None else _job(row, state))
    return results


def _requeue(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    columns: dict[str, Any],
    now: datetime,
) -> list[Transitioned]:
    """Put the given rows (``seq`` + job columns) back to Enqueued (see ``requeue_columns``)."""
    if not rows:
        return []
    olds = [JobRow(*row[1:]) for row in rows]
    # A job whose abort was requested ends Aborted instead (see aborted_requeue_columns).
    writes = [
        columns
        if old.abort_reason is None
        else aborted_requeue_columns(old.abort_reason, now, to_us)
        for old in olds
    ]
    conn.executemany(
        f"UPDATE jobs SET {_REQUEUE_SET}, version = version + 1 WHERE seq = :seq",
        [{**write, "seq": row[0]} for row, write in zip(rows, writes, strict=True)],
    )
    changed: list[Transitioned] = []
    for old, write in zip(olds, writes, strict=True):
        new = updated(old, write)._replace(version=old.version + 1)
        changed.append(
            Transitioned(
                job=_job(new, decode_state(write["state"], write["state_data"])),
                old_state=decode_state(old.state, old.state_data),
            )
        )
    return changed


def _counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    return {
        (queue, state): n
        for queue, state, n in conn.execute(
            "SELECT queue, state, count(*) FROM jobs GROUP BY queue, state"
        )
    }


def _queue_settings(conn: sqlite3.Connection, queues: list[str]) -> dict[str, QueueRow]:
    """The settings that limit claims from ``queues`` (all queues if empty)."""
    settings: dict[str, QueueRow] = {}
    for r in conn.execute(
        f"SELECT {QUEUE_COLUMNS} FROM queues"
        " WHERE paused OR max_running IS NOT NULL OR rate_count IS NOT NULL"
    ):
        row = QueueRow(r[0], bool(r[1]), *r[2:])
        if not queues or row.name in queues:
            settings[row.name] = row
    return settings


def _insert_unique(
    conn: sqlite3.Connection, rows: list[InsertRow]
) -> tuple[list[str], list[InsertRow]]:
    """Insert the rows whose unique key no live job holds; the ids, and the rows stored.

    Inside the write transaction nobody else inserts, so looking the key up
    and inserting is atomic; the partial unique index is the backstop.
    """
    ids = [row.id for row in rows]
    stored: list[InsertRow] = []
    holders: dict[str, str] = {}
    for index, row in enumerate(rows):
        key = row.unique_key
        if key is not None and row.state in LIVE_STATE_NAMES:
            holder = holders.get(key)
            if holder is None:
                found = conn.execute(
                    f"SELECT id FROM jobs INDEXED BY jobs_unique_live"
                    f" WHERE unique_key = ? AND state IN ({LIVE_SQL})",
                    (key,),
                ).fetchone()
                holder = None if found is None else str(found[0])
            if holder is not None:
                ids[index] = holder
                continue
            holders[key] = row.id
        stored.append(row)
    _insert_jobs(conn, stored)
    return ids, stored


def _list_sql(
    state: type[JobState] | None,
    queue: str | None,
    method: str | None,
    limit: int | None,
    before: str | None,
    newest_first: bool,
) -> tuple[str, list[Any]]:
    """The SELECT of ``list_jobs``: keyset paging on ``seq``, served by an index per filter."""
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(check_state_class(state))
    if queue is not None:
        where.append("queue = ?")
        params.append(queue)
    if method is not None:
        where.append("method = ?")
        params.append(method)
    if before is not None:
        if not newest_first:
            raise ValueError("before= pages newest first: pass newest_first=True")
        where.append("seq < coalesce((SELECT seq FROM jobs WHERE id = ?), -1)")
        params.append(before)
    # The index that serves the filters best, walked in seq order.
    index = (
        "jobs_queue"
        if queue is not None
        else "jobs_method"
        if method is not None
        else "jobs_state"
        if state is not None
        else None
    )
    indexed = f" INDEXED BY {index}" if index else ""
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = "DESC" if newest_first else ""
    params.append(-1 if limit is None else int(limit))
    return f"SELECT {JOB_COLUMNS} FROM jobs{indexed}{clause} ORDER BY seq {order} LIMIT ?", params
