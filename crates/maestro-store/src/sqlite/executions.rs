//! Executions: the group commit and the reads that reassemble executions from
//! their header, step and attempt rows.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{
    Attempt, ExecutionContext, ExecutionStatus, StepExecution, StepMap, StepStatus,
    WorkflowExecution,
};
use maestro_core::ports::{
    AttemptRow, Batch, Claimed, Committed, ExecutionHeader, ExecutionQuery, ExecutionStats,
    ExecutionStore, HeldClaim, IdempotencyRecord, KeyClaim, Page, StepRow,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use super::codec::{
    Bind, Where, bind_all, get, int, json, opt_int, opt_json, opt_uint, tag_list, tag_needle, uint,
    uint32,
};
use super::events::insert_events;
use super::write::{self, MultiInsert, Query, to_json};
use super::{SqliteStore, db};
use crate::error::Error;

// --- the group commit --------------------------------------------------------

static UPSERT_EXECUTIONS: MultiInsert = MultiInsert::new(
    "INSERT INTO executions (id, workflow_id, revision, status, correlation_id, \
     parent_execution_id, created_at, started_at, completed_at, workflow_tags, variables, \
     step_outputs, outputs, result, error, rollback_log, deadline, cancel_reason)",
    18,
    "ON CONFLICT (id) DO UPDATE SET \
     workflow_id = excluded.workflow_id, revision = excluded.revision, status = excluded.status, \
     correlation_id = excluded.correlation_id, parent_execution_id = excluded.parent_execution_id, \
     created_at = excluded.created_at, started_at = excluded.started_at, \
     completed_at = excluded.completed_at, workflow_tags = excluded.workflow_tags, \
     variables = excluded.variables, step_outputs = excluded.step_outputs, \
     outputs = excluded.outputs, result = excluded.result, error = excluded.error, \
     rollback_log = excluded.rollback_log, deadline = excluded.deadline, \
     cancel_reason = excluded.cancel_reason",
);

static UPSERT_STEPS: MultiInsert = MultiInsert::new(
    "INSERT INTO steps (execution_id, step_id, position, status, agent_id, inputs, outputs, \
     error, started_at, completed_at, duration, retry_count, next_retry_at, fallback_step, \
     retry_round_start, awaiting_callback)",
    16,
    "ON CONFLICT (execution_id, step_id) DO UPDATE SET \
     position = excluded.position, status = excluded.status, agent_id = excluded.agent_id, \
     inputs = excluded.inputs, outputs = excluded.outputs, error = excluded.error, \
     started_at = excluded.started_at, completed_at = excluded.completed_at, \
     duration = excluded.duration, retry_count = excluded.retry_count, \
     next_retry_at = excluded.next_retry_at, fallback_step = excluded.fallback_step, \
     retry_round_start = excluded.retry_round_start, \
     awaiting_callback = excluded.awaiting_callback",
);

static UPSERT_ATTEMPTS: MultiInsert = MultiInsert::new(
    "INSERT INTO attempts (execution_id, step_id, attempt, started_at, completed_at, agent_id, \
     error, late_result)",
    8,
    "ON CONFLICT (execution_id, step_id, attempt) DO UPDATE SET \
     started_at = excluded.started_at, completed_at = excluded.completed_at, \
     agent_id = excluded.agent_id, error = excluded.error, late_result = excluded.late_result",
);

/// The stored claim of a key, and whether its execution is unfinished.
const HELD_CLAIM: &str = "SELECT k.execution_id, k.request_hash, k.expires_at, \
     EXISTS (SELECT 1 FROM executions x WHERE x.id = k.execution_id \
     AND x.status IN ('pending', 'running', 'paused')) AS unfinished \
     FROM idempotency_keys k WHERE k.workflow_id = ?1 AND k.key = ?2";

/// A claim that won: a new row, or an expired one re-pointed.
const PUT_CLAIM: &str = "INSERT INTO idempotency_keys \
     (workflow_id, key, request_hash, execution_id, created_at, expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (workflow_id, key) DO UPDATE SET \
     request_hash = excluded.request_hash, execution_id = excluded.execution_id, \
     created_at = excluded.created_at, expires_at = excluded.expires_at";

/// Decide the batch's key claims, in order (`KeyClaim::decide` against the
/// stored claim; the writer's transaction serializes them against every other
/// commit).
async fn claim_keys(conn: &mut SqliteConnection, claims: &[KeyClaim]) -> Result<Vec<Claimed>> {
    const W: &str = "idempotency key";
    let mut out = Vec::with_capacity(claims.len());
    for c in claims {
        let row = sqlx::query(HELD_CLAIM)
            .bind(&c.workflow_id)
            .bind(&c.key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        let held = match row {
            None => None,
            Some(r) => Some(HeldClaim {
                execution_id: get(&r, "execution_id", W)?,
                request_hash: get(&r, "request_hash", W)?,
                expires_at: uint(get(&r, "expires_at", W)?, W)?,
                unfinished: get::<i64>(&r, "unfinished", W)? != 0,
            }),
        };
        let answer = c.decide(held.as_ref());
        if answer == Claimed::Won
            && let Some(record) = c.record()
            && held.is_none_or(|h| h.execution_id != record.execution_id)
        {
            sqlx::query(PUT_CLAIM)
                .bind(record.workflow_id)
                .bind(record.key)
                .bind(record.request_hash)
                .bind(record.execution_id)
                .bind(int(record.created_at))
                .bind(int(record.expires_at))
                .execute(&mut *conn)
                .await
                .map_err(db)?;
        }
        out.push(answer);
    }
    Ok(out)
}

fn bind_execution(q: Query, h: &Arc<ExecutionHeader>) -> Result<Query> {
    // Exhaustive: a field added to the model fails to compile here until it has
    // a column.
    let WorkflowExecution {
        id,
        workflow_id,
        revision,
        status,
        step_executions: _,
        context:
            ExecutionContext {
                execution_id: _,
                workflow_id: _,
                variables,
                step_outputs,
                correlation_id,
                parent_execution_id,
            },
        outputs,
        result,
        created_at,
        started_at,
        completed_at,
        error,
        rollback_log,
        deadline,
        cancel_reason,
    } = &h.execution;
    Ok(q.bind(id.clone())
        .bind(workflow_id.clone())
        .bind(int(*revision))
        .bind(status.as_str())
        .bind(correlation_id.clone())
        .bind(parent_execution_id.clone())
        .bind(int(*created_at))
        .bind(opt_int(*started_at))
        .bind(opt_int(*completed_at))
        .bind(tag_list(&h.workflow_tags))
        .bind(to_json(variables)?)
        .bind(to_json(step_outputs)?)
        .bind(write::opt_json(outputs.as_ref())?)
        .bind(write::opt_json(result.as_ref())?)
        .bind(write::opt_json(error.as_ref())?)
        .bind(write::opt_json(rollback_log.as_ref())?)
        .bind(opt_int(*deadline))
        .bind(cancel_reason.clone()))
}

fn bind_step(q: Query, r: &StepRow) -> Result<Query> {
    let StepExecution {
        step_id,
        status,
        agent_id,
        inputs,
        outputs,
        error,
        started_at,
        completed_at,
        duration,
        retry_count,
        attempts: _,
        next_retry_at,
        fallback_step,
        retry_round_start,
        awaiting_callback,
    } = &r.step;
    Ok(q.bind(r.execution_id.clone())
        .bind(step_id.clone())
        .bind(i64::from(r.position))
        .bind(status.as_str())
        .bind(agent_id.clone())
        .bind(to_json(inputs)?)
        .bind(write::opt_json(outputs.as_ref())?)
        .bind(write::opt_json(error.as_ref())?)
        .bind(opt_int(*started_at))
        .bind(opt_int(*completed_at))
        .bind(opt_int(*duration))
        .bind(i64::from(*retry_count))
        .bind(opt_int(*next_retry_at))
        .bind(fallback_step.clone())
        .bind(retry_round_start.map(i64::from))
        .bind(*awaiting_callback))
}

fn bind_attempt(q: Query, r: &AttemptRow) -> Result<Query> {
    let Attempt {
        attempt,
        started_at,
        completed_at,
        error,
        agent_id,
        late_result,
    } = &r.attempt;
    Ok(q.bind(r.execution_id.clone())
        .bind(r.step_id.clone())
        .bind(i64::from(*attempt))
        .bind(int(*started_at))
        .bind(opt_int(*completed_at))
        .bind(agent_id.clone())
        .bind(write::opt_json(error.as_ref())?)
        .bind(write::opt_json(late_result.as_ref())?))
}

/// The key claims first; then, without the new executions whose claim was
/// lost, header rows, step rows, attempt rows (the order the foreign keys
/// need), and last the events with their seqs.
async fn write_batch(conn: &mut SqliteConnection, mut batch: Batch) -> Result<Committed> {
    let claims = claim_keys(conn, &batch.claims).await?;
    batch.drop_executions(&batch.losers(&claims));
    UPSERT_EXECUTIONS
        .run(conn, &batch.executions, bind_execution)
        .await?;
    UPSERT_STEPS.run(conn, &batch.steps, bind_step).await?;
    UPSERT_ATTEMPTS
        .run(conn, &batch.attempts, bind_attempt)
        .await?;
    let events = insert_events(conn, batch.events).await?;
    Ok(Committed { events, claims })
}

// --- reading executions back --------------------------------------------------

const EXECUTION_COLUMNS: &str = "id, workflow_id, revision, status, correlation_id, \
    parent_execution_id, created_at, started_at, completed_at, variables, step_outputs, outputs, \
    result, error, rollback_log, deadline, cancel_reason";

const STEP_COLUMNS: &str = "execution_id, step_id, position, status, agent_id, inputs, outputs, \
    error, started_at, completed_at, duration, retry_count, next_retry_at, fallback_step, \
    retry_round_start, awaiting_callback";

const ATTEMPT_COLUMNS: &str =
    "execution_id, step_id, attempt, started_at, completed_at, agent_id, error, late_result";

fn decode_header(row: &SqliteRow) -> Result<WorkflowExecution, Error> {
    const W: &str = "execution";
    let status: String = get(row, "status", W)?;
    let id: String = get(row, "id", W)?;
    let workflow_id: String = get(row, "workflow_id", W)?;
    Ok(WorkflowExecution {
        revision: uint(get(row, "revision", W)?, W)?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| Error::corrupt(W, format!("unknown status {status:?}")))?,
        step_executions: StepMap::default(),
        context: ExecutionContext {
            execution_id: id.clone(),
            workflow_id: workflow_id.clone(),
            variables: json(&get::<String>(row, "variables", W)?, W)?,
            step_outputs: json(&get::<String>(row, "step_outputs", W)?, W)?,
            correlation_id: get(row, "correlation_id", W)?,
            parent_execution_id: get(row, "parent_execution_id", W)?,
        },
        outputs: opt_json(get(row, "outputs", W)?, W)?,
        result: opt_json(get(row, "result", W)?, W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
        started_at: opt_uint(get(row, "started_at", W)?, W)?,
        completed_at: opt_uint(get(row, "completed_at", W)?, W)?,
        error: opt_json(get(row, "error", W)?, W)?,
        rollback_log: opt_json(get(row, "rollback_log", W)?, W)?,
        deadline: opt_uint(get(row, "deadline", W)?, W)?,
        cancel_reason: get(row, "cancel_reason", W)?,
        id,
        workflow_id,
    })
}

/// (execution id, step).
fn decode_step(row: &SqliteRow) -> Result<(String, StepExecution), Error> {
    const W: &str = "step";
    let status: String = get(row, "status", W)?;
    Ok((
        get(row, "execution_id", W)?,
        StepExecution {
            step_id: get(row, "step_id", W)?,
            status: StepStatus::parse(&status)
                .ok_or_else(|| Error::corrupt(W, format!("unknown status {status:?}")))?,
            agent_id: get(row, "agent_id", W)?,
            inputs: json(&get::<String>(row, "inputs", W)?, W)?,
            outputs: opt_json(get(row, "outputs", W)?, W)?,
            error: opt_json(get(row, "error", W)?, W)?,
            started_at: opt_uint(get(row, "started_at", W)?, W)?,
            completed_at: opt_uint(get(row, "completed_at", W)?, W)?,
            duration: opt_uint(get(row, "duration", W)?, W)?,
            retry_count: uint32(get(row, "retry_count", W)?, W)?,
            attempts: Vec::new(),
            next_retry_at: opt_uint(get(row, "next_retry_at", W)?, W)?,
            fallback_step: get(row, "fallback_step", W)?,
            retry_round_start: get::<Option<i64>>(row, "retry_round_start", W)?
                .map(|v| uint32(v, W))
                .transpose()?,
            awaiting_callback: get(row, "awaiting_callback", W)?,
        },
    ))
}

/// (execution id, step id, attempt).
fn decode_attempt(row: &SqliteRow) -> Result<(String, String, Attempt), Error> {
    const W: &str = "attempt";
    Ok((
        get(row, "execution_id", W)?,
        get(row, "step_id", W)?,
        Attempt {
            attempt: uint32(get(row, "attempt", W)?, W)?,
            started_at: uint(get(row, "started_at", W)?, W)?,
            completed_at: opt_uint(get(row, "completed_at", W)?, W)?,
            error: opt_json(get(row, "error", W)?, W)?,
            agent_id: get(row, "agent_id", W)?,
            late_result: opt_json(get(row, "late_result", W)?, W)?,
        },
    ))
}

/// Which executions' steps and attempts to load along with their headers.
enum StepScope<'a> {
    One(&'a str),
    /// A JSON array of execution ids.
    Ids(String),
    Unfinished,
}

/// Load the steps and attempts of `headers` (already read in the same
/// transaction, so the rows agree with them) and put them in place.
async fn attach_steps(
    conn: &mut SqliteConnection,
    headers: &mut [WorkflowExecution],
    scope: StepScope<'_>,
) -> Result<()> {
    if headers.is_empty() {
        return Ok(());
    }
    let (filter, bind) = match scope {
        StepScope::One(id) => ("execution_id = ?1", Some(id.to_owned())),
        StepScope::Ids(ids) => (
            "execution_id IN (SELECT value FROM json_each(?1))",
            Some(ids),
        ),
        StepScope::Unfinished => (
            "execution_id IN (SELECT id FROM executions \
             WHERE status IN ('pending', 'running', 'paused'))",
            None,
        ),
    };
    let steps_sql =
        format!("SELECT {STEP_COLUMNS} FROM steps WHERE {filter} ORDER BY position, step_id");
    let attempts_sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE {filter} \
         ORDER BY execution_id, step_id, attempt"
    );
    let mut steps_query = sqlx::query(AssertSqlSafe(steps_sql));
    let mut attempts_query = sqlx::query(AssertSqlSafe(attempts_sql));
    if let Some(bind) = bind {
        steps_query = steps_query.bind(bind.clone());
        attempts_query = attempts_query.bind(bind);
    }
    let step_rows = steps_query.fetch_all(&mut *conn).await.map_err(db)?;
    let attempt_rows = attempts_query.fetch_all(&mut *conn).await.map_err(db)?;

    let mut attempts: HashMap<(String, String), Vec<Attempt>> = HashMap::new();
    for row in &attempt_rows {
        let (execution_id, step_id, attempt) = decode_attempt(row)?;
        attempts
            .entry((execution_id, step_id))
            .or_default()
            .push(attempt);
    }
    let index: HashMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.id.clone(), i))
        .collect();
    for row in &step_rows {
        let (execution_id, mut step) = decode_step(row)?;
        let Some(&i) = index.get(&execution_id) else {
            continue;
        };
        if let Some(a) = attempts.remove(&(execution_id, step.step_id.clone())) {
            step.attempts = a;
        }
        headers[i].step_executions.0.push(step);
    }
    for h in headers.iter_mut() {
        h.derive_step_outputs();
    }
    Ok(())
}

fn decode_headers(rows: &[SqliteRow]) -> Result<Vec<WorkflowExecution>> {
    rows.iter()
        .map(|r| decode_header(r).map_err(Into::into))
        .collect()
}

fn execution_filter(q: &ExecutionQuery) -> Where {
    let mut w = Where::default();
    if let Some(id) = &q.workflow_id {
        w.add("workflow_id = ?", [Bind::Text(id.clone())]);
    }
    if !q.statuses.is_empty() {
        let statuses: Vec<&str> = q.statuses.iter().map(|s| s.as_str()).collect();
        w.add(
            "status IN (SELECT value FROM json_each(?))",
            [Bind::Text(
                serde_json::to_string(&statuses).expect("strings serialize"),
            )],
        );
    }
    if let Some(agent) = &q.agent_id {
        w.add(
            "(id IN (SELECT execution_id FROM steps WHERE agent_id = ?) OR EXISTS \
             (SELECT 1 FROM attempts a WHERE a.execution_id = executions.id AND a.agent_id = ?))",
            [Bind::Text(agent.clone()), Bind::Text(agent.clone())],
        );
    }
    for tag in &q.tags {
        w.add("instr(workflow_tags, ?) > 0", [Bind::Text(tag_needle(tag))]);
    }
    if let Some(c) = &q.correlation_id {
        w.add("correlation_id = ?", [Bind::Text(c.clone())]);
    }
    if let Some(t) = q.created_after {
        w.add("created_at >= ?", [Bind::Int(int(t))]);
    }
    if let Some(t) = q.created_before {
        w.add("created_at <= ?", [Bind::Int(int(t))]);
    }
    w
}

#[async_trait]
impl ExecutionStore for SqliteStore {
    async fn commit(&self, batch: Batch) -> Result<Committed> {
        crate::refuse_fence(&batch)?;
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        // IMMEDIATE: take the write lock up front, so another process holding it
        // makes us wait (busy_timeout) instead of failing mid-transaction.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        let events = write_batch(&mut tx, batch).await?;
        tx.commit().await.map_err(db)?;
        Ok(events)
    }

    async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        let mut tx = self.reader.begin().await.map_err(db)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut headers = vec![decode_header(&row)?];
        attach_steps(&mut tx, &mut headers, StepScope::One(id)).await?;
        tx.commit().await.map_err(db)?;
        Ok(headers.pop())
    }

    async fn query_executions(&self, query: &ExecutionQuery) -> Result<Page<WorkflowExecution>> {
        let filter = execution_filter(query);
        let where_sql = filter.sql();
        let mut tx = self.reader.begin().await.map_err(db)?;
        let total: i64 = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM executions{where_sql}"
            ))),
            &filter.binds,
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
        let rows = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions{where_sql} \
                 ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            ))),
            &filter.binds,
        )
        .bind(int(query.limit as u64))
        .bind(int(query.offset as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut items = decode_headers(&rows)?;
        let ids: Vec<&str> = items.iter().map(|e| e.id.as_str()).collect();
        let ids = serde_json::to_string(&ids).expect("strings serialize");
        attach_steps(&mut tx, &mut items, StepScope::Ids(ids)).await?;
        tx.commit().await.map_err(db)?;
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn unfinished_executions(&self) -> Result<Vec<WorkflowExecution>> {
        let mut tx = self.reader.begin().await.map_err(db)?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions \
             WHERE status IN ('pending', 'running', 'paused') ORDER BY created_at, id"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut items = decode_headers(&rows)?;
        attach_steps(&mut tx, &mut items, StepScope::Unfinished).await?;
        tx.commit().await.map_err(db)?;
        Ok(items)
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        let mut tx = self.reader.begin().await.map_err(db)?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM executions GROUP BY status")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let mut stats = ExecutionStats {
            by_status: ExecutionStatus::ALL.iter().map(|s| (*s, 0)).collect(),
            ..ExecutionStats::default()
        };
        for row in &rows {
            let status: String = get(row, "status", "execution")?;
            let n: i64 = get(row, "n", "execution")?;
            let status = ExecutionStatus::parse(&status)
                .ok_or_else(|| Error::corrupt("execution", format!("unknown status {status:?}")))?;
            if let Some(slot) = stats.by_status.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = uint(n, "execution")?;
            }
        }
        let row = sqlx::query(
            "SELECT COALESCE(SUM(MAX(completed_at - started_at, 0)), 0) AS total, COUNT(*) AS n \
             FROM executions \
             WHERE status IN ('completed', 'failed', 'rolled_back', 'cancelled') \
             AND started_at IS NOT NULL AND completed_at IS NOT NULL",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        stats.finished_time_sum_ms = uint(get(&row, "total", "execution")?, "execution")?;
        stats.finished_count = uint(get(&row, "n", "execution")?, "execution")?;
        tx.commit().await.map_err(db)?;
        Ok(stats)
    }

    async fn get_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let row = sqlx::query(
            "SELECT request_hash, execution_id, created_at, expires_at FROM idempotency_keys \
             WHERE workflow_id = ?1 AND key = ?2",
        )
        .bind(workflow_id)
        .bind(key)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        const W: &str = "idempotency key";
        Ok(Some(IdempotencyRecord {
            workflow_id: workflow_id.to_owned(),
            key: key.to_owned(),
            request_hash: get(&row, "request_hash", W)?,
            execution_id: get(&row, "execution_id", W)?,
            created_at: uint(get(&row, "created_at", W)?, W)?,
            expires_at: uint(get(&row, "expires_at", W)?, W)?,
        }))
    }

    async fn has_active_executions(&self, workflow_id: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM executions WHERE workflow_id = ?1 \
             AND status IN ('pending', 'running', 'paused') LIMIT 1",
        )
        .bind(workflow_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        Ok(found.is_some())
    }

    async fn purge_executions(
        &self,
        before: maestro_core::model::Timestamp,
        now: maestro_core::model::Timestamp,
        limit: usize,
    ) -> Result<u64> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        // Steps and attempts go with their execution (ON DELETE CASCADE). An
        // execution a live key claim points at stays until the claim expires.
        let gone: Vec<String> = sqlx::query_scalar(
            "DELETE FROM executions WHERE id IN (SELECT id FROM executions e \
             WHERE status IN ('completed', 'failed', 'rolled_back', 'cancelled') \
             AND completed_at < ?1 AND NOT EXISTS (SELECT 1 FROM idempotency_keys k \
             WHERE k.execution_id = e.id AND k.expires_at > ?3) \
             ORDER BY completed_at LIMIT ?2) RETURNING id",
        )
        .bind(int(before))
        .bind(int(limit as u64))
        .bind(int(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        for id in &gone {
            sqlx::query("DELETE FROM idempotency_keys WHERE execution_id = ?1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(gone.len() as u64)
    }
}
