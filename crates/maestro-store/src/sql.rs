//! What the SQL backends share: integer conversions between domain values and
//! BIGINT/INTEGER columns, and the mapping of sqlx errors to the port's.

use crate::error::Error;

/// Timestamps, durations and counters as 64-bit integers. Values past
/// `i64::MAX` (~292 million years in ms) are stored as `i64::MAX`.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn opt_int(v: Option<u64>) -> Option<i64> {
    v.map(int)
}

/// A stored integer back as `u64`; a negative value means a damaged row.
pub(crate) fn uint(v: i64, what: &'static str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::corrupt(what, format!("negative integer {v}")))
}

pub(crate) fn opt_uint(v: Option<i64>, what: &'static str) -> Result<Option<u64>, Error> {
    v.map(|v| uint(v, what)).transpose()
}

pub(crate) fn uint32(v: i64, what: &'static str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::corrupt(what, format!("integer {v} out of range")))
}

/// Converts `store::Error` to the port's error: `impl From` lives in
/// `error.rs`, this names the common case of a raw sqlx error.
pub(crate) fn db(e: sqlx::Error) -> maestro_core::Error {
    Error::Database(e).into()
}

/// A unique-key violation becomes `AlreadyExists`; anything else a store error.
pub(crate) fn db_unique(e: sqlx::Error, kind: &'static str, id: &str) -> maestro_core::Error {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        return maestro_core::Error::already_exists(kind, id);
    }
    db(e)
}
