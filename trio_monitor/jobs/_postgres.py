"""PostgreSQL storage: many servers on many machines sharing one database.

Driver: psycopg 3 (sync) and psycopg_pool, driven from Trio through worker
threads. psycopg's async connection needs asyncio, so it is not used; there
is no asyncio bridge.

How the pieces fit:

* **Calls.** Every storage method is one job for one worker thread holding
  one pooled connection, and (apart from :meth:`~PostgresStorage.enqueue_due_recurring`,
  which reads the due templates first) one SQL statement: data-modifying CTEs
  make "lock, change, report, notify" a single atomic round trip. A
  :class:`trio.CapacityLimiter` as large as the pool bounds the threads, so
  a call never waits in the pool for another call's connection.
* **Cancellation.** A Trio task cancelled while its statement runs sends a
  PostgreSQL cancel request for that statement (``Connection.cancel_safe``,
  from a helper thread) and waits for the worker thread to come back: the
  server aborts the statement, its transaction rolls back (so no row lock
  outlives the cancelled task), and the call raises :class:`trio.Cancelled`.
  A statement that completed before the cancel landed is reported as
  completed (Trio's rule: a checkpoint that raises ``Cancelled`` did
  nothing). A connection that had a cancel aimed at it is closed rather
  than reused, so a late cancel can never hit somebody else's statement.
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
  A listener thread per storage, on its own connection outside the pool,
  wakes :meth:`~PostgresStorage.wait_for_work` waiters; it reconnects after
  a connection loss (and then wakes everybody once, since notifications
  sent meanwhile were lost). Polling remains the fallback.
* **Schema** is created and migrated on open, under a transaction-scoped
  advisory lock so several servers can start at once; a database whose
  schema is newer than this code is refused with a clear error.
* **Connection loss** (a PostgreSQL restart): the failing call raises
  :class:`psycopg.OperationalError`, and the pool is checked at once so
  that the other broken idle connections are dropped and replaced; the next
  calls work when the server is back. The job server's loops catch the error,
  back off and retry.

URL query parameters (removed before the URL is given to libpq):

* ``pool_max_size`` (default 10): connections in the pool, and the
  number of concurrent calls.
* ``pool_min_size`` (default 2): connections kept open when idle.
* ``pool_timeout`` (default 30.0): seconds a call waits for a connection
  (e.g. while PostgreSQL is unreachable) before raising
  :class:`psycopg_pool.PoolTimeout` (an :class:`psycopg.OperationalError`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Generic, LiteralString, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import outcome
import trio

try:
    import psycopg
    import psycopg.errors
    import psycopg.sql
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL storage needs psycopg 3 and psycopg_pool: install the "
        "'postgres' extra (pip install 'trio-monitor[postgres]')"
    ) from exc

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

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresStorage"]

logger = logging.getLogger("trio_monitor.jobs.postgres")

T = TypeVar("T")
Conn: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"

#: The LISTEN/NOTIFY channel that announces claimable work.
CHANNEL = "trio_monitor_jobs"

#: Key of the advisory lock that serialises schema migrations.
_MIGRATION_LOCK = 0x74726D5F6A6F6273  # "trm_jobs"

_JOBS = "trio_monitor_jobs"
_SERVERS = "trio_monitor_servers"
_RECURRING = "trio_monitor_recurring"
_VERSIONS = "trio_monitor_schema_version"

# Schema migrations; the i-th entry (1-based) brings the schema to version i.
_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {_JOBS} (
        id          text PRIMARY KEY,
        seq         bigint GENERATED ALWAYS AS IDENTITY,
        method      text NOT NULL,
        payload     text NOT NULL,
        queue       text NOT NULL,
        priority    integer NOT NULL,
        attempts    integer NOT NULL,
        created_at  timestamptz NOT NULL,
        state       text NOT NULL,
        state_data  text NOT NULL,
        due_at      timestamptz,
        started_at  timestamptz,
        server_name text,
        expires_at  timestamptz,
        version     bigint NOT NULL
    );
    CREATE INDEX {_JOBS}_claim ON {_JOBS} (priority DESC, seq) WHERE state = 'enqueued';
    CREATE INDEX {_JOBS}_due ON {_JOBS} (due_at)
        WHERE state IN ('scheduled', 'awaiting_retry');
    CREATE INDEX {_JOBS}_processing ON {_JOBS} (server_name, started_at)
        WHERE state = 'processing';
    CREATE INDEX {_JOBS}_expires ON {_JOBS} (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE {_SERVERS} (
        id             text PRIMARY KEY,
        name           text NOT NULL,
        worker_count   integer NOT NULL,
        queues         text[] NOT NULL,
        started_at     timestamptz NOT NULL,
        last_heartbeat timestamptz NOT NULL
    );
    CREATE TABLE {_RECURRING} (
        id          text PRIMARY KEY,
        cron        text NOT NULL,
        method      text NOT NULL,
        payload     text NOT NULL,
        queue       text NOT NULL,
        next_run_at timestamptz NOT NULL,
        priority    integer NOT NULL
    );
    """,
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(_MIGRATIONS)

_JOB_COLUMNS = (
    "id, method, payload, queue, priority, attempts, created_at, state, state_data, "
    "expires_at, version"
)
_J_JOB_COLUMNS = ", ".join(f"j.{c.strip()}" for c in _JOB_COLUMNS.split(","))
_N_JOB_COLUMNS = len(_JOB_COLUMNS.split(","))
_NOTIFY = f"pg_notify('{CHANNEL}', '')"

_DEFAULT_MAX_SIZE = 10
_DEFAULT_MIN_SIZE = 2
_DEFAULT_TIMEOUT = 30.0
# How often a call waiting for a connection looks whether it was cancelled.
_GETCONN_SLICE = 0.1
# How long the listener blocks between looks at its stop flag.
_LISTEN_SLICE = 1.0


def _job_from_row(row: Sequence[Any], start: int = 0) -> Job:
    (
        job_id,
        method,
        payload,
        queue,
        priority,
        attempts,
        created_at,
        state,
        state_data,
        expires_at,
        version,
    ) = row[start : start + _N_JOB_COLUMNS]
    return Job(
        id=job_id,
        method=method,
        payload=json.loads(payload),
        queue=queue,
        priority=priority,
        attempts=attempts,
        created_at=created_at,
        state=decode_state(state, state_data),
        expires_at=expires_at,
        version=version,
    )


def _state_columns(
    state: JobState,
) -> tuple[str, str, datetime | None, datetime | None, str | None]:
    """(state, state_data, due_at, started_at, server_name) for a state."""
    name, data = encode_state(state)
    due_at: datetime | None = None
    if isinstance(state, Scheduled):
        due_at = state.enqueue_at
    elif isinstance(state, AwaitingRetry):
        due_at = state.retry_at
    if isinstance(state, Processing):
        return name, data, due_at, state.started_at, state.server_name
    return name, data, due_at, None, None


def _parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split our pool options off the URL; return (libpq URL, options)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    options: dict[str, Any] = {
        "max_size": _DEFAULT_MAX_SIZE,
        "min_size": _DEFAULT_MIN_SIZE,
        "timeout": _DEFAULT_TIMEOUT,
    }
    kept: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key == "pool_max_size":
                options["max_size"] = int(value)
            elif key == "pool_min_size":
                options["min_size"] = int(value)
            elif key == "pool_timeout":
                options["timeout"] = float(value)
            else:
                kept.append((key, value))
        except ValueError:
            raise ValueError(f"bad value for {key} in PostgreSQL URL: {value!r}") from None
    if options["max_size"] < 1:
        raise ValueError(f"pool_max_size must be at least 1, got {options['max_size']}")
    if not 0 <= options["min_size"] <= options["max_size"]:
        raise ValueError(
            f"pool_min_size must be between 0 and pool_max_size ({options['max_size']}), "
            f"got {options['min_size']}"
        )
    if options["timeout"] <= 0:
        raise ValueError(f"pool_timeout must be positive, got {options['timeout']}")
    return urlunsplit(parts._replace(query=urlencode(kept))), options


class _CancelledBeforeStart(Exception):
    """The call was cancelled before it touched the database."""


class _Call(Generic[T]):
    """One storage call running in a worker thread, cancellable from Trio.

    The worker thread takes a connection, publishes it, runs ``fn`` and
    unpublishes it; :meth:`request_cancel` (Trio thread) sends a PostgreSQL
    cancel request for the published connection. A connection that had a
    cancel sent is closed once the cancel request completed, so the request
    can never land on a later statement.
    """

    __slots__ = (
        "_cancel_done",
        "_conn",
        "_fn",
        "_lock",
        "_on_connection_error",
        "_pool",
        "_timeout",
        "cancel_requested",
    )

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[Conn],
        timeout: float,
        on_connection_error: Callable[[], None],
        fn: Callable[[Conn], T],
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._on_connection_error = on_connection_error
        self._fn = fn
        self._lock = threading.Lock()
        self._conn: Conn | None = None
        self._cancel_done: threading.Event | None = None
        self.cancel_requested = False

    def run(self) -> T:  # worker thread
        pool = self._pool
        conn = self._getconn(pool)
        try:
            with self._lock:
                if self.cancel_requested:
                    raise _CancelledBeforeStart
                self._conn = conn
            try:
                return self._fn(conn)
            except psycopg.OperationalError:
                if not self.cancel_requested:
                    # Probably a lost connection: drop the other broken idle
                    # connections now, so this is the only call that fails.
                    self._on_connection_error()
                raise
            finally:
                with self._lock:
                    self._conn = None
                    cancel_done = self._cancel_done
                if cancel_done is not None:
                    cancel_done.wait()
                    conn.close()
        finally:
            pool.putconn(conn)

    def _getconn(self, pool: psycopg_pool.ConnectionPool[Conn]) -> Conn:
        # Wait in slices, so that a cancelled call stops waiting promptly
        # while PostgreSQL is unreachable.
        remaining = self._timeout
        while True:
            if self.cancel_requested:
                raise _CancelledBeforeStart
            slice_ = min(_GETCONN_SLICE, remaining)
            try:
                return pool.getconn(timeout=slice_)
            except psycopg_pool.PoolTimeout:
                remaining -= slice_
                if remaining <= 0:
                    raise

    def request_cancel(self) -> None:  # Trio thread
        with self._lock:
            self.cancel_requested = True
            conn = self._conn
            if conn is None or self._cancel_done is not None:
                return
            done = self._cancel_done = threading.Event()
        trio.lowlevel.start_thread_soon(
            partial(self._send_cancel, conn, done), lambda _: None, name="trio_monitor pg cancel"
        )

    @staticmethod
    def _send_cancel(conn: Conn, done: threading.Event) -> None:
        try:
            conn.cancel_safe(timeout=5.0)
        except Exception:
            logger.debug("PostgreSQL cancel request failed", exc_info=True)
        finally:
            done.set()


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
        trio_token: trio.lowlevel.TrioToken,
    ) -> None:
        self._conninfo = conninfo
        self._pool = pool
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(max_size)
        self._token = trio_token
        self._wakeup = WakeUp()
        self._closed = False
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._check_lock = threading.Lock()
        self._check_pending = False
        self._stop_listening = threading.Event()
        self._listener_ready = threading.Event()
        self._stop_channel = f"trio_monitor_stop_{uuid.uuid4().hex}"
        self._listener = threading.Thread(
            target=self._listen_loop, name="trio_monitor pg listener", daemon=True
        )

    @classmethod
    async def open(cls, url: str) -> PostgresStorage:
        """Connect, migrate the schema, start listening; see the module docs for URL options."""
        conninfo, options = _parse_url(url)
        pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=options["min_size"],
            max_size=options["max_size"],
            kwargs={"autocommit": True},
            configure=_configure,
            timeout=options["timeout"],
            open=False,
            name="trio_monitor",
        )
        self = cls(
            conninfo,
            pool,
            max_size=options["max_size"],
            timeout=options["timeout"],
            trio_token=trio.lowlevel.current_trio_token(),
        )
        try:
            await trio.to_thread.run_sync(partial(pool.open, wait=True, timeout=options["timeout"]))
            await self._call(_migrate)
            self._listener.start()
            await trio.to_thread.run_sync(self._listener_ready.wait, options["timeout"])
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    def __repr__(self) -> str:
        parts = urlsplit(self._conninfo)
        where = f"{parts.hostname or ''}:{parts.port or ''}{parts.path}"
        return f"<PostgresStorage {where}{' closed' if self._closed else ''}>"

    # -- plumbing ------------------------------------------------------------

    async def _call(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` in a worker thread; cancellable (see the module docs)."""
        if self._closed:
            raise RuntimeError("this PostgresStorage is closed")
        async with self._limiter:
            call = _Call(self._pool, self._timeout, self._check_pool_soon, fn)
            task = trio.lowlevel.current_task()
            token = self._token

            def deliver(result: outcome.Outcome[T]) -> None:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

            trio.lowlevel.start_thread_soon(call.run, deliver, name="trio_monitor pg call")

            raise_cancel: list[trio.lowlevel.RaiseCancelT] = []

            def abort(raise_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                raise_cancel.append(raise_)
                call.request_cancel()
                # The thread always reports back; we wait for it.
                return trio.lowlevel.Abort.FAILED

            try:
                result: T = await trio.lowlevel.wait_task_rescheduled(abort)
            except Exception:
                if raise_cancel:
                    # The statement was aborted (or never sent) because we
                    # were cancelled: report the cancellation, not its echo.
                    raise_cancel[0]()
                raise
            return result

    def _check_pool_soon(self) -> None:
        """Check every idle pooled connection, in a thread; at most one check at a time."""
        with self._check_lock:
            if self._check_pending:
                return
            self._check_pending = True

        def check() -> None:
            try:
                self._pool.check()
            except Exception:
                logger.debug("pool check failed", exc_info=True)
            finally:
                with self._check_lock:
                    self._check_pending = False

        try:
            self._token.run_sync_soon(
                partial(trio.lowlevel.start_thread_soon, check, lambda _: None)
            )
        except trio.RunFinishedError:
            with self._check_lock:
                self._check_pending = False

    def _wake_from_thread(self) -> None:
        """Wake waiters from the listener thread; coalesces bursts into one wake-up."""
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._token.run_sync_soon(self._wake_in_trio)

    def _wake_in_trio(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        self._wakeup.notify()

    def _listen_loop(self) -> None:
        """The listener thread: LISTEN, wake on NOTIFY, reconnect on loss, stop on aclose."""
        failures = 0
        first = True
        while not self._stop_listening.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    conn.execute(
                        psycopg.sql.SQL("LISTEN {}").format(
                            psycopg.sql.Identifier(self._stop_channel)
                        )
                    )
                    if not first:
                        logger.info("PostgreSQL listener reconnected")
                        # Notifications sent while we were away are lost.
                        self._wake_from_thread()
                    first = False
                    failures = 0
                    self._listener_ready.set()
                    while not self._stop_listening.is_set():
                        for note in conn.notifies(timeout=_LISTEN_SLICE, stop_after=1):
                            if note.channel == CHANNEL:
                                self._wake_from_thread()
            except trio.RunFinishedError:
                return
            except psycopg.Error as exc:
                if self._stop_listening.is_set():
                    return
                failures += 1
                delay = min(0.05 * 2**failures, 2.0) * random.uniform(0.5, 1.0)
                logger.warning(
                    "PostgreSQL listener lost its connection (%s); reconnecting in %.2fs",
                    exc,
                    delay,
                )
                self._listener_ready.set()  # open() proceeds; polling covers the gap
                self._stop_listening.wait(delay)
            except BaseException:
                logger.exception("PostgreSQL listener crashed; falling back to polling")
                self._listener_ready.set()
                return

    # -- jobs ------------------------------------------------------------

    async def enqueue(self, job: Job) -> str:
        """Store ``job`` as given; see :meth:`trio_monitor.jobs.Storage.enqueue`."""
        (job_id,) = await self.enqueue_many([job])
        return job_id

    async def enqueue_many(self, jobs: Sequence[Job]) -> list[str]:
        """Store several jobs in one statement; all or none."""
        columns: list[list[Any]] = [[] for _ in range(14)]
        for job in jobs:
            payload = dump_json(job.payload)
            state, data, due_at, started_at, server_name = _state_columns(job.state)
            values = (
                job.id,
                job.method,
                payload,
                job.queue,
                job.priority,
                job.attempts,
                job.created_at,
                state,
                data,
                due_at,
                started_at,
                server_name,
                job.expires_at,
                job.version,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        ids = [job.id for job in jobs]
        if not ids:
            await trio.lowlevel.checkpoint()
            return []
        sql = f"""
            WITH ins AS (
                INSERT INTO {_JOBS} (id, method, payload, queue, priority, attempts,
                    created_at, state, state_data, due_at, started_at, server_name,
                    expires_at, version)
                SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],
                    %s::int[], %s::int[], %s::timestamptz[], %s::text[], %s::text[],
                    %s::timestamptz[], %s::timestamptz[], %s::text[], %s::timestamptz[],
                    %s::bigint[])
                RETURNING state
            )
            SELECT bool_or(state = 'enqueued'),
                   CASE WHEN bool_or(state = 'enqueued') THEN {_NOTIFY} END
            FROM ins
        """

        def run(conn: Conn) -> bool:
            try:
                row = conn.execute(sql, columns).fetchone()
            except psycopg.errors.UniqueViolation:
                raise ValueError(f"a job with one of these ids already exists: {ids}") from None
            return bool(row and row[0])

        if await self._call(run):
            self._wakeup.notify()
        return ids

    async def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        sql = f"SELECT {_JOB_COLUMNS} FROM {_JOBS} WHERE id = %s"

        def run(conn: Conn) -> Job | None:
            row = conn.execute(sql, [job_id]).fetchone()
            return None if row is None else _job_from_row(row)

        return await self._call(run)

    async def list_jobs(
        self, *, state: type[JobState] | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state``."""
        where = "" if state is None else "WHERE state = %(state)s"
        sql = f"SELECT {_JOB_COLUMNS} FROM {_JOBS} {where} ORDER BY seq LIMIT %(limit)s"
        params = {"state": None if state is None else state.name, "limit": limit}

        def run(conn: Conn) -> list[Job]:
            return [_job_from_row(row) for row in conn.execute(sql, params)]

        return await self._call(run)

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs there are in each state, keyed by state name."""
        sql = f"SELECT state, count(*) FROM {_JOBS} GROUP BY state"

        def run(conn: Conn) -> dict[str, int]:
            return {state: count for state, count in conn.execute(sql)}

        return await self._call(run)

    async def claim(
        self,
        *,
        queues: Sequence[str],
        worker_ids: Sequence[str],
        server_name: str,
        now: datetime,
    ) -> list[Job]:
        """Claim up to ``len(worker_ids)`` jobs (``FOR UPDATE SKIP LOCKED``) in one statement."""
        if not worker_ids:
            await trio.lowlevel.checkpoint()
            return []
        states = [encode_state(Processing(now, w, server_name))[1] for w in worker_ids]
        queue_filter = "AND queue = ANY(%(queues)s)" if queues else ""
        sql = f"""
            WITH picked AS (
                SELECT id, priority, seq FROM {_JOBS}
                WHERE state = 'enqueued' {queue_filter}
                ORDER BY priority DESC, seq
                LIMIT %(n)s
                FOR UPDATE SKIP LOCKED
            ), numbered AS (
                SELECT id, row_number() OVER (ORDER BY priority DESC, seq) AS n FROM picked
            ), w AS (
                SELECT * FROM unnest(%(states)s::text[]) WITH ORDINALITY AS w(state_data, n)
            )
            UPDATE {_JOBS} j
            SET state = 'processing', state_data = w.state_data, attempts = j.attempts + 1,
                version = j.version + 1, started_at = %(now)s, server_name = %(server)s,
                due_at = NULL
            FROM numbered JOIN w USING (n)
            WHERE j.id = numbered.id
            RETURNING numbered.n, {_J_JOB_COLUMNS}
        """
        params = {
            "queues": list(queues),
            "n": len(worker_ids),
            "states": states,
            "now": now,
            "server": server_name,
        }

        def run(conn: Conn) -> list[Job]:
            rows = sorted(conn.execute(sql, params), key=lambda row: row[0])
            return [_job_from_row(row, 1) for row in rows]

        return await self._call(run)

    async def apply(self, transitions: Sequence[Transition]) -> list[Job | None]:
        """Compare-and-swap transitions, all in one statement (one transaction)."""
        if not transitions:
            await trio.lowlevel.checkpoint()
            return []
        columns: list[list[Any]] = [[] for _ in range(9)]
        for t in transitions:
            state, data, due_at, started_at, server_name = _state_columns(t.state)
            values = (
                t.job_id,
                t.expected_version,
                state,
                data,
                due_at,
                started_at,
                server_name,
                t.attempts,
                t.expires_at,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        sql = f"""
            WITH v AS (
                SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[],
                    %s::timestamptz[], %s::timestamptz[], %s::text[], %s::int[],
                    %s::timestamptz[]) WITH ORDINALITY
                AS v(id, expected, state, state_data, due_at, started_at, server_name,
                     attempts, expires_at, n)
            ), upd AS (
                UPDATE {_JOBS} j
                SET state = v.state, state_data = v.state_data, due_at = v.due_at,
                    started_at = v.started_at, server_name = v.server_name,
                    attempts = coalesce(v.attempts, j.attempts), expires_at = v.expires_at,
                    version = j.version + 1
                FROM v
                WHERE j.id = v.id AND j.version = v.expected
                RETURNING v.n, {_J_JOB_COLUMNS}
            )
            SELECT upd.*, CASE WHEN upd.state = 'enqueued' THEN {_NOTIFY} END FROM upd
        """
        ids = columns[0]
        distinct = len(set(ids)) == len(ids)

        def run(conn: Conn) -> tuple[list[Job | None], bool]:
            results: list[Job | None] = [None] * len(transitions)
            rows: list[tuple[Any, ...]] = []
            if distinct:
                rows = conn.execute(sql, columns).fetchall()
            else:
                # The same job twice: apply one after the other, as written,
                # in one transaction.
                with conn.transaction():
                    for i in range(len(ids)):
                        params = [[column[i]] for column in columns]
                        for row in conn.execute(sql, params).fetchall():
                            rows.append((i + 1, *row[1:]))
            for row in rows:
                results[row[0] - 1] = _job_from_row(row, 1)
            woke = any(job is not None and isinstance(job.state, Enqueued) for job in results)
            return results, woke

        results, woke = await self._call(run)
        if woke:
            self._wakeup.notify()
        return results

    async def _requeue(
        self, where: LiteralString, params: dict[str, Any], now: datetime
    ) -> list[Transitioned]:
        """Move the rows matching ``where`` to Enqueued(now), in one statement."""
        sql = f"""
            WITH picked AS (
                SELECT id, state AS old_state, state_data AS old_data FROM {_JOBS} j
                WHERE {where}
                ORDER BY seq
                FOR UPDATE OF j
            ), upd AS (
                UPDATE {_JOBS} j
                SET state = 'enqueued', state_data = %(enqueued)s, due_at = NULL,
                    started_at = NULL, server_name = NULL, version = j.version + 1
                FROM picked WHERE j.id = picked.id
                RETURNING picked.old_state, picked.old_data, {_J_JOB_COLUMNS}
            )
            SELECT upd.*, {_NOTIFY} FROM upd
        """
        params = {**params, "enqueued": encode_state(Enqueued(now))[1]}

        def run(conn: Conn) -> list[Transitioned]:
            return [
                Transitioned(job=_job_from_row(row, 2), old_state=decode_state(row[0], row[1]))
                for row in conn.execute(sql, params)
            ]

        changed = await self._call(run)
        if changed:
            self._wakeup.notify()
        return changed

    async def promote_due(self, now: datetime) -> list[Transitioned]:
        """Enqueue the Scheduled and AwaitingRetry jobs due at ``now``."""
        return await self._requeue(
            "j.state IN ('scheduled', 'awaiting_retry') AND j.due_at <= %(now)s",
            {"now": now},
            now,
        )

    async def requeue_stale(self, started_before: datetime, now: datetime) -> list[Transitioned]:
        """Put Processing jobs claimed before ``started_before`` back to Enqueued."""
        return await self._requeue(
            "j.state = 'processing' AND j.started_at < %(before)s",
            {"before": started_before},
            now,
        )

    async def delete_expired(self, now: datetime) -> int:
        """Remove jobs whose ``expires_at`` is at or before ``now``."""
        sql = f"DELETE FROM {_JOBS} WHERE expires_at <= %s"

        def run(conn: Conn) -> int:
            return conn.execute(sql, [now]).rowcount

        return await self._call(run)

    async def wait_for_work(self) -> None:
        """Return on a local enqueue or a NOTIFY from any server."""
        await self._wakeup.wait()

    # -- servers ---------------------------------------------------------

    async def register_server(self, info: ServerInfo) -> None:
        """Insert or replace the heartbeat row ``info.id``."""
        sql = f"""
            INSERT INTO {_SERVERS} (id, name, worker_count, queues, started_at, last_heartbeat)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                worker_count = excluded.worker_count, queues = excluded.queues,
                started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat
        """
        params = [
            info.id,
            info.name,
            info.worker_count,
            list(info.queues),
            info.started_at,
            info.last_heartbeat,
        ]
        await self._call(lambda conn: conn.execute(sql, params))

    async def heartbeat(self, server_id: str, now: datetime) -> bool:
        """Bump the row's heartbeat; False if it no longer exists."""
        sql = f"UPDATE {_SERVERS} SET last_heartbeat = %s WHERE id = %s"
        return await self._call(lambda conn: conn.execute(sql, [now, server_id]).rowcount > 0)

    async def deregister_server(self, server_id: str) -> None:
        """Remove the row (no error if absent)."""
        sql = f"DELETE FROM {_SERVERS} WHERE id = %s"
        await self._call(lambda conn: conn.execute(sql, [server_id]))

    async def list_servers(self) -> list[ServerInfo]:
        """All heartbeat rows, oldest start first."""
        sql = (
            f"SELECT id, name, worker_count, queues, started_at, last_heartbeat FROM {_SERVERS} "
            "ORDER BY started_at, id"
        )

        def run(conn: Conn) -> list[ServerInfo]:
            return [
                ServerInfo(
                    id=row[0],
                    name=row[1],
                    worker_count=row[2],
                    queues=list(row[3]),
                    started_at=row[4],
                    last_heartbeat=row[5],
                )
                for row in conn.execute(sql)
            ]

        return await self._call(run)

    async def reclaim_dead(self, heartbeat_before: datetime, now: datetime) -> list[Transitioned]:
        """Requeue the Processing jobs of stale servers and delete their rows, in one statement."""
        sql = f"""
            WITH dead AS (
                DELETE FROM {_SERVERS} WHERE last_heartbeat < %(before)s RETURNING id
            ), picked AS (
                SELECT j.id, j.state AS old_state, j.state_data AS old_data FROM {_JOBS} j
                WHERE j.state = 'processing' AND j.server_name IN (SELECT id FROM dead)
                ORDER BY j.seq
                FOR UPDATE OF j
            ), upd AS (
                UPDATE {_JOBS} j
                SET state = 'enqueued', state_data = %(enqueued)s, due_at = NULL,
                    started_at = NULL, server_name = NULL, version = j.version + 1
                FROM picked WHERE j.id = picked.id
                RETURNING picked.old_state, picked.old_data, {_J_JOB_COLUMNS}
            )
            SELECT upd.*, {_NOTIFY} FROM upd
        """
        params = {"before": heartbeat_before, "enqueued": encode_state(Enqueued(now))[1]}

        def run(conn: Conn) -> list[Transitioned]:
            return [
                Transitioned(job=_job_from_row(row, 2), old_state=decode_state(row[0], row[1]))
                for row in conn.execute(sql, params)
            ]

        changed = await self._call(run)
        if changed:
            self._wakeup.notify()
        return changed

    # -- recurring -------------------------------------------------------

    async def upsert_recurring(self, recurring: RecurringJob) -> None:
        """Insert or replace a recurring template (by id)."""
        payload = dump_json(recurring.payload)
        sql = f"""
            INSERT INTO {_RECURRING} (id, cron, method, payload, queue, next_run_at, priority)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (id) DO UPDATE SET cron = excluded.cron, method = excluded.method,
                payload = excluded.payload, queue = excluded.queue,
                next_run_at = excluded.next_run_at, priority = excluded.priority
        """
        params = [
            recurring.id,
            recurring.cron,
            recurring.method,
            payload,
            recurring.queue,
            recurring.next_run_at,
            recurring.priority,
        ]
        await self._call(lambda conn: conn.execute(sql, params))

    async def remove_recurring(self, recurring_id: str) -> bool:
        """Remove a template; False if there was none."""
        sql = f"DELETE FROM {_RECURRING} WHERE id = %s"
        return await self._call(lambda conn: conn.execute(sql, [recurring_id]).rowcount > 0)

    async def list_recurring(self) -> list[RecurringJob]:
        """All recurring templates, by id."""
        sql = (
            f"SELECT id, cron, method, payload, queue, next_run_at, priority FROM {_RECURRING} "
            "ORDER BY id"
        )

        def run(conn: Conn) -> list[RecurringJob]:
            return [
                RecurringJob(
                    id=row[0],
                    cron=row[1],
                    method=row[2],
                    payload=json.loads(row[3]),
                    queue=row[4],
                    next_run_at=row[5],
                    priority=row[6],
                )
                for row in conn.execute(sql)
            ]

        return await self._call(run)

    async def enqueue_due_recurring(self, now: datetime, next_run: NextRun) -> list[Job]:
        """One job per due template; each occurrence once however many servers poll.

        Reads the due templates, computes their next runs, then in one
        statement advances each template only if its ``next_run_at`` is
        unchanged and inserts a job for each template it advanced.
        """
        select = f"SELECT id, cron, next_run_at FROM {_RECURRING} WHERE next_run_at <= %s"
        insert = f"""
            WITH v AS (
                SELECT * FROM unnest(%(ids)s::text[], %(expected)s::timestamptz[],
                    %(next)s::timestamptz[], %(job_ids)s::text[])
                AS v(id, expected, next_run_at, job_id)
            ), adv AS (
                UPDATE {_RECURRING} r SET next_run_at = v.next_run_at
                FROM v WHERE r.id = v.id AND r.next_run_at = v.expected
                RETURNING r.method, r.payload, r.queue, r.priority, v.job_id
            ), ins AS (
                INSERT INTO {_JOBS} (id, method, payload, queue, priority, attempts,
                    created_at, state, state_data, version)
                SELECT job_id, method, payload, queue, priority, 0, %(now)s, 'enqueued',
                    %(enqueued)s, 0
                FROM adv ORDER BY job_id
                RETURNING {_JOB_COLUMNS}
            )
            SELECT ins.*, {_NOTIFY} FROM ins
        """
        enqueued = encode_state(Enqueued(now))[1]

        def run(conn: Conn) -> list[Job]:
            ids: list[str] = []
            expected: list[datetime] = []
            nexts: list[datetime] = []
            for template_id, cron, next_run_at in conn.execute(select, [now]):
                try:
                    following = next_run(cron, now)
                except Exception:
                    logger.exception("recurring job %r has a bad schedule %r", template_id, cron)
                    continue
                ids.append(template_id)
                expected.append(next_run_at)
                nexts.append(following)
            if not ids:
                return []
            params = {
                "ids": ids,
                "expected": expected,
                "next": nexts,
                "job_ids": [str(uuid.uuid4()) for _ in ids],
                "now": now,
                "enqueued": enqueued,
            }
            return [_job_from_row(row) for row in conn.execute(insert, params)]

        made = await self._call(run)
        if made:
            self._wakeup.notify()
        return made

    # -- lifecycle -------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the listener and close the pool. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._stop_listening.set()
        if self._listener.is_alive():
            # Wake the listener now rather than at its next poll.
            def poke() -> None:
                try:
                    with self._pool.connection(timeout=1.0) as conn:
                        conn.execute("SELECT pg_notify(%s, '')", [self._stop_channel])
                except Exception:
                    logger.debug("could not poke the listener", exc_info=True)

            await trio.to_thread.run_sync(poke)
            await trio.to_thread.run_sync(self._listener.join)
        await trio.to_thread.run_sync(partial(self._pool.close, timeout=5.0))


def _configure(conn: Conn) -> None:
    """Every pooled connection: UTC timestamps."""
    conn.execute("SET TIME ZONE 'UTC'")


def _migrate(conn: Conn) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one server at a time."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_VERSIONS} ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {_VERSIONS}").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database's job schema is version {current}, newer than this "
                f"trio_monitor understands (version {SCHEMA_VERSION}): upgrade trio_monitor "
                "on this server, or point it at another database"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            conn.execute(_MIGRATIONS[version - 1].encode())
            conn.execute(f"INSERT INTO {_VERSIONS} (version) VALUES (%s)", [version])
            logger.info("job schema migrated to version %d", version)
