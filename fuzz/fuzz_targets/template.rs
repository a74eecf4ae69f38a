//! Placeholder substitution: `{"inputs": {...}, "variables": {...}}`, every
//! `${path}` in the inputs resolved against the variables. Substitution never
//! evaluates code; it must never panic whatever the paths and values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maestro_core::choreography::{Scope, substitute_variables};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let object = |k: &str| -> Map<String, Value> {
        doc.get(k)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let inputs = object("inputs");
    let variables = object("variables");
    let outputs = object("outputs");
    let scope = Scope {
        layers: vec![&variables],
        steps: vec![("prev", &outputs)],
        execution_id: "exec_fuzz",
        correlation_id: "corr_fuzz",
    };
    let _ = substitute_variables(&inputs, &scope);
});
