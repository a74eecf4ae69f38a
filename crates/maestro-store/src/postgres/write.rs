//! Helpers of the array-bound writes.
//!
//! A batch writes each table with one `INSERT ... SELECT ... FROM UNNEST($1::text[],
//! $2::bigint[], ...)`: one array per column, one round trip per table whatever
//! the number of rows, and one statement text per table, which stays prepared.
//! JSON documents travel as text and are cast (`::json`) in the statement; a
//! tag list travels as the text of a JSON array (arrays of arrays must be
//! rectangular in PostgreSQL).

use std::collections::BTreeMap;

use maestro_core::Result;
use serde::Serialize;

/// A document column's JSON text.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| maestro_core::Error::store(format!("cannot encode a JSON column: {e}")))
}

pub(super) fn opt_json<T: Serialize>(value: Option<&T>) -> Result<Option<String>> {
    value.map(to_json).transpose()
}

/// The rows of `rows` with distinct keys, in key order: the LAST row of each key
/// wins (a later change of the same row in one batch overwrites the earlier).
pub(super) fn last_by_key<'a, R, K: Ord>(rows: &'a [R], key: impl Fn(&'a R) -> K) -> Vec<&'a R> {
    let mut by_key = BTreeMap::new();
    for r in rows {
        by_key.insert(key(r), r);
    }
    by_key.into_values().collect()
}

/// The rows of `rows` with distinct keys, in key order: the FIRST row of each key
/// wins. With each kept row, its index in `rows`.
pub(super) fn first_by_key<'a, R, K: Ord>(
    rows: &'a [R],
    key: impl Fn(&'a R) -> K,
) -> Vec<(usize, &'a R)> {
    let mut by_key = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_key.entry(key(r)).or_insert((i, r));
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_the_last_or_the_first_in_key_order() {
        let rows = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)];
        let last: Vec<_> = last_by_key(&rows, |r| r.0).into_iter().copied().collect();
        assert_eq!(last, vec![("a", 5), ("b", 3), ("c", 4)]);
        let first: Vec<_> = first_by_key(&rows, |r| r.0)
            .into_iter()
            .map(|(i, r)| (i, *r))
            .collect();
        assert_eq!(first, vec![(1, ("a", 2)), (0, ("b", 1)), (3, ("c", 4))]);
    }
}
