//! `sensitive` outputs: passed to later steps, shown as `"***"` to everyone but
//! admins in execution reads, events, the event stream and webhooks.
//!
//! A capability's `sensitive` list names output keys. In an execution, a step's
//! outputs are masked by the keys its capability declares (the workflow
//! revision the execution pinned says which capability a step called; any
//! registered agent declaring a key for that capability id counts). Events do
//! not say which capability produced them, so in events every output key that
//! some capability declares sensitive is masked (safe, possibly more than
//! needed). A `result` value equal to a masked value is masked too.

use std::collections::{HashMap, HashSet};

use maestro_core::model::{ChoreographyEvent, WorkflowExecution};
use serde_json::{Map, Value};

use crate::Maestro;
use crate::registry::Registry;

pub const MASK: &str = "***";

/// Sensitive keys by capability id, from the registry.
#[derive(Debug, Default)]
pub struct SensitiveIndex {
    by_capability: HashMap<String, HashSet<String>>,
    all: HashSet<String>,
}

impl SensitiveIndex {
    /// `None` when no registered capability declares sensitive outputs (the
    /// fast path: nothing to mask).
    pub fn from_registry(registry: &Registry) -> Option<SensitiveIndex> {
        let idx = registry.read(|r| {
            let mut idx = SensitiveIndex::default();
            for a in r.agents() {
                for c in &a.capabilities {
                    if c.sensitive.is_empty() {
                        continue;
                    }
                    let set = idx.by_capability.entry(c.id.clone()).or_default();
                    for k in &c.sensitive {
                        set.insert(k.clone());
                        idx.all.insert(k.clone());
                    }
                }
            }
            idx
        });
        (!idx.all.is_empty()).then_some(idx)
    }
}

fn mask_keys(outputs: &mut Map<String, Value>, keys: &HashSet<String>, masked: &mut Vec<Value>) {
    for (k, v) in outputs.iter_mut() {
        if keys.contains(k) && v != MASK {
            masked.push(std::mem::replace(v, Value::String(MASK.into())));
        }
    }
}

fn mask_result(result: &mut Map<String, Value>, masked: &[Value]) {
    for v in result.values_mut() {
        if masked.contains(v) {
            *v = Value::String(MASK.into());
        }
    }
}

/// An execution with the values of `idx` masked.
pub async fn execution(
    m: &Maestro,
    idx: &SensitiveIndex,
    mut e: WorkflowExecution,
) -> WorkflowExecution {
    // Which capability each step called; if the revision cannot be read, fall
    // back to masking every sensitive key.
    let capabilities: Option<HashMap<String, String>> =
        match m.get_workflow(&e.workflow_id, Some(e.revision)).await {
            Ok(Some(wf)) => Some(
                wf.steps
                    .into_iter()
                    .map(|st| (st.id, st.capability))
                    .collect(),
            ),
            _ => None,
        };
    let keys_for = |step_id: &str| -> &HashSet<String> {
        match &capabilities {
            Some(m) => m
                .get(step_id)
                .and_then(|c| idx.by_capability.get(c))
                .unwrap_or(&EMPTY),
            None => &idx.all,
        }
    };
    static EMPTY: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(HashSet::new);
    let mut masked = Vec::new();
    for st in e.step_executions.0.iter_mut() {
        // A fallback's outputs stand in for the failed step: mask by both.
        let keys = keys_for(&st.step_id);
        if let Some(o) = st.outputs.as_mut() {
            mask_keys(o, keys, &mut masked);
            if let Some(fb) = &st.fallback_step {
                mask_keys(o, keys_for(fb), &mut masked);
            }
        }
    }
    for (step_id, o) in e.context.step_outputs.iter_mut() {
        mask_keys(o, keys_for(step_id), &mut masked);
    }
    if let Some(outputs) = e.outputs.as_mut() {
        for (step_id, o) in outputs.iter_mut() {
            if let Some(o) = o.as_object_mut() {
                mask_keys(o, keys_for(step_id), &mut masked);
            }
        }
    }
    if let Some(r) = e.result.as_mut() {
        mask_result(r, &masked);
    }
    // A sensitive value passed on to later steps (`${steps.X.outputs.key}`)
    // or kept for a compensation shows up in their inputs too.
    if !masked.is_empty() {
        for st in e.step_executions.0.iter_mut() {
            mask_values(&mut st.inputs, &masked);
        }
        for entry in e.rollback_log.iter_mut().flatten() {
            mask_values(&mut entry.inputs, &masked);
        }
    }
    e
}

/// Mask every value (at any depth) equal to one of `masked`.
fn mask_values(map: &mut Map<String, Value>, masked: &[Value]) {
    for v in map.values_mut() {
        mask_value(v, masked);
    }
}

fn mask_value(v: &mut Value, masked: &[Value]) {
    if masked.contains(v) {
        *v = Value::String(MASK.into());
        return;
    }
    match v {
        Value::Object(m) => mask_values(m, masked),
        Value::Array(a) => a.iter_mut().for_each(|x| mask_value(x, masked)),
        _ => {}
    }
}

/// An event as the holder of `idx` may see it: sensitive keys of every
/// `outputs` object in the payload (a step's outputs, or a map of them) are
/// masked, then every other place holding one of those values (`result`,
/// inputs of later steps, rollback log entries).
pub fn event(idx: Option<&SensitiveIndex>, mut e: ChoreographyEvent) -> ChoreographyEvent {
    let Some(idx) = idx else { return e };
    let mut masked = Vec::new();
    mask_outputs_in(&mut e.payload, &idx.all, &mut masked);
    if !masked.is_empty() {
        mask_value(&mut e.payload, &masked);
    }
    e
}

fn mask_outputs_in(v: &mut Value, keys: &HashSet<String>, masked: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "outputs"
                    && let Some(o) = child.as_object_mut()
                {
                    mask_keys(o, keys, masked);
                    for inner in o.values_mut() {
                        if let Some(inner) = inner.as_object_mut() {
                            mask_keys(inner, keys, masked);
                        }
                    }
                } else {
                    mask_outputs_in(child, keys, masked);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| mask_outputs_in(x, keys, masked)),
        _ => {}
    }
}
