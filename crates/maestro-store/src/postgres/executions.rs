//! Executions: the group commit and the reads that reassemble executions from
//! their header, step and attempt rows.

use std::collections::HashMap;

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{
    Attempt, ExecutionContext, ExecutionStatus, StepExecution, StepMap, StepStatus,
    WorkflowExecution,
};
use maestro_core::ports::{
    Batch, Claimed, Committed, ExecutionQuery, ExecutionStats, ExecutionStore, HeldClaim,
    IdempotencyRecord, KeyClaim, LEASE_LOST, Page,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::codec::{
    Bind, Where, bind_all, get, int, json, opt_int, opt_json, opt_uint, uint, uint32,
};
use super::events::{EventColumns, committed};
use super::write::{self, first_by_key, last_by_key, to_json};
use super::{PostgresStore, db, retry_conflicts};
use crate::error::Error;

// --- the group commit --------------------------------------------------------

const UPSERT_EXECUTIONS: &str = "INSERT INTO executions (id, workflow_id, revision, status, \
     correlation_id, parent_execution_id, created_at, started_at, completed_at, workflow_tags, \
     variables, step_outputs, outputs, result, error, rollback_log, deadline, cancel_reason) \
     SELECT id, workflow_id, revision, status, correlation_id, parent_execution_id, created_at, \
     started_at, completed_at, ARRAY(SELECT json_array_elements_text(tags::json)), \
     variables::json, step_outputs::json, outputs::json, result::json, error::json, \
     rollback_log::json, deadline, cancel_reason \
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
     $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], \
     $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::text[]) \
     AS r(id, workflow_id, revision, status, correlation_id, parent_execution_id, created_at, \
     started_at, completed_at, tags, variables, step_outputs, outputs, result, error, \
     rollback_log, deadline, cancel_reason) \
     ON CONFLICT (id) DO UPDATE SET \
     workflow_id = EXCLUDED.workflow_id, revision = EXCLUDED.revision, status = EXCLUDED.status, \
     correlation_id = EXCLUDED.correlation_id, parent_execution_id = EXCLUDED.parent_execution_id, \
     created_at = EXCLUDED.created_at, started_at = EXCLUDED.started_at, \
     completed_at = EXCLUDED.completed_at, workflow_tags = EXCLUDED.workflow_tags, \
     variables = EXCLUDED.variables, step_outputs = EXCLUDED.step_outputs, \
     outputs = EXCLUDED.outputs, result = EXCLUDED.result, error = EXCLUDED.error, \
     rollback_log = EXCLUDED.rollback_log, deadline = EXCLUDED.deadline, \
     cancel_reason = EXCLUDED.cancel_reason";

const UPSERT_STEPS: &str = "INSERT INTO steps (execution_id, step_id, position, status, \
     agent_id, inputs, outputs, error, started_at, completed_at, duration, retry_count, \
     next_retry_at, fallback_step, retry_round_start, awaiting_callback) \
     SELECT execution_id, step_id, position, status, agent_id, inputs::json, outputs::json, \
     error::json, started_at, completed_at, duration, retry_count, next_retry_at, \
     fallback_step, retry_round_start, awaiting_callback \
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], \
     $13::bigint[], $14::text[], $15::bigint[], $16::boolean[]) \
     AS r(execution_id, step_id, position, status, agent_id, inputs, outputs, error, \
     started_at, completed_at, duration, retry_count, next_retry_at, fallback_step, \
     retry_round_start, awaiting_callback) \
     ON CONFLICT (execution_id, step_id) DO UPDATE SET \
     position = EXCLUDED.position, status = EXCLUDED.status, agent_id = EXCLUDED.agent_id, \
     inputs = EXCLUDED.inputs, outputs = EXCLUDED.outputs, error = EXCLUDED.error, \
     started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, \
     duration = EXCLUDED.duration, retry_count = EXCLUDED.retry_count, \
     next_retry_at = EXCLUDED.next_retry_at, fallback_step = EXCLUDED.fallback_step, \
     retry_round_start = EXCLUDED.retry_round_start, \
     awaiting_callback = EXCLUDED.awaiting_callback";

const UPSERT_ATTEMPTS: &str = "INSERT INTO attempts (execution_id, step_id, attempt, \
     started_at, completed_at, agent_id, error, late_result) \
     SELECT execution_id, step_id, attempt, started_at, completed_at, agent_id, error::json, \
     late_result::json \
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], \
     $7::text[], $8::text[]) \
     AS r(execution_id, step_id, attempt, started_at, completed_at, agent_id, error, \
     late_result) \
     ON CONFLICT (execution_id, step_id, attempt) DO UPDATE SET \
     started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, \
     agent_id = EXCLUDED.agent_id, error = EXCLUDED.error, late_result = EXCLUDED.late_result";

/// Whether the stored claim `k` has expired at the claiming row's `created_at`
/// (the engine's now): past its `expires_at` and its execution finished (or
/// gone). A stale read of the execution's status can only say "unfinished"
/// (a finished execution never runs again), so it errs on the side of the
/// live claim.
macro_rules! expired {
    () => {
        "(k.expires_at <= EXCLUDED.created_at AND NOT EXISTS (SELECT 1 FROM executions x \
         WHERE x.id = k.execution_id AND x.status IN ('pending', 'running', 'paused')))"
    };
}

/// Claim keys (distinct, in key order): a new row wins; a conflicting row is
/// re-pointed when it has expired and kept otherwise. The row is locked either
/// way (a concurrent claim of the key waits for this transaction, then sees
/// its outcome), and every claimed key comes back with the claim it ends up
/// with.
const CLAIM_KEYS: &str = concat!(
    "INSERT INTO idempotency_keys AS k (workflow_id, key, request_hash, execution_id, \
     created_at, expires_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
     $6::bigint[]) \
     ON CONFLICT (workflow_id, key) DO UPDATE SET request_hash = CASE WHEN ",
    expired!(),
    " THEN EXCLUDED.request_hash ELSE k.request_hash END, execution_id = CASE WHEN ",
    expired!(),
    " THEN EXCLUDED.execution_id ELSE k.execution_id END, created_at = CASE WHEN ",
    expired!(),
    " THEN EXCLUDED.created_at ELSE k.created_at END, expires_at = CASE WHEN ",
    expired!(),
    " THEN EXCLUDED.expires_at ELSE k.expires_at END \
     RETURNING k.workflow_id, k.key, k.execution_id, k.request_hash"
);

/// A probe's look at a key: its claim, and whether its execution is unfinished.
const HELD_CLAIM: &str = "SELECT k.execution_id, k.request_hash, k.expires_at, \
     EXISTS (SELECT 1 FROM executions x WHERE x.id = k.execution_id \
     AND x.status IN ('pending', 'running', 'paused')) AS unfinished \
     FROM idempotency_keys k WHERE k.workflow_id = $1 AND k.key = $2";

/// Decide the batch's key claims: the claims in one statement, then the probes
/// (which see the batch's own claims). A later claim of a key already claimed
/// in the batch gets the key's outcome, as if decided one after the other.
async fn claim_keys(
    conn: &mut PgConnection,
    claims: &[KeyClaim],
) -> Result<Vec<Claimed>, sqlx::Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let real: Vec<(usize, &KeyClaim)> = claims
        .iter()
        .enumerate()
        .filter(|(_, c)| c.execution_id.is_some())
        .collect();
    let distinct = first_by_key(&real, |(_, c)| (c.workflow_id.as_str(), c.key.as_str()));
    let mut outcome: HashMap<(String, String), (String, String)> = HashMap::new();
    if !distinct.is_empty() {
        let mut k = KeyColumns::default();
        for (_, (_, c)) in &distinct {
            k.workflow_id.push(c.workflow_id.clone());
            k.key.push(c.key.clone());
            k.request_hash.push(c.request_hash.clone());
            k.execution_id
                .push(c.execution_id.clone().unwrap_or_default());
            k.created_at.push(int(c.now));
            k.expires_at.push(int(c.expires_at));
        }
        let rows = sqlx::query(CLAIM_KEYS)
            .bind(&k.workflow_id)
            .bind(&k.key)
            .bind(&k.request_hash)
            .bind(&k.execution_id)
            .bind(&k.created_at)
            .bind(&k.expires_at)
            .fetch_all(&mut *conn)
            .await?;
        for r in rows {
            outcome.insert(
                (r.try_get("workflow_id")?, r.try_get("key")?),
                (r.try_get("execution_id")?, r.try_get("request_hash")?),
            );
        }
    }
    let mut out = Vec::with_capacity(claims.len());
    for c in claims {
        let k = (c.workflow_id.clone(), c.key.clone());
        let answer = match (outcome.get(&k), &c.execution_id) {
            (Some((id, _)), Some(mine)) if id == mine => Claimed::Won,
            (Some((id, hash)), _) => Claimed::Taken {
                execution_id: id.clone(),
                request_hash: hash.clone(),
            },
            (None, Some(_)) => {
                return Err(sqlx::Error::Protocol(format!(
                    "idempotency key {:?} of workflow {:?} was claimed but not returned",
                    c.key, c.workflow_id
                )));
            }
            (None, None) => {
                let row = sqlx::query(HELD_CLAIM)
                    .bind(&c.workflow_id)
                    .bind(&c.key)
                    .fetch_optional(&mut *conn)
                    .await?;
                let held = match row {
                    None => None,
                    Some(r) => Some(HeldClaim {
                        execution_id: r.try_get("execution_id")?,
                        request_hash: r.try_get("request_hash")?,
                        expires_at: r.try_get::<i64, _>("expires_at")?.max(0) as u64,
                        unfinished: r.try_get("unfinished")?,
                    }),
                };
                c.decide(held.as_ref())
            }
        };
        out.push(answer);
    }
    Ok(out)
}

#[derive(Default)]
struct ExecutionColumns {
    id: Vec<String>,
    workflow_id: Vec<String>,
    revision: Vec<i64>,
    status: Vec<&'static str>,
    correlation_id: Vec<String>,
    parent_execution_id: Vec<Option<String>>,
    created_at: Vec<i64>,
    started_at: Vec<Option<i64>>,
    completed_at: Vec<Option<i64>>,
    tags: Vec<String>,
    variables: Vec<String>,
    step_outputs: Vec<String>,
    outputs: Vec<Option<String>>,
    result: Vec<Option<String>>,
    error: Vec<Option<String>>,
    rollback_log: Vec<Option<String>>,
    deadline: Vec<Option<i64>>,
    cancel_reason: Vec<Option<String>>,
}

#[derive(Default)]
struct StepColumns {
    execution_id: Vec<String>,
    step_id: Vec<String>,
    position: Vec<i64>,
    status: Vec<&'static str>,
    agent_id: Vec<Option<String>>,
    inputs: Vec<String>,
    outputs: Vec<Option<String>>,
    error: Vec<Option<String>>,
    started_at: Vec<Option<i64>>,
    completed_at: Vec<Option<i64>>,
    duration: Vec<Option<i64>>,
    retry_count: Vec<i64>,
    next_retry_at: Vec<Option<i64>>,
    fallback_step: Vec<Option<String>>,
    retry_round_start: Vec<Option<i64>>,
    awaiting_callback: Vec<bool>,
}

#[derive(Default)]
struct AttemptColumns {
    execution_id: Vec<String>,
    step_id: Vec<String>,
    attempt: Vec<i64>,
    started_at: Vec<i64>,
    completed_at: Vec<Option<i64>>,
    agent_id: Vec<Option<String>>,
    error: Vec<Option<String>>,
    late_result: Vec<Option<String>>,
}

#[derive(Default)]
struct KeyColumns {
    workflow_id: Vec<String>,
    key: Vec<String>,
    request_hash: Vec<String>,
    execution_id: Vec<String>,
    created_at: Vec<i64>,
    expires_at: Vec<i64>,
}

/// A batch encoded as column arrays, ready to be written (again, when a
/// conflict makes the transaction run twice).
struct BatchColumns {
    executions: ExecutionColumns,
    steps: StepColumns,
    attempts: AttemptColumns,
    events: EventColumns,
}

impl BatchColumns {
    fn new(batch: &Batch) -> Result<Self> {
        let mut x = ExecutionColumns::default();
        for h in last_by_key(&batch.executions, |h| h.execution.id.as_str()) {
            // Exhaustive: a field added to the model fails to compile here until
            // it has a column.
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
            x.id.push(id.clone());
            x.workflow_id.push(workflow_id.clone());
            x.revision.push(int(*revision));
            x.status.push(status.as_str());
            x.correlation_id.push(correlation_id.clone());
            x.parent_execution_id.push(parent_execution_id.clone());
            x.created_at.push(int(*created_at));
            x.started_at.push(opt_int(*started_at));
            x.completed_at.push(opt_int(*completed_at));
            x.tags.push(to_json(&h.workflow_tags)?);
            x.variables.push(to_json(variables)?);
            x.step_outputs.push(to_json(step_outputs)?);
            x.outputs.push(write::opt_json(outputs.as_ref())?);
            x.result.push(write::opt_json(result.as_ref())?);
            x.error.push(write::opt_json(error.as_ref())?);
            x.rollback_log.push(write::opt_json(rollback_log.as_ref())?);
            x.deadline.push(opt_int(*deadline));
            x.cancel_reason.push(cancel_reason.clone());
        }

        let mut s = StepColumns::default();
        for r in last_by_key(&batch.steps, |r| {
            (r.execution_id.as_str(), r.step.step_id.as_str())
        }) {
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
            s.execution_id.push(r.execution_id.clone());
            s.step_id.push(step_id.clone());
            s.position.push(i64::from(r.position));
            s.status.push(status.as_str());
            s.agent_id.push(agent_id.clone());
            s.inputs.push(to_json(inputs)?);
            s.outputs.push(write::opt_json(outputs.as_ref())?);
            s.error.push(write::opt_json(error.as_ref())?);
            s.started_at.push(opt_int(*started_at));
            s.completed_at.push(opt_int(*completed_at));
            s.duration.push(opt_int(*duration));
            s.retry_count.push(i64::from(*retry_count));
            s.next_retry_at.push(opt_int(*next_retry_at));
            s.fallback_step.push(fallback_step.clone());
            s.retry_round_start.push(retry_round_start.map(i64::from));
            s.awaiting_callback.push(*awaiting_callback);
        }

        let mut a = AttemptColumns::default();
        for r in last_by_key(&batch.attempts, |r| {
            (
                r.execution_id.as_str(),
                r.step_id.as_str(),
                r.attempt.attempt,
            )
        }) {
            let Attempt {
                attempt,
                started_at,
                completed_at,
                error,
                agent_id,
                late_result,
            } = &r.attempt;
            a.execution_id.push(r.execution_id.clone());
            a.step_id.push(r.step_id.clone());
            a.attempt.push(i64::from(*attempt));
            a.started_at.push(int(*started_at));
            a.completed_at.push(opt_int(*completed_at));
            a.agent_id.push(agent_id.clone());
            a.error.push(write::opt_json(error.as_ref())?);
            a.late_result.push(write::opt_json(late_result.as_ref())?);
        }

        Ok(BatchColumns {
            executions: x,
            steps: s,
            attempts: a,
            events: EventColumns::new(&batch.events)?,
        })
    }

    /// Header rows, then step rows, then attempt rows (the order the foreign
    /// keys need), and last the events with their seqs (the counter is locked
    /// from there to the commit). Answers the first seq.
    async fn write(&self, conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
        let x = &self.executions;
        if !x.id.is_empty() {
            sqlx::query(UPSERT_EXECUTIONS)
                .bind(&x.id)
                .bind(&x.workflow_id)
                .bind(&x.revision)
                .bind(&x.status)
                .bind(&x.correlation_id)
                .bind(&x.parent_execution_id)
                .bind(&x.created_at)
                .bind(&x.started_at)
                .bind(&x.completed_at)
                .bind(&x.tags)
                .bind(&x.variables)
                .bind(&x.step_outputs)
                .bind(&x.outputs)
                .bind(&x.result)
                .bind(&x.error)
                .bind(&x.rollback_log)
                .bind(&x.deadline)
                .bind(&x.cancel_reason)
                .execute(&mut *conn)
                .await?;
        }
        let s = &self.steps;
        if !s.execution_id.is_empty() {
            sqlx::query(UPSERT_STEPS)
                .bind(&s.execution_id)
                .bind(&s.step_id)
                .bind(&s.position)
                .bind(&s.status)
                .bind(&s.agent_id)
                .bind(&s.inputs)
                .bind(&s.outputs)
                .bind(&s.error)
                .bind(&s.started_at)
                .bind(&s.completed_at)
                .bind(&s.duration)
                .bind(&s.retry_count)
                .bind(&s.next_retry_at)
                .bind(&s.fallback_step)
                .bind(&s.retry_round_start)
                .bind(&s.awaiting_callback)
                .execute(&mut *conn)
                .await?;
        }
        let a = &self.attempts;
        if !a.execution_id.is_empty() {
            sqlx::query(UPSERT_ATTEMPTS)
                .bind(&a.execution_id)
                .bind(&a.step_id)
                .bind(&a.attempt)
                .bind(&a.started_at)
                .bind(&a.completed_at)
                .bind(&a.agent_id)
                .bind(&a.error)
                .bind(&a.late_result)
                .execute(&mut *conn)
                .await?;
        }
        self.events.insert(conn).await
    }
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

fn decode_header(row: &PgRow) -> Result<WorkflowExecution, Error> {
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
            variables: json(row, "variables", W)?,
            step_outputs: json(row, "step_outputs", W)?,
            correlation_id: get(row, "correlation_id", W)?,
            parent_execution_id: get(row, "parent_execution_id", W)?,
        },
        outputs: opt_json(row, "outputs", W)?,
        result: opt_json(row, "result", W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
        started_at: opt_uint(get(row, "started_at", W)?, W)?,
        completed_at: opt_uint(get(row, "completed_at", W)?, W)?,
        error: opt_json(row, "error", W)?,
        rollback_log: opt_json(row, "rollback_log", W)?,
        deadline: opt_uint(get(row, "deadline", W)?, W)?,
        cancel_reason: get(row, "cancel_reason", W)?,
        id,
        workflow_id,
    })
}

/// (execution id, step).
fn decode_step(row: &PgRow) -> Result<(String, StepExecution), Error> {
    const W: &str = "step";
    let status: String = get(row, "status", W)?;
    Ok((
        get(row, "execution_id", W)?,
        StepExecution {
            step_id: get(row, "step_id", W)?,
            status: StepStatus::parse(&status)
                .ok_or_else(|| Error::corrupt(W, format!("unknown status {status:?}")))?,
            agent_id: get(row, "agent_id", W)?,
            inputs: json(row, "inputs", W)?,
            outputs: opt_json(row, "outputs", W)?,
            error: opt_json(row, "error", W)?,
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
fn decode_attempt(row: &PgRow) -> Result<(String, String, Attempt), Error> {
    const W: &str = "attempt";
    Ok((
        get(row, "execution_id", W)?,
        get(row, "step_id", W)?,
        Attempt {
            attempt: uint32(get(row, "attempt", W)?, W)?,
            started_at: uint(get(row, "started_at", W)?, W)?,
            completed_at: opt_uint(get(row, "completed_at", W)?, W)?,
            error: opt_json(row, "error", W)?,
            agent_id: get(row, "agent_id", W)?,
            late_result: opt_json(row, "late_result", W)?,
        },
    ))
}

/// Which executions' steps and attempts to load along with their headers.
enum StepScope<'a> {
    One(&'a str),
    Ids(Vec<String>),
    Unfinished,
}

/// Load the steps and attempts of `headers` (already read in the same
/// transaction, so the rows agree with them) and put them in place.
async fn attach_steps(
    conn: &mut PgConnection,
    headers: &mut [WorkflowExecution],
    scope: StepScope<'_>,
) -> Result<()> {
    if headers.is_empty() {
        return Ok(());
    }
    let (filter, bind) = match scope {
        StepScope::One(id) => ("execution_id = $1", Some(Bind::Text(id.to_owned()))),
        StepScope::Ids(ids) => ("execution_id = ANY($1)", Some(Bind::TextArray(ids))),
        StepScope::Unfinished => (
            "execution_id IN (SELECT id FROM executions \
             WHERE status IN ('pending', 'running', 'paused'))",
            None,
        ),
    };
    let binds: Vec<Bind> = bind.into_iter().collect();
    let step_rows = bind_all(
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE {filter} ORDER BY position, step_id"
        ))),
        &binds,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let attempt_rows = bind_all(
        sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE {filter} \
             ORDER BY execution_id, step_id, attempt"
        ))),
        &binds,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;

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

fn decode_headers(rows: &[PgRow]) -> Result<Vec<WorkflowExecution>> {
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
        let statuses = q.statuses.iter().map(|s| s.as_str().to_owned()).collect();
        w.add("status = ANY(?)", [Bind::TextArray(statuses)]);
    }
    if let Some(agent) = &q.agent_id {
        w.add(
            "(id IN (SELECT execution_id FROM steps WHERE agent_id = ?) OR EXISTS \
             (SELECT 1 FROM attempts a WHERE a.execution_id = executions.id AND a.agent_id = ?))",
            [Bind::Text(agent.clone()), Bind::Text(agent.clone())],
        );
    }
    if !q.tags.is_empty() {
        w.add("workflow_tags @> ?", [Bind::TextArray(q.tags.clone())]);
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

impl PostgresStore {
    /// The key claims first; then, without the new executions whose claim was
    /// lost, the lease fence and the rows. `Ok(None)` when the fence did not
    /// hold (nothing written); else the first event seq and the claims' answers.
    async fn commit_once(
        &self,
        batch: &Batch,
        columns: &BatchColumns,
    ) -> Result<Option<(Option<i64>, Vec<Claimed>)>, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        let claims = claim_keys(&mut tx, &batch.claims).await?;
        let losers = batch.losers(&claims);
        let narrowed;
        let (columns, fence) = if losers.is_empty() {
            (columns, batch.fence.as_ref())
        } else {
            let mut b = batch.clone();
            b.drop_executions(&losers);
            let c = BatchColumns::new(&b).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            narrowed = (c, b.fence);
            (&narrowed.0, narrowed.1.as_ref())
        };
        if let Some(f) = fence
            && !super::cluster::apply_fence(&mut tx, f).await?
        {
            tx.rollback().await?;
            return Ok(None);
        }
        let first = columns.write(&mut tx).await?;
        tx.commit().await?;
        Ok(Some((first, claims)))
    }
}

#[async_trait]
impl ExecutionStore for PostgresStore {
    async fn commit(&self, mut batch: Batch) -> Result<Committed> {
        if batch.is_empty() {
            return Ok(Committed::default());
        }
        let columns = BatchColumns::new(&batch)?;
        let Some((first, claims)) = retry_conflicts!(self.commit_once(&batch, &columns))? else {
            return Err(maestro_core::Error::store(LEASE_LOST));
        };
        batch.drop_executions(&batch.losers(&claims));
        Ok(Committed {
            events: committed(batch.events, first)?,
            claims,
        })
    }

    async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        let mut tx = self.read_tx().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1"
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
        let mut tx = self.read_tx().await?;
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
                 ORDER BY created_at DESC, id DESC LIMIT {} OFFSET {}",
                filter.next(0),
                filter.next(1)
            ))),
            &filter.binds,
        )
        .bind(int(query.limit as u64))
        .bind(int(query.offset as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut items = decode_headers(&rows)?;
        let ids = items.iter().map(|e| e.id.clone()).collect();
        attach_steps(&mut tx, &mut items, StepScope::Ids(ids)).await?;
        tx.commit().await.map_err(db)?;
        Ok(Page {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn unfinished_executions(&self) -> Result<Vec<WorkflowExecution>> {
        let mut tx = self.read_tx().await?;
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
        let mut tx = self.read_tx().await?;
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
        // SUM of BIGINT is NUMERIC: saturate before it comes back as BIGINT.
        let row = sqlx::query(
            "SELECT LEAST(COALESCE(SUM(GREATEST(completed_at - started_at, 0)), 0), \
             9223372036854775807)::bigint AS total, COUNT(*) AS n \
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
             WHERE workflow_id = $1 AND key = $2",
        )
        .bind(workflow_id)
        .bind(key)
        .fetch_optional(&self.pool)
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
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM executions WHERE workflow_id = $1 \
             AND status IN ('pending', 'running', 'paused') LIMIT 1",
        )
        .bind(workflow_id)
        .fetch_optional(&self.pool)
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
        // Steps and attempts go with their execution (ON DELETE CASCADE). An
        // execution a live key claim points at stays until the claim expires.
        let gone: i64 = retry_conflicts!(
            sqlx::query_scalar(
                "WITH gone AS (DELETE FROM executions WHERE id IN (SELECT id FROM executions e \
                 WHERE status IN ('completed', 'failed', 'rolled_back', 'cancelled') \
                 AND completed_at < $1 AND NOT EXISTS (SELECT 1 FROM idempotency_keys k \
                 WHERE k.execution_id = e.id AND k.expires_at > $3) \
                 ORDER BY completed_at LIMIT $2) RETURNING id), \
                 keys AS (DELETE FROM idempotency_keys WHERE execution_id IN \
                 (SELECT id FROM gone) RETURNING 1) \
                 SELECT count(*) FROM gone"
            )
            .bind(int(before))
            .bind(int(limit as u64))
            .bind(int(now))
            .fetch_one(&self.pool)
        )?;
        Ok(u64::try_from(gone).unwrap_or(0))
    }
}
