//! The variables a step sees, and the paths that name them.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// The variables visible to one step (docs/EXECUTION.md "Readiness, conditions, scope").
///
/// Built by the state machine: `layers` holds the outputs of the step's completed
/// ancestors in [`WorkflowPlan::scope_ancestors`](super::WorkflowPlan::scope_ancestors)
/// order, then the execute call's `inputs`, then `initialInputs` (or the merged
/// execution variables), **highest priority first**; `steps` the outputs reachable as
/// `steps.<id>.outputs` (the first entry of an id wins).
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    /// Top-level variable layers, highest priority first.
    pub layers: Vec<&'a Map<String, Value>>,
    /// Visible `steps.<id>.outputs`.
    pub steps: Vec<(&'a str, &'a Map<String, Value>)>,
    pub execution_id: &'a str,
    pub correlation_id: &'a str,
}

impl<'a> Scope<'a> {
    /// Resolve a path: `a`, `a.b.0.c` (a numeric segment indexes arrays),
    /// `steps.X.outputs`, `steps.X.outputs.p.q`, `execution.id`,
    /// `execution.correlationId`. A first segment `steps` or `execution` is reserved
    /// and never looked up in the layers; otherwise the first layer holding the first
    /// segment wins and the rest of the path navigates inside that value (no fall
    /// through to lower layers). Invalid paths resolve to `None`.
    pub fn resolve(&self, path: &str) -> Option<Cow<'a, Value>> {
        let segs = parse_path(path)?;
        match segs[0] {
            "steps" => {
                if segs.len() < 3 || segs[2] != "outputs" {
                    return None;
                }
                let outputs: &'a Map<String, Value> = self
                    .steps
                    .iter()
                    .find(|(id, _)| *id == segs[1])
                    .map(|(_, out)| *out)?;
                match segs.get(3) {
                    None => Some(Cow::Owned(Value::Object(outputs.clone()))),
                    Some(key) => navigate(outputs.get(*key)?, &segs[4..]).map(Cow::Borrowed),
                }
            }
            "execution" => match segs[1..] {
                ["id"] => Some(Cow::Owned(Value::String(self.execution_id.to_owned()))),
                ["correlationId"] => {
                    Some(Cow::Owned(Value::String(self.correlation_id.to_owned())))
                }
                _ => None,
            },
            first => {
                let layer: &'a Map<String, Value> = self
                    .layers
                    .iter()
                    .copied()
                    .find(|l| l.contains_key(first))?;
                navigate(layer.get(first)?, &segs[1..]).map(Cow::Borrowed)
            }
        }
    }

    /// The variables as one JSON object, as CEL sees them: the merged top-level
    /// variables (a higher layer wins; keys `steps` and `execution` are reserved),
    /// `steps: {id: {outputs: {...}}}` and `execution: {id, correlationId}`.
    pub fn to_cel_map(&self) -> Map<String, Value> {
        self.cel_variables(None)
    }

    /// [`Self::to_cel_map`] restricted to `names` (`None`: all of it); only what is
    /// named is copied.
    pub(crate) fn cel_variables(&self, names: Option<&[String]>) -> Map<String, Value> {
        let wanted = |k: &str| names.is_none_or(|n| n.iter().any(|x| x == k));
        let mut merged = Map::new();
        for layer in &self.layers {
            for (k, v) in layer.iter() {
                if k != "steps" && k != "execution" && !merged.contains_key(k) && wanted(k) {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        if wanted("steps") {
            let mut steps = Map::new();
            for (id, outputs) in &self.steps {
                if !steps.contains_key(*id) {
                    let mut entry = Map::new();
                    entry.insert("outputs".to_owned(), Value::Object((*outputs).clone()));
                    steps.insert((*id).to_owned(), Value::Object(entry));
                }
            }
            merged.insert("steps".to_owned(), Value::Object(steps));
        }
        if wanted("execution") {
            let mut execution = Map::new();
            execution.insert("id".to_owned(), Value::String(self.execution_id.to_owned()));
            execution.insert(
                "correlationId".to_owned(),
                Value::String(self.correlation_id.to_owned()),
            );
            merged.insert("execution".to_owned(), Value::Object(execution));
        }
        merged
    }
}

/// An owned copy of a [`Scope`]: a condition can then be evaluated away from the state
/// it was taken from (on another thread, while the state moves on).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeSnapshot {
    /// Each distinct map of the scope, once.
    maps: Vec<Map<String, Value>>,
    /// `Scope::layers`, as indices into `maps`.
    layers: Vec<usize>,
    /// `Scope::steps`: the id, and its outputs as an index into `maps`.
    steps: Vec<(String, usize)>,
    execution_id: String,
    correlation_id: String,
}

impl ScopeSnapshot {
    /// Copy `scope`. A step's outputs are both a layer and `steps.<id>.outputs`: copied
    /// once.
    pub fn of(scope: &Scope<'_>) -> Self {
        let mut snap = ScopeSnapshot {
            execution_id: scope.execution_id.to_owned(),
            correlation_id: scope.correlation_id.to_owned(),
            ..ScopeSnapshot::default()
        };
        let mut seen: Vec<*const Map<String, Value>> = Vec::new();
        let mut index_of = |m: &Map<String, Value>, maps: &mut Vec<Map<String, Value>>| {
            let ptr = m as *const Map<String, Value>;
            match seen.iter().position(|&p| p == ptr) {
                Some(k) => k,
                None => {
                    seen.push(ptr);
                    maps.push(m.clone());
                    maps.len() - 1
                }
            }
        };
        for layer in &scope.layers {
            let k = index_of(layer, &mut snap.maps);
            snap.layers.push(k);
        }
        for (id, outputs) in &scope.steps {
            let k = index_of(outputs, &mut snap.maps);
            snap.steps.push(((*id).to_owned(), k));
        }
        snap
    }

    /// The scope it copied.
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            layers: self.layers.iter().map(|&k| &self.maps[k]).collect(),
            steps: self
                .steps
                .iter()
                .map(|(id, k)| (id.as_str(), &self.maps[*k]))
                .collect(),
            execution_id: &self.execution_id,
            correlation_id: &self.correlation_id,
        }
    }
}

/// One path segment: `[A-Za-z0-9_-]+`.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Split a path into its segments, or `None` when it is not a valid path.
pub(crate) fn parse_path(path: &str) -> Option<Vec<&str>> {
    let segs: Vec<&str> = path.split('.').collect();
    segs.iter().all(|s| valid_segment(s)).then_some(segs)
}

/// What is wrong with a path that uses a reserved first segment, if anything:
/// `steps.<id>.outputs[.path]`, `execution.id` and `execution.correlationId` are the
/// only valid forms.
pub(crate) fn reserved_form_problem(segs: &[&str]) -> Option<String> {
    match segs.first().copied() {
        Some("steps") if segs.len() < 3 || segs[2] != "outputs" => Some(format!(
            "`{}` is not a valid step reference: use steps.<stepId>.outputs[.path]",
            segs.join(".")
        )),
        Some("execution") if !matches!(segs[1..], ["id"] | ["correlationId"]) => Some(format!(
            "`{}` is not a valid execution reference: use execution.id or \
             execution.correlationId",
            segs.join(".")
        )),
        _ => None,
    }
}

/// The step a `steps.<id>...` path refers to.
pub(crate) fn step_reference<'p>(segs: &[&'p str]) -> Option<&'p str> {
    match segs {
        ["steps", id, ..] => Some(id),
        _ => None,
    }
}

fn navigate<'v>(mut v: &'v Value, segs: &[&str]) -> Option<&'v Value> {
    for seg in segs {
        v = match v {
            Value::Object(m) => m.get(*seg)?,
            Value::Array(items) => items.get(array_index(seg)?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// A canonical decimal index (`0`, `12`; not `012`).
fn array_index(seg: &str) -> Option<usize> {
    let canonical =
        seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    if canonical { seg.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn resolve_paths() {
        let vars = obj(
            json!({"order": {"items": [{"sku": "A1"}, {"sku": "B2"}], "0": "zero"},
            "steps": "shadowed", "execution": "shadowed"}),
        );
        let out = obj(json!({"token": "t", "nested": {"k": [10, 20]}}));
        let scope = Scope {
            layers: vec![&vars],
            steps: vec![("verify-user", &out)],
            execution_id: "e1",
            correlation_id: "c1",
        };
        let r = |p: &str| scope.resolve(p).map(Cow::into_owned);
        assert_eq!(r("order.items.1.sku"), Some(json!("B2")));
        assert_eq!(
            r("order.0"),
            Some(json!("zero")),
            "numeric key on an object"
        );
        assert_eq!(r("order.items.01"), None, "non-canonical index");
        assert_eq!(r("order.items.5"), None);
        assert_eq!(r("order.items.sku"), None);
        assert_eq!(r("steps.verify-user.outputs.nested.k.1"), Some(json!(20)));
        assert_eq!(
            r("steps.verify-user.outputs"),
            Some(Value::Object(out.clone()))
        );
        assert_eq!(r("steps.verify-user"), None);
        assert_eq!(r("steps.other.outputs"), None);
        assert_eq!(r("steps"), None, "reserved, never looked up in the layers");
        assert_eq!(r("execution.id"), Some(json!("e1")));
        assert_eq!(r("execution.correlationId"), Some(json!("c1")));
        assert_eq!(r("execution"), None);
        assert_eq!(r("execution.id.x"), None);
        assert_eq!(r(""), None);
        assert_eq!(r("a..b"), None);
        assert_eq!(r("has space"), None);
        assert_eq!(r("missing"), None);
    }

    #[test]
    fn first_layer_holding_the_key_wins_without_fall_through() {
        let high = obj(json!({"user": {"name": "high"}}));
        let low = obj(json!({"user": {"name": "low", "age": 3}, "only_low": 1}));
        let scope = Scope {
            layers: vec![&high, &low],
            ..Scope::default()
        };
        assert_eq!(
            scope.resolve("user.name").map(Cow::into_owned),
            Some(json!("high"))
        );
        assert_eq!(
            scope.resolve("user.age"),
            None,
            "no fall through to a lower layer"
        );
        assert_eq!(
            scope.resolve("only_low").map(Cow::into_owned),
            Some(json!(1))
        );
    }

    #[test]
    fn cel_map_merges_by_priority() {
        let high = obj(json!({"a": 1, "steps": "x"}));
        let low = obj(json!({"a": 0, "b": 2, "execution": "y"}));
        let out = obj(json!({"k": true}));
        let scope = Scope {
            layers: vec![&high, &low],
            steps: vec![("s1", &out)],
            execution_id: "e",
            correlation_id: "c",
        };
        let m = Value::Object(scope.to_cel_map());
        assert_eq!(
            m,
            json!({"a": 1, "b": 2, "steps": {"s1": {"outputs": {"k": true}}},
                "execution": {"id": "e", "correlationId": "c"}})
        );
    }

    #[test]
    fn snapshot_copies_each_map_once_and_gives_the_same_scope() {
        let vars = obj(json!({"a": 1}));
        let out = obj(json!({"k": [1, 2]}));
        let scope = Scope {
            layers: vec![&out, &vars],
            steps: vec![("s1", &out)],
            execution_id: "e",
            correlation_id: "c",
        };
        let snap = ScopeSnapshot::of(&scope);
        assert_eq!(snap.maps.len(), 2, "the outputs are copied once");
        let back = snap.scope();
        assert_eq!(back.to_cel_map(), scope.to_cel_map());
        assert_eq!(
            back.resolve("steps.s1.outputs.k.1").map(Cow::into_owned),
            Some(json!(2))
        );
    }

    #[test]
    fn reserved_forms() {
        let p = |s: &str| reserved_form_problem(&parse_path(s).unwrap_or_default());
        assert!(p("steps.a.outputs").is_none());
        assert!(p("steps.a.outputs.x.0").is_none());
        assert!(p("execution.correlationId").is_none());
        assert!(p("user.steps").is_none());
        assert!(p("steps").is_some());
        assert!(p("steps.a").is_some());
        assert!(p("steps.a.inputs").is_some());
        assert!(p("execution.workflowId").is_some());
    }
}
