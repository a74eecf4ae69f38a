//! [`PostgresStore`]: the `Store` port on PostgreSQL (feature `postgres`).
//!
//! - **One pool**: every read and write goes through one pool of connections
//!   (`max_connections`, 16 by default). PostgreSQL's MVCC lets reads run beside
//!   commits, so there is no writer/reader split as on SQLite. Reads of several
//!   statements (an execution with its steps and attempts, a page and its total)
//!   run in one `REPEATABLE READ READ ONLY` transaction: one consistent snapshot.
//! - **Group commit**: a [`Batch`](maestro_core::ports::Batch) is one transaction
//!   (one WAL flush at commit) however many executions, steps, attempts and events
//!   it carries. Each table is written by one `INSERT ... SELECT FROM UNNEST($1,
//!   $2, ...) ON CONFLICT ... DO UPDATE` with one array per column: one round trip
//!   per table, and one statement text, which stays prepared. PostgreSQL refuses
//!   to upsert one row twice in a statement, so a batch's rows are deduplicated
//!   first (the later copy of a row wins, as on SQLite) and written in key order,
//!   which also makes concurrent batches lock rows in the same order.
//! - **Event seq in commit order**: a plain `SEQUENCE` is not enough: it hands out
//!   numbers when asked, not when the transaction commits, so a reader could see
//!   seq N+1 committed while N is still in flight (and skip N for good if it
//!   resumes after N+1). Instead the single row of `event_seq` is bumped inside the
//!   committing transaction, as its last write,
//!   `UPDATE event_seq SET last = last + n RETURNING last`,
//!   in the same statement that inserts the events. The row lock is held until the commit, so every transaction that appends events
//!   waits for the previous one to commit before it gets its range: seqs are
//!   allocated in commit order, without gaps, and a transaction's events become
//!   visible only after all lower seqs have. Transactions without events do not
//!   touch the row and do not wait for it.
//! - **Poll tasks**: `lease_tasks` picks the oldest queued tasks with `FOR UPDATE
//!   SKIP LOCKED`, so concurrent pollers never wait for one another nor get the
//!   same task; every other transition is one `UPDATE ... WHERE status = ...`, so
//!   a task moves exactly once however many callers race (the loser re-checks the
//!   row after the winner commits and no longer matches).
//! - **Conflicts**: a write transaction that PostgreSQL aborts for a deadlock or a
//!   serialization failure is run again (a few times, with a short pause) before
//!   the error reaches the caller; other errors are answered at once, with
//!   connection losses, shutdowns and lack of resources marked retryable.
//! - **Schema**: `migrations/postgres`, applied at connect (`sqlx` records what
//!   ran in `_sqlx_migrations`, under an advisory lock, so several processes may
//!   start at once). Objects are created in the first schema of the search path:
//!   add `options=-csearch_path%3D<schema>` to the URL to keep Maestro in a schema
//!   of its own.

mod cluster;
mod codec;
mod events;
mod executions;
mod registry;
#[cfg(feature = "test-util")]
mod scratch;
mod settings;
mod tasks;
mod write;

use std::str::FromStr;
use std::time::Duration;

use sqlx::Transaction;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};

use crate::error::{Error, Result};
use crate::sql::{db, db_unique};

#[cfg(feature = "test-util")]
pub use scratch::ScratchSchema;

/// How many times a write transaction aborted by a deadlock or a serialization
/// failure is run again.
const CONFLICT_RETRIES: u32 = 5;

/// The `Store` port on PostgreSQL. Cheap to clone and share; [`close`](Self::close)
/// it on shutdown.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The `NOTIFY` channel of this schema, once looked up.
    channel: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl PostgresStore {
    /// Pool size of [`open_url`](Self::open_url).
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

    /// Connect to a `postgres://` (or `postgresql://`) URL with a pool of at most
    /// `max_connections` connections, and bring the schema up to date.
    ///
    /// The URL takes libpq's parameters (`application_name`,
    /// `options=-csearch_path%3Dmaestro`, ...). There is no TLS support in this
    /// build: `sslmode=require` is refused.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: Self::redact_url(url),
            reason,
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "expected a postgres:// or postgresql:// URL".to_owned(),
            ));
        }
        if max_connections == 0 {
            return Err(invalid("the pool needs at least one connection".to_owned()));
        }
        let options = PgConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
        Self::connect_with(options, max_connections).await
    }

    /// [`connect`](Self::connect) with [`DEFAULT_MAX_CONNECTIONS`](Self::DEFAULT_MAX_CONNECTIONS).
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::connect(url, Self::DEFAULT_MAX_CONNECTIONS).await
    }

    /// Connect with options built in code, and bring the schema up to date.
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore {
            pool,
            channel: Default::default(),
        })
    }

    /// `url` with its password, if any, replaced by `***` (for messages and logs).
    pub fn redact_url(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        }
    }

    /// Close the pool (waits for the connections in use).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction (`READ COMMITTED`, PostgreSQL's default).
    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// A read-only transaction on one snapshot, for reads of several statements.
    async fn read_tx(&self) -> maestro_core::Result<Transaction<'static, Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db)
    }
}

/// Whether PostgreSQL aborted the transaction for a deadlock or a serialization
/// failure: running it again may succeed.
fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

/// The pause before the `attempt`-th run again of a conflicting transaction.
fn conflict_pause(attempt: u32) -> Duration {
    Duration::from_millis(5 << attempt.min(6))
}

/// Run `$op` (an async expression answering `Result<_, sqlx::Error>` that begins
/// and commits a transaction of its own) again while it fails with a conflict;
/// answers `maestro_core::Result`.
macro_rules! retry_conflicts {
    ($op:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $op.await {
                Err(e) if attempt < $crate::postgres::CONFLICT_RETRIES
                    && $crate::postgres::is_conflict(&e) =>
                {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "store transaction conflict, running it again");
                    tokio::time::sleep($crate::postgres::conflict_pause(attempt)).await;
                }
                other => break other.map_err($crate::postgres::db),
            }
        }
    }};
}
pub(crate) use retry_conflicts;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_pauses_grow_and_stay_short() {
        assert_eq!(conflict_pause(1), Duration::from_millis(10));
        assert!(conflict_pause(5) < Duration::from_millis(200));
        assert_eq!(conflict_pause(100), conflict_pause(6));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let r = PostgresStore::redact_url;
        assert_eq!(
            r("postgres://maestro:s3cret@db:5432/m?sslmode=require"),
            "postgres://maestro:***@db:5432/m?sslmode=require"
        );
        assert_eq!(r("postgres://maestro@db/m"), "postgres://maestro@db/m");
        assert_eq!(r("postgres://db/m?user=a"), "postgres://db/m?user=a");
        assert_eq!(r("not a url"), "not a url");
    }

    #[tokio::test]
    async fn only_postgres_urls_are_accepted() {
        for bad in ["sqlite://x.db", "mysql://localhost/db", "localhost:5432"] {
            let err = PostgresStore::connect(bad, 4).await.expect_err(bad);
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
        }
        let err = PostgresStore::connect("postgres://localhost/db", 0)
            .await
            .expect_err("zero connections");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    }
}
