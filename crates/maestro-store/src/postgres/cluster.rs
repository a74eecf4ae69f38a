//! Cluster coordination on PostgreSQL ([`ClusterStore`]): execution leases,
//! the cluster-wide slot count, orphan claims, and signals over
//! `LISTEN`/`NOTIFY`.
//!
//! - **Fence**: a node's commit first checks, in the same transaction, that it
//!   still holds the lease of every execution it writes (renewing them), drops
//!   the leases of the executions it finishes and creates queued leases for new
//!   ones, in one statement. A lease that moved to another node aborts the
//!   whole commit.
//! - **Slots**: activating queued leases takes a transaction-scoped advisory
//!   lock, counts the active leases of the whole cluster and activates at most
//!   `maxConcurrentWorkflows - active` of them, so the limit holds across nodes.
//! - **Orphans**: executions with no lease or a lapsed one are claimed with
//!   `FOR UPDATE SKIP LOCKED` on their rows, oldest first.
//! - **Signals**: `NOTIFY` on a channel named after the schema, so clusters in
//!   different schemas of one database do not hear each other.

use std::collections::BTreeSet;

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::Timestamp;
use maestro_core::ports::{ClusterStore, LeaseFence, LeaseStore, SignalListener};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, Row};

use super::{PostgresStore, db, retry_conflicts};
use crate::sql::int;

/// Key of the advisory lock that serializes slot activation cluster-wide.
const SLOTS_LOCK: i64 = 0x6d61_6573_7472_6f01;

/// The fence's statement: renew `$2` (held, not released), drop `$4`, create
/// queued `$5`; answers how many held and released leases belonged to `$1`.
const FENCE: &str = "WITH h AS (UPDATE leases SET expires_at = $3 \
     WHERE node_id = $1 AND execution_id = ANY($2::text[]) RETURNING 1), \
     d AS (DELETE FROM leases WHERE node_id = $1 AND execution_id = ANY($4::text[]) RETURNING 1), \
     q AS (INSERT INTO leases (execution_id, node_id, expires_at, active) \
     SELECT id, $1, $3, false FROM UNNEST($5::text[]) AS u(id) \
     ON CONFLICT (execution_id) DO NOTHING RETURNING 1) \
     SELECT (SELECT count(*) FROM h) + (SELECT count(*) FROM d), (SELECT count(*) FROM q)";

/// Apply a commit's fence inside its transaction: `Ok(false)` when a lease it
/// relies on is not this node's any more (the caller rolls back).
pub(super) async fn apply_fence(
    conn: &mut PgConnection,
    fence: &LeaseFence,
) -> Result<bool, sqlx::Error> {
    if fence.is_empty() {
        return Ok(true);
    }
    let release: BTreeSet<&str> = fence.release.iter().map(String::as_str).collect();
    let held: BTreeSet<&str> = fence
        .held
        .iter()
        .map(String::as_str)
        .filter(|id| !release.contains(id))
        .collect();
    let queued: BTreeSet<&str> = fence.queued.iter().map(String::as_str).collect();
    let row = sqlx::query(FENCE)
        .bind(&fence.node_id)
        .bind(held.iter().copied().collect::<Vec<_>>())
        .bind(int(fence.expires_at))
        .bind(release.iter().copied().collect::<Vec<_>>())
        .bind(queued.iter().copied().collect::<Vec<_>>())
        .fetch_one(&mut *conn)
        .await?;
    let owned: i64 = row.try_get(0)?;
    let created: i64 = row.try_get(1)?;
    Ok(owned as usize == held.len() + release.len() && created as usize == queued.len())
}

impl PostgresStore {
    /// The signal channel: one per schema.
    async fn channel(&self) -> Result<String> {
        if let Some(c) = self.channel.get() {
            return Ok(c.clone());
        }
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let c = format!("maestro_{schema}");
        let _ = self.channel.set(c.clone());
        Ok(c)
    }

    async fn activate_once(
        &self,
        node_id: &str,
        ids: &[String],
        max_active: u64,
        expires_at: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SLOTS_LOCK)
            .execute(&mut *tx)
            .await?;
        // Already active (an earlier activation whose answer was lost): no new slot.
        let already: Vec<String> = sqlx::query_scalar(
            "SELECT execution_id FROM leases \
             WHERE node_id = $1 AND active AND execution_id = ANY($2::text[])",
        )
        .bind(node_id)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        let active: i64 = sqlx::query_scalar("SELECT count(*) FROM leases WHERE active")
            .fetch_one(&mut *tx)
            .await?;
        let room = (max_active as i64).saturating_sub(active).max(0) as usize;
        let wanted: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !already.iter().any(|a| a == id))
            .take(room)
            .collect();
        let mut done: Vec<String> = if wanted.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "UPDATE leases SET active = true, expires_at = $3 \
                 WHERE node_id = $1 AND NOT active AND execution_id = ANY($2::text[]) \
                 RETURNING execution_id",
            )
            .bind(node_id)
            .bind(&wanted)
            .bind(expires_at)
            .fetch_all(&mut *tx)
            .await?
        };
        done.extend(already);
        tx.commit().await?;
        // In the order asked.
        let done: BTreeSet<String> = done.into_iter().collect();
        Ok(ids
            .iter()
            .filter(|id| done.contains(*id))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl ClusterStore for PostgresStore {
    async fn release_node_leases(&self, node_id: &str) -> Result<u64> {
        let done = retry_conflicts!(
            sqlx::query(
                "DELETE FROM leases WHERE node_id = $1 AND execution_id NOT LIKE 'maestro:%'"
            )
            .bind(node_id)
            .execute(&self.pool)
        )?;
        Ok(done.rows_affected())
    }

    async fn release_leases(&self, node_id: &str, ids: &[String]) -> Result<u64> {
        let done = retry_conflicts!(
            sqlx::query("DELETE FROM leases WHERE node_id = $1 AND execution_id = ANY($2::text[])")
                .bind(node_id)
                .bind(ids)
                .execute(&self.pool)
        )?;
        Ok(done.rows_affected())
    }

    async fn renew_node_leases(&self, node_id: &str, now: Timestamp, ttl_ms: u64) -> Result<u64> {
        let done = retry_conflicts!(
            sqlx::query(
                "UPDATE leases SET expires_at = $2 \
                 WHERE node_id = $1 AND execution_id NOT LIKE 'maestro:%'"
            )
            .bind(node_id)
            .bind(int(now.saturating_add(ttl_ms)))
            .execute(&self.pool)
        )?;
        Ok(done.rows_affected())
    }

    async fn node_leases(&self, node_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT execution_id FROM leases \
             WHERE node_id = $1 AND execution_id NOT LIKE 'maestro:%' ORDER BY execution_id",
        )
        .bind(node_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)
    }

    async fn activate_leases(
        &self,
        node_id: &str,
        ids: &[String],
        max_active: u64,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let expires_at = int(now.saturating_add(ttl_ms));
        retry_conflicts!(self.activate_once(node_id, ids, max_active, expires_at))
    }

    async fn claim_orphans(
        &self,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, bool)>> {
        let rows = retry_conflicts!(
            sqlx::query(
                "WITH cand AS (SELECT e.id, e.status, e.created_at FROM executions e \
                 LEFT JOIN leases l ON l.execution_id = e.id \
                 WHERE e.status IN ('pending', 'running', 'paused') \
                 AND (l.execution_id IS NULL OR l.expires_at < $3) \
                 ORDER BY e.created_at, e.id LIMIT $4 FOR UPDATE OF e SKIP LOCKED) \
                 INSERT INTO leases (execution_id, node_id, expires_at, active) \
                 SELECT id, $1, $2, status <> 'pending' FROM cand ORDER BY id \
                 ON CONFLICT (execution_id) DO UPDATE SET node_id = EXCLUDED.node_id, \
                 expires_at = EXCLUDED.expires_at, active = leases.active OR EXCLUDED.active \
                 WHERE leases.expires_at < $3 \
                 RETURNING execution_id, active"
            )
            .bind(node_id)
            .bind(int(now.saturating_add(ttl_ms)))
            .bind(int(now))
            .bind(int(limit as u64))
            .fetch_all(&self.pool)
        )?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>(0).map_err(db)?,
                    r.try_get::<bool, _>(1).map_err(db)?,
                ))
            })
            .collect()
    }

    async fn acquire_named_lease(
        &self,
        name: &str,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<bool> {
        LeaseStore::acquire_lease(self, name, node_id, now, ttl_ms).await
    }

    async fn release_named_lease(&self, name: &str, node_id: &str) -> Result<bool> {
        LeaseStore::release_lease(self, name, node_id).await
    }

    async fn signal(&self, payload: &str) -> Result<()> {
        let channel = self.channel().await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn listen(&self) -> Result<Box<dyn SignalListener>> {
        let channel = self.channel().await?;
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(db)?;
        listener.listen(&channel).await.map_err(db)?;
        Ok(Box::new(Listener(listener)))
    }
}

struct Listener(PgListener);

#[async_trait]
impl SignalListener for Listener {
    async fn recv(&mut self) -> Result<Option<String>> {
        match self.0.try_recv().await.map_err(db)? {
            Some(n) => Ok(Some(n.payload().to_owned())),
            None => Ok(None),
        }
    }
}
