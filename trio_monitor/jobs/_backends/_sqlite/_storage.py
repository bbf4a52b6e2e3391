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

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl

import trio

from ..._model import (
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
    RECURRING_COLUMNS,
    SERVER_COLUMNS,
    InsertRow,
    JobRow,
    RecurringRow,
    ServerRow,
    check_state_class,
    insert_row,
    job_from_row,
    next_occurrence,
    occurrence,
    recurring_row,
    requeue_columns,
    server_row,
    state_update,
    transition_columns,
    updated,
    utc,
)
from .._wakeup import WakeUp
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


def _job(row: Sequence[Any], state: JobState | None = None) -> Job:
    return job_from_row(row, from_us, state)


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
    return await trio.to_thread.run_sync(read_status, path)


# -- the storage -----------------------------------------------------------


class SQLiteStorage:
    """Job storage in an SQLite database file; see the module docstring.

    Open it with :func:`~trio_monitor.jobs.open_storage`
    (``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"``) or
    :meth:`open`, and close it with :meth:`aclose`.
    """

    # Claim statements depend on the number of queues; cached per count.
    _claim_sql_cache: ClassVar[dict[int, str]] = {}

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
        await self.enqueue_many([job])
        return job.id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store several jobs in one transaction: all or none."""
        rows = [insert_row(job, to_us) for job in jobs]  # raises before anything is written
        if not rows:
            await self._nothing()
            return []
        await self._write(lambda conn: _insert_jobs(conn, rows))
        if any(row.state == "enqueued" for row in rows):
            self._wakeup.notify()
        return [row.id for row in rows]

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
        limit_value = -1 if limit is None else int(limit)
        if state is None:
            sql = f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq LIMIT ?"
            params: tuple[Any, ...] = (limit_value,)
        else:
            sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq LIMIT ?"
            params = (check_state_class(state), limit_value)
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
        sql = self._claim_sql(len(queue_list))
        limit = len(worker_ids)
        params: list[Any]
        if len(queue_list) > _MAX_UNION_QUEUES:
            params = [json.dumps(queue_list), limit]
        else:
            params = []
            for queue in queue_list:
                params += (queue, limit)
            if len(queue_list) != 1:
                params.append(limit)
        now = utc(now)
        changes = [
            state_update(Processing(now, worker_id, server_name), to_us) for worker_id in worker_ids
        ]

        def claim(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(sql, params).fetchall()
            conn.executemany(
                f"UPDATE jobs SET {_STATE_SET}, attempts = attempts + 1,"
                " version = version + 1 WHERE seq = :seq",
                [
                    {**columns, "seq": row[0]}
                    for row, (columns, _) in zip(rows, changes, strict=False)
                ],
            )
            claimed: list[Job] = []
            for row, (_, state) in zip(rows, changes, strict=False):
                stored = JobRow(*row[1:])
                stored = stored._replace(attempts=stored.attempts + 1, version=stored.version + 1)
                claimed.append(_job(stored, state))
            return claimed

        return await self._write(claim)

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

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Compare-and-swap each transition; all in one transaction."""
        transitions = list(transitions)
        # Encode everything first: a bad state raises before any write.
        changes = [transition_columns(t, to_us) for t in transitions]
        if not transitions:
            await self._nothing()
            return []
        results = await self._write(lambda conn: _apply(conn, transitions, changes))
        if any(job is not None and job.state.name == "enqueued" for job in results):
            self._wakeup.notify()  # a retry due at once, a requeue
        return results

    async def _requeue(
        self, select: str, params: tuple[Any, ...], now: datetime
    ) -> list[Transitioned]:
        """Requeue the rows ``select`` (``seq`` + job columns) finds; one transaction."""
        columns = requeue_columns(now, to_us)

        def run(conn: sqlite3.Connection) -> list[Transitioned]:
            rows = conn.execute(select, params).fetchall()
            return _requeue(conn, rows, columns)

        changed = await self._write(run)
        if changed:
            self._wakeup.notify()
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
                changed += _requeue(conn, rows, columns)
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


def _requeue(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    columns: dict[str, Any],
) -> list[Transitioned]:
    """Put the given rows (``seq`` + job columns) back to Enqueued (see ``requeue_columns``)."""
    if not rows:
        return []
    conn.executemany(
        f"UPDATE jobs SET {_REQUEUE_SET}, version = version + 1 WHERE seq = :seq",
        [{**columns, "seq": row[0]} for row in rows],
    )
    enqueued = decode_state(columns["state"], columns["state_data"])
    changed: list[Transitioned] = []
    for row in rows:
        old = JobRow(*row[1:])
        new = updated(old, columns)._replace(version=old.version + 1)
        changed.append(
            Transitioned(job=_job(new, enqueued), old_state=decode_state(old.state, old.state_data))
        )
    return changed
