-- The SQLite job schema version 1 (trio_monitor before job control), as it
-- created databases. Kept verbatim: the migration tests build a file from it.

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
);
CREATE INDEX jobs_claim_queue ON jobs (queue, priority DESC, seq) WHERE state = 'enqueued';
CREATE INDEX jobs_claim_any ON jobs (priority DESC, seq) WHERE state = 'enqueued';
CREATE INDEX jobs_due ON jobs (due_at) WHERE state IN ('scheduled', 'awaiting_retry');
CREATE INDEX jobs_expires ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state, seq);
CREATE TABLE servers (
    id             TEXT PRIMARY KEY,
    name           TEXT    NOT NULL,
    worker_count   INTEGER NOT NULL,
    queues         TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL
);
CREATE INDEX servers_heartbeat ON servers (last_heartbeat);
CREATE TABLE recurring (
    id          TEXT PRIMARY KEY,
    cron        TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    queue       TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    next_run_at INTEGER NOT NULL
);
CREATE INDEX recurring_due ON recurring (next_run_at);
PRAGMA user_version = 1;
