//! [`ScratchSchema`]: a throwaway schema for tests against a real server.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, PgConnection};

use crate::error::{Error, Result};

/// A fresh, uniquely named schema on a PostgreSQL server, for tests: a
/// [`PostgresStore`](super::PostgresStore) opened on [`url`](Self::url) creates
/// its tables there and sees nothing else. [`drop`](Self::drop) removes the
/// schema and everything in it.
///
/// ```no_run
/// # async fn demo() -> maestro_store::Result<()> {
/// use maestro_store::{PostgresStore, ScratchSchema};
/// let schema = ScratchSchema::create("postgres://postgres@127.0.0.1:5432/test").await?;
/// let store = PostgresStore::connect(schema.url(), 4).await?;
/// // ... use the store ...
/// store.close().await;
/// schema.drop().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ScratchSchema {
    server_url: String,
    name: String,
    url: String,
}

/// The server tests use unless `MAESTRO_TEST_POSTGRES_URL` names another.
const TEST_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl ScratchSchema {
    /// For tests: a fresh schema on the test server (`MAESTRO_TEST_POSTGRES_URL`,
    /// default `postgres://postgres@127.0.0.1:5432/test`), or `None` after printing why when the server
    /// cannot be reached. With `CI=true` an unreachable server panics instead:
    /// there the PostgreSQL tests must run.
    pub async fn for_test() -> Option<ScratchSchema> {
        let url = std::env::var("MAESTRO_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| TEST_SERVER_URL.to_owned());
        match ScratchSchema::create(&url).await {
            Ok(schema) => Some(schema),
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("PostgreSQL at {url} is required in CI: {e}")
            }
            Err(e) => {
                eprintln!("skipped: PostgreSQL at {url} is not reachable ({e})");
                None
            }
        }
    }

    /// For tests: run `test` with the URL of a [`for_test`](Self::for_test)
    /// schema, then drop the schema, also when the test panics (the panic is
    /// passed on). Returns at once when `for_test` skips.
    pub async fn with_fresh<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(schema) = Self::for_test().await else {
            return;
        };
        let outcome = tokio::spawn(test(schema.url().to_owned())).await;
        schema.drop().await.expect("drop the scratch schema");
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Connect to `server_url` (a `postgres://` URL) and create a schema named
    /// `maestro_test_<pid>_<time>_<n>`. Fails when the server cannot be reached.
    pub async fn create(server_url: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!(
            "maestro_test_{}_{:x}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = connect(server_url).await?;
        // `name` is made of [a-z0-9_] only.
        conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .await?;
        conn.close().await?;
        let separator = if server_url.contains('?') { '&' } else { '?' };
        Ok(ScratchSchema {
            url: format!("{server_url}{separator}options=-csearch_path%3D{name}"),
            server_url: server_url.to_owned(),
            name,
        })
    }

    /// The server URL with this schema as the search path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For tests of failures: terminate every connection of the server whose
    /// `application_name` is `application_name` (set it in the URL of the
    /// connections to kill); the number terminated.
    pub async fn terminate_backends(url: &str, application_name: &str) -> Result<u64> {
        let mut conn = connect(url).await?;
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND pid <> pg_backend_pid()) AS t",
        )
        .bind(application_name)
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok(u64::try_from(killed).unwrap_or(0))
    }

    /// Drop the schema and everything in it. Close the stores opened on it first.
    pub async fn drop(self) -> Result<()> {
        let mut conn = connect(&self.server_url).await?;
        conn.execute(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        )))
        .await?;
        conn.close().await?;
        Ok(())
    }
}

async fn connect(server_url: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(server_url).map_err(|e| Error::InvalidUrl {
        url: server_url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(options.connect().await?)
}
