-- Poll tasks get what the TaskStore port keeps: whether the call is a
-- compensation, the result of a finished task, and when it last changed (for
-- purging). The table was unused until now, so it is recreated rather than
-- altered (its indexes go with it).
DROP TABLE tasks;

CREATE TABLE tasks (
    task_id          TEXT PRIMARY KEY NOT NULL,
    agent_id         TEXT NOT NULL,
    capability       TEXT NOT NULL,
    execution_id     TEXT NOT NULL,
    step_id          TEXT NOT NULL,
    attempt          INTEGER NOT NULL,
    compensation     INTEGER NOT NULL,
    -- The push body (JSON) that tasks/poll hands out.
    body             TEXT NOT NULL,
    -- queued | leased | completed | failed | expired | cancelled
    status           TEXT NOT NULL,
    lease_expires_at INTEGER,
    -- Outputs or error of a finished task (JSON), NULL otherwise.
    result           TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
-- Leasing: an agent's queued tasks, oldest first.
CREATE INDEX tasks_agent ON tasks (agent_id, status, created_at, task_id);
-- The expiry sweep: leased tasks by deadline.
CREATE INDEX tasks_lease ON tasks (status, lease_expires_at);
CREATE INDEX tasks_execution ON tasks (execution_id, step_id);
-- Purging finished tasks.
CREATE INDEX tasks_updated ON tasks (updated_at);

-- The leases table of 0001 fits as it is; oldest-first listing of lapsed leases
-- orders by (expires_at, execution_id).
DROP INDEX leases_expires;
CREATE INDEX leases_expires ON leases (expires_at, execution_id);
