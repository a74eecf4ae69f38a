//! The digest of an execute request, to tell a replay of an
//! `Idempotency-Key` from a reuse (docs/EXECUTION.md "Idempotency").

use serde_json::{Map, Value, json};

/// A stable digest of an execute request (FNV-1a 64 over its canonical JSON),
/// to tell a replay of an `Idempotency-Key` from a reuse.
pub(super) fn request_hash(
    inputs: &Map<String, Value>,
    correlation: &Option<String>,
    parent: &Option<String>,
) -> String {
    let doc = json!({"inputs": canonical(&Value::Object(inputs.clone())),
        "correlationId": correlation, "parentExecutionId": parent});
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Objects with sorted keys, so that key order does not change the digest.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
