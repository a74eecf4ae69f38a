//! Validation of workflow definitions: the first problem in document order, with its
//! API code and the offending step and field.

use serde_json::{Map, Value};

use super::budget::CelBudget;
use super::cel;
use super::plan::{Graph, Lookup, step_field};
use super::scope::{parse_path, reserved_form_problem, step_reference};
use super::template::{Piece, parse_template};
use crate::model::{
    CompareOp, ErrorHandler, ErrorHandlerType, ExecutionCondition, LogicalOp, RetryPolicy,
    Workflow, WorkflowStep, validate_id, validate_step_id,
};
use crate::{Code, Error, Result};

/// Bounds on what a workflow definition may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Steps per workflow.
    pub max_steps: usize,
    /// Nesting levels of a step condition (a condition at the top is level 1).
    pub max_condition_depth: usize,
    /// Bytes of one CEL expression.
    pub max_expression_len: usize,
    /// The work one CEL expression may do: checked at definition (whatever the data)
    /// and before each evaluation (on the values bound).
    pub cel: CelBudget,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 1000,
            max_condition_depth: 32,
            max_expression_len: 4096,
            cel: CelBudget::default(),
        }
    }
}

/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// A retry policy's first problem: (field, message).
fn retry_policy_problem(p: &RetryPolicy) -> Option<(&'static str, String)> {
    if p.max_attempts == 0 {
        return Some(("maxAttempts", "maxAttempts must be at least 1".to_owned()));
    }
    if p.max_attempts > MAX_ATTEMPTS {
        return Some((
            "maxAttempts",
            format!("maxAttempts must be at most {MAX_ATTEMPTS}"),
        ));
    }
    if !p.backoff_multiplier.is_finite() || p.backoff_multiplier < 1.0 {
        return Some((
            "backoffMultiplier",
            "backoffMultiplier must be a finite number >= 1 (1 = constant delay)".to_owned(),
        ));
    }
    if let Some(max) = p.max_delay_ms.filter(|&max| max < p.delay_ms) {
        return Some((
            "maxDelayMs",
            format!(
                "maxDelayMs ({max}) must not be below delayMs ({})",
                p.delay_ms
            ),
        ));
    }
    None
}

/// `maxAttempts` in 1..=100, `backoffMultiplier` finite and >= 1, `maxDelayMs` >=
/// `delayMs` when set. `VALIDATION_FAILED` naming the field (`maxAttempts`, ...).
pub fn validate_retry_policy(p: &RetryPolicy) -> Result<()> {
    match retry_policy_problem(p) {
        None => Ok(()),
        Some((field, message)) => {
            Err(Error::validation(format!("retryPolicy: {message}")).field(field))
        }
    }
}

/// Validate a workflow definition; the first error in document order wins. See the
/// module documentation for the rules.
pub fn validate_workflow(wf: &Workflow, limits: &Limits) -> Result<()> {
    validate_id("workflow", &wf.id).map_err(|e| e.field("id"))?;
    if wf.name.trim().is_empty() {
        return Err(Error::validation("workflow name must not be empty").field("name"));
    }
    if wf.steps.is_empty() {
        return Err(Error::validation("a workflow needs at least one step").field("steps"));
    }
    if wf.steps.len() > limits.max_steps {
        return Err(Error::validation(format!(
            "a workflow may have at most {} steps (got {})",
            limits.max_steps,
            wf.steps.len()
        ))
        .field("steps"));
    }
    let lookup = Lookup::new(wf);
    for (i, step) in wf.steps.iter().enumerate() {
        // Only a valid id can name the step in `details.stepId`.
        validate_step_id(&step.id).map_err(|e| e.field(step_field(i, "id")))?;
        check_step(&lookup, i, step, limits).map_err(|e| e.step(step.id.as_str()))?;
    }
    let graph = Graph::build(wf)?;
    for (i, step) in wf.steps.iter().enumerate() {
        check_step_references(&graph, i, step).map_err(|e| e.step(step.id.as_str()))?;
    }
    // Only top-level strings of expectedOutputs are templates (see
    // `resolve_expected_outputs`); other values merely describe the key.
    for (key, v) in &wf.expected_outputs {
        let Value::String(s) = v else { continue };
        if !s.contains("${") {
            continue;
        }
        let field = format!("expectedOutputs.{key}");
        for path in placeholder_paths(s, &field)? {
            let segs = parse_path(&path).unwrap_or_default();
            if let Some(id) = step_reference(&segs).filter(|id| !graph.index.contains_key(*id)) {
                return Err(invalid_placeholder(
                    format!("`{path}` refers to unknown step {id:?}"),
                    &field,
                ));
            }
        }
    }
    Ok(())
}

/// Step-local checks (after the id), in the order of the step's fields. Fields are
/// named from the workflow's root (`steps[i].capability`).
fn check_step(lookup: &Lookup<'_>, i: usize, step: &WorkflowStep, limits: &Limits) -> Result<()> {
    let at = |field: &str| step_field(i, field);
    lookup.check_unique(i)?;
    if step.capability.trim().is_empty() {
        return Err(
            Error::validation(format!("step {:?} needs a capability", step.id))
                .field(at("capability")),
        );
    }
    if let Some(agent) = &step.agent_id {
        validate_id("agent", agent).map_err(|e| e.field(at("agentId")))?;
    }
    lookup.check_dependencies(i)?;
    if let Some((field, message)) = step.retry_policy.as_ref().and_then(retry_policy_problem) {
        return Err(Error::validation(format!("retryPolicy: {message}"))
            .field(at(&format!("retryPolicy.{field}"))));
    }
    if step.timeout == Some(0) {
        return Err(Error::validation("timeout must be greater than 0 ms").field(at("timeout")));
    }
    if let Some(h) = &step.error_handler {
        check_error_handler(lookup, i, h)?;
    }
    if let Some(c) = &step.condition {
        check_condition(c, &at("condition"), 1, limits)?;
    }
    let mut field = at("inputs");
    check_templates(&step.inputs, &mut field)?;
    if let Some(comp) = &step.compensate {
        if comp.capability.trim().is_empty() {
            return Err(Error::validation(format!(
                "the compensation of step {:?} needs a capability",
                step.id
            ))
            .field(at("compensate.capability")));
        }
        if let Some(agent) = &comp.agent_id {
            validate_id("agent", agent).map_err(|e| e.field(at("compensate.agentId")))?;
        }
        if let Some(inputs) = &comp.inputs {
            let mut field = at("compensate.inputs");
            check_templates(inputs, &mut field)?;
        }
    }
    Ok(())
}

fn check_error_handler(lookup: &Lookup<'_>, i: usize, h: &ErrorHandler) -> Result<()> {
    let at = |field: &str| step_field(i, field);
    match h.handler_type {
        ErrorHandlerType::Fallback => lookup.check_fallback(i),
        ErrorHandlerType::Callback => {
            if is_http_url(&h.action) {
                Ok(())
            } else {
                Err(Error::validation(format!(
                    "a callback handler's action must be an http:// or https:// URL, got {:?}",
                    h.action
                ))
                .field(at("errorHandler.action")))
            }
        }
        ErrorHandlerType::Retry => {
            let Some(params) = &h.params else {
                return Ok(());
            };
            let policy: RetryPolicy = serde_json::from_value(params.clone()).map_err(|e| {
                Error::validation(format!(
                    "a retry handler's params must be a retry policy: {e}"
                ))
                .field(at("errorHandler.params"))
            })?;
            match retry_policy_problem(&policy) {
                None => Ok(()),
                Some((field, message)) => {
                    Err(Error::validation(format!("errorHandler.params: {message}"))
                        .field(at(&format!("errorHandler.params.{field}"))))
                }
            }
        }
        ErrorHandlerType::Skip => Ok(()),
    }
}

/// `http://host...` or `https://host...`, no whitespace or control characters.
fn is_http_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && !host.starts_with(':')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn invalid_condition(message: impl Into<String>, field: &str) -> Error {
    Error::invalid(Code::InvalidCondition, message).field(field)
}

fn check_condition(
    c: &ExecutionCondition,
    field: &str,
    depth: usize,
    limits: &Limits,
) -> Result<()> {
    if depth > limits.max_condition_depth {
        return Err(invalid_condition(
            format!(
                "condition nests deeper than {} levels",
                limits.max_condition_depth
            ),
            field,
        ));
    }
    match c {
        ExecutionCondition::Comparison {
            variable,
            operator,
            value,
        } => {
            let Some(segs) = parse_path(variable) else {
                return Err(invalid_condition(
                    format!(
                        "condition variable {variable:?} is not a path (segments of \
                         [A-Za-z0-9_-] separated by '.', e.g. user.age or \
                         steps.verify-user.outputs.valid)"
                    ),
                    &format!("{field}.variable"),
                ));
            };
            if let Some(problem) = reserved_form_problem(&segs) {
                return Err(invalid_placeholder(problem, &format!("{field}.variable")));
            }
            let value_ok = match operator {
                CompareOp::In | CompareOp::NotIn => value.is_array(),
                CompareOp::Exists => value.is_boolean() || value.is_null(),
                CompareOp::Gt | CompareOp::Gte | CompareOp::Lt | CompareOp::Lte => {
                    value.is_number() || value.is_string()
                }
                CompareOp::Eq | CompareOp::Neq | CompareOp::Contains => true,
            };
            if !value_ok {
                let wanted = match operator {
                    CompareOp::In | CompareOp::NotIn => "an array",
                    CompareOp::Exists => "true, false or absent",
                    _ => "a number or a string",
                };
                let name = serde_json::to_value(operator)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                return Err(invalid_condition(
                    format!("the value of an {name:?} comparison must be {wanted}"),
                    &format!("{field}.value"),
                ));
            }
            Ok(())
        }
        ExecutionCondition::Logical {
            operator,
            conditions,
        } => {
            match operator {
                LogicalOp::Not if conditions.len() != 1 => {
                    return Err(invalid_condition(
                        format!(
                            "a logical not condition needs exactly one condition (got {})",
                            conditions.len()
                        ),
                        &format!("{field}.conditions"),
                    ));
                }
                LogicalOp::And | LogicalOp::Or if conditions.is_empty() => {
                    return Err(invalid_condition(
                        "a logical and/or condition needs at least one condition",
                        &format!("{field}.conditions"),
                    ));
                }
                _ => {}
            }
            for (k, sub) in conditions.iter().enumerate() {
                check_condition(sub, &format!("{field}.conditions[{k}]"), depth + 1, limits)?;
            }
            Ok(())
        }
        ExecutionCondition::Expression { expression } => {
            let field = format!("{field}.expression");
            if expression.len() > limits.max_expression_len {
                return Err(invalid_condition(
                    format!(
                        "CEL expression is {} bytes long, at most {} allowed",
                        expression.len(),
                        limits.max_expression_len
                    ),
                    &field,
                ));
            }
            let program = cel::compile(expression)
                .map_err(|e| invalid_condition(format!("invalid CEL expression: {e}"), &field))?;
            program.fits(&limits.cel).map_err(|e| {
                invalid_condition(format!("CEL expression too expensive: {e}"), &field)
            })
        }
        ExecutionCondition::Unsupported { type_name } => {
            if type_name.eq_ignore_ascii_case("javascript") {
                Err(Error::invalid(
                    Code::UnsafeCondition,
                    "javascript conditions are refused: Maestro never evaluates code; use a \
                     comparison, logical or CEL expression condition",
                )
                .field(format!("{field}.type")))
            } else {
                Err(invalid_condition(
                    format!(
                        "unknown condition type {type_name:?} (expected comparison, logical \
                         or expression)"
                    ),
                    &format!("{field}.type"),
                ))
            }
        }
        ExecutionCondition::Malformed {
            field: inner,
            message,
        } => {
            let field = if inner.is_empty() {
                field.to_owned()
            } else {
                format!("{field}.{inner}")
            };
            Err(invalid_condition(message.as_str(), &field))
        }
    }
}

fn invalid_placeholder(message: impl Into<String>, field: &str) -> Error {
    Error::invalid(Code::InvalidPlaceholder, message).field(field)
}

/// Call `f(field, string)` for every string inside `v` that may hold placeholders;
/// `field` is the dotted path of the string (array elements by index).
fn for_each_template(
    v: &Value,
    field: &mut String,
    f: &mut dyn FnMut(&str, &str) -> Result<()>,
) -> Result<()> {
    match v {
        Value::String(s) if s.contains("${") => f(field, s),
        Value::Array(items) => {
            for (k, item) in items.iter().enumerate() {
                let len = field.len();
                field.push_str(&format!("[{k}]"));
                for_each_template(item, field, f)?;
                field.truncate(len);
            }
            Ok(())
        }
        Value::Object(m) => {
            for (k, item) in m {
                let len = field.len();
                field.push('.');
                field.push_str(k);
                for_each_template(item, field, f)?;
                field.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The placeholder paths of one string; bad syntax or a misused reserved name
/// (`steps.x.inputs`, `execution.foo`) is `INVALID_PLACEHOLDER`.
fn placeholder_paths(s: &str, field: &str) -> Result<Vec<String>> {
    let pieces = parse_template(s).map_err(|e| invalid_placeholder(e.message, field))?;
    let mut paths = Vec::new();
    for piece in pieces {
        if let Piece::Placeholder { path, .. } = piece {
            let segs = parse_path(path).unwrap_or_default();
            if let Some(problem) = reserved_form_problem(&segs) {
                return Err(invalid_placeholder(problem, field));
            }
            paths.push(path.to_owned());
        }
    }
    Ok(paths)
}

fn check_templates(inputs: &Map<String, Value>, field: &mut String) -> Result<()> {
    for (k, v) in inputs {
        let len = field.len();
        field.push('.');
        field.push_str(k);
        for_each_template(v, field, &mut |field, s| {
            placeholder_paths(s, field).map(|_| ())
        })?;
        field.truncate(len);
    }
    Ok(())
}

/// `steps.X` references of step `i` name steps whose outputs it can see: ancestors
/// (for a fallback-only step, ancestors of every step it stands in for); the
/// compensation may also name the step itself.
fn check_step_references(graph: &Graph, i: usize, step: &WorkflowStep) -> Result<()> {
    let visible = |x: usize| -> bool {
        let standing_in = &graph.stands_in_for[i];
        if standing_in.is_empty() {
            graph.is_ancestor(x, i)
        } else {
            standing_in.iter().all(|&r| graph.is_ancestor(x, r))
        }
    };
    let check_path = |path: &str, field: &str, allow_self: bool| -> Result<()> {
        let segs = parse_path(path).unwrap_or_default();
        let Some(id) = step_reference(&segs) else {
            return Ok(());
        };
        let Some(&x) = graph.index.get(id) else {
            return Err(invalid_placeholder(
                format!("`{path}` refers to unknown step {id:?}"),
                field,
            ));
        };
        if (allow_self && x == i) || visible(x) {
            return Ok(());
        }
        let whose = if graph.stands_in_for[i].is_empty() {
            format!("step {:?}", step.id)
        } else {
            let names: Vec<&str> = graph.stands_in_for[i]
                .iter()
                .map(|&r| graph.ids[r].as_str())
                .collect();
            format!(
                "every step that falls back to {:?} ({})",
                step.id,
                names.join(", ")
            )
        };
        Err(invalid_placeholder(
            format!(
                "`{path}` refers to step {id:?}, which is not an ancestor of {whose}: only the \
                 outputs of steps it depends on (directly or not) are visible"
            ),
            field,
        ))
    };
    let mut field = step_field(i, "inputs");
    check_input_references(&step.inputs, &mut field, &|p, f| check_path(p, f, false))?;
    if let Some(c) = &step.condition {
        let field = step_field(i, "condition");
        check_condition_references(c, &field, 1, &|p, f| check_path(p, f, false))?;
    }
    if let Some(inputs) = step.compensate.as_ref().and_then(|c| c.inputs.as_ref()) {
        let mut field = step_field(i, "compensate.inputs");
        check_input_references(inputs, &mut field, &|p, f| check_path(p, f, true))?;
    }
    Ok(())
}

fn check_input_references(
    inputs: &Map<String, Value>,
    field: &mut String,
    check: &dyn Fn(&str, &str) -> Result<()>,
) -> Result<()> {
    for (k, v) in inputs {
        let len = field.len();
        field.push('.');
        field.push_str(k);
        for_each_template(v, field, &mut |field, s| {
            for path in placeholder_paths(s, field)? {
                check(&path, field)?;
            }
            Ok(())
        })?;
        field.truncate(len);
    }
    Ok(())
}

fn check_condition_references(
    c: &ExecutionCondition,
    field: &str,
    depth: usize,
    check: &dyn Fn(&str, &str) -> Result<()>,
) -> Result<()> {
    // Depth was bounded by the step-local pass; this guard only keeps the walk finite.
    if depth > 1024 {
        return Ok(());
    }
    match c {
        ExecutionCondition::Comparison { variable, .. } => {
            check(variable, &format!("{field}.variable"))
        }
        ExecutionCondition::Logical { conditions, .. } => {
            for (k, sub) in conditions.iter().enumerate() {
                check_condition_references(
                    sub,
                    &format!("{field}.conditions[{k}]"),
                    depth + 1,
                    check,
                )?;
            }
            Ok(())
        }
        ExecutionCondition::Expression { .. }
        | ExecutionCondition::Unsupported { .. }
        | ExecutionCondition::Malformed { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choreography::{
        Scope, WorkflowPlan, get_next_steps, substitute_value, substitute_variables,
    };
    use crate::model::StepExecution;
    use proptest::prelude::*;
    use serde_json::json;

    fn workflow(steps: Value) -> Value {
        json!({"id": "wf-1", "name": "Auth flow", "steps": steps})
    }

    fn parse(v: Value) -> Workflow {
        serde_json::from_value(v).expect("deserializes")
    }

    /// (code, stepId, field, cycle) of the validation error.
    fn refusal(
        v: Value,
        limits: &Limits,
    ) -> (
        &'static str,
        Option<String>,
        Option<String>,
        Option<Vec<String>>,
    ) {
        match validate_workflow(&parse(v), limits) {
            Err(Error::Invalid { code, details, .. }) => {
                (code.as_str(), details.step_id, details.field, details.cycle)
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    /// Assert the code and the step (and the field, when given).
    fn refused(v: Value, code: &str, step: Option<&str>, field: Option<&str>) {
        let (c, s, f, _) = refusal(v.clone(), &Limits::default());
        assert_eq!(c, code, "{v}");
        assert_eq!(s.as_deref(), step, "{v}");
        if let Some(field) = field {
            assert_eq!(f.as_deref(), Some(field), "{v}");
        }
    }

    fn step(id: &str) -> Value {
        json!({"id": id, "capability": "do"})
    }

    fn with(mut base: Value, extra: Value) -> Value {
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    /// One step `s` (with `extra` fields) after a root step `a`, plus `more` steps.
    fn one(extra: Value) -> Value {
        workflow(json!([step("a"), with(step("s"), extra)]))
    }

    #[test]
    fn accepts_a_full_workflow() {
        let v = json!({
            "id": "auth-flow", "name": "Auth flow", "version": "2",
            "initialInputs": {"tenant": "acme"},
            "expectedOutputs": {"token": "the JWT", "user": "${steps.verify.outputs.user}"},
            "steps": [
                {"id": "verify", "capability": "verify_signature", "agentId": "sentinel-1",
                 "inputs": {"data": "${payload}", "meta": ["${execution.id}", "$${literal}"]},
                 "retryPolicy": {"maxAttempts": 3, "delayMs": 100, "backoffMultiplier": 2,
                                 "maxDelayMs": 1000},
                 "timeout": 5000,
                 "errorHandler": {"type": "fallback", "action": "verify-backup"}},
                {"id": "verify-backup", "capability": "verify_signature"},
                {"id": "issue", "capability": "issue_jwt", "dependencies": ["verify"],
                 "inputs": {"user": "${steps.verify.outputs.user.id}", "who": "${user}"},
                 "condition": {"type": "logical", "operator": "and", "conditions": [
                     {"type": "comparison", "variable": "steps.verify.outputs.valid",
                      "operator": "eq", "value": true},
                     {"type": "expression",
                      "expression": "steps[\"verify\"].outputs.valid && tenant == 'acme'"},
                     {"type": "logical", "operator": "not", "conditions": [
                         {"type": "comparison", "variable": "blocked", "operator": "exists"}]}]},
                 "errorHandler": {"type": "retry", "action": "",
                                  "params": {"maxAttempts": 2, "delayMs": 10}},
                 "compensate": {"capability": "revoke_jwt",
                                "inputs": {"token": "${steps.issue.outputs.token}"}}},
                {"id": "notify", "capability": "notify", "dependencies": ["issue"],
                 "inputs": {"token": "${steps.verify.outputs.user}"},
                 "errorHandler": {"type": "callback", "action": "https://hooks.example.com/x"}},
                {"id": "audit", "capability": "audit", "dependencies": ["notify"],
                 "errorHandler": {"type": "skip", "action": ""}},
            ]
        });
        let wf = parse(v);
        assert_eq!(validate_workflow(&wf, &Limits::default()), Ok(()));
        let plan = WorkflowPlan::new(&wf).expect("plan");
        assert!(plan.is_fallback_only(1));
    }

    #[test]
    fn workflow_level_fields() {
        let mut v = workflow(json!([step("a")]));
        v["id"] = json!("bad id");
        refused(v, "VALIDATION_FAILED", None, Some("id"));
        let mut v = workflow(json!([step("a")]));
        v["name"] = json!(" ");
        refused(v, "VALIDATION_FAILED", None, Some("name"));
        refused(
            workflow(json!([])),
            "VALIDATION_FAILED",
            None,
            Some("steps"),
        );
        let v = workflow(json!([step("a"), step("b"), step("c")]));
        let limits = Limits {
            max_steps: 2,
            ..Limits::default()
        };
        let (code, _, field, _) = refusal(v, &limits);
        assert_eq!(
            (code, field.as_deref()),
            ("VALIDATION_FAILED", Some("steps"))
        );
    }

    #[test]
    fn step_fields() {
        refused(
            workflow(json!([step("a.b")])),
            "VALIDATION_FAILED",
            None,
            Some("steps[0].id"),
        );
        refused(
            workflow(json!([step("a"), step("b"), step("a")])),
            "DUPLICATE_STEP_ID",
            Some("a"),
            Some("steps[2].id"),
        );
        refused(
            one(json!({"capability": ""})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].capability"),
        );
        refused(
            one(json!({"agentId": "bad agent"})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].agentId"),
        );
        refused(
            one(json!({"dependencies": ["a", "nope"]})),
            "UNKNOWN_DEPENDENCY",
            Some("s"),
            Some("steps[1].dependencies"),
        );
        refused(
            one(json!({"timeout": 0})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].timeout"),
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let (code, step, _, cycle) =
            refusal(one(json!({"dependencies": ["s"]})), &Limits::default());
        assert_eq!(code, "CYCLE_DETECTED");
        assert_eq!(step.as_deref(), Some("s"));
        assert_eq!(cycle, Some(vec!["s".to_owned(), "s".to_owned()]));
    }

    #[test]
    fn cycle_path() {
        let v = workflow(json!([
            step("start"),
            with(step("a"), json!({"dependencies": ["start", "c"]})),
            with(step("b"), json!({"dependencies": ["a"]})),
            with(step("c"), json!({"dependencies": ["b"]})),
            with(step("d"), json!({"dependencies": ["c"]})),
        ]));
        let (code, step, field, cycle) = refusal(v.clone(), &Limits::default());
        assert_eq!(code, "CYCLE_DETECTED");
        assert_eq!(step.as_deref(), Some("a"));
        assert_eq!(field.as_deref(), Some("steps[1].dependencies"));
        assert_eq!(
            cycle,
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        // The plan refuses it the same way.
        let e = WorkflowPlan::new(&parse(v.clone())).expect_err("cycle");
        assert_eq!(Err(e), validate_workflow(&parse(v), &Limits::default()));
    }

    #[test]
    fn retry_policies() {
        let p = |v: Value| serde_json::from_value::<RetryPolicy>(v).expect("policy");
        assert!(validate_retry_policy(&RetryPolicy::default()).is_ok());
        assert!(
            validate_retry_policy(&p(json!({"maxAttempts": 100, "backoffMultiplier": 1}))).is_ok()
        );
        for (bad, field) in [
            (json!({"maxAttempts": 0}), "maxAttempts"),
            (json!({"maxAttempts": 101}), "maxAttempts"),
            (
                json!({"maxAttempts": 1, "backoffMultiplier": 0.5}),
                "backoffMultiplier",
            ),
            (
                json!({"maxAttempts": 1, "backoffMultiplier": -2}),
                "backoffMultiplier",
            ),
            (
                json!({"maxAttempts": 1, "delayMs": 10, "maxDelayMs": 5}),
                "maxDelayMs",
            ),
        ] {
            let e = validate_retry_policy(&p(bad.clone())).expect_err("invalid");
            match e {
                Error::Invalid { code, details, .. } => {
                    assert_eq!(code, Code::ValidationFailed);
                    assert_eq!(details.field.as_deref(), Some(field), "{bad}");
                }
                other => panic!("{other:?}"),
            }
            refused(
                one(json!({"retryPolicy": bad.clone()})),
                "VALIDATION_FAILED",
                Some("s"),
                Some(&format!("steps[1].retryPolicy.{field}")),
            );
            refused(
                one(json!({"errorHandler": {"type": "retry", "params": bad}})),
                "VALIDATION_FAILED",
                Some("s"),
                Some(&format!("steps[1].errorHandler.params.{field}")),
            );
        }
        for m in [f64::NAN, f64::INFINITY] {
            let p = RetryPolicy {
                backoff_multiplier: m,
                ..RetryPolicy::default()
            };
            assert!(validate_retry_policy(&p).is_err());
        }
        refused(
            one(json!({"errorHandler": {"type": "retry", "params": {"bogus": 1}}})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].errorHandler.params"),
        );
        refused(
            one(json!({"errorHandler": {"type": "retry", "params": "3"}})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].errorHandler.params"),
        );
    }

    #[test]
    fn error_handlers() {
        let fb = |target: &str| json!({"errorHandler": {"type": "fallback", "action": target}});
        let base = |extra_steps: Vec<Value>, s_extra: Value| {
            let mut steps = vec![step("a"), with(step("s"), s_extra)];
            steps.extend(extra_steps);
            workflow(Value::Array(steps))
        };
        let field = Some("steps[1].errorHandler.action");
        refused(base(vec![], fb("")), "UNKNOWN_FALLBACK", Some("s"), field);
        refused(
            base(vec![], fb("nope")),
            "UNKNOWN_FALLBACK",
            Some("s"),
            field,
        );
        refused(base(vec![], fb("s")), "UNKNOWN_FALLBACK", Some("s"), field);
        refused(
            base(
                vec![with(step("f"), json!({"dependencies": ["a"]}))],
                fb("f"),
            ),
            "UNKNOWN_FALLBACK",
            Some("f"),
            Some("steps[2].dependencies"),
        );
        refused(
            base(
                vec![step("f"), with(step("g"), json!({"dependencies": ["f"]}))],
                fb("f"),
            ),
            "UNKNOWN_FALLBACK",
            Some("s"),
            field,
        );
        refused(
            base(vec![with(step("f"), fb("a"))], fb("f")),
            "UNKNOWN_FALLBACK",
            Some("s"),
            field,
        );
        assert!(
            validate_workflow(&parse(base(vec![step("f")], fb("f"))), &Limits::default()).is_ok()
        );
        for url in [
            "ftp://x.example",
            "hooks.example.com",
            "https://",
            "https:// x",
            "http://:80",
        ] {
            refused(
                one(json!({"errorHandler": {"type": "callback", "action": url}})),
                "VALIDATION_FAILED",
                Some("s"),
                field,
            );
        }
        for url in ["http://localhost:8080/cb", "HTTPS://hooks.example.com"] {
            let v = one(json!({"errorHandler": {"type": "callback", "action": url}}));
            assert!(
                validate_workflow(&parse(v), &Limits::default()).is_ok(),
                "{url}"
            );
        }
    }

    fn cmp(var: &str, op: &str, value: Value) -> Value {
        json!({"type": "comparison", "variable": var, "operator": op, "value": value})
    }

    #[test]
    fn conditions() {
        let cond = |c: Value| one(json!({"condition": c}));
        refused(
            cond(json!({"type": "javascript", "code": "1"})),
            "UNSAFE_CONDITION",
            Some("s"),
            Some("steps[1].condition.type"),
        );
        refused(
            cond(json!({"type": "python", "code": "1"})),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.type"),
        );
        refused(
            cond(json!({"type": "logical", "operator": "not", "conditions": [
            cmp("a", "eq", json!(1)), cmp("b", "eq", json!(1))]})),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.conditions"),
        );
        refused(
            cond(json!({"type": "logical", "operator": "and", "conditions": []})),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.conditions"),
        );
        refused(
            cond(json!({"type": "logical", "operator": "or", "conditions": [
            cmp("a", "eq", json!(1)), {"type": "javascript"}]})),
            "UNSAFE_CONDITION",
            Some("s"),
            Some("steps[1].condition.conditions[1].type"),
        );
        refused(
            cond(json!({"type": "expression", "expression": "a >"})),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.expression"),
        );
        refused(
            cond(json!({"type": "expression", "expression": "Msg{a: 1}"})),
            "INVALID_CONDITION",
            Some("s"),
            None,
        );
        let long = format!("a == '{}'", "x".repeat(5000));
        refused(
            cond(json!({"type": "expression", "expression": long})),
            "INVALID_CONDITION",
            Some("s"),
            None,
        );
        refused(
            cond(cmp("a b", "eq", json!(1))),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.variable"),
        );
        refused(
            cond(cmp("a", "in", json!("x"))),
            "INVALID_CONDITION",
            Some("s"),
            Some("steps[1].condition.value"),
        );
        refused(
            cond(cmp("a", "exists", json!("yes"))),
            "INVALID_CONDITION",
            Some("s"),
            None,
        );
        refused(
            cond(cmp("a", "gt", json!({}))),
            "INVALID_CONDITION",
            Some("s"),
            None,
        );
        refused(
            cond(cmp("steps.a", "exists", json!(true))),
            "INVALID_PLACEHOLDER",
            Some("s"),
            None,
        );
        // Depth.
        let mut c = cmp("a", "eq", json!(1));
        for _ in 0..3 {
            c = json!({"type": "logical", "operator": "not", "conditions": [c]});
        }
        let limits = Limits {
            max_condition_depth: 3,
            ..Limits::default()
        };
        let (code, s, _, _) = refusal(cond(c.clone()), &limits);
        assert_eq!((code, s.as_deref()), ("INVALID_CONDITION", Some("s")));
        let limits = Limits {
            max_condition_depth: 4,
            ..Limits::default()
        };
        assert!(validate_workflow(&parse(cond(c)), &limits).is_ok());
    }

    #[test]
    fn malformed_conditions_are_invalid_condition_with_the_step_and_field() {
        let cond = |c: Value| one(json!({"condition": c}));
        let cases = [
            (
                json!({"type": "comparison", "variable": "a", "operator": "approximately",
                       "value": 1}),
                "steps[1].condition.operator",
            ),
            (
                json!({"type": "comparison", "variable": "a", "value": 1}),
                "steps[1].condition.operator",
            ),
            (
                json!({"type": "comparison", "operator": "eq", "value": 1}),
                "steps[1].condition.variable",
            ),
            (
                json!({"type": "comparison", "variable": 3, "operator": "eq", "value": 1}),
                "steps[1].condition.variable",
            ),
            (
                json!({"type": "comparison", "variable": "a", "operator": "eq"}),
                "steps[1].condition.value",
            ),
            (
                json!({"type": "comparison", "variable": "a", "operator": "gt"}),
                "steps[1].condition.value",
            ),
            (cmp("a", "in", json!("x")), "steps[1].condition.value"),
            (
                cmp("a", "not_in", json!({"k": 1})),
                "steps[1].condition.value",
            ),
            (cmp("a", "gt", json!({})), "steps[1].condition.value"),
            (cmp("a", "lte", json!(true)), "steps[1].condition.value"),
            (cmp("a", "gte", Value::Null), "steps[1].condition.value"),
            (
                json!({"type": "comparison", "variable": "a", "operator": "eq", "value": 1,
                       "valeu": 2}),
                "steps[1].condition.valeu",
            ),
            (json!({"variable": "a"}), "steps[1].condition.type"),
            (json!({"type": 7}), "steps[1].condition.type"),
            (json!("a > 1"), "steps[1].condition"),
            (
                json!({"type": "expression", "expression": "a >"}),
                "steps[1].condition.expression",
            ),
            (
                json!({"type": "expression"}),
                "steps[1].condition.expression",
            ),
            (
                json!({"type": "expression", "expression": true}),
                "steps[1].condition.expression",
            ),
            (
                json!({"type": "expression", "expression": "a", "lang": "cel"}),
                "steps[1].condition.lang",
            ),
            (
                json!({"type": "logical", "operator": "xor", "conditions": []}),
                "steps[1].condition.operator",
            ),
            (
                json!({"type": "logical", "operator": "and", "conditions": {}}),
                "steps[1].condition.conditions",
            ),
            (
                json!({"type": "logical", "operator": "and", "conditions": [
                    cmp("a", "eq", json!(1)),
                    {"type": "comparison", "variable": "b", "operator": "like", "value": 1}]}),
                "steps[1].condition.conditions[1].operator",
            ),
            (
                json!({"type": "logical", "operator": "not", "conditions": [3]}),
                "steps[1].condition.conditions[0]",
            ),
        ];
        for (c, field) in cases {
            refused(cond(c), "INVALID_CONDITION", Some("s"), Some(field));
        }
        // `exists` alone may leave `value` out; `eq` may compare with an explicit null.
        for c in [
            json!({"type": "comparison", "variable": "a", "operator": "exists"}),
            cmp("a", "exists", json!(false)),
            cmp("a", "eq", Value::Null),
            cmp("a", "gt", json!("m")),
            cmp("a", "in", json!([])),
        ] {
            assert_eq!(
                validate_workflow(&parse(cond(c.clone())), &Limits::default()),
                Ok(()),
                "{c}"
            );
        }
        // A bad condition in a step with an invalid id names no step.
        let v = workflow(json!([{"id": "a b", "capability": "c",
            "condition": {"type": "comparison", "operator": "approximately"}}]));
        refused(v, "VALIDATION_FAILED", None, Some("steps[0].id"));
        // `javascript` stays UNSAFE_CONDITION, whatever else it carries.
        refused(
            cond(json!({"type": "javascript", "code": "1", "operator": "nope"})),
            "UNSAFE_CONDITION",
            Some("s"),
            Some("steps[1].condition.type"),
        );
    }

    #[test]
    fn placeholders() {
        refused(
            one(json!({"inputs": {"x": {"y": ["ok", "${bad path}"]}}})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].inputs.x.y[1]"),
        );
        refused(
            one(json!({"inputs": {"x": "${unterminated"}})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].inputs.x"),
        );
        refused(
            one(json!({"inputs": {"x": "${steps.a.inputs.k}"}})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].inputs.x"),
        );
        refused(
            one(json!({"inputs": {"x": "${execution.secret}"}})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].inputs.x"),
        );
        let mut v = workflow(json!([step("a")]));
        v["expectedOutputs"] = json!({"k": "${a b}"});
        refused(
            v.clone(),
            "INVALID_PLACEHOLDER",
            None,
            Some("expectedOutputs.k"),
        );
        v["expectedOutputs"] = json!({"k": "${steps.zz.outputs}"});
        refused(v, "INVALID_PLACEHOLDER", None, Some("expectedOutputs.k"));
    }

    #[test]
    fn compensation() {
        refused(
            one(json!({"compensate": {"capability": ""}})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].compensate.capability"),
        );
        refused(
            one(json!({"compensate": {"capability": "undo", "agentId": "a b"}})),
            "VALIDATION_FAILED",
            Some("s"),
            Some("steps[1].compensate.agentId"),
        );
        refused(
            one(json!({"compensate": {"capability": "undo", "inputs": {"k": "${}"}}})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].compensate.inputs.k"),
        );
    }

    #[test]
    fn step_references_must_name_ancestors() {
        let v = |inputs: Value| {
            workflow(json!([
                step("a"),
                with(step("b"), json!({"dependencies": ["a"]})),
                step("sibling"),
                with(step("s"), json!({"dependencies": ["b"], "inputs": inputs})),
            ]))
        };
        let ok = |v: Value| assert_eq!(validate_workflow(&parse(v), &Limits::default()), Ok(()));
        ok(v(
            json!({"x": "${steps.a.outputs.k}", "y": "${steps.b.outputs}"}),
        ));
        refused(
            v(json!({"x": "${steps.sibling.outputs.k}"})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[3].inputs.x"),
        );
        refused(
            v(json!({"x": "${steps.s.outputs.k}"})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            None,
        );
        refused(
            v(json!({"x": "${steps.zz.outputs.k}"})),
            "INVALID_PLACEHOLDER",
            Some("s"),
            None,
        );
        // A dependent is not an ancestor.
        let w = workflow(json!([
            with(step("a"), json!({"inputs": {"x": "${steps.b.outputs}"}})),
            with(step("b"), json!({"dependencies": ["a"]})),
        ]));
        refused(w, "INVALID_PLACEHOLDER", Some("a"), None);
        // Condition variables.
        let w = workflow(json!([
            step("a"),
            with(
                step("s"),
                json!({"condition":
            cmp("steps.a.outputs.ok", "eq", json!(true))})
            )
        ]));
        refused(
            w,
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].condition.variable"),
        );
        // Compensation may name the step itself, not others.
        let w = |k: &str| {
            workflow(json!([
                step("a"),
                with(
                    step("s"),
                    json!({"compensate":
            {"capability": "undo", "inputs": {"k": format!("${{steps.{k}.outputs.id}}")}}})
                )
            ]))
        };
        ok(w("s"));
        refused(
            w("a"),
            "INVALID_PLACEHOLDER",
            Some("s"),
            Some("steps[1].compensate.inputs.k"),
        );
    }

    #[test]
    fn fallback_references_need_every_stood_in_step() {
        let w = |fb_inputs: Value| {
            workflow(json!([
                step("shared"),
                step("only-x"),
                with(
                    step("x"),
                    json!({"dependencies": ["shared", "only-x"],
                    "errorHandler": {"type": "fallback", "action": "fb"}})
                ),
                with(
                    step("y"),
                    json!({"dependencies": ["shared"],
                    "errorHandler": {"type": "fallback", "action": "fb"}})
                ),
                with(step("fb"), json!({"inputs": fb_inputs})),
            ]))
        };
        assert_eq!(
            validate_workflow(
                &parse(w(json!({"k": "${steps.shared.outputs.v}"}))),
                &Limits::default()
            ),
            Ok(())
        );
        refused(
            w(json!({"k": "${steps.only-x.outputs.v}"})),
            "INVALID_PLACEHOLDER",
            Some("fb"),
            Some("steps[4].inputs.k"),
        );
        refused(
            w(json!({"k": "${steps.x.outputs.v}"})),
            "INVALID_PLACEHOLDER",
            Some("fb"),
            None,
        );
    }

    #[test]
    fn first_error_in_document_order() {
        // Step a's placeholder comes before step b's missing capability.
        let v = workflow(json!([
            with(step("a"), json!({"inputs": {"x": "${}"}})),
            {"id": "b", "capability": ""},
        ]));
        refused(v, "INVALID_PLACEHOLDER", Some("a"), None);
        // Step-local problems come before a cycle; a cycle before references.
        let v = workflow(json!([
            with(
                step("a"),
                json!({"dependencies": ["b"], "inputs": {"x": "${steps.c.outputs}"}})
            ),
            with(step("b"), json!({"dependencies": ["a"]})),
            with(step("c"), json!({"capability": ""})),
        ]));
        refused(
            v,
            "VALIDATION_FAILED",
            Some("c"),
            Some("steps[2].capability"),
        );
        let v = workflow(json!([
            with(
                step("a"),
                json!({"dependencies": ["b"], "inputs": {"x": "${steps.c.outputs}"}})
            ),
            with(step("b"), json!({"dependencies": ["a"]})),
            step("c"),
        ]));
        refused(v, "CYCLE_DETECTED", Some("a"), None);
        // Within a step: dependencies before the retry policy.
        refused(
            one(json!({"dependencies": ["zz"], "retryPolicy": {"maxAttempts": 0}})),
            "UNKNOWN_DEPENDENCY",
            Some("s"),
            None,
        );
    }

    /// A random DAG: step j depends on a subset of the steps before it.
    fn dag() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..14).prop_flat_map(|n| {
            (0..n)
                .map(|j| proptest::collection::vec(any::<bool>(), j))
                .collect::<Vec<_>>()
                .prop_map(|masks| {
                    masks
                        .into_iter()
                        .map(|m| {
                            m.iter()
                                .enumerate()
                                .filter(|(_, b)| **b)
                                .map(|(i, _)| i)
                                .collect()
                        })
                        .collect()
                })
        })
    }

    fn dag_workflow(deps: &[Vec<usize>]) -> Workflow {
        let steps: Vec<Value> = deps
            .iter()
            .enumerate()
            .map(|(j, ds)| {
                let names: Vec<String> = ds.iter().map(|i| format!("s{i}")).collect();
                json!({"id": format!("s{j}"), "capability": "c", "dependencies": names,
                       "inputs": {"from": ds.iter().map(|i| format!("${{steps.s{i}.outputs}}"))
                                          .collect::<Vec<_>>()}})
            })
            .collect();
        parse(workflow(Value::Array(steps)))
    }

    proptest! {
        #![proptest_config(crate::choreography::proptest_config(128))]

        #[test]
        fn random_dags_are_accepted_and_back_edges_are_cycles(
            deps in dag(), pick in any::<proptest::sample::Index>()
        ) {
            let wf = dag_workflow(&deps);
            prop_assert_eq!(validate_workflow(&wf, &Limits::default()), Ok(()));
            let plan = WorkflowPlan::new(&wf).expect("plan");
            // The topological order respects every edge.
            let pos: Vec<usize> = {
                let mut p = vec![0; plan.len()];
                for (k, &i) in plan.topo_order().iter().enumerate() { p[i] = k; }
                p
            };
            for (j, ds) in deps.iter().enumerate() {
                for &i in ds {
                    prop_assert!(pos[i] < pos[j]);
                    prop_assert!(plan.is_ancestor(i, j));
                }
            }
            // Scope order: every ancestor once, nearest first.
            for (j, ds) in deps.iter().enumerate() {
                let anc = plan.scope_ancestors(j);
                let mut sorted = anc.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), anc.len());
                if let Some(&first) = anc.first() {
                    prop_assert!(ds.contains(&first));
                }
            }
            // A back edge: some i depends on j, where j is i itself or a descendant of i.
            let i = pick.index(deps.len());
            let mut reach = plan.descendants(i);
            reach.push(i);
            let j = reach[pick.index(reach.len())];
            let mut cyclic = deps.clone();
            cyclic[i].push(j);
            let bad = dag_workflow(&cyclic);
            let err = validate_workflow(&bad, &Limits::default()).expect_err("cycle");
            prop_assert_eq!(err.code(), "CYCLE_DETECTED");
            let Error::Invalid { details, .. } = &err else { unreachable!() };
            let cycle = details.cycle.clone().unwrap_or_default();
            prop_assert!(cycle.len() >= 2);
            prop_assert_eq!(cycle.first(), cycle.last());
            prop_assert_eq!(details.step_id.as_ref(), cycle.first());
            for w in cycle.windows(2) {
                let later = bad.step(&w[1]).expect("step");
                prop_assert!(later.dependencies.contains(&w[0]), "{:?}", cycle);
            }
            prop_assert_eq!(WorkflowPlan::new(&bad).expect_err("cycle").code(), "CYCLE_DETECTED");
        }

        #[test]
        fn arbitrary_workflow_shapes_never_panic(v in workflow_shape()) {
            if let Ok(wf) = serde_json::from_value::<Workflow>(v) {
                let _ = validate_workflow(&wf, &Limits::default());
                if let Ok(plan) = WorkflowPlan::new(&wf) {
                    let steps: Vec<_> = (0..plan.len())
                        .map(|i| StepExecution::new(plan.step_id(i))).collect();
                    let _ = get_next_steps(&plan, &steps);
                    let scope = Scope::default();
                    for (i, step) in wf.steps.iter().enumerate() {
                        let _ = plan.evaluate_step_condition(i, &scope, &CelBudget::default());
                        let _ = substitute_variables(&step.inputs, &scope);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_json_never_panics(v in any_json()) {
            if let Ok(wf) = serde_json::from_value::<Workflow>(v.clone()) {
                let _ = validate_workflow(&wf, &Limits::default());
                let _ = WorkflowPlan::new(&wf);
            }
            let _ = substitute_value(&v, &Scope::default());
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "\\PC{0,10}".prop_map(Value::String),
            "[$\\{\\}a.]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("name".to_owned()),
                        Just("steps".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Workflow-shaped JSON with random, often wrong, contents.
    fn workflow_shape() -> impl Strategy<Value = Value> {
        let id = prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just("d"),
            Just(""),
            Just("a.b")
        ]
        .prop_map(str::to_owned);
        let text = prop_oneof![
            "\\PC{0,12}",
            "[a-z${}. ]{0,12}",
            Just("${steps.a.outputs.x}".to_owned()),
            Just("${steps.b.outputs}".to_owned()),
            Just("a > 1 && (".to_owned()),
            Just("[1].all(x, x > 0)".to_owned()),
        ];
        let leaf_cond = prop_oneof![
            (
                text.clone(),
                prop_oneof![
                    Just("eq"),
                    Just("in"),
                    Just("exists"),
                    Just("gt"),
                    Just("contains"),
                    Just("bogus")
                ],
                any_json()
            )
                .prop_map(|(v, op, value)| json!({"type": "comparison", "variable": v,
                    "operator": op, "value": value})),
            text.clone()
                .prop_map(|e| json!({"type": "expression", "expression": e})),
            Just(json!({"type": "javascript", "code": "x"})),
            Just(json!({"type": 3})),
        ];
        let cond = leaf_cond.prop_recursive(3, 12, 3, |inner| {
            (
                prop_oneof![Just("and"), Just("or"), Just("not")],
                proptest::collection::vec(inner, 0..3),
            )
                .prop_map(|(op, cs)| json!({"type": "logical", "operator": op, "conditions": cs}))
        });
        let handler = prop_oneof![
            (
                prop_oneof![
                    Just("fallback"),
                    Just("callback"),
                    Just("retry"),
                    Just("skip")
                ],
                prop_oneof![
                    id.clone(),
                    Just("https://x.example".to_owned()),
                    text.clone()
                ],
                proptest::option::of(any_json())
            )
                .prop_map(|(t, a, p)| {
                    let mut h = json!({"type": t, "action": a});
                    if let Some(p) = p {
                        h["params"] = p;
                    }
                    h
                }),
        ];
        let step = (
            id.clone(),
            proptest::collection::vec(id.clone(), 0..3),
            proptest::option::of(handler),
            proptest::option::of(cond),
            proptest::collection::btree_map(
                "[a-z]{1,3}",
                text.clone().prop_map(Value::String),
                0..3,
            ),
            proptest::option::of(0u64..3),
        )
            .prop_map(|(id, deps, h, c, inputs, timeout)| {
                let mut s = json!({"id": id, "capability": "cap", "dependencies": deps,
                    "inputs": Value::Object(inputs.into_iter().collect())});
                if let Some(h) = h {
                    s["errorHandler"] = h;
                }
                if let Some(c) = c {
                    s["condition"] = c;
                }
                if let Some(t) = timeout {
                    s["timeout"] = json!(t);
                }
                s
            });
        (
            proptest::collection::vec(step, 0..6),
            proptest::collection::btree_map("[a-z]{1,3}", text.prop_map(Value::String), 0..3),
        )
            .prop_map(|(steps, expected)| {
                json!({"id": "w", "name": "n", "steps": steps,
                "expectedOutputs": Value::Object(expected.into_iter().collect())})
            })
    }
}
