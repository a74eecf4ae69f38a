//! Conversions between domain values and column values.

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::error::Error;

pub(super) use crate::sql::{int, opt_int, opt_uint, uint, uint32};

pub(super) fn json<T: DeserializeOwned>(text: &str, what: &'static str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::corrupt(what, e))
}

pub(super) fn opt_json<T: DeserializeOwned>(
    text: Option<String>,
    what: &'static str,
) -> Result<Option<T>, Error> {
    text.map(|t| json(&t, what)).transpose()
}

/// Reads one column, naming the table in the error.
pub(super) fn get<'r, T>(row: &'r SqliteRow, column: &str, what: &'static str) -> Result<T, Error>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column)
        .map_err(|e| Error::corrupt(what, format!("column {column}: {e}")))
}

/// One tag as it appears inside a tag-list column: `%` and `,` percent-encoded
/// so that `,` can delimit and `instr` cannot match across tags.
fn encode_tag(tag: &str, out: &mut String) {
    for c in tag.chars() {
        match c {
            '%' => out.push_str("%25"),
            ',' => out.push_str("%2C"),
            c => out.push(c),
        }
    }
}

/// A tag-list column: `,a,b,` (`,` when empty).
pub(super) fn tag_list(tags: &[String]) -> String {
    let mut out = String::from(",");
    for tag in tags {
        encode_tag(tag, &mut out);
        out.push(',');
    }
    out
}

/// What to look for in a tag-list column: `instr(tags, needle) > 0`.
pub(super) fn tag_needle(tag: &str) -> String {
    let mut out = String::from(",");
    encode_tag(tag, &mut out);
    out.push(',');
    out
}

/// Values bound to a statement built at run time from constant fragments.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

pub(super) fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s.clone()),
            Bind::Int(i) => query.bind(*i),
        };
    }
    query
}

/// A `WHERE` clause under construction: constant SQL fragments and their binds.
#[derive(Default)]
pub(super) struct Where {
    clauses: Vec<&'static str>,
    pub(super) binds: Vec<Bind>,
}

impl Where {
    pub(super) fn add(&mut self, clause: &'static str, binds: impl IntoIterator<Item = Bind>) {
        self.clauses.push(clause);
        self.binds.extend(binds);
    }

    pub(super) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_match_whole_tags_only() {
        let list = tag_list(&["a,b".to_owned(), "c%".to_owned(), "d".to_owned()]);
        assert_eq!(list, ",a%2Cb,c%25,d,");
        assert!(list.contains(&tag_needle("a,b")));
        assert!(list.contains(&tag_needle("c%")));
        assert!(list.contains(&tag_needle("d")));
        assert!(!list.contains(&tag_needle("a")));
        assert!(!list.contains(&tag_needle("b")));
        assert!(!list.contains(&tag_needle("c")));
        assert_eq!(tag_list(&[]), ",");
    }

    #[test]
    fn huge_integers_saturate() {
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(int(42), 42);
        assert!(uint(-1, "x").is_err());
    }
}
