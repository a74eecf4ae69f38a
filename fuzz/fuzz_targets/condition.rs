//! A condition (comparison, logical, or CEL `expression`) and the variables it
//! reads, as one JSON document `{"condition": ..., "variables": {...}}`:
//! evaluated. Malformed or hostile CEL must end in an error, never a panic,
//! a stack overflow or a hang.
#![no_main]

mod caught_panics;

use libfuzzer_sys::fuzz_target;
use maestro_core::choreography::{Scope, evaluate_condition};
use maestro_core::model::ExecutionCondition;
use serde_json::{Map, Value};

fuzz_target!(init: caught_panics::quiet(), |data: &[u8]| {
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
