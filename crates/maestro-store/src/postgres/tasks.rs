//! Poll tasks and execution leases.
//!
//! Each transition is one statement (its own transaction). Leasing picks the
//! oldest queued tasks with `FOR UPDATE SKIP LOCKED`: concurrent pollers skip the
//! rows another one is taking instead of waiting for it, and never get the same
//! task. Every other transition is an `UPDATE ... WHERE status = ...`: when two
//! callers race on a row, the second waits for the first to commit, re-checks
//! the row, and no longer matches, so a task moves exactly once. `RETURNING`
//! gives no order: the rows are sorted oldest first here.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::Timestamp;
use maestro_core::ports::{
    DEFAULT_TASK_LEASE_MS, LeaseStore, TaskFinish, TaskRecord, TaskStatus, TaskStore,
};
use serde_json::Value;
use sqlx::postgres::PgRow;

use super::codec::{get, int, json, opt_json, opt_uint, uint, uint32};
use super::write::{self, first_by_key, to_json};
use super::{PostgresStore, db, db_unique, retry_conflicts};
use crate::check_finish_status;
use crate::error::Error;

/// The columns of `tasks`, as a literal for `concat!` (statements stay `&'static str`).
macro_rules! task_columns {
    () => {
        "task_id, agent_id, capability, execution_id, step_id, attempt, compensation, body, \
         status, lease_expires_at, result, created_at, updated_at"
    };
}

/// Lease the oldest queued tasks of an agent; `$filter` narrows the capabilities.
///
/// `$1` agent, `$2` max, `$3` now, `$4` lease_ms, `$5` the default lease,
/// `$6` now + lease_ms (saturated), `$7` the capabilities. With `lease_ms` 0 a
/// task's lease is its body's `timeoutMs` when that is a whole number (as
/// written: JSON columns keep their text), else the default; the end saturates
/// at `i64::MAX`.
macro_rules! lease_sql {
    ($filter:literal) => {
        concat!(
            "WITH picked AS (SELECT task_id AS picked_id FROM tasks \
             WHERE agent_id = $1 AND status = 'queued'",
            $filter,
            " ORDER BY created_at, task_id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE tasks SET status = 'leased', updated_at = $3, lease_expires_at = \
             CASE WHEN $4 = 0 THEN LEAST($3::numeric + \
             CASE WHEN json_typeof(body -> 'timeoutMs') = 'number' \
             AND (body ->> 'timeoutMs') ~ '^[0-9]{1,20}$' \
             THEN (body ->> 'timeoutMs')::numeric ELSE $5::numeric END, \
             9223372036854775807)::bigint \
             ELSE $6 END \
             FROM picked WHERE task_id = picked.picked_id RETURNING ",
            task_columns!()
        )
    };
}

const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9, $10, $11::json, $12, $13)"
);

const INSERT_TASKS: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") SELECT task_id, agent_id, capability, execution_id, step_id, attempt, compensation, \
     body::json, status, lease_expires_at, result::json, created_at, updated_at \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
     $7::boolean[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::bigint[], \
     $13::bigint[]) AS r(task_id, agent_id, capability, execution_id, step_id, attempt, \
     compensation, body, status, lease_expires_at, result, created_at, updated_at) \
     ON CONFLICT (task_id) DO NOTHING RETURNING task_id"
);

fn decode_task(row: &PgRow) -> Result<TaskRecord, Error> {
    const W: &str = "task";
    let status: String = get(row, "status", W)?;
    Ok(TaskRecord {
        task_id: get(row, "task_id", W)?,
        agent_id: get(row, "agent_id", W)?,
        capability: get(row, "capability", W)?,
        execution_id: get(row, "execution_id", W)?,
        step_id: get(row, "step_id", W)?,
        attempt: uint32(get(row, "attempt", W)?, W)?,
        compensation: get(row, "compensation", W)?,
        body: json(row, "body", W)?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| Error::corrupt(W, format!("unknown status {status:?}")))?,
        lease_expires_at: opt_uint(get(row, "lease_expires_at", W)?, W)?,
        result: opt_json(row, "result", W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
        updated_at: uint(get(row, "updated_at", W)?, W)?,
    })
}

/// Decode and sort oldest first (`created_at`, then `task_id`).
fn decode_tasks(rows: &[PgRow]) -> Result<Vec<TaskRecord>> {
    let mut tasks = rows
        .iter()
        .map(decode_task)
        .collect::<Result<Vec<_>, Error>>()?;
    tasks.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
    Ok(tasks)
}

/// Tasks as one array per column.
#[derive(Default)]
struct TaskColumns {
    task_id: Vec<String>,
    agent_id: Vec<String>,
    capability: Vec<String>,
    execution_id: Vec<String>,
    step_id: Vec<String>,
    attempt: Vec<i64>,
    compensation: Vec<bool>,
    body: Vec<String>,
    status: Vec<&'static str>,
    lease_expires_at: Vec<Option<i64>>,
    result: Vec<Option<String>>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
}

impl TaskColumns {
    fn push(&mut self, t: &TaskRecord) -> Result<()> {
        self.task_id.push(t.task_id.clone());
        self.agent_id.push(t.agent_id.clone());
        self.capability.push(t.capability.clone());
        self.execution_id.push(t.execution_id.clone());
        self.step_id.push(t.step_id.clone());
        self.attempt.push(i64::from(t.attempt));
        self.compensation.push(t.compensation);
        self.body.push(to_json(&t.body)?);
        self.status.push(t.status.as_str());
        self.lease_expires_at.push(t.lease_expires_at.map(int));
        self.result.push(write::opt_json(t.result.as_ref())?);
        self.created_at.push(int(t.created_at));
        self.updated_at.push(int(t.updated_at));
        Ok(())
    }
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn enqueue_task(&self, task: &TaskRecord) -> Result<()> {
        sqlx::query(INSERT_TASK)
            .bind(&task.task_id)
            .bind(&task.agent_id)
            .bind(&task.capability)
            .bind(&task.execution_id)
            .bind(&task.step_id)
            .bind(i64::from(task.attempt))
            .bind(task.compensation)
            .bind(to_json(&task.body)?)
            .bind(task.status.as_str())
            .bind(task.lease_expires_at.map(int))
            .bind(write::opt_json(task.result.as_ref())?)
            .bind(int(task.created_at))
            .bind(int(task.updated_at))
            .execute(&self.pool)
            .await
            .map_err(|e| db_unique(e, "task", &task.task_id))?;
        Ok(())
    }

    async fn enqueue_tasks(&self, tasks: &[TaskRecord]) -> Result<Vec<bool>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        // One statement: a task id twice in the batch is inserted once (the
        // first copy), the others answer false like an id already stored.
        let kept = first_by_key(tasks, |t| t.task_id.as_str());
        let mut c = TaskColumns::default();
        for (_, t) in &kept {
            c.push(t)?;
        }
        let inserted: Vec<String> = retry_conflicts!(
            sqlx::query_scalar(INSERT_TASKS)
                .bind(&c.task_id)
                .bind(&c.agent_id)
                .bind(&c.capability)
                .bind(&c.execution_id)
                .bind(&c.step_id)
                .bind(&c.attempt)
                .bind(&c.compensation)
                .bind(&c.body)
                .bind(&c.status)
                .bind(&c.lease_expires_at)
                .bind(&c.result)
                .bind(&c.created_at)
                .bind(&c.updated_at)
                .fetch_all(&self.pool)
        )?;
        Ok(answers(tasks.len(), &kept, |t| &t.task_id, &inserted))
    }

    async fn lease_tasks(
        &self,
        agent_id: &str,
        capabilities: &[String],
        max: usize,
        now: Timestamp,
        lease_ms: u64,
    ) -> Result<Vec<TaskRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // Two constant statements (both stay prepared).
        let sql = if capabilities.is_empty() {
            lease_sql!("")
        } else {
            lease_sql!(" AND capability = ANY($7)")
        };
        let rows = retry_conflicts!({
            let mut query = sqlx::query(sql)
                .bind(agent_id)
                .bind(int(max as u64))
                .bind(int(now))
                .bind(int(lease_ms))
                .bind(int(DEFAULT_TASK_LEASE_MS))
                .bind(int(now.saturating_add(lease_ms)));
            if !capabilities.is_empty() {
                query = query.bind(capabilities);
            }
            query.fetch_all(&self.pool)
        })?;
        decode_tasks(&rows)
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        const SQL: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE task_id = $1");
        let row = sqlx::query(SQL)
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(decode_task).transpose()?)
    }

    async fn extend_lease(
        &self,
        task_id: &str,
        agent_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $3, updated_at = $4 \
             WHERE task_id = $1 AND agent_id = $2 AND status = 'leased'",
        )
        .bind(task_id)
        .bind(agent_id)
        .bind(int(until))
        .bind(int(now))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_task(
        &self,
        task_id: &str,
        status: TaskStatus,
        result: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        check_finish_status(status)?;
        let done = sqlx::query(
            "UPDATE tasks SET status = $2, result = $3::json, updated_at = $4 \
             WHERE task_id = $1 AND status = 'leased'",
        )
        .bind(task_id)
        .bind(status.as_str())
        .bind(write::opt_json(result.as_ref())?)
        .bind(int(now))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn finish_tasks(&self, finishes: &[TaskFinish], now: Timestamp) -> Result<Vec<bool>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        for f in finishes {
            check_finish_status(f.status)?;
        }
        // One statement: a task finished twice in the batch is finished by the
        // first copy, the later ones answer false (it is no longer leased).
        let kept = first_by_key(finishes, |f| f.task_id.as_str());
        let mut ids = Vec::with_capacity(kept.len());
        let mut statuses = Vec::with_capacity(kept.len());
        let mut results = Vec::with_capacity(kept.len());
        for (_, f) in &kept {
            ids.push(f.task_id.clone());
            statuses.push(f.status.as_str());
            results.push(write::opt_json(f.result.as_ref())?);
        }
        let finished: Vec<String> = retry_conflicts!(
            sqlx::query_scalar(
                "UPDATE tasks SET status = f.status, result = f.result::json, updated_at = $4 \
                 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS f(id, status, result) \
                 WHERE tasks.task_id = f.id AND tasks.status = 'leased' \
                 RETURNING tasks.task_id",
            )
            .bind(&ids)
            .bind(&statuses)
            .bind(&results)
            .bind(int(now))
            .fetch_all(&self.pool)
        )?;
        Ok(answers(finishes.len(), &kept, |f| &f.task_id, &finished))
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<TaskRecord>> {
        const SQL: &str = concat!(
            "UPDATE tasks SET status = 'expired', updated_at = $1 \
             WHERE status = 'leased' AND lease_expires_at < $1 RETURNING ",
            task_columns!()
        );
        let rows = retry_conflicts!(sqlx::query(SQL).bind(int(now)).fetch_all(&self.pool))?;
        decode_tasks(&rows)
    }

    async fn cancel_task(&self, task_id: &str, now: Timestamp) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET status = 'cancelled', updated_at = $2 \
             WHERE task_id = $1 AND status IN ('queued', 'leased')",
        )
        .bind(task_id)
        .bind(int(now))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_agent_tasks(&self, agent_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>> {
        const SQL: &str = concat!(
            "UPDATE tasks SET status = 'cancelled', updated_at = $2 \
             WHERE agent_id = $1 AND status IN ('queued', 'leased') RETURNING ",
            task_columns!()
        );
        let rows = retry_conflicts!(
            sqlx::query(SQL)
                .bind(agent_id)
                .bind(int(now))
                .fetch_all(&self.pool)
        )?;
        decode_tasks(&rows)
    }

    async fn purge_tasks(&self, before: Timestamp) -> Result<u64> {
        let done = retry_conflicts!(
            sqlx::query(
                "DELETE FROM tasks WHERE updated_at < $1 \
                 AND status IN ('completed', 'failed', 'expired', 'cancelled')",
            )
            .bind(int(before))
            .execute(&self.pool)
        )?;
        Ok(done.rows_affected())
    }
}

/// Per input row: `true` when it is the copy that was kept (`kept`: input index
/// and row) and its id is among `done`.
fn answers<R>(
    len: usize,
    kept: &[(usize, &R)],
    id: impl Fn(&R) -> &String,
    done: &[String],
) -> Vec<bool> {
    let done: std::collections::HashSet<&str> = done.iter().map(String::as_str).collect();
    let mut out = vec![false; len];
    for (i, r) in kept {
        out[*i] = done.contains(id(r).as_str());
    }
    out
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire_lease(
        &self,
        execution_id: &str,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<bool> {
        // Insert when free; take over when lapsed or ours. When held by another
        // node and still valid, the DO UPDATE's WHERE leaves the row alone and no
        // row is affected.
        let done = sqlx::query(
            "INSERT INTO leases (execution_id, node_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (execution_id) DO UPDATE \
             SET node_id = EXCLUDED.node_id, expires_at = EXCLUDED.expires_at \
             WHERE leases.node_id = EXCLUDED.node_id OR leases.expires_at < $4",
        )
        .bind(execution_id)
        .bind(node_id)
        .bind(int(now.saturating_add(ttl_ms)))
        .bind(int(now))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_lease(&self, execution_id: &str, node_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM leases WHERE execution_id = $1 AND node_id = $2")
            .bind(execution_id)
            .bind(node_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}
