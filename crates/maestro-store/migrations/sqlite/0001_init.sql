-- Maestro's durable state on SQLite: rows per execution, per step and per attempt
-- (never one document rewritten per change), the event log, the registry, workflow
-- revisions, tokens, subscriptions, runtime config, poll tasks and leases.
--
-- Timestamps are integers (ms since the Unix epoch). JSON columns hold JSON text.
-- Tag lists are stored as ',a,b,' (each tag with '%' and ',' percent-encoded) so
-- that "carries tag t" is instr(tags, ',t,') > 0.

-- Counters bumped inside committing transactions (event seq: allocated in commit
-- order, so no reader ever sees seq N+1 before N).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('event_seq', 0);

-- Agent Registry. `doc` is the RegisteredAgent JSON without its write-only
-- inbound secret, which has a column of its own.
CREATE TABLE agents (
    id             TEXT PRIMARY KEY NOT NULL,
    doc            TEXT NOT NULL,
    inbound_secret TEXT,
    status         TEXT NOT NULL,
    last_heartbeat INTEGER NOT NULL
);

-- Workflow definitions: immutable revisions plus one row per workflow id.
CREATE TABLE workflows (
    id              TEXT PRIMARY KEY NOT NULL,
    latest_revision INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE workflow_revisions (
    id         TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    doc        TEXT NOT NULL,
    tags       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (id, revision)
);

-- Execution headers: a WorkflowExecution without its step executions.
CREATE TABLE executions (
    id                  TEXT PRIMARY KEY NOT NULL,
    workflow_id         TEXT NOT NULL,
    revision            INTEGER NOT NULL,
    status              TEXT NOT NULL,
    correlation_id      TEXT NOT NULL,
    parent_execution_id TEXT,
    created_at          INTEGER NOT NULL,
    started_at          INTEGER,
    completed_at        INTEGER,
    workflow_tags       TEXT NOT NULL,
    variables           TEXT NOT NULL,
    step_outputs        TEXT NOT NULL,
    outputs             TEXT,
    result              TEXT,
    error               TEXT,
    rollback_log        TEXT,
    deadline            INTEGER,
    cancel_reason       TEXT
);
CREATE INDEX executions_status ON executions (status, created_at);
CREATE INDEX executions_workflow ON executions (workflow_id, created_at);
CREATE INDEX executions_correlation ON executions (correlation_id);
CREATE INDEX executions_created ON executions (created_at, id);

CREATE TABLE steps (
    execution_id  TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_id       TEXT NOT NULL,
    position      INTEGER NOT NULL,
    status        TEXT NOT NULL,
    agent_id      TEXT,
    inputs        TEXT NOT NULL,
    outputs       TEXT,
    error         TEXT,
    started_at    INTEGER,
    completed_at  INTEGER,
    duration      INTEGER,
    retry_count   INTEGER NOT NULL,
    next_retry_at INTEGER,
    fallback_step TEXT,
    retry_round_start INTEGER,
    awaiting_callback INTEGER NOT NULL,
    PRIMARY KEY (execution_id, step_id)
);
CREATE INDEX steps_agent ON steps (agent_id) WHERE agent_id IS NOT NULL;

CREATE TABLE attempts (
    execution_id TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    completed_at INTEGER,
    agent_id     TEXT,
    error        TEXT,
    late_result  TEXT,
    PRIMARY KEY (execution_id, step_id, attempt),
    FOREIGN KEY (execution_id, step_id) REFERENCES steps (execution_id, step_id) ON DELETE CASCADE
) WITHOUT ROWID;

-- Execute idempotency keys, scoped to the workflow.
CREATE TABLE idempotency_keys (
    workflow_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The event log. `seq` is the rowid: events are appended in seq order.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY NOT NULL,
    type           TEXT NOT NULL,
    source_agent   TEXT NOT NULL,
    target_agent   TEXT,
    workflow_id    TEXT,
    execution_id   TEXT,
    correlation_id TEXT NOT NULL,
    timestamp      INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT
);
CREATE INDEX events_correlation ON events (correlation_id);
CREATE INDEX events_execution ON events (execution_id) WHERE execution_id IS NOT NULL;
CREATE INDEX events_workflow ON events (workflow_id) WHERE workflow_id IS NOT NULL;
CREATE INDEX events_type ON events (type);
CREATE INDEX events_timestamp ON events (timestamp);

-- API tokens: only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    role        TEXT NOT NULL,
    agent_id    TEXT,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

-- Webhook subscriptions. `event_types` is a JSON array of type names.
CREATE TABLE subscriptions (
    id          TEXT PRIMARY KEY NOT NULL,
    event_types TEXT NOT NULL,
    agent_id    TEXT,
    workflow_id TEXT,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Runtime config: the PATCHed keys, one JSON object under key 'runtime'.
CREATE TABLE config (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Poll tasks of agents with `transport: poll` (used by later work).
CREATE TABLE tasks (
    task_id          TEXT PRIMARY KEY NOT NULL,
    agent_id         TEXT NOT NULL,
    capability       TEXT NOT NULL,
    execution_id     TEXT NOT NULL,
    step_id          TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL
);
CREATE INDEX tasks_agent ON tasks (agent_id, status, created_at);
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_execution ON tasks (execution_id, step_id);

-- Execution ownership in a cluster (used by later work).
CREATE TABLE leases (
    execution_id TEXT PRIMARY KEY NOT NULL,
    node_id      TEXT NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX leases_expires ON leases (expires_at);
