-- Maestro's durable state on PostgreSQL: the same tables as on SQLite (rows per
-- execution, per step and per attempt; the event log; the registry; workflow
-- revisions; tokens; subscriptions; runtime config; poll tasks; execution leases).
--
-- Every object is created unqualified, so in the first schema of the connection's
-- search_path: one database can hold several Maestro schemas.
--
-- Timestamps are BIGINT (ms since the Unix epoch). Documents are JSON (the text
-- exactly as written, so object keys keep their order and strings may hold
-- \u0000, as on SQLite; JSONB would sort keys and refuse \u0000). Tag lists are
-- TEXT[] ("carries every tag of t" is tags @> t). Keys that lists are ordered by
-- use COLLATE "C": byte order, as on SQLite and in memory, whatever the
-- database's locale.

-- The event seq counter: one row, bumped inside every transaction that appends
-- events (UPDATE ... RETURNING). Its row lock serializes those transactions from
-- the bump to their commit, so seqs are handed out in commit order and no reader
-- ever sees seq N+1 before N (a SEQUENCE would hand them out in call order).
CREATE TABLE event_seq (
    id   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last BIGINT NOT NULL
);
INSERT INTO event_seq (id, last) VALUES (TRUE, 0);

-- Agent Registry. `doc` is the RegisteredAgent JSON without its write-only
-- inbound secret, which has a column of its own.
CREATE TABLE agents (
    id             TEXT COLLATE "C" PRIMARY KEY,
    doc            JSON NOT NULL,
    inbound_secret TEXT,
    status         TEXT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);

-- Workflow definitions: immutable revisions plus one row per workflow id.
CREATE TABLE workflows (
    id              TEXT COLLATE "C" PRIMARY KEY,
    latest_revision BIGINT NOT NULL,
    deleted         BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE workflow_revisions (
    id         TEXT COLLATE "C" NOT NULL,
    revision   BIGINT NOT NULL,
    doc        JSON NOT NULL,
    tags       TEXT[] NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (id, revision)
);

-- Execution headers: a WorkflowExecution without its step executions.
CREATE TABLE executions (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    workflow_id         TEXT NOT NULL,
    revision            BIGINT NOT NULL,
    status              TEXT NOT NULL,
    correlation_id      TEXT NOT NULL,
    parent_execution_id TEXT,
    created_at          BIGINT NOT NULL,
    started_at          BIGINT,
    completed_at        BIGINT,
    workflow_tags       TEXT[] NOT NULL,
    variables           JSON NOT NULL,
    step_outputs        JSON NOT NULL,
    outputs             JSON,
    result              JSON,
    error               JSON,
    rollback_log        JSON,
    deadline            BIGINT,
    cancel_reason       TEXT
);
CREATE INDEX executions_status ON executions (status, created_at);
CREATE INDEX executions_workflow ON executions (workflow_id, created_at);
CREATE INDEX executions_correlation ON executions (correlation_id);
CREATE INDEX executions_created ON executions (created_at, id);

CREATE TABLE steps (
    execution_id      TEXT COLLATE "C" NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_id           TEXT COLLATE "C" NOT NULL,
    position          BIGINT NOT NULL,
    status            TEXT NOT NULL,
    agent_id          TEXT,
    inputs            JSON NOT NULL,
    outputs           JSON,
    error             JSON,
    started_at        BIGINT,
    completed_at      BIGINT,
    duration          BIGINT,
    retry_count       BIGINT NOT NULL,
    next_retry_at     BIGINT,
    fallback_step     TEXT,
    retry_round_start BIGINT,
    awaiting_callback BOOLEAN NOT NULL,
    PRIMARY KEY (execution_id, step_id)
);
CREATE INDEX steps_agent ON steps (agent_id) WHERE agent_id IS NOT NULL;

CREATE TABLE attempts (
    execution_id TEXT COLLATE "C" NOT NULL,
    step_id      TEXT COLLATE "C" NOT NULL,
    attempt      BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    completed_at BIGINT,
    agent_id     TEXT,
    error        JSON,
    late_result  JSON,
    PRIMARY KEY (execution_id, step_id, attempt),
    FOREIGN KEY (execution_id, step_id) REFERENCES steps (execution_id, step_id) ON DELETE CASCADE
);
CREATE INDEX attempts_agent ON attempts (agent_id) WHERE agent_id IS NOT NULL;

-- Execute idempotency keys, scoped to the workflow.
CREATE TABLE idempotency_keys (
    workflow_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (workflow_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The event log, in seq order. The filter indexes end with seq, so a filtered
-- page in seq order is one index range scan.
CREATE TABLE events (
    seq            BIGINT PRIMARY KEY,
    type           TEXT NOT NULL,
    source_agent   TEXT NOT NULL,
    target_agent   TEXT,
    workflow_id    TEXT,
    execution_id   TEXT,
    correlation_id TEXT NOT NULL,
    timestamp      BIGINT NOT NULL,
    payload        JSON NOT NULL,
    metadata       JSON
);
CREATE INDEX events_correlation ON events (correlation_id, seq);
CREATE INDEX events_execution ON events (execution_id, seq) WHERE execution_id IS NOT NULL;
CREATE INDEX events_workflow ON events (workflow_id, seq) WHERE workflow_id IS NOT NULL;
CREATE INDEX events_type ON events (type, seq);
CREATE INDEX events_timestamp ON events (timestamp);

-- API tokens: only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    role        TEXT NOT NULL,
    agent_id    TEXT,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);

-- Webhook subscriptions. `event_types` is a JSON array of type names.
CREATE TABLE subscriptions (
    id          TEXT COLLATE "C" PRIMARY KEY,
    event_types JSON NOT NULL,
    agent_id    TEXT,
    workflow_id TEXT,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Runtime config: the PATCHed keys, one JSON object under key 'runtime'.
CREATE TABLE config (
    key   TEXT PRIMARY KEY,
    value JSON NOT NULL
);

-- Poll tasks of agents with `transport: poll`.
CREATE TABLE tasks (
    task_id          TEXT COLLATE "C" PRIMARY KEY,
    agent_id         TEXT NOT NULL,
    capability       TEXT NOT NULL,
    execution_id     TEXT NOT NULL,
    step_id          TEXT NOT NULL,
    attempt          BIGINT NOT NULL,
    compensation     BOOLEAN NOT NULL,
    -- The push body that tasks/poll hands out.
    body             JSON NOT NULL,
    -- queued | leased | completed | failed | expired | cancelled
    status           TEXT NOT NULL,
    lease_expires_at BIGINT,
    -- Outputs or error of a finished task, NULL otherwise.
    result           JSON,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
-- Leasing (an agent's queued tasks, oldest first) and cancelling an agent's tasks.
CREATE INDEX tasks_agent ON tasks (agent_id, status, created_at, task_id);
-- The expiry sweep: leased tasks by deadline.
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE status = 'leased';
CREATE INDEX tasks_execution ON tasks (execution_id, step_id);
-- Purging finished tasks.
CREATE INDEX tasks_updated ON tasks (updated_at);

-- Execution ownership in a cluster (DESIGN.md "Scale-out").
CREATE TABLE leases (
    execution_id TEXT COLLATE "C" PRIMARY KEY,
    node_id      TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX leases_expires ON leases (expires_at, execution_id);
