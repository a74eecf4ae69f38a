//! A condition (comparison, logical, or CEL `expression`) and the variables it
//! reads, as one JSON document `{"condition": ..., "variables": {...}}`:
//! evaluated. Malformed or hostile CEL must end in an error, never a panic,
//! a stack overflow or a hang.
#![no_main]

/// Like production: the CEL library's panics are caught (`catch_unwind` in
/// `choreography::cel`) and become errors. libfuzzer-sys's panic hook would
/// abort on those too; a panic that escapes still aborts (libfuzzer-sys catches
/// it at the target's boundary).
fn quiet_caught_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

use libfuzzer_sys::fuzz_target;
use maestro_core::choreography::{Scope, evaluate_condition};
use maestro_core::model::ExecutionCondition;
use serde_json::{Map, Value};

fuzz_target!(init: quiet_caught_panics(), |data: &[u8]| {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(raw) = doc.get("condition") else { return };
    let Ok(condition) = serde_json::from_value::<ExecutionCondition>(raw.clone()) else {
        return;
    };
    let variables: Map<String, Value> = doc
        .get("variables")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let scope = Scope {
        layers: vec![&variables],
        ..Default::default()
    };
    let _ = evaluate_condition(&condition, &scope);
});
