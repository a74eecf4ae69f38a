//! [`SqliteStore`]: the `Store` port on an embedded SQLite database in WAL mode.
//!
//! - **Durability**: `synchronous=FULL`, so a commit returns only once the WAL is
//!   fsynced. A [`Batch`](maestro_core::ports::Batch) is one transaction, hence one
//!   fsync, however many executions, steps, attempts and events it carries.
//! - **One writer, many readers**: every write goes through a pool of exactly one
//!   connection (SQLite allows one writer at a time anyway; queueing in the pool
//!   is cheaper than spinning on `SQLITE_BUSY`), reads go through a separate pool
//!   of read-only connections, so a read never waits behind a commit (WAL readers
//!   see the last committed snapshot).
//! - **Few round trips**: each table of a batch is written by multi-row
//!   `INSERT ... VALUES` statements of a few fixed sizes, which stay prepared.
//! - **Event seq in commit order**: the counter row in `meta` is bumped inside the
//!   committing transaction (`UPDATE ... RETURNING`), so no reader can see seq N+1
//!   before N.

mod codec;
mod events;
mod executions;
mod registry;
mod settings;
mod tasks;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Error, Result};
use crate::sql::{db, db_unique};

/// Connections of the read pool.
const READ_CONNECTIONS: u32 = 4;
/// How long a statement waits for a lock held by another process before
/// failing with a retryable `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Store` port on SQLite. Cheap to share behind an `Arc`; [`close`](Self::close)
/// it on shutdown so the WAL is checkpointed.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write.
    writer: SqlitePool,
    /// Read-only connections: every read.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Open (creating it, and its parent directory, if missing) the database file
    /// at `path` and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// The database file a `sqlite:` URL names, as [`open_url`](Self::open_url)
    /// would open it; `None` when the URL does not parse. SQLite keeps `-wal`
    /// and `-shm` files next to it.
    pub fn file_of_url(url: &str) -> Option<std::path::PathBuf> {
        let options = SqliteConnectOptions::from_str(url).ok()?;
        Some(options.get_filename().to_owned())
    }

    /// Open a `sqlite://<path>` URL (`?mode=...` and other SQLite URI parameters
    /// are honoured). In-memory databases are refused: the read pool could not
    /// see the writer's data; use [`MemoryStore`](crate::MemoryStore) instead.
    pub async fn open_url(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        if !url.starts_with("sqlite:") {
            return Err(invalid("expected a sqlite:// URL".to_owned()));
        }
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(invalid(
                "in-memory SQLite is not supported (use MemoryStore)".to_owned(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|e| invalid(e.to_string()))?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self> {
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "memory")
            .statement_cache_capacity(256);
        // The writer keeps the hot pages of the indexes it updates in memory.
        let writer_options = options.clone().pragma("cache_size", "-16384");

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(writer_options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;

        let reader = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }

    /// Close both pools (waits for the connections in use). The last connection
    /// to close checkpoints the WAL into the database file.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
