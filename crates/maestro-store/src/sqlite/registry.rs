//! Agents and workflow definitions.

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{RegisteredAgent, Workflow};
use maestro_core::ports::{AgentStore, Page, WorkflowStore};
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};

use super::codec::{Bind, Where, bind_all, get, int, json, tag_list, tag_needle};
use super::{SqliteStore, db, db_unique};
use crate::error::Error;

fn decode_agent(row: &SqliteRow) -> Result<RegisteredAgent, Error> {
    let mut agent: RegisteredAgent = json(&get::<String>(row, "doc", "agent")?, "agent")?;
    // The secret is write-only in the JSON shape; it lives in its own column.
    agent.inbound_secret = get(row, "inbound_secret", "agent")?;
    Ok(agent)
}

fn encode<T: serde::Serialize>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| maestro_core::Error::store(format!("cannot encode {what}: {e}")))
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn put_agent(&self, agent: &RegisteredAgent) -> Result<()> {
        sqlx::query(
            "INSERT INTO agents (id, doc, inbound_secret, status, last_heartbeat) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, \
             inbound_secret = excluded.inbound_secret, status = excluded.status, \
             last_heartbeat = excluded.last_heartbeat",
        )
        .bind(&agent.id)
        .bind(encode(agent, "agent")?)
        .bind(agent.inbound_secret.as_deref())
        .bind(agent.status.as_str())
        .bind(int(agent.last_heartbeat))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM agents WHERE id = ?1")
            .bind(agent_id)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<RegisteredAgent>> {
        let row = sqlx::query("SELECT doc, inbound_secret FROM agents WHERE id = ?1")
            .bind(agent_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(decode_agent).transpose()?)
    }

    async fn list_agents(&self) -> Result<Vec<RegisteredAgent>> {
        let rows = sqlx::query("SELECT doc, inbound_secret FROM agents ORDER BY id")
            .fetch_all(&self.reader)
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(decode_agent)
            .collect::<Result<Vec<_>, Error>>()?)
    }
}

fn decode_workflow(row: &SqliteRow) -> Result<Workflow, Error> {
    json(&get::<String>(row, "doc", "workflow")?, "workflow")
}

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn insert_workflow_revision(&self, workflow: &Workflow) -> Result<()> {
        let doc = encode(workflow, "workflow")?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        sqlx::query(
            "INSERT INTO workflow_revisions (id, revision, doc, tags, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&workflow.id)
        .bind(int(workflow.revision))
        .bind(doc)
        .bind(tag_list(&workflow.tags))
        .bind(int(workflow.updated_at.max(workflow.created_at)))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_unique(e, "workflow", &workflow.id))?;
        // A newer revision becomes the latest and makes a deleted workflow visible again.
        sqlx::query(
            "INSERT INTO workflows (id, latest_revision, deleted) VALUES (?1, ?2, 0) \
             ON CONFLICT (id) DO UPDATE SET latest_revision = excluded.latest_revision, \
             deleted = 0 WHERE excluded.latest_revision > workflows.latest_revision",
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
                sqlx::query("SELECT doc FROM workflow_revisions WHERE id = ?1 AND revision = ?2")
                    .bind(id)
                    .bind(int(r))
                    .fetch_optional(&self.reader)
                    .await
            }
            None => {
                sqlx::query(
                    "SELECT r.doc FROM workflows w JOIN workflow_revisions r \
                 ON r.id = w.id AND r.revision = w.latest_revision \
                 WHERE w.id = ?1 AND w.deleted = 0",
                )
                .bind(id)
                .fetch_optional(&self.reader)
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
        w.add("w.deleted = 0", []);
        for tag in tags {
            w.add("instr(r.tags, ?) > 0", [Bind::Text(tag_needle(tag))]);
        }
        let from = format!(
            "FROM workflows w JOIN workflow_revisions r \
             ON r.id = w.id AND r.revision = w.latest_revision{}",
            w.sql()
        );
        let mut tx = self.reader.begin().await.map_err(db)?;
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
                "SELECT r.doc {from} ORDER BY w.id LIMIT ? OFFSET ?"
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
        let done = sqlx::query("UPDATE workflows SET deleted = 1 WHERE id = ?1 AND deleted = 0")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }
}
