"""The PostgreSQL job schema: tables, migrations, and the version check.

Migrations run on open, under a transaction-scoped advisory lock so several
servers can start at once; a database whose schema is newer than this code
is refused with :class:`~trio_monitor.jobs.SchemaVersionError` and left
unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from ..._storage import SchemaStatus, SchemaVersionError

__all__ = [
    "JOBS",
    "MIGRATIONS",
    "QUEUES",
    "RECURRING",
    "SCHEMA_VERSION",
    "SERVERS",
    "STARTS",
    "VERSIONS",
    "WAITED",
    "WAITERS",
    "migrate",
    "read_status",
]

logger = logging.getLogger("trio_monitor.jobs.postgres")


#: Key of the advisory lock that serialises schema migrations.
MIGRATION_LOCK = 0x74726D5F6A6F6273  # "trm_jobs"

JOBS = "trio_monitor_jobs"
SERVERS = "trio_monitor_servers"
RECURRING = "trio_monitor_recurring"
VERSIONS = "trio_monitor_schema_version"
QUEUES = "trio_monitor_queues"
STARTS = "trio_monitor_queue_starts"
WAITERS = "trio_monitor_waiters"
#: ``trio_monitor_waited(job_id)``: whether a ``Client.wait`` is registered
#: for the job. VOLATILE plpgsql, so it reads with a fresh snapshot after the
#: calling statement has locked the job row (see ``PostgresStorage.watch_finish``).
WAITED = "trio_monitor_waited"

# Schema migrations; the i-th entry (1-based) brings the schema to version i.
MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE {JOBS} (
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
    CREATE INDEX {JOBS}_claim ON {JOBS} (priority DESC, seq) WHERE state = 'enqueued';
    CREATE INDEX {JOBS}_due ON {JOBS} (due_at)
        WHERE state IN ('scheduled', 'awaiting_retry');
    CREATE INDEX {JOBS}_processing ON {JOBS} (server_name, started_at)
        WHERE state = 'processing';
    CREATE INDEX {JOBS}_expires ON {JOBS} (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE {SERVERS} (
        id             text PRIMARY KEY,
        name           text NOT NULL,
        worker_count   integer NOT NULL,
        queues         text[] NOT NULL,
        started_at     timestamptz NOT NULL,
        last_heartbeat timestamptz NOT NULL
    );
    CREATE TABLE {RECURRING} (
        id          text PRIMARY KEY,
        cron        text NOT NULL,
        method      text NOT NULL,
        payload     text NOT NULL,
        queue       text NOT NULL,
        next_run_at timestamptz NOT NULL,
        priority    integer NOT NULL
    );
    """,
    # Version 2: job control (SPEC section 6).
    f"""
    ALTER TABLE {JOBS}
        ADD COLUMN headers text NOT NULL DEFAULT '{{}}',
        ADD COLUMN timeout double precision,
        ADD COLUMN unique_key text,
        ADD COLUMN lock_key text,
        ADD COLUMN progress text,
        ADD COLUMN abort_reason text;
    -- Version 1 did not record when a job finished: its finished jobs get
    -- their creation time (a lower bound) as finished_at.
    UPDATE {JOBS} SET state_data = jsonb_set(
        state_data::jsonb, '{{finished_at}}',
        to_jsonb(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
    )::text
    WHERE state IN ('succeeded', 'failed');
    CREATE UNIQUE INDEX {JOBS}_unique_live ON {JOBS} (unique_key)
        WHERE unique_key IS NOT NULL
        AND state IN ('enqueued', 'scheduled', 'awaiting_retry', 'processing');
    CREATE INDEX {JOBS}_lock_held ON {JOBS} (lock_key)
        WHERE lock_key IS NOT NULL AND state = 'processing';
    CREATE INDEX {JOBS}_seq ON {JOBS} (seq);
    CREATE INDEX {JOBS}_state ON {JOBS} (state, seq);
    CREATE INDEX {JOBS}_queue ON {JOBS} (queue, seq);
    CREATE INDEX {JOBS}_method ON {JOBS} (method, seq);
    CREATE TABLE {QUEUES} (
        name         text PRIMARY KEY,
        paused       boolean NOT NULL DEFAULT false,
        max_running  integer,
        rate_count   integer,
        rate_seconds double precision
    );
    CREATE TABLE {STARTS} (queue text NOT NULL, started_at timestamptz NOT NULL);
    CREATE INDEX {STARTS}_window ON {STARTS} (queue, started_at);
    ALTER TABLE {RECURRING} ADD COLUMN timezone text NOT NULL DEFAULT 'UTC';
    -- Who waits for which job: a finish is announced (NOTIFY) only for
    -- these. Unlogged: after a crash the table is empty and waiters poll.
    CREATE UNLOGGED TABLE {WAITERS} (
        token      text PRIMARY KEY,
        job_id     text NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX {WAITERS}_job ON {WAITERS} (job_id);
    CREATE INDEX {WAITERS}_expires ON {WAITERS} (expires_at);
    CREATE FUNCTION {WAITED}(waited_id text) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            RETURN EXISTS (SELECT 1 FROM {WAITERS} WHERE job_id = waited_id);
        END
        $$;
    """,
    # Version 3: a claim from one queue reads its first rows in order (the
    # claim index orders all queues together, so a claim filtered by queue
    # read and sorted every enqueued job of the table).
    f"""
    CREATE INDEX {JOBS}_claim_queue ON {JOBS} (queue, priority DESC, seq)
        WHERE state = 'enqueued';
    """,
)

#: The schema version this code writes and understands.
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _current(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [VERSIONS]).fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSIONS}").fetchone()
    return int(row[0]) if row else 0


def read_status(conn: psycopg.Connection[Any]) -> SchemaStatus:
    """The schema version of the database ``conn`` is connected to (reads only)."""
    return SchemaStatus(current=_current(conn), latest=SCHEMA_VERSION)


def migrate(conn: psycopg.Connection[Any], migrations: Sequence[str] = MIGRATIONS) -> None:
    """Bring the schema to the latest version, one server at a time.

    ``migrations`` is for tests of future steps; the default is this code's.
    """
    latest = len(migrations)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        current = _current(conn)
        if current > latest:
            raise SchemaVersionError(
                f"the database's job schema is version {current}, newer than this "
                f"trio_monitor understands (version {latest}): it was written by a newer "
                "trio_monitor. Upgrade trio_monitor on this server, or point it at another "
                "database; the database was not changed."
            )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {VERSIONS} ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version in range(current + 1, latest + 1):
            conn.execute(migrations[version - 1].encode())
            conn.execute(f"INSERT INTO {VERSIONS} (version) VALUES (%s)", [version])
            logger.info("job schema migrated to version %d", version)
