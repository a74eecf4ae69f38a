//! # maestro-store
//!
//! Implementations of Maestro's persistence port, [`maestro_core::ports::Store`]:
//!
//! - [`MemoryStore`]: everything in process memory, for tests and embedding.
//! - [`SqliteStore`] (feature `sqlite`, on by default): the embedded, durable
//!   default. SQLite in WAL mode with `synchronous=FULL`; one writer connection,
//!   a pool of read-only connections; the schema lives in `migrations/sqlite`.
//! - [`PostgresStore`] (feature `postgres`): the same tables on PostgreSQL, one
//!   pool of connections, event seqs allocated in commit order from a counter row;
//!   the schema lives in `migrations/postgres`.
//!
//! All keep rows per execution, per step and per attempt (docs/ARCHITECTURE.md
//! "The commit", docs/STORAGE.md): a [`Batch`](maestro_core::ports::Batch) upserts
//! exactly the rows that changed, in one transaction, and gives the batch's events
//! their `seq` in commit order.
//!
//! Feature `test-util` (for tests; other crates enable it in their
//! `[dev-dependencies]`) adds `conformance`, the suite of checks every backend
//! must pass, which other crates can run against a store of their own, and, with
//! `postgres`, `ScratchSchema`, a throwaway schema on a real server.
//!
//! Semantics every backend shares, where the port leaves a choice:
//! - `query_executions`: `created_after` / `created_before` are inclusive bounds;
//!   newest first (`created_at` desc, then `id` desc); `limit` 0 answers no items
//!   (but the `total`).
//! - Execute idempotency keys are claimed inside the commit, before its rows
//!   (`KeyClaim`): a claim wins when the key is free or its claim expired, and
//!   a new execution whose claim lost is not written; the rest of the batch
//!   commits all the same.
//! - A step row needs its execution header, an attempt row its step row, in the
//!   store or earlier in the same batch; otherwise the whole batch is refused.
//! - A deleted workflow is not found by id, nor listed, but each of its revisions
//!   is still readable by explicit revision (executions that pinned one must be
//!   able to resume). Inserting a revision newer than the deleted latest one makes
//!   the workflow visible again.
//! - `execution_stats().by_status` lists every status, in `ExecutionStatus::ALL`
//!   order, zeros included.
//! - Timestamps past `i64::MAX` ms are stored as `i64::MAX` by the SQL backends.
//! - Poll tasks are leased, and returned by the multi-task calls, oldest first
//!   (`created_at`, then `task_id`). A task lease, or an execution lease, ending
//!   exactly at `now` has not lapsed yet (`expires_at < now` has). Expired,
//!   finished and cancelled tasks keep their last `lease_expires_at`.
//!
//! ```
//! use maestro_core::model::{EventFilter, EventType, NewEvent};
//! use maestro_core::ports::{EventOrder, EventStore, Store};
//!
//! async fn publish(store: &dyn Store) -> maestro_core::Result<()> {
//!     let sync = NewEvent::engine(EventType::ChoreographySync, serde_json::json!({}), 1);
//!     let committed = store.append_events(vec![sync]).await?;
//!     assert_eq!(committed[0].seq, 1);
//!     let newest = store
//!         .query_events(&EventFilter::default(), EventOrder::Newest, 10)
//!         .await?;
//!     assert_eq!(newest, committed);
//!     Ok(())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     publish(&maestro_store::MemoryStore::new()).await?;
//!
//!     let dir = tempfile::tempdir()?;
//!     let sqlite = maestro_store::SqliteStore::open(&dir.path().join("maestro.db")).await?;
//!     publish(&sqlite).await?;
//!     sqlite.close().await;
//!     Ok(())
//! })
//! # }
//! ```

#[cfg(feature = "test-util")]
pub mod conformance;
mod error;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use error::{Error, Result};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(all(feature = "postgres", feature = "test-util"))]
pub use postgres::ScratchSchema;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// `finish_task` moves a task to Completed or Failed only (every backend).
pub(crate) fn check_finish_status(
    status: maestro_core::ports::TaskStatus,
) -> maestro_core::Result<()> {
    use maestro_core::ports::TaskStatus;
    match status {
        TaskStatus::Completed | TaskStatus::Failed => Ok(()),
        other => Err(maestro_core::Error::InvalidState(format!(
            "a task can only be finished as completed or failed, not {}",
            other.as_str()
        ))),
    }
}

/// Lease fences belong to clusters, which only the PostgreSQL store serves:
/// the single-node stores refuse a batch that carries one rather than ignore it.
pub(crate) fn refuse_fence(batch: &maestro_core::ports::Batch) -> maestro_core::Result<()> {
    match &batch.fence {
        Some(f) if !f.is_empty() => Err(maestro_core::Error::store(
            "execution leases (cluster mode) need the PostgreSQL store",
        )),
        _ => Ok(()),
    }
}
