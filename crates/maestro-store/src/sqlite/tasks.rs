//! Poll tasks and execution leases.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction on the single writer
//! connection; the multi-row transitions are one `UPDATE ... RETURNING`, so a
//! task is leased (or expired, or cancelled) exactly once however many callers
//! race. `RETURNING` gives no order: the rows are sorted oldest first here.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::Timestamp;
use maestro_core::ports::{LeaseStore, TaskFinish, TaskRecord, TaskStatus, TaskStore};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Sqlite, Transaction};

use super::codec::{get, int, json, opt_json, opt_uint, uint, uint32};
use super::write::{self, to_json};
use super::{SqliteStore, db};
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
macro_rules! lease_sql {
    ($filter:literal) => {
        concat!(
            "UPDATE tasks SET status = 'leased', updated_at = ?2, lease_expires_at = \
             CASE WHEN ?1 = ?2 THEN ?2 + COALESCE(json_extract(body, '$.timeoutMs'), 10000) \
             ELSE ?1 END \
             WHERE task_id IN (SELECT task_id FROM tasks \
             WHERE agent_id = ?3 AND status = 'queued'",
            $filter,
            " ORDER BY created_at, task_id LIMIT ?4) RETURNING ",
            task_columns!()
        )
    };
}

fn decode_task(row: &SqliteRow) -> Result<TaskRecord, Error> {
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
        body: json(&get::<String>(row, "body", W)?, W)?,
        status: TaskStatus::parse(&status)
            .ok_or_else(|| Error::corrupt(W, format!("unknown status {status:?}")))?,
        lease_expires_at: opt_uint(get(row, "lease_expires_at", W)?, W)?,
        result: opt_json(get(row, "result", W)?, W)?,
        created_at: uint(get(row, "created_at", W)?, W)?,
        updated_at: uint(get(row, "updated_at", W)?, W)?,
    })
}

/// Decode and sort oldest first (`created_at`, then `task_id`).
fn decode_tasks(rows: &[SqliteRow]) -> Result<Vec<TaskRecord>> {
    let mut tasks = rows
        .iter()
        .map(decode_task)
        .collect::<Result<Vec<_>, Error>>()?;
    tasks.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
    Ok(tasks)
}

impl SqliteStore {
    /// A write transaction that takes the write lock up front.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn enqueue_task(&self, task: &TaskRecord) -> Result<()> {
        let inserted = self.enqueue_tasks(std::slice::from_ref(task)).await?;
        if inserted.first() == Some(&true) {
            Ok(())
        } else {
            Err(maestro_core::Error::already_exists("task", &task.task_id))
        }
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
        // Two constant statements (both stay prepared); the capability list is
        // bound as one JSON array.
        let sql = if capabilities.is_empty() {
            lease_sql!("")
        } else {
            lease_sql!(" AND capability IN (SELECT value FROM json_each(?5))")
        };
        let mut query = sqlx::query(sql)
            .bind(int(now.saturating_add(lease_ms)))
            .bind(int(now))
            .bind(agent_id)
            .bind(int(max as u64));
        if !capabilities.is_empty() {
            query = query.bind(to_json(capabilities)?);
        }
        let mut tx = self.write_tx().await?;
        let rows = query.fetch_all(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        decode_tasks(&rows)
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        const SQL: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE task_id = ?1");
        let row = sqlx::query(SQL)
            .bind(task_id)
            .fetch_optional(&self.reader)
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ?3, updated_at = ?4 \
             WHERE task_id = ?1 AND agent_id = ?2 AND status = 'leased'",
        )
        .bind(task_id)
        .bind(agent_id)
        .bind(int(until))
        .bind(int(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn enqueue_tasks(&self, tasks: &[TaskRecord]) -> Result<Vec<bool>> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            let done = sqlx::query(
                "INSERT INTO tasks (task_id, agent_id, capability, execution_id, step_id, attempt, \
                 compensation, body, status, lease_expires_at, result, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (task_id) DO NOTHING",
            )
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
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            out.push(done.rows_affected() == 1);
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn finish_tasks(&self, finishes: &[TaskFinish], now: Timestamp) -> Result<Vec<bool>> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        for f in finishes {
            check_finish_status(f.status)?;
        }
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(finishes.len());
        for f in finishes {
            let done = sqlx::query(
                "UPDATE tasks SET status = ?2, result = ?3, updated_at = ?4 \
                 WHERE task_id = ?1 AND status = 'leased'",
            )
            .bind(&f.task_id)
            .bind(f.status.as_str())
            .bind(write::opt_json(f.result.as_ref())?)
            .bind(int(now))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            out.push(done.rows_affected() > 0);
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    async fn finish_task(
        &self,
        task_id: &str,
        status: TaskStatus,
        result: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        check_finish_status(status)?;
        let result = write::opt_json(result.as_ref())?;
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE tasks SET status = ?2, result = ?3, updated_at = ?4 \
             WHERE task_id = ?1 AND status = 'leased'",
        )
        .bind(task_id)
        .bind(status.as_str())
        .bind(result)
        .bind(int(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<TaskRecord>> {
        const SQL: &str = concat!(
            "UPDATE tasks SET status = 'expired', updated_at = ?1 \
             WHERE status = 'leased' AND lease_expires_at < ?1 RETURNING ",
            task_columns!()
        );
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(SQL)
            .bind(int(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        decode_tasks(&rows)
    }

    async fn cancel_task(&self, task_id: &str, now: Timestamp) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE tasks SET status = 'cancelled', updated_at = ?2 \
             WHERE task_id = ?1 AND status IN ('queued', 'leased')",
        )
        .bind(task_id)
        .bind(int(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel_agent_tasks(&self, agent_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>> {
        const SQL: &str = concat!(
            "UPDATE tasks SET status = 'cancelled', updated_at = ?2 \
             WHERE agent_id = ?1 AND status IN ('queued', 'leased') RETURNING ",
            task_columns!()
        );
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(SQL)
            .bind(agent_id)
            .bind(int(now))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        decode_tasks(&rows)
    }

    async fn purge_tasks(&self, before: Timestamp) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "DELETE FROM tasks WHERE updated_at < ?1 \
             AND status IN ('completed', 'failed', 'expired', 'cancelled')",
        )
        .bind(int(before))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
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
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO leases (execution_id, node_id, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (execution_id) DO UPDATE \
             SET node_id = excluded.node_id, expires_at = excluded.expires_at \
             WHERE leases.node_id = excluded.node_id OR leases.expires_at < ?4",
        )
        .bind(execution_id)
        .bind(node_id)
        .bind(int(now.saturating_add(ttl_ms)))
        .bind(int(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn release_lease(&self, execution_id: &str, node_id: &str) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("DELETE FROM leases WHERE execution_id = ?1 AND node_id = ?2")
            .bind(execution_id)
            .bind(node_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}
