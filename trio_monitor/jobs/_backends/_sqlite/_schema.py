"""The SQLite job schema: its migrations, opening a connection, and the version check.

The version lives in ``PRAGMA user_version``. Opening a database applies the
migrations it is missing in one ``BEGIN IMMEDIATE`` transaction (so several
processes may open it at once, and a failed step leaves the old version); a
database written by a newer trio_monitor is refused before anything could
write to it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Sequence
from typing import Final

from ..._storage import SchemaStatus, SchemaVersionError
from ._combiner import transaction

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migrations", "connect", "read_status"]

logger = logging.getLogger("trio_monitor.jobs.sqlite")

#: A list of migration steps, each a tuple of statements.
Migrations = Sequence[Sequence[str]]

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
    (
        # Version 2: job control (SPEC section 6).
        "ALTER TABLE jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE jobs ADD COLUMN timeout REAL",
        "ALTER TABLE jobs ADD COLUMN unique_key TEXT",
        "ALTER TABLE jobs ADD COLUMN lock_key TEXT",
        "ALTER TABLE jobs ADD COLUMN progress TEXT",
        # Set while an abort of this Processing job is requested.
        "ALTER TABLE jobs ADD COLUMN abort_reason TEXT",
        # Version 1 did not record when a job finished: its finished jobs
        # get their creation time (a lower bound) as finished_at.
        "UPDATE jobs SET state_data = json_set(state_data, '$.finished_at',"
        " strftime('%Y-%m-%dT%H:%M:%f', created_at / 1000000.0, 'unixepoch') || '+00:00')"
        " WHERE state IN ('succeeded', 'failed')",
        # At most one live job per unique key: the database enforces it.
        "CREATE UNIQUE INDEX jobs_unique_live ON jobs (unique_key)"
        " WHERE unique_key IS NOT NULL"
        " AND state IN ('enqueued', 'scheduled', 'awaiting_retry', 'processing')",
        # The locks held now (one Processing job each).
        "CREATE INDEX jobs_lock_held ON jobs (lock_key)"
        " WHERE lock_key IS NOT NULL AND state = 'processing'",
        # Listing newest first by queue or method (keyset paging on seq),
        # and counts per (queue, state).
        "CREATE INDEX jobs_queue ON jobs (queue, state, seq)",
        "CREATE INDEX jobs_method ON jobs (method, seq)",
        """
        CREATE TABLE queues (
            name         TEXT PRIMARY KEY,
            paused       INTEGER NOT NULL DEFAULT 0,
            max_running  INTEGER,
            rate_count   INTEGER,
            rate_seconds REAL
        )
        """,
        # When jobs of rate-limited queues started (the sliding window), pruned.
        "CREATE TABLE queue_starts (queue TEXT NOT NULL, started_at INTEGER NOT NULL)",
        "CREATE INDEX queue_starts_window ON queue_starts (queue, started_at)",
        "ALTER TABLE recurring ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC'",
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)


def connect(
    path: str, busy_timeout: float, migrations: Migrations = MIGRATIONS
) -> sqlite3.Connection:
    """Open, configure and migrate the database (blocking: run it on a thread).

    ``migrations`` is for tests of future steps; the default is this code's.
    """
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
        version = _check_version(conn, path, len(migrations))  # before anything that writes
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and path != ":memory:":
            logger.warning("SQLite database %r is in journal mode %r, not WAL", path, mode)
        conn.execute("PRAGMA synchronous = NORMAL")
        if version < len(migrations):  # up to date: no write lock needed to open
            transaction(conn, lambda c: _migrate(c, path, migrations))
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" not in str(exc):
            raise
        raise sqlite3.OperationalError(
            f"cannot open SQLite database {path!r}: {exc} (another connection held its"
            f" lock longer than busy_timeout, {busy_timeout:g}s); raise it with"
            " ?busy_timeout=SECONDS, or end the long transaction"
        ) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def read_status(path: str) -> SchemaStatus:
    """The schema version of the file at ``path``, read only (blocking).

    A file that does not exist is at version 0, and is not created.
    """
    if path == ":memory:" or not os.path.exists(path):
        return SchemaStatus(current=0, latest=SCHEMA_VERSION)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return SchemaStatus(current=current, latest=SCHEMA_VERSION)


def _check_version(conn: sqlite3.Connection, path: str, latest: int) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > latest:
        raise SchemaVersionError(
            f"SQLite database {path!r} has job schema version {version}, but this "
            f"trio_monitor knows versions up to {latest}: it was written by a newer "
            "trio_monitor. Upgrade trio_monitor; the database was not changed."
        )
    return version


def _migrate(conn: sqlite3.Connection, path: str, migrations: Migrations) -> None:
    # Read again under the write lock: another process may have migrated.
    version = _check_version(conn, path, len(migrations))
    for step in range(version, len(migrations)):
        for statement in migrations[step]:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step + 1}")
        logger.info("migrated SQLite job database %r to schema version %d", path, step + 1)
