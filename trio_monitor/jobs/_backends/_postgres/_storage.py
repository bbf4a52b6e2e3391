"""PostgreSQL storage: many servers on many machines sharing one database.

Driver: psycopg 3 (sync) and psycopg_pool, driven from Trio through worker
threads (:mod:`._calls`). psycopg's async connection needs asyncio, so it is
not used; there is no asyncio bridge.

How the pieces fit:

* **Calls.** Every storage method is one job for one worker thread holding
  one pooled connection, and (apart from :meth:`~PostgresStorage.enqueue_due_recurring`,
  which reads the due templates first) one SQL statement: data-modifying CTEs
  make "lock, change, report, notify" a single atomic round trip.
* **Cancellation** sends PostgreSQL a cancel request for the cancelled
  call's statement only (see :class:`~._calls.CallRunner`).
* **Bounded waits.** Every pooled connection runs with a ``lock_timeout``
  and a ``statement_timeout``, so no call (a claim behind another session's
  table lock, a stop's last writes) waits for ever; the call then raises
  :class:`psycopg.errors.LockNotAvailable` or
  :class:`psycopg.errors.QueryCanceled`, and the job server backs off.
* **Claims** lock candidate rows with ``FOR UPDATE SKIP LOCKED``: concurrent
  claimers, in any number of processes, skip each other's rows instead of
  queueing behind them, and never get the same job.
* **Transitions** are compare-and-swap updates (``WHERE id = ... AND version
  = ...``); all transitions of one :meth:`~PostgresStorage.apply` are one
  ``UPDATE ... FROM unnest(...)`` statement.
* **Push.** Every statement that makes a job claimable (enqueue, promotion,
  requeue, reclaim, a transition to Enqueued, a recurring occurrence)
  also runs ``pg_notify('trio_monitor_jobs', '')`` in its own transaction,
  so the notification is delivered exactly when the job becomes visible.
  A :class:`~._calls.Listener` per storage wakes
  :meth:`~PostgresStorage.wait_for_work` waiters. Polling remains the
  fallback.
* **Finish push, only when awaited.** A completion (:meth:`~PostgresStorage.apply`)
  sends ``trio_monitor_finished`` only for a job with a row in
  ``trio_monitor_waiters``, which :meth:`~PostgresStorage.watch_finish`
  writes for a ``Client.wait`` before it reads the job: a NOTIFY per
  completion batch cost about a quarter of the throughput. No wake-up is
  lost: registration share-locks the job row, so it either waits for a
  completion in flight to commit (and the waiter then reads the result), or
  the completion waits for the registration and its check, a VOLATILE
  function with a fresh snapshot, sees it.
* **Open** makes one connection first, so a wrong host, database, role or
  option fails at once with PostgreSQL's own message; then the schema
  (:mod:`._schema`) is created or migrated.
* **Connection loss** (a PostgreSQL restart): the failing call raises
  :class:`psycopg.OperationalError`, and the pool is checked at once so
  that the other broken idle connections are dropped and replaced; the next
  calls work when the server is back. The job server's loops catch the error,
  back off and retry.
* **Rows** (state JSON, index columns, requeues, recurring occurrences) are
  the shared ones of :mod:`.._rows`.

URL query parameters (removed before the URL is given to libpq):

* ``pool_max_size`` (default 10): connections in the pool, and the
  number of concurrent calls.
* ``pool_min_size`` (default 2): connections kept open when idle.
* ``pool_timeout`` (default 30.0): seconds a call waits for a connection
  (e.g. while PostgreSQL is unreachable) before raising
  :class:`psycopg_pool.PoolTimeout` (an :class:`psycopg.OperationalError`).
* ``lock_timeout`` (default 5.0) and ``statement_timeout`` (default 60.0):
  seconds one statement may wait for a lock, or run; 0 means no limit.
* ``claim_synchronous_commit`` (default: not set): PostgreSQL's
  ``synchronous_commit`` for claims only, set inside the claim's statement.
  ``off`` trades a lost claim after a PostgreSQL crash (its jobs run again)
  for not waiting on the claim's WAL flush.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool
import trio

from ..._io_hold import io_in_flight
from ..._model import (
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
from ..._storage import WATCH_SECONDS, AbortOutcome, NextRun, SchemaStatus
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
    check_state_class,
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
from .._wakeup import WakeUp
from ._calls import CallRunner, Conn, Listener
from ._schema import (
    JOBS,
    QUEUES,
    RECURRING,
    SERVERS,
    STARTS,
    WAITED,
    WAITERS,
    migrate,
    read_status,
)

__all__ = [
    "ABORT_CHANNEL",
    "CHANNEL",
    "FINISHED_CHANNEL",
    "PostgresStorage",
    "open",
    "schema_status",
]

T = TypeVar("T")

#: The LISTEN/NOTIFY channel that announces claimable work.
CHANNEL: Final = "trio_monitor_jobs"
_NOTIFY: Final = f"pg_notify('{CHANNEL}', '')"
#: The channel that announces requested aborts (payload: the job id).
ABORT_CHANNEL: Final = "trio_monitor_abort"
#: The channel that announces jobs that became terminal.
FINISHED_CHANNEL: Final = "trio_monitor_finished"
_NOTIFY_FINISHED: Final = f"pg_notify('{FINISHED_CHANNEL}', '')"
_TERMINAL_SQL: Final = ", ".join(f"'{name}'" for name in TERMINAL)
_QUEUED_SQL: Final = ", ".join(f"'{name}'" for name in QUEUED)

# Each column's SQL type, for unnest() arrays.
_TYPES: Final[dict[str, str]] = {
    "id": "text",
    "method": "text",
    "payload": "text",
    "queue": "text",
    "priority": "int",
    "attempts": "int",
    "created_at": "timestamptz",
    "state": "text",
    "state_data": "text",
    "due_at": "timestamptz",
    "started_at": "timestamptz",
    "server_name": "text",
    "expires_at": "timestamptz",
    "version": "bigint",
    "headers": "text",
    "timeout": "float8",
    "unique_key": "text",
    "lock_key": "text",
    "progress": "text",
    "abort_reason": "text",
    "expected": "bigint",
    "n": "int",
}
_N_JOB: Final = len(JobRow._fields)
_J_JOB_COLUMNS: Final = ", ".join(f"j.{c}" for c in JobRow._fields)


def _unnest(columns: Sequence[str], alias: str, *, numbered: bool = False) -> str:
    """``unnest(%(c)s::type[], ...) AS alias(c, ...)`` for named array parameters.

    ``numbered`` adds the 1-based position as column ``n``.
    """
    arrays = ", ".join(f"%({c})s::{_TYPES[c]}[]" for c in columns)
    if numbered:
        return f"unnest({arrays}) WITH ORDINALITY AS {alias}({', '.join(columns)}, n)"
    return f"unnest({arrays}) AS {alias}({', '.join(columns)})"


def _arrays(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    return {c: [row[c] for row in rows] for c in columns}


def _job(row: Sequence[Any], start: int = 0, state: JobState | None = None) -> Job:
    return job_from_row(row[start : start + _N_JOB], identity, state)


def _q(text: str) -> bytes:
    """A statement built from this module's constants, as psycopg takes it."""
    return text.encode()


_DEFAULTS: Final[dict[str, float]] = {
    "pool_max_size": 10,
    "pool_min_size": 2,
    "pool_timeout": 30.0,
    "lock_timeout": 5.0,
    "statement_timeout": 60.0,
}
#: The URL option naming the claims' ``synchronous_commit``, and its values (PostgreSQL's).
_CLAIM_COMMIT: Final = "claim_synchronous_commit"
_COMMIT_LEVELS: Final = ("off", "local", "remote_write", "on", "remote_apply")


def _parse_url(url: str) -> tuple[str, dict[str, float], str | None]:
    """Split our options off the URL; ValueError naming a problem.

    Returns the libpq URL, the numeric options, and the claims'
    ``synchronous_commit`` (None: the session's, unchanged).
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"malformed PostgreSQL URL {url!r}: {exc}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    if port == 0:
        raise ValueError(f"malformed PostgreSQL URL {url!r}: port 0")
    options = dict(_DEFAULTS)
    kept: list[tuple[str, str]] = []
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"malformed PostgreSQL URL options {parts.query!r}") from None
    claim_commit: str | None = None
    for key, value in query:
        if key == _CLAIM_COMMIT:
            if value not in _COMMIT_LEVELS:
                raise ValueError(
                    f"{_CLAIM_COMMIT} must be one of {', '.join(_COMMIT_LEVELS)}, got {value!r}"
                )
            claim_commit = value
            continue
        if key not in options:
            kept.append((key, value))
            continue
        try:
            number = int(value) if key in ("pool_max_size", "pool_min_size") else float(value)
        except ValueError:
            raise ValueError(f"bad value for {key} in PostgreSQL URL: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{key} must be finite, got {value!r}")
        options[key] = number
    if options["pool_max_size"] < 1:
        raise ValueError(f"pool_max_size must be at least 1, got {options['pool_max_size']:g}")
    if not 0 <= options["pool_min_size"] <= options["pool_max_size"]:
        raise ValueError(
            f"pool_min_size must be between 0 and pool_max_size ({options['pool_max_size']:g}), "
            f"got {options['pool_min_size']:g}"
        )
    if options["pool_timeout"] <= 0:
        raise ValueError(f"pool_timeout must be positive, got {options['pool_timeout']:g}")
    for key in ("lock_timeout", "statement_timeout"):
        if options[key] < 0:
            raise ValueError(f"{key} must be >= 0 seconds (0: no limit), got {options[key]:g}")
    conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"malformed PostgreSQL URL {url!r}: {exc}") from None
    return conninfo, options, claim_commit


def _where(conninfo: str) -> str:
    parts = urlsplit(conninfo)
    return f"{parts.hostname or ''}:{parts.port or ''}{parts.path}"


def _connect_once(conninfo: str, timeout: float) -> Conn:
    """One direct connection, failing at once with PostgreSQL's own reason."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
        if "connect_timeout" not in params:
            conninfo = psycopg.conninfo.make_conninfo(
                conninfo, connect_timeout=max(2, math.ceil(timeout))
            )
        return psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(
            f"cannot open the PostgreSQL job storage at {_where(conninfo)}: {exc}"
        ) from exc


def _open_and_migrate(conninfo: str, timeout: float) -> None:
    with _connect_once(conninfo, timeout) as conn:
        migrate(conn)


def _read_status(conninfo: str, timeout: float) -> SchemaStatus:
    with _connect_once(conninfo, timeout) as conn:
        return read_status(conn)


async def open(url: str) -> PostgresStorage:
    """Connect, migrate the schema, start listening; see the module docs for URL options."""
    return await PostgresStorage.open(url)


async def schema_status(url: str) -> SchemaStatus:
    """The schema version of the database ``url`` names, read only."""
    conninfo, options, _ = _parse_url(url)
    with io_in_flight():
        return await trio.to_thread.run_sync(_read_status, conninfo, options["pool_timeout"])


class PostgresStorage:
    """Job storage in a PostgreSQL database; see the module docs.

    Open it with :func:`trio_monitor.jobs.open_storage` and a
    ``postgresql://`` URL, or with :meth:`open`. The storage belongs to the
    Trio run that opened it.
    """

    def __init__(
        self,
        conninfo: str,
        pool: psycopg_pool.ConnectionPool[Conn],
        *,
        max_size: int,
        timeout: float,
        claim_commit: str | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._claim_commit = claim_commit
        self._pool = pool
        self._timeout = timeout
        self._calls = CallRunner(pool, max_size=max_size, timeout=timeout)
        self._wakeup = WakeUp()
        self._aborts = WakeUp()
        self._finished = WakeUp()
        self._closed = False
        self._listener = Listener(
            conninfo,
            CHANNEL,
            self._wakeup.notify,
            {ABORT_CHANNEL: self._aborts.notify, FINISHED_CHANNEL: self._finished.notify},
        )

    @classmethod
    async def open(cls, url: str) -> PostgresStorage:
        """Connect, migrate the schema, start listening; see the module docs for URL options.

        Raises:
          ValueError: A malformed URL or option.
          psycopg.OperationalError: PostgreSQL refused or could not be
            reached (its own message says why: a wrong host, database, role).
          SchemaVersionError: The database was written by a newer trio_monitor.
        """
        conninfo, options, claim_commit = _parse_url(url)
        timeout = options["pool_timeout"]
        with io_in_flight():
            await trio.to_thread.run_sync(_open_and_migrate, conninfo, timeout)
        settings = {
            "lock_timeout": f"{round(options['lock_timeout'] * 1000)}ms",
            "statement_timeout": f"{round(options['statement_timeout'] * 1000)}ms",
        }
        pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=int(options["pool_min_size"]),
            max_size=int(options["pool_max_size"]),
            kwargs={"autocommit": True},
            configure=partial(_configure, settings=settings),
            timeout=timeout,
            open=False,
            name="trio_monitor",
        )
        self = cls(
            conninfo,
            pool,
            max_size=int(options["pool_max_size"]),
            timeout=timeout,
            claim_commit=claim_commit,
        )
        try:
            with io_in_flight():
                await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=timeout))
                self._listener.start()
                await self._listener.wait_ready(timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    def __repr__(self) -> str:
        return f"<PostgresStorage {_where(self._conninfo)}{' closed' if self._closed else ''}>"

    async def _call(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` on a pooled connection; cancellable (see :mod:`._calls`)."""
        if self._closed:
            raise trio.ClosedResourceError("this PostgreSQL storage is closed")
        return await self._calls.run(fn)

    async def _upsert(self, table: str, row: dict[str, Any]) -> None:
        """Insert ``row`` into ``table``, or replace the row with its ``id``."""
        names = list(row)
        sql = _q(f"""
            INSERT INTO {table} ({", ".join(names)})
            VALUES ({", ".join(f"%({c})s" for c in names)})
            ON CONFLICT (id) DO UPDATE SET
                {", ".join(f"{c} = excluded.{c}" for c in names if c != "id")}
        """)
        await self._call(lambda conn: conn.execute(sql, row))

    async def _nothing(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this PostgreSQL storage is closed")
        await trio.lowlevel.checkpoint()

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given; see :meth:`trio_monitor.jobs.Storage.enqueue`."""
        (job_id,) = await self.enqueue_many([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store several jobs in one statement; all or none."""
        rows = [insert_row(job, identity)._asdict() for job in jobs]
        ids = [row["id"] for row in rows]
        if not ids:
            await self._nothing()
            return []
        unique = any(row["unique_key"] is not None for row in rows)
        conflict = (
            f"ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ({LIVE_SQL})"
            " DO NOTHING"
            if unique
            else ""
        )
        sql = _q(f"""
            WITH ins AS (
                INSERT INTO {JOBS} ({", ".join(InsertRow._fields)})
                SELECT * FROM {_unnest(InsertRow._fields, "v")}
                {conflict}
                RETURNING id, state
            )
            SELECT id,
                   CASE WHEN state = 'enqueued' THEN {_NOTIFY} END,
                   CASE WHEN state IN ({_TERMINAL_SQL}) THEN {_NOTIFY_FINISHED} END,
                   state
            FROM ins
        """)
        holders_sql = _q(
            f"SELECT unique_key, id FROM {JOBS}"
            f" WHERE unique_key = ANY(%s) AND state IN ({LIVE_SQL})"
        )

        def insert(conn: Conn, batch: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
            try:
                return conn.execute(sql, _arrays(batch, InsertRow._fields)).fetchall()
            except psycopg.errors.UniqueViolation:
                raise ValueError(
                    f"job id(s) already exist among {ids}; nothing was stored"
                ) from None

        def run(conn: Conn) -> tuple[list[str], set[str]]:
            if not unique:
                return ids, {row[3] for row in insert(conn, rows)}
            # ON CONFLICT skips a row whose key a live job holds (waiting for
            # a concurrent inserter to commit); the holders are then read in
            # a new snapshot. A holder that ended in between frees its key:
            # those rows are tried again.
            result = list(ids)
            states: set[str] = set()
            pending: list[int] = list(range(len(rows)))
            with conn.transaction():
                for _ in range(10):
                    stored = {row[0] for row in insert(conn, [rows[i] for i in pending])}
                    states |= {rows[i]["state"] for i in pending if rows[i]["id"] in stored}
                    skipped = [i for i in pending if rows[i]["id"] not in stored]
                    if not skipped:
                        break
                    keys = list({rows[i]["unique_key"] for i in skipped})
                    holders: dict[str, str] = dict(conn.execute(holders_sql, [keys]).fetchall())
                    pending = []
                    for i in skipped:
                        holder = holders.get(rows[i]["unique_key"])
                        if holder is None:
                            pending.append(i)
                        else:
                            result[i] = holder
                    if not pending:
                        break
            return result, states

        result, states = await self._call(run)
        if "enqueued" in states:
            self._wakeup.notify()
        if states & set(TERMINAL):
            self._finished.notify()
        return result

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        sql = _q(f"SELECT {JOB_COLUMNS} FROM {JOBS} WHERE id = %s")

        def run(conn: Conn) -> Job | None:
            row = conn.execute(sql, [job_id]).fetchone()
            return None if row is None else _job(row)

        return await self._call(run)

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
        name = None if state is None else check_state_class(state)
        if before is not None and not newest_first:
            raise ValueError("before= pages newest first: pass newest_first=True")
        where = [
            clause
            for clause, value in (
                ("state = %(state)s", name),
                ("queue = %(queue)s", queue),
                ("method = %(method)s", method),
                (
                    f"seq < coalesce((SELECT seq FROM {JOBS} WHERE id = %(before)s), -1)",
                    before,
                ),
            )
            if value is not None
        ]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "DESC" if newest_first else ""
        sql = _q(f"SELECT {JOB_COLUMNS} FROM {JOBS} {clause} ORDER BY seq {order} LIMIT %(limit)s")
        params = {"state": name, "queue": queue, "method": method, "before": before, "limit": limit}
        return await self._call(lambda conn: [_job(row) for row in conn.execute(sql, params)])

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs there are in each state, keyed by state name."""
        sql = _q(f"SELECT state, count(*) FROM {JOBS} GROUP BY state")
        return await self._call(lambda conn: dict(conn.execute(sql).fetchall()))

    async def claim(
        self,
        *,
        queues: Sequence[str],
        worker_ids: Sequence[str],
        server_name: str,
        now: datetime,
    ) -> list[Job]:
        """Claim up to ``len(worker_ids)`` jobs (``FOR UPDATE SKIP LOCKED``) in one statement."""
        if isinstance(queues, str):
            raise TypeError("queues must be a sequence of queue names, not a str")
        if not worker_ids:
            await self._nothing()
            return []
        now = utc(now)
        changes = [state_update(Processing(now, w, server_name), identity) for w in worker_ids]
        columns = list(changes[0][0])
        states = [state for _, state in changes]
        queues = list(dict.fromkeys(queues))  # a queue named twice is looked at once
        name_filter = "AND name = ANY(%(queues)s)" if queues else ""
        # The common case, one statement: no queue concerned has settings and
        # no candidate has a lock. Otherwise ``gate`` is false, nothing is
        # claimed, and the claim is decided under advisory locks (_admit).
        # With claim_synchronous_commit, ``commit_level`` sets it for this
        # statement's own transaction (no extra round trip); a VOLATILE CTE is
        # always evaluated.
        commit = self._claim_commit
        commit_level = (
            "commit_level AS (SELECT set_config('synchronous_commit', %(commit)s, true)),"
            if commit
            else ""
        )
        sql = _q(f"""
            WITH {commit_level} picked AS ({_pick_sql(bool(queues))}), gate AS (
                SELECT NOT EXISTS (
                    SELECT 1 FROM {QUEUES}
                    WHERE (paused OR max_running IS NOT NULL OR rate_count IS NOT NULL)
                    {name_filter}
                ) AND NOT EXISTS (SELECT 1 FROM picked WHERE lock_key IS NOT NULL) AS open
            ), numbered AS (
                SELECT id, row_number() OVER (ORDER BY priority DESC, seq) AS n FROM picked
                WHERE (SELECT open FROM gate)
            ), w AS (
                SELECT * FROM {_unnest(columns, "w", numbered=True)}
            ), upd AS (
                UPDATE {JOBS} j
                SET {", ".join(f"{c} = w.{c}" for c in columns)},
                    attempts = j.attempts + 1, version = j.version + 1
                FROM numbered JOIN w ON w.n = numbered.n
                WHERE j.id = numbered.id
                RETURNING numbered.n, {_J_JOB_COLUMNS}
            )
            SELECT gate.open, upd.* FROM gate {"CROSS JOIN commit_level" if commit else ""}
                LEFT JOIN upd ON true
        """)
        params = {
            **_arrays([c for c, _ in changes], columns),
            "queues": queues,
            "limit": len(worker_ids),
            "commit": commit,
        }

        def run(conn: Conn) -> list[Job]:
            found = conn.execute(sql, params).fetchall()
            if found and not found[0][0]:
                with conn.transaction():
                    if commit:
                        conn.execute(_SET_COMMIT_LEVEL, [commit])
                    found = _admit(conn, queues, [c for c, _ in changes], now)
                return [_job(row, 1, states[int(row[0]) - 1]) for row in found]
            rows = sorted((row[1:] for row in found if row[1] is not None), key=lambda r: r[0])
            return [_job(row, 1, states[int(row[0]) - 1]) for row in rows]

        return await self._call(run)

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Compare-and-swap transitions, all in one statement (one transaction)."""
        changes = [transition_columns(t, identity) for t in transitions]
        if not transitions:
            await self._nothing()
            return []
        rows = [
            {**columns, "id": t.job_id, "expected": t.expected_version}
            for t, (columns, _) in zip(transitions, changes, strict=True)
        ]
        states: list[JobState] = [state for _, state in changes]
        columns = list(rows[0])
        assignments = ", ".join(
            "attempts = coalesce(v.attempts, j.attempts)" if c == "attempts" else f"{c} = v.{c}"
            for c in columns
            if c not in ("id", "expected")
        )
        sql = _q(f"""
            WITH v AS (
                SELECT * FROM {_unnest(columns, "v", numbered=True)}
            ), upd AS (
                UPDATE {JOBS} j
                SET {assignments}, version = j.version + 1
                FROM v
                WHERE j.id = v.id AND j.version = v.expected
                RETURNING v.n, {_J_JOB_COLUMNS}
            )
            SELECT upd.*,
                CASE WHEN upd.state = 'enqueued' OR upd.lock_key IS NOT NULL
                    THEN {_NOTIFY} END,
                CASE WHEN upd.state IN ({_TERMINAL_SQL}) AND {WAITED}(upd.id)
                    THEN {_NOTIFY_FINISHED} END
            FROM upd
        """)
        ids = [t.job_id for t in transitions]
        distinct = len(set(ids)) == len(ids)

        def run(conn: Conn) -> list[Job | None]:
            results: list[Job | None] = [None] * len(transitions)
            found: list[tuple[Any, ...]] = []
            if distinct:
                found = conn.execute(sql, _arrays(rows, columns)).fetchall()
            else:
                # The same job twice: apply one after the other, as written,
                # in one transaction.
                with conn.transaction():
                    for i, one in enumerate(rows):
                        for got in conn.execute(sql, _arrays([one], columns)).fetchall():
                            found.append((i + 1, *got[1:]))
            for got in found:
                n = int(got[0]) - 1
                results[n] = _job(got, 1, states[n])
            return results

        results = await self._call(run)
        if any(job is not None and job.state.name == "enqueued" for job in results):
            self._wakeup.notify()
        if any(job is not None and job.state.name in TERMINAL for job in results):
            self._finished.notify()
            # A job leaving Processing may free a lock or a max_running slot
            # (other processes hear of freed locks by NOTIFY, of slots by polling).
            self._wakeup.notify()
        return results

    async def _requeue(
        self, where: str, params: dict[str, Any], now: datetime, *, dead_servers: bool = False
    ) -> list[Transitioned]:
        """Move the rows matching ``where`` to Enqueued(now), in one statement.

        With ``dead_servers``, first delete the server rows older than
        ``%(before)s`` (in the same statement), and ``where`` may name them
        as ``dead``.
        """
        columns = requeue_columns(now, identity)
        dead = (
            f"dead AS (DELETE FROM {SERVERS} WHERE last_heartbeat < %(before)s RETURNING id),"
            if dead_servers
            else ""
        )
        # A job whose abort was requested ends Aborted instead (see
        # aborted_requeue_columns): same columns but for the state.
        assignments = ", ".join(
            f"{c} = %({c})s" for c in columns if c not in ("state", "state_data")
        )
        sql = _q(f"""
            WITH {dead} picked AS (
                SELECT id, state AS old_state, state_data AS old_data, abort_reason
                FROM {JOBS} j
                WHERE {where}
                ORDER BY seq
                FOR UPDATE OF j
            ), upd AS (
                UPDATE {JOBS} j
                SET {assignments},
                    state = CASE WHEN picked.abort_reason IS NULL THEN %(state)s::text
                        ELSE 'aborted' END,
                    state_data = CASE WHEN picked.abort_reason IS NULL THEN %(state_data)s::text
                        ELSE json_build_object(
                            'reason', picked.abort_reason, 'finished_at', %(now_text)s::text
                        )::text END,
                    version = j.version + 1
                FROM picked WHERE j.id = picked.id
                RETURNING picked.old_state, picked.old_data, {_J_JOB_COLUMNS}
            )
            SELECT upd.*, {_NOTIFY},
                CASE WHEN upd.state = 'aborted' THEN {_NOTIFY_FINISHED} END
            FROM upd
        """)
        params = {**params, **columns, "now_text": utc(now).isoformat()}

        def run(conn: Conn) -> list[Transitioned]:
            return [
                Transitioned(job=_job(row, 2), old_state=decode_state(row[0], row[1]))
                for row in conn.execute(sql, params)
            ]

        changed = await self._call(run)
        if changed:
            self._wakeup.notify()
            self._finished.notify()
        return changed

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue the Scheduled and AwaitingRetry jobs due at ``now``."""
        return await self._requeue(
            "j.state IN ('scheduled', 'awaiting_retry') AND j.due_at <= %(now)s",
            {"now": utc(now)},
            now,
        )

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        """Put Processing jobs claimed before ``started_before`` back to Enqueued."""
        return await self._requeue(
            "j.state = 'processing' AND j.started_at < %(before)s",
            {"before": utc(started_before)},
            now,
        )

    async def delete_expired(self, now: datetime) -> int:
        """Remove jobs whose ``expires_at`` is at or before ``now``."""
        sql = _q(f"DELETE FROM {JOBS} WHERE expires_at <= %s")
        at = utc(now)
        return await self._call(lambda conn: conn.execute(sql, [at]).rowcount)

    async def wait_for_work(self) -> None:
        """Return on a local enqueue or a NOTIFY from any server."""
        await self._nothing()
        await self._wakeup.wait()

    # -- job control -----------------------------------------------------

    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs per (queue, state name)."""
        sql = _q(f"SELECT queue, state, count(*) FROM {JOBS} GROUP BY queue, state")
        return await self._call(lambda conn: {(q, st): n for q, st, n in conn.execute(sql)})

    async def _abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        columns, _ = state_update(Aborted(reason, utc(now)), identity)
        assignments = ", ".join(f"{c} = %({c})s" for c in columns)
        lock = _q(f"SELECT state FROM {JOBS} WHERE id = %(id)s FOR UPDATE")
        abort_now = _q(f"""
            UPDATE {JOBS} SET {assignments}, version = version + 1 WHERE id = %(id)s
            RETURNING {_NOTIFY_FINISHED}
        """)
        flag = _q(f"""
            UPDATE {JOBS} SET abort_reason = %(reason)s WHERE id = %(id)s
            RETURNING pg_notify('{ABORT_CHANNEL}', id)
        """)
        params = {**columns, "id": job_id, "reason": reason}

        def run(conn: Conn) -> AbortOutcome:
            with conn.transaction():
                row = conn.execute(lock, params).fetchone()
                if row is None:
                    return "missing"
                if row[0] in QUEUED:
                    conn.execute(abort_now, params)
                    return "aborted"
                if row[0] == "processing":
                    conn.execute(flag, params)
                    return "requested"
                return "finished"

        outcome = await self._call(run)
        if outcome == "aborted":
            self._finished.notify()
        elif outcome == "requested":
            self._aborts.notify()
        return outcome

    async def abort(self, job_id: str, reason: str, now: datetime) -> AbortOutcome:
        """Abort a queued job now, or flag a Processing one and NOTIFY every server."""
        return await self._abort(job_id, reason, now)

    async def aborts_requested(self, server_name: str) -> list[tuple[str, str]]:
        """The flagged Processing jobs of ``server_name``."""
        sql = _q(
            f"SELECT id, abort_reason FROM {JOBS} WHERE state = 'processing'"
            " AND server_name = %s AND abort_reason IS NOT NULL ORDER BY seq"
        )
        return await self._call(
            lambda conn: [(r[0], r[1]) for r in conn.execute(sql, [server_name])]
        )

    async def wait_for_abort(self) -> None:
        """Return on an abort requested here or NOTIFYed by any process."""
        await self._nothing()
        await self._aborts.wait()

    async def wait_for_finish(self) -> None:
        """Return on a job finishing here or NOTIFYed by any process."""
        await self._nothing()
        await self._finished.wait()

    async def watch_finish(self, job_id: str, token: str) -> None:
        """Register (or renew) waiter ``token`` so the job's finish is NOTIFYed.

        One transaction: share-lock the job row (ordering this against a
        completion of the job, see the module notes), upsert the waiter row
        for ``WATCH_SECONDS`` (60 s), and sweep
        expired rows of waiters that never unregistered.
        """
        lock = _q(f"SELECT 1 FROM {JOBS} WHERE id = %(job_id)s FOR SHARE")
        upsert = _q(f"""
            INSERT INTO {WAITERS} (token, job_id, expires_at)
            VALUES (%(token)s, %(job_id)s, now() + make_interval(secs => %(ttl)s))
            ON CONFLICT (token) DO UPDATE
            SET job_id = excluded.job_id, expires_at = excluded.expires_at
        """)
        sweep = _q(f"DELETE FROM {WAITERS} WHERE expires_at < now()")
        params = {"job_id": job_id, "token": token, "ttl": WATCH_SECONDS}

        def run(conn: Conn) -> None:
            with conn.transaction():
                conn.execute(lock, params)
                conn.execute(upsert, params)
                conn.execute(sweep)

        await self._call(run)

    async def unwatch_finish(self, token: str) -> None:
        """Remove waiter ``token`` (nothing if it is not registered)."""
        sql = _q(f"DELETE FROM {WAITERS} WHERE token = %s")
        await self._call(lambda conn: conn.execute(sql, [token]))

    async def retry(self, job_id: str, now: datetime) -> bool:
        """A Failed or Aborted job back to Enqueued, attempts 0."""
        columns = requeue_columns(now, identity)
        sql = _q(f"""
            UPDATE {JOBS} SET {", ".join(f"{c} = %({c})s" for c in columns)},
                attempts = 0, version = version + 1
            WHERE id = %(id)s AND state IN ('failed', 'aborted')
            RETURNING {_NOTIFY}
        """)
        params = {**columns, "id": job_id}

        def run(conn: Conn) -> bool:
            try:
                return conn.execute(sql, params).fetchone() is not None
            except psycopg.errors.UniqueViolation:  # its unique key is held by a live job
                return False

        retried = await self._call(run)
        if retried:
            self._wakeup.notify()
        return retried

    async def delete(self, job_id: str, now: datetime) -> bool:
        """Mark Deleted (a Processing job: abort requested, reason "deleted")."""
        columns, _ = state_update(Deleted(), identity)
        assignments = ", ".join(f"{c} = %({c})s" for c in columns)
        sql = _q(f"""
            UPDATE {JOBS} SET {assignments}, version = version + 1
            WHERE id = %(id)s AND state NOT IN ('deleted', 'processing')
            RETURNING {_NOTIFY_FINISHED}
        """)
        probe = _q(f"SELECT state FROM {JOBS} WHERE id = %s")
        params = {**columns, "id": job_id}
        if await self._call(lambda conn: conn.execute(sql, params).fetchone() is not None):
            self._finished.notify()
            return True
        state = await self._call(lambda conn: conn.execute(probe, [job_id]).fetchone())
        if state is None or state[0] != "processing":
            return False
        return await self._abort(job_id, "deleted", now) == "requested"

    async def set_progress(self, job_id: str, progress: Progress) -> bool:
        """Store a Processing job's progress; the version stays."""
        sql = _q(f"UPDATE {JOBS} SET progress = %s WHERE id = %s AND state = 'processing'")
        text = progress_json(progress)
        return await self._call(lambda conn: conn.execute(sql, [text, job_id]).rowcount > 0)

    async def _set_queue(self, name: str, **values: Any) -> None:
        names = list(values)
        sql = _q(f"""
            INSERT INTO {QUEUES} (name, {", ".join(names)})
            VALUES (%(name)s, {", ".join(f"%({c})s" for c in names)})
            ON CONFLICT (name) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in names)}
            RETURNING {_NOTIFY}
        """)
        params = {"name": name, **values}
        await self._call(lambda conn: conn.execute(sql, params))
        self._wakeup.notify()

    async def pause_queue(self, name: str) -> None:
        """Store the queue as paused."""
        await self._set_queue(name, paused=True)

    async def resume_queue(self, name: str) -> None:
        """Store the queue as running."""
        await self._set_queue(name, paused=False)

    async def set_queue_limits(
        self, name: str, max_running: int | None, rate: tuple[int, float] | None
    ) -> None:
        """Store the queue's limits."""
        count, seconds = (None, None) if rate is None else rate
        await self._set_queue(name, max_running=max_running, rate_count=count, rate_seconds=seconds)

    async def list_queues(self) -> list[QueueInfo]:
        """Queues with jobs or settings, by name."""
        settings_sql = _q(f"SELECT {QUEUE_COLUMNS} FROM {QUEUES}")
        counts_sql = _q(f"SELECT queue, state, count(*) FROM {JOBS} GROUP BY queue, state")

        def run(conn: Conn) -> list[QueueInfo]:
            settings = [QueueRow(*row) for row in conn.execute(settings_sql)]
            counts = {(q, st): n for q, st, n in conn.execute(counts_sql)}
            return queue_infos(settings, counts)

        return await self._call(run)

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        """Insert or replace the heartbeat row ``info.id``."""
        row = server_row(info, identity)._asdict()
        row["queues"] = list(info.queues)  # text[] here
        await self._upsert(SERVERS, row)

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        """Bump the row's heartbeat; False if it no longer exists."""
        sql = _q(f"UPDATE {SERVERS} SET last_heartbeat = %s WHERE id = %s")
        at = utc(now)
        return await self._call(lambda conn: conn.execute(sql, [at, server_id]).rowcount > 0)

    async def deregister_server(self, server_id: str) -> None:
        """Remove the row (no error if absent)."""
        sql = _q(f"DELETE FROM {SERVERS} WHERE id = %s")
        await self._call(lambda conn: conn.execute(sql, [server_id]))

    async def list_servers(self) -> list[ServerInfo]:
        """All heartbeat rows, oldest start first."""
        sql = _q(f"SELECT {SERVER_COLUMNS} FROM {SERVERS} ORDER BY started_at, id")
        return await self._call(
            lambda conn: [ServerRow(*row).to_server(identity) for row in conn.execute(sql)]
        )

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        """Requeue the Processing jobs of stale servers and delete their rows, in one statement."""
        return await self._requeue(
            "j.state = 'processing' AND j.server_name IN (SELECT id FROM dead)",
            {"before": utc(heartbeat_before)},
            now,
            dead_servers=True,
        )

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        """Insert or replace a recurring template (by id)."""
        await self._upsert(RECURRING, recurring_row(recurring, identity)._asdict())

    async def remove_recurring(self, recurring_id: str) -> bool:
        """Remove a template; False if there was none."""
        sql = _q(f"DELETE FROM {RECURRING} WHERE id = %s")
        return await self._call(lambda conn: conn.execute(sql, [recurring_id]).rowcount > 0)

    async def list_recurring(self) -> list[RecurringJob]:
        """All recurring templates, by id."""
        sql = _q(f"SELECT {RECURRING_COLUMNS} FROM {RECURRING} ORDER BY id")
        return await self._call(
            lambda conn: [RecurringRow(*row).to_recurring(identity) for row in conn.execute(sql)]
        )

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """One job per due template; each occurrence once however many servers poll.

        Reads the due templates, computes their next runs and jobs (the
        shared rules), then in one statement advances each template only if
        its ``next_run_at`` is unchanged and inserts the jobs of the
        templates it advanced.
        """
        now = utc(now)
        select = _q(
            f"SELECT {RECURRING_COLUMNS} FROM {RECURRING} WHERE next_run_at <= %s"
            " ORDER BY next_run_at, id"
        )
        insert = _q(f"""
            WITH t AS (
                SELECT * FROM unnest(%(t_id)s::text[], %(t_expected)s::timestamptz[],
                    %(t_next)s::timestamptz[], %(t_job)s::text[])
                AS t(id, expected, next_run_at, job_id)
            ), adv AS (
                UPDATE {RECURRING} r SET next_run_at = t.next_run_at
                FROM t WHERE r.id = t.id AND r.next_run_at = t.expected
                RETURNING t.job_id
            ), ins AS (
                INSERT INTO {JOBS} ({", ".join(InsertRow._fields)})
                SELECT * FROM {_unnest(InsertRow._fields, "v")}
                WHERE v.id IN (SELECT job_id FROM adv)
                RETURNING {JOB_COLUMNS}
            )
            SELECT ins.*, {_NOTIFY} FROM ins
        """)

        def run(conn: Conn) -> list[Job]:
            templates: list[RecurringRow] = []
            nexts: list[datetime] = []
            jobs: list[dict[str, Any]] = []
            for row in conn.execute(select, [now]):
                template = RecurringRow(*row)
                following = next_occurrence(template, now, next_run)
                if following is None:
                    continue
                templates.append(template)
                nexts.append(following)
                jobs.append(insert_row(occurrence(template, now), identity)._asdict())
            if not templates:
                return []
            params = {
                "t_id": [t.id for t in templates],
                "t_expected": [t.next_run_at for t in templates],
                "t_next": nexts,
                "t_job": [job["id"] for job in jobs],
                **_arrays(jobs, InsertRow._fields),
            }
            made = {row[0]: _job(row) for row in conn.execute(insert, params)}
            return [made[job["id"]] for job in jobs if job["id"] in made]

        made = await self._call(run)
        if made:
            self._wakeup.notify()
        return made

    # -- schema and lifecycle --------------------------------------------

    async def schema_status(self) -> SchemaStatus:
        """The database's schema version (the latest, once opened)."""
        return await self._call(read_status)

    async def aclose(self) -> None:
        """Stop the listener and close the pool. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._aborts.notify()
        self._finished.notify()
        self._wakeup.notify()  # waiters return, and their next call is refused

        def notify(channel: str) -> None:
            with self._pool.connection(timeout=1.0) as conn:
                conn.execute("SELECT pg_notify(%s, '')", [channel])

        with trio.CancelScope(shield=True):
            await self._listener.aclose(notify)
            await trio.to_thread.run_sync(partial(self._pool.close, timeout=5.0))


def _pick_sql(by_queue: bool) -> str:
    """Lock up to ``%(limit)s`` claimable jobs, first in claim order.

    Columns: id, priority, seq, lock_key.

    Named queues: each queue's first ``limit`` unlocked rows from the
    per-queue claim index (an ordered index scan whatever the table's
    statistics), then the first ``limit`` of those together; ``queue =
    ANY(...)`` in one scan would read and sort every enqueued job of those
    queues. The rows locked but not taken are released when the statement's
    transaction ends. All queues: the claim index in order, which the planner
    chooses once the table has statistics.
    """
    if not by_queue:
        return f"""
            SELECT id, priority, seq, lock_key FROM {JOBS}
            WHERE state = 'enqueued'
            ORDER BY priority DESC, seq
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        """
    return f"""
        SELECT c.id, c.priority, c.seq, c.lock_key
        FROM unnest(%(queues)s::text[]) AS q(name)
        CROSS JOIN LATERAL (
            SELECT id, priority, seq, lock_key FROM {JOBS}
            WHERE state = 'enqueued' AND queue = q.name
            ORDER BY priority DESC, seq
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.priority DESC, c.seq
        LIMIT %(limit)s
    """


def _configure(conn: Conn, *, settings: dict[str, str]) -> None:
    """Every pooled connection: UTC timestamps, bounded lock waits and statements."""
    conn.execute("SET TIME ZONE 'UTC'")
    for name, value in settings.items():
        conn.execute("SELECT set_config(%s, %s, false)", [name, value])


# -- claims under flow control ---------------------------------------------

_SET_COMMIT_LEVEL: Final = b"SELECT set_config('synchronous_commit', %s, true)"

# Advisory lock keys: claimers of one limited queue, or of one lock, queue up.
_QUEUE_LOCK: Final = "trio_monitor_queue:"
_JOB_LOCK: Final = "trio_monitor_lock:"
# How many claimable jobs a claim under flow control looks at, per worker.
_SCAN_PER_WORKER: Final = 4
_MIN_SCAN: Final = 64


def _advisory_locks(conn: Conn, keys: Sequence[str]) -> None:
    """Take transaction advisory locks on ``keys``, in sorted order (no deadlock)."""
    for key in sorted(set(keys)):
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [key])


def _admit(
    conn: Conn, queues: list[str], changes: list[dict[str, Any]], now: datetime
) -> list[tuple[Any, ...]]:
    """Claim under pause, max_running, rate and locks, in the caller's transaction.

    Claimers of the same limited queue serialise on one advisory lock per
    queue, and claimers of jobs with the same lock on one per lock key, each
    taken in sorted order (queues first), so what they count (Processing
    jobs, recent starts, held locks) is what the database holds when they
    decide. Returns ``(n, job columns...)`` rows in claim order.
    """
    settings = {
        row.name: row
        for row in (
            QueueRow(*r)
            for r in conn.execute(
                _q(
                    f"SELECT {QUEUE_COLUMNS} FROM {QUEUES}"
                    " WHERE paused OR max_running IS NOT NULL OR rate_count IS NOT NULL"
                )
            )
        )
        if not queues or row.name in queues
    }
    _advisory_locks(conn, [_QUEUE_LOCK + name for name in settings])
    paused = [name for name, row in settings.items() if row.paused]
    wanted = [q for q in queues if q not in paused]
    if queues and not wanted:
        return []
    limit = len(changes)
    queue_filter = "AND queue = ANY(%(queues)s)" if queues else ""
    candidates = conn.execute(
        _q(f"""
            SELECT id, queue, lock_key FROM {JOBS}
            WHERE state = 'enqueued' {queue_filter} AND NOT (queue = ANY(%(paused)s))
            ORDER BY priority DESC, seq
            LIMIT %(scan)s
            FOR UPDATE SKIP LOCKED
        """),
        {
            "queues": wanted,
            "paused": paused,
            "scan": max(limit * _SCAN_PER_WORKER, _MIN_SCAN),
        },
    ).fetchall()
    keys = sorted({key for _, _, key in candidates if key is not None})
    _advisory_locks(conn, [_JOB_LOCK + key for key in keys])
    held = {
        key
        for (key,) in conn.execute(
            _q(f"SELECT lock_key FROM {JOBS} WHERE state = 'processing' AND lock_key = ANY(%s)"),
            [keys],
        )
    }
    limited = list(settings)
    running: dict[str, int] = dict(
        conn.execute(
            _q(
                f"SELECT queue, count(*) FROM {JOBS} WHERE state = 'processing'"
                " AND queue = ANY(%s) GROUP BY queue"
            ),
            [limited],
        ).fetchall()
    )
    started: dict[str, int] = {}
    for name, row in settings.items():
        start = rate_window_start(row, now)
        prune = rate_prune_before(row, now)
        if start is not None and prune is not None:
            conn.execute(
                _q(f"DELETE FROM {STARTS} WHERE queue = %s AND started_at <= %s"), [name, prune]
            )
            count = conn.execute(
                _q(f"SELECT count(*) FROM {STARTS} WHERE queue = %s AND started_at > %s"),
                [name, start],
            ).fetchone()
            started[name] = int(count[0]) if count else 0
    admission = Admission(settings, running, started, held)
    chosen: list[tuple[str, str]] = []
    for job_id, queue, key in candidates:
        if len(chosen) == limit:
            break
        if admission.admit(queue, key):
            chosen.append((job_id, queue))
    if not chosen:
        return []
    columns = list(changes[0])
    rows = [{**change, "id": job_id} for change, (job_id, _) in zip(changes, chosen, strict=False)]
    found = conn.execute(
        _q(f"""
            UPDATE {JOBS} j
            SET {", ".join(f"{c} = w.{c}" for c in columns)},
                attempts = j.attempts + 1, version = j.version + 1
            FROM {_unnest(["id", *columns], "w", numbered=True)}
            WHERE j.id = w.id
            RETURNING w.n, {_J_JOB_COLUMNS}
        """),
        _arrays(rows, ["id", *columns]),
    ).fetchall()
    starts = [queue for _, queue in chosen if queue in started]
    if starts:
        conn.execute(
            _q(f"INSERT INTO {STARTS} (queue, started_at) SELECT q, %s FROM unnest(%s::text[]) q"),
            [now, starts],
        )
    return sorted(found, key=lambda row: int(row[0]))
