//! `store::Error`: how a backend fails, and whether trying again may help.
//!
//! The `Store` port answers with `maestro_core::Error`; the conversion keeps the
//! retryable/fatal distinction in the type (`core::Error::Store { retryable }`), so
//! the engine's retry logic never parses messages.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database URL is not one this backend opens.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A stored row does not decode (written by a newer version, or damaged).
    #[error("stored {what} is not readable: {reason}")]
    Corrupt { what: &'static str, reason: String },
}

impl Error {
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        Error::Corrupt {
            what,
            reason: reason.to_string(),
        }
    }

    /// Whether the same operation may succeed when tried again: the database was
    /// busy or locked, a connection or the disk failed, the pool timed out.
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::Database(e) => sqlx_is_retryable(e),
            #[cfg(any(feature = "sqlite", feature = "postgres"))]
            Error::Migrate(_) => false,
            Error::CreateDir { .. } => true,
            Error::InvalidUrl { .. } | Error::Corrupt { .. } => false,
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sqlx_is_retryable(e: &sqlx::Error) -> bool {
    match e {
        #[cfg(feature = "postgres")]
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some() =>
        {
            db.code().is_some_and(|c| postgres_is_retryable(&c))
        }
        sqlx::Error::Database(db) => {
            // SQLite primary result codes (the low byte of the extended code):
            // BUSY 5, LOCKED 6, IOERR 10, FULL 13, CANTOPEN 14, PROTOCOL 15.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            matches!(primary, Some(5 | 6 | 10 | 13 | 14 | 15))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs worth another try: connection exceptions (08), a
/// transaction rolled back for a serialization failure or a deadlock (40001,
/// 40P01),
/// insufficient resources such as a full disk or too many connections (53),
/// a server shutting down, restarting or cancelling the statement (57014,
/// 57P01-57P03), a lock not available (55P03), system and I/O errors (58).
#[cfg(feature = "postgres")]
fn postgres_is_retryable(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("08" | "53" | "58"))
        || matches!(
            sqlstate,
            "40001" | "40P01" | "57014" | "57P01" | "57P02" | "57P03" | "55P03"
        )
}

impl From<Error> for maestro_core::Error {
    fn from(e: Error) -> Self {
        maestro_core::Error::Store {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// `store::Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_rows_are_fatal() {
        let e: maestro_core::Error = Error::corrupt("step", "bad status").into();
        assert!(matches!(
            e,
            maestro_core::Error::Store {
                retryable: false,
                ..
            }
        ));
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn pool_timeouts_are_retryable() {
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_retryable());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_transient_states_are_retryable() {
        for code in [
            "08006", "40001", "40P01", "53100", "53300", "57P01", "58030",
        ] {
            assert!(postgres_is_retryable(code), "{code}");
        }
        for code in ["23505", "23503", "22P05", "40002", "42P01", "XX000"] {
            assert!(!postgres_is_retryable(code), "{code}");
        }
    }
}
