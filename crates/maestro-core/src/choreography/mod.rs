//! The Choreography Engine: pure functions over workflow definitions and an
//! execution's state. No clock, no I/O, and no panic on any input.
//!
//! - [`validate_workflow`] checks a definition (DAG, fallbacks, conditions,
//!   placeholders) and answers the first problem in document order.
//! - [`WorkflowPlan`] indexes one workflow revision once: step indices, dependencies
//!   both ways, topological order, fallbacks, scope priority, compiled CEL.
//! - [`get_next_steps`] / [`blocked_by_failure`] decide readiness.
//! - [`Scope`], [`substitute_variables`], [`evaluate_condition`] and
//!   [`resolve_expected_outputs`] give a step its inputs, its condition and the
//!   execution its `result`.
//!
//! # Readiness
//! A step is ready when it is `pending`, is not fallback-only, and each dependency is
//! `completed`, or `skipped` with no error or with an error code other than
//! `DEPENDENCY_FAILED` / `CANCELLED` (a false condition, the `skip` handler). A
//! dependency that `failed`, or was skipped with one of those two codes, blocks it for
//! good ([`blocked_by_failure`]); the state machine then skips it with
//! `DEPENDENCY_FAILED`, and so on down to every descendant.
//!
//! # Scope and placeholders
//! A step sees, highest priority first: the outputs of its completed ancestors
//! (nearest first, distance being the shortest dependency path; at equal distance the
//! step listed later in the workflow wins; [`WorkflowPlan::scope_ancestors`] gives the
//! order), then the execute call's `inputs`, then `initialInputs`. A fallback-only step
//! sees the ancestors of the steps it stands in for. Besides, `steps.<id>.outputs[.path]`
//! names an ancestor's outputs, and `execution.id` / `execution.correlationId` the
//! execution; `steps` and `execution` are reserved first segments.
//!
//! A path is segments of `[A-Za-z0-9_-]` separated by dots; a numeric segment indexes
//! an array (`${order.items.0.sku}`). In any string of a step's `inputs` (nested
//! objects and arrays too; keys are left alone):
//! - a string that is exactly `"${x}"` becomes the value of `x`, with its JSON type;
//! - `${x}` inside a longer string is interpolated: strings as they are, other values
//!   as compact JSON;
//! - `$${` is a literal `${`, scanning left to right (`$$${x}` gives `$${x}`: a `$`,
//!   then the escape);
//! - substituted values are never substituted again.
//!
//! A placeholder that does not resolve fails the step with `UNRESOLVED_VARIABLE`
//! ([`Unresolved`]).
//!
//! # Conditions
//! Structured data, or CEL; nothing is ever `eval`ed.
//! - `comparison`: `eq neq gt gte lt lte in not_in exists contains`. A missing variable
//!   or a type mismatch makes every comparison false, `neq` and `not_in` included.
//!   `eq`/`neq` are deep JSON equality, numbers compared numerically (`1 == 1.0`);
//!   `gt gte lt lte` compare two numbers or two strings (their `value` must be one);
//!   `in`/`not_in` need an array value; `value` is required by every operator but
//!   `exists`; `contains`: substring of a string, element of an array (deep equality), key
//!   of an object; `exists` with value `true` (or absent) tests presence, `false`
//!   absence.
//! - `logical`: `and`/`or` over at least one condition, `not` over exactly one.
//! - `expression`: CEL (via `cel-interpreter`) with every top-level variable bound by
//!   name, plus `steps` (`steps["verify-user"].outputs.valid`) and `execution`. The
//!   result must be a bool; anything else, or any evaluation error, is a
//!   [`ConditionError`] and the step fails with `CONDITION_ERROR`. Expressions first
//!   pass a strict syntax check with a nesting budget ([`MAX_NESTING_COST`]), because
//!   the library panics or overflows the stack on some inputs; message construction,
//!   optional syntax (`.?`, `[?`), escaped identifiers and leading-dot names are not
//!   supported. Their work is bounded by a [`CelBudget`]: an expression whose worst case
//!   is over it is refused at definition (each variable counting as one element), and
//!   before each evaluation on the real values (a [`ConditionError`]), without running.
//!
//! # Validation
//! [`validate_workflow`] reports the first error in document order, each with its code
//! and `details`: `field`, a path from the workflow's root (`steps[2].errorHandler.action`,
//! `steps[0].condition.conditions[1].value`); `stepId`, the offending step (absent when
//! its id is invalid; a fallback target that has dependencies is itself the offending
//! step, at `steps[t].dependencies`); `cycle`:
//! 1. the workflow `id` (`VALIDATION_FAILED`), a non-empty `name`, 1 to
//!    [`Limits::max_steps`] steps;
//! 2. per step, in order: its id, `DUPLICATE_STEP_ID`, a non-empty capability, a valid
//!    `agentId`, dependencies that exist (`UNKNOWN_DEPENDENCY`; depending on itself is
//!    `CYCLE_DETECTED`), the retry policy ([`validate_retry_policy`]), `timeout > 0`, the
//!    error handler (`fallback`: `action` names another step, which has no dependencies,
//!    is no step's dependency and has no fallback handler of its own, else
//!    `UNKNOWN_FALLBACK`; `callback`: an `http(s)://` URL; `retry`: `params`, if any, a
//!    valid retry policy), the condition (`javascript` is `UNSAFE_CONDITION`; another
//!    unknown type, a malformed condition (an unknown field or operator, a missing or
//!    ill-typed operand: [`Malformed`](crate::model::ExecutionCondition::Malformed)), a
//!    malformed logical, a bad comparison value, CEL that does not parse or is too
//!    long, or nesting beyond [`Limits::max_condition_depth`] is `INVALID_CONDITION`),
//!    placeholder syntax in `inputs` (`INVALID_PLACEHOLDER`, as is
//!    `steps.x` without `.outputs` or an unknown `execution.*`), then `compensate`
//!    (capability, `agentId`, placeholder syntax of its inputs);
//! 3. dependency cycles: `CYCLE_DETECTED` with the cycle in execution order, starting
//!    and ending at its first-listed step (`["a", "b", "c", "a"]`);
//! 4. per step: every `steps.X` in its inputs and condition variables names an
//!    ancestor (for a fallback-only step, an ancestor of every step it stands in for);
//!    in `compensate.inputs` the step itself too; else `INVALID_PLACEHOLDER`;
//! 5. placeholder syntax in `expectedOutputs`, whose `steps.X` must name a step.
//!
//! [`WorkflowPlan::new`] refuses the structural problems (duplicate ids, dependencies,
//! fallbacks, cycles) with the same errors, and never panics on an unvalidated
//! workflow.
//!
//! # Example
//! ```
//! use maestro_core::choreography::{
//!     get_next_steps, substitute_variables, validate_workflow, Limits, Scope, WorkflowPlan,
//! };
//! use maestro_core::model::{StepExecution, StepStatus, Workflow};
//! use serde_json::json;
//!
//! let wf: Workflow = serde_json::from_value(json!({
//!     "id": "auth-flow", "name": "Auth flow",
//!     "steps": [
//!         {"id": "verify", "capability": "verify_signature", "inputs": {"data": "${payload}"}},
//!         {"id": "issue", "capability": "issue_jwt", "dependencies": ["verify"],
//!          "inputs": {"user": "${steps.verify.outputs.user}", "note": "user ${user.name}"}}
//!     ]
//! }))?;
//! validate_workflow(&wf, &Limits::default())?;
//! let plan = WorkflowPlan::new(&wf)?;
//!
//! let mut steps: Vec<StepExecution> =
//!     (0..plan.len()).map(|i| StepExecution::new(plan.step_id(i))).collect();
//! assert_eq!(get_next_steps(&plan, &steps), vec![0]);
//!
//! // `verify` completed: `issue` is ready and sees its outputs.
//! let outputs = json!({"user": {"name": "Ada", "id": 7}});
//! steps[0].status = StepStatus::Completed;
//! steps[0].outputs = outputs.as_object().cloned();
//! assert_eq!(get_next_steps(&plan, &steps), vec![1]);
//!
//! let verify_out = steps[0].outputs.as_ref().expect("outputs");
//! let scope = Scope {
//!     layers: vec![verify_out],
//!     steps: vec![("verify", verify_out)],
//!     execution_id: "exec-1",
//!     correlation_id: "exec-1",
//! };
//! let inputs = substitute_variables(&wf.steps[1].inputs, &scope)?;
//! assert_eq!(inputs["user"], json!({"name": "Ada", "id": 7}));
//! assert_eq!(inputs["note"], json!("user Ada"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod budget;
mod cel;
mod condition;
mod plan;
mod scope;
mod template;
mod validate;

pub use budget::CelBudget;
pub use cel::MAX_NESTING_COST;
pub use condition::{ConditionError, evaluate_condition};
pub use plan::{WorkflowPlan, blocked_by_failure, get_next_steps};
pub use scope::{Scope, ScopeSnapshot};
pub use template::{
    Unresolved, resolve_expected_outputs, substitute_value, substitute_variables, template_paths,
};
pub use validate::{Limits, MAX_ATTEMPTS, validate_retry_policy, validate_workflow};

/// Proptest settings for this module: a modest case count, and no regression files
/// written into the source tree.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Workflow;
    use serde_json::{Map, Value, json};

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    /// initialInputs < execute inputs < far ancestor < near ancestor; at equal distance
    /// the step listed later wins. Layers built the way the state machine builds them.
    #[test]
    fn scope_priority_end_to_end() {
        let wf: Workflow = serde_json::from_value(json!({"id": "w", "name": "w", "steps": [
            {"id": "far", "capability": "c"},
            {"id": "near", "capability": "c", "dependencies": ["far"]},
            {"id": "twin1", "capability": "c"},
            {"id": "twin2", "capability": "c"},
            {"id": "s", "capability": "c", "dependencies": ["twin2", "near", "twin1"],
             "inputs": {"k": "${k}", "e": "${e}", "f": "${f}", "t": "${t}", "i": "${i}",
                        "direct": "${steps.far.outputs.f}"}},
        ]}))
        .expect("workflow");
        assert_eq!(validate_workflow(&wf, &Limits::default()), Ok(()));
        let plan = WorkflowPlan::new(&wf).expect("plan");
        let initial = obj(json!({"k": "initial", "e": "initial", "f": "initial", "i": "initial"}));
        let execute = obj(json!({"k": "execute", "e": "execute", "f": "execute"}));
        let outputs = [
            obj(json!({"k": "far", "f": "far"})),
            obj(json!({"k": "near", "t": "near"})),
            obj(json!({"t": "twin1"})),
            obj(json!({"t": "twin2"})),
        ];
        let s = plan.index_of("s").expect("s");
        let mut scope = Scope {
            execution_id: "x",
            correlation_id: "x",
            ..Scope::default()
        };
        for &a in plan.scope_ancestors(s) {
            scope.layers.push(&outputs[a]);
            scope.steps.push((plan.step_id(a), &outputs[a]));
        }
        scope.layers.push(&execute);
        scope.layers.push(&initial);
        let got = substitute_variables(&wf.steps[s].inputs, &scope).expect("resolves");
        assert_eq!(
            Value::Object(got),
            json!({"k": "near", "e": "execute", "f": "far", "t": "twin2", "i": "initial",
                   "direct": "far"})
        );
    }
}
