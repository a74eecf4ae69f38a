//! Conversions between domain values and column values, and `WHERE` clauses
//! built at run time.

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::types::Json;

use crate::error::Error;

pub(super) use crate::sql::{int, opt_int, opt_uint, uint, uint32};

/// Reads one column, naming the table in the error.
pub(super) fn get<'r, T>(row: &'r PgRow, column: &str, what: &'static str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| Error::corrupt(what, format!("column {column}: {e}")))
}

/// A JSON column decoded into `T`.
pub(super) fn json<T: DeserializeOwned>(
    row: &PgRow,
    column: &str,
    what: &'static str,
) -> Result<T, Error> {
    get::<Json<T>>(row, column, what).map(|j| j.0)
}

/// A nullable JSON column decoded into `T`.
pub(super) fn opt_json<T: DeserializeOwned>(
    row: &PgRow,
    column: &str,
    what: &'static str,
) -> Result<Option<T>, Error> {
    get::<Option<Json<T>>>(row, column, what).map(|j| j.map(|j| j.0))
}

/// Values bound to a statement built at run time from constant fragments.
pub(super) enum Bind {
    Text(String),
    Int(i64),
    TextArray(Vec<String>),
}

pub(super) type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

pub(super) fn bind_all<'q>(mut query: Query<'q>, binds: &[Bind]) -> Query<'q> {
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Int(i) => query.bind(*i),
            Bind::TextArray(v) => query.bind(v.clone()),
        };
    }
    query
}

/// A `WHERE` clause under construction: SQL fragments whose `?` stand for the
/// next bind, numbered `$1`, `$2`, ... in the order they are added.
#[derive(Default)]
pub(super) struct Where {
    clauses: Vec<String>,
    pub(super) binds: Vec<Bind>,
}

impl Where {
    /// Add `clause`, one bind per `?` in it.
    pub(super) fn add(&mut self, clause: &'static str, binds: impl IntoIterator<Item = Bind>) {
        let mut sql = String::with_capacity(clause.len() + 4);
        let mut n = self.binds.len();
        for c in clause.chars() {
            if c == '?' {
                n += 1;
                sql.push('$');
                sql.push_str(&n.to_string());
            } else {
                sql.push(c);
            }
        }
        self.binds.extend(binds);
        debug_assert_eq!(n, self.binds.len(), "one bind per placeholder in {clause}");
        self.clauses.push(sql);
    }

    pub(super) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The placeholder of the bind that follows the clause's (`$n`), for the
    /// values bound after it (`LIMIT`, `OFFSET`).
    pub(super) fn next(&self, after: usize) -> String {
        format!("${}", self.binds.len() + after + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut w = Where::default();
        assert_eq!(w.sql(), "");
        w.add("a = ?", [Bind::Text("x".into())]);
        w.add(
            "(b = ? OR c = ?)",
            [Bind::Text("y".into()), Bind::Text("y".into())],
        );
        w.add("d", []);
        assert_eq!(w.sql(), " WHERE a = $1 AND (b = $2 OR c = $3) AND d");
        assert_eq!(w.next(0), "$4");
        assert_eq!(w.next(1), "$5");
    }

    #[test]
    fn huge_integers_saturate() {
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(int(42), 42);
        assert!(uint(-1, "x").is_err());
        assert!(uint32(i64::from(u32::MAX) + 1, "x").is_err());
    }
}
