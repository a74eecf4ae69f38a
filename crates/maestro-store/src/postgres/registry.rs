//! Agents and workflow definitions.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{RegisteredAgent, Workflow};
use maestro_core::ports::{AgentStore, Page, WorkflowStore};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::codec::{Bind, Where, bind_all, get, int, json};
use super::{PostgresStore, db, db_unique};
use crate::error::Error;

fn decode_agent(row: &PgRow) -> Result<RegisteredAgent, Error> {
    let mut agent: RegisteredAgent = json(row, "doc", "agent")?;
    // The secret is write-only in the JSON shape; it lives in its own column.
    agent.inbound_secret = get(row, "inbound_secret", "agent")?;
    Ok(agent)
}

fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| maestro_core::Error::store(format!("cannot encode {what}: {e}")))
}

#[async_trait]
impl AgentStore for PostgresStore {
    async fn put_agent(&self, agent: &RegisteredAgent) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, doc, inbound_secret, status, last_heartbeat) \
             VALUES ($1, $2::json, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, \
             inbound_secret = EXCLUDED.inbound_secret, status = EXCLUDED.status, \
             last_heartbeat = EXCLUDED.last_heartbeat",
        )
        .bind(&agent.id)
        .bind(encode(agent, "agent")?)
        .bind(agent.inbound_secret.as_deref())
        .bind(agent.status.as_str())
        .bind(int(agent.last_heartbeat))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(agent_id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<RegisteredAgent>> {
        let row = sqlx::query("SELECT doc, inbound_secret FROM agents WHERE id = $1")
            .bind(agent_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(decode_agent).transpose()?)
    }

    async fn list_agents(&self) -> Result<Vec<RegisteredAgent>> {
        let rows = sqlx::query("SELECT doc, inbound_secret FROM agents ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(decode_agent)
            .collect::<Result<Vec<_>, Error>>()?)
    }
}

fn decode_workflow(row: &PgRow) -> Result<Workflow, Error> {
    json(row, "doc", "workflow")
}

#[async_trait]
impl WorkflowStore for PostgresStore {
    async fn insert_workflow_revision(&self, workflow: &Workflow) -> Result<()> {
        let doc = encode(workflow, "workflow")?;
        let mut tx = self.write_tx().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO workflow_revisions (id, revision, doc, tags, created_at) \
             VALUES ($1, $2, $3::json, $4, $5)",
        )
        .bind(&workflow.id)
        .bind(int(workflow.revision))
        .bind(doc)
        .bind(&workflow.tags)
        .bind(int(workflow.updated_at.max(workflow.created_at)))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_unique(e, "workflow", &workflow.id))?;
        // A newer revision becomes the latest and makes a deleted workflow visible again.
        sqlx::query(
            "INSERT INTO workflows (id, latest_revision, deleted) VALUES ($1, $2, FALSE) \
             ON CONFLICT (id) DO UPDATE SET latest_revision = EXCLUDED.latest_revision, \
             deleted = FALSE WHERE EXCLUDED.latest_revision > workflows.latest_revision",
        )
        .bind(&workflow.id)
        .bind(int(workflow.revision))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>> {
        let row = match revision {
            // An explicit revision is readable even after the workflow was
            // deleted: executions that pinned it must be able to resume.
            Some(r) => {
                sqlx::query("SELECT doc FROM workflow_revisions WHERE id = $1 AND revision = $2")
                    .bind(id)
                    .bind(int(r))
                    .fetch_optional(&self.pool)
                    .await
            }
            None => {
                sqlx::query(
                    "SELECT r.doc FROM workflows w JOIN workflow_revisions r \
                     ON r.id = w.id AND r.revision = w.latest_revision \
                     WHERE w.id = $1 AND NOT w.deleted",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
            }
        }
        .map_err(db)?;
        Ok(row.as_ref().map(decode_workflow).transpose()?)
    }

    async fn list_workflows(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>> {
        let mut w = Where::default();
        w.add("NOT w.deleted", []);
        if !tags.is_empty() {
            w.add("r.tags @> ?", [Bind::TextArray(tags.to_vec())]);
        }
        let from = format!(
            "FROM workflows w JOIN workflow_revisions r \
             ON r.id = w.id AND r.revision = w.latest_revision{}",
            w.sql()
        );
        let mut tx = self.read_tx().await?;
        let total: i64 = bind_all(
            sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) {from}"))),
            &w.binds,
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
        let rows = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT r.doc {from} ORDER BY w.id LIMIT {} OFFSET {}",
                w.next(0),
                w.next(1)
            ))),
            &w.binds,
        )
        .bind(int(limit as u64))
        .bind(int(offset as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Page {
            items: rows
                .iter()
                .map(decode_workflow)
                .collect::<Result<Vec<_>, Error>>()?,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn delete_workflow(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE workflows SET deleted = TRUE WHERE id = $1 AND NOT deleted")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}
