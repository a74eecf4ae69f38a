//! Multi-row `INSERT`s for the group commit.
//!
//! A batch writes each table with `INSERT ... VALUES (..), (..), ...` statements of
//! a few fixed sizes (128, 32, 8 and 1 rows): few round trips per batch, and only
//! four distinct statements per table, which stay prepared in the connection's
//! statement cache. Rows of one batch are written in order, so when a batch
//! carries the same row twice, the later one wins.
//!
//! (Measured against one `INSERT ... SELECT ... FROM json_each(?)` statement per
//! table with the rows as one JSON array: binding values is about twice as fast
//! for step rows and a third faster for events, because SQLite does not have to
//! parse the array and re-render nested documents.)

use std::sync::OnceLock;

use maestro_core::Result;
use serde::Serialize;
use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::{Executor, SqliteConnection};

use super::db;

pub(super) type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

/// Rows per statement, largest first. 128 rows × 18 columns stays far below
/// SQLite's limit of 32766 parameters.
const CHUNKS: [usize; 4] = [128, 32, 8, 1];

/// `{head} VALUES (?, ..), .. {tail}` in each of the [`CHUNKS`] sizes.
pub(super) struct MultiInsert {
    head: &'static str,
    columns: usize,
    tail: &'static str,
    sql: [OnceLock<String>; CHUNKS.len()],
}

impl MultiInsert {
    pub(super) const fn new(head: &'static str, columns: usize, tail: &'static str) -> Self {
        MultiInsert {
            head,
            columns,
            tail,
            sql: [const { OnceLock::new() }; CHUNKS.len()],
        }
    }

    fn sql(&'static self, chunk: usize) -> &'static str {
        self.sql[chunk].get_or_init(|| {
            let row = format!("({})", vec!["?"; self.columns].join(", "));
            format!(
                "{} VALUES {} {}",
                self.head,
                vec![row.as_str(); CHUNKS[chunk]].join(", "),
                self.tail
            )
        })
    }

    /// Insert `rows`, each bound by `bind` (which binds exactly `columns` values).
    pub(super) async fn run<R>(
        &'static self,
        conn: &mut SqliteConnection,
        rows: &[R],
        bind: impl Fn(Query, &R) -> Result<Query>,
    ) -> Result<()> {
        let mut rest = rows;
        while !rest.is_empty() {
            let chunk = CHUNKS
                .iter()
                .position(|&n| n <= rest.len())
                .expect("the smallest chunk is one row");
            let (now, later) = rest.split_at(CHUNKS[chunk]);
            let mut query = sqlx::query(self.sql(chunk));
            for row in now {
                query = bind(query, row)?;
            }
            conn.execute(query).await.map_err(db)?;
            rest = later;
        }
        Ok(())
    }
}

/// A document column's JSON text.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| maestro_core::Error::store(format!("cannot encode a JSON column: {e}")))
}

pub(super) fn opt_json<T: Serialize>(value: Option<&T>) -> Result<Option<String>> {
    value.map(to_json).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    static T: MultiInsert = MultiInsert::new("INSERT INTO t (a, b)", 2, "ON CONFLICT DO NOTHING");

    #[test]
    fn statements_have_one_placeholder_per_value() {
        assert_eq!(
            T.sql(3),
            "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT DO NOTHING"
        );
        assert_eq!(T.sql(0).matches('?').count(), 256);
    }
}
