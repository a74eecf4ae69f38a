//! A workflow definition as JSON (or YAML, when the input starts with `#`):
//! parsed, validated, planned, and every step's condition evaluated against
//! the workflow's initial inputs. Nothing may panic or overflow the stack.
#![no_main]

mod caught_panics;

use libfuzzer_sys::fuzz_target;
use maestro_core::choreography::{
    Limits, Scope, WorkflowPlan, evaluate_condition, validate_workflow,
};
use maestro_core::model::Workflow;

fuzz_target!(init: caught_panics::quiet(), |data: &[u8]| {
    let parsed: Option<Workflow> = match data.first() {
        Some(b'#') => serde_norway::from_slice(data).ok(),
        _ => serde_json::from_slice(data).ok(),
    };
    let Some(wf) = parsed else { return };
    if validate_workflow(&wf, &Limits::default()).is_err() {
        return;
    }
    let Ok(plan) = WorkflowPlan::new(&wf) else { return };
    let _ = plan.len();
    let scope = Scope {
        layers: vec![&wf.initial_inputs],
        ..Default::default()
    };
    for step in &wf.steps {
        if let Some(c) = &step.condition {
            let _ = evaluate_condition(c, &scope);
        }
    }
});
