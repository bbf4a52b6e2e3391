-- The PostgreSQL job schema version 1 (trio_monitor before job control), as it
-- created databases. Kept verbatim: the migration tests build a database from it.
CREATE TABLE trio_monitor_jobs (
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
CREATE INDEX trio_monitor_jobs_claim ON trio_monitor_jobs (priority DESC, seq) WHERE state = 'enqueued';
CREATE INDEX trio_monitor_jobs_due ON trio_monitor_jobs (due_at)
    WHERE state IN ('scheduled', 'awaiting_retry');
CREATE INDEX trio_monitor_jobs_processing ON trio_monitor_jobs (server_name, started_at)
    WHERE state = 'processing';
CREATE INDEX trio_monitor_jobs_expires ON trio_monitor_jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE trio_monitor_servers (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    worker_count   integer NOT NULL,
    queues         text[] NOT NULL,
    started_at     timestamptz NOT NULL,
    last_heartbeat timestamptz NOT NULL
);
CREATE TABLE trio_monitor_recurring (
    id          text PRIMARY KEY,
    cron        text NOT NULL,
    method      text NOT NULL,
    payload     text NOT NULL,
    queue       text NOT NULL,
    next_run_at timestamptz NOT NULL,
    priority    integer NOT NULL
);
CREATE TABLE trio_monitor_schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO trio_monitor_schema_version (version) VALUES (1);
