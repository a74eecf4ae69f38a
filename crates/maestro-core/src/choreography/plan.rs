//! The DAG index of a workflow revision, and readiness.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use super::budget::CelBudget;
use super::condition::{self, ConditionError, Programs};
use super::scope::Scope;
use super::{cel, condition::evaluate_with};
use crate::error::step_codes;
use crate::model::{ErrorHandlerType, ExecutionCondition, StepExecution, StepStatus, Workflow};
use crate::{Code, Error, Result};

/// The path of field `field` of step `i` from the workflow's root
/// (`steps[2].dependencies`), as `details.field` names it.
pub(crate) fn step_field(i: usize, field: &str) -> String {
    format!("steps[{i}].{field}")
}

/// The structural facts of a workflow, looked up while checking it step by step.
pub(crate) struct Lookup<'w> {
    wf: &'w Workflow,
    /// First index of each step id.
    first: HashMap<&'w str, usize>,
    /// Every id named in some step's `dependencies`.
    depended_on: HashSet<&'w str>,
}

impl<'w> Lookup<'w> {
    pub(crate) fn new(wf: &'w Workflow) -> Self {
        let mut first = HashMap::with_capacity(wf.steps.len());
        for (i, s) in wf.steps.iter().enumerate() {
            first.entry(s.id.as_str()).or_insert(i);
        }
        let depended_on = wf
            .steps
            .iter()
            .flat_map(|s| s.dependencies.iter().map(String::as_str))
            .collect();
        Lookup {
            wf,
            first,
            depended_on,
        }
    }

    pub(crate) fn index(&self, id: &str) -> Option<usize> {
        self.first.get(id).copied()
    }

    /// `DUPLICATE_STEP_ID` when step `i` reuses an earlier id.
    pub(crate) fn check_unique(&self, i: usize) -> Result<()> {
        let id = &self.wf.steps[i].id;
        match self.index(id) {
            Some(first) if first != i => Err(Error::invalid(
                Code::DuplicateStepId,
                format!("duplicate step id {id:?} (steps #{first} and #{i})"),
            )
            .step(id.as_str())
            .field(step_field(i, "id"))),
            _ => Ok(()),
        }
    }

    /// Every dependency of step `i` exists and is not the step itself.
    pub(crate) fn check_dependencies(&self, i: usize) -> Result<()> {
        let step = &self.wf.steps[i];
        for dep in &step.dependencies {
            if *dep == step.id {
                return Err(Error::invalid(
                    Code::CycleDetected,
                    format!("step {:?} depends on itself", step.id),
                )
                .step(step.id.as_str())
                .field(step_field(i, "dependencies"))
                .with_cycle(vec![step.id.clone(), step.id.clone()]));
            }
            if self.index(dep).is_none() {
                return Err(Error::invalid(
                    Code::UnknownDependency,
                    format!("step {:?} depends on unknown step {dep:?}", step.id),
                )
                .step(step.id.as_str())
                .field(step_field(i, "dependencies")));
            }
        }
        Ok(())
    }

    /// A `fallback` handler of step `i` names a step that can stand in for it.
    pub(crate) fn check_fallback(&self, i: usize) -> Result<()> {
        let step = &self.wf.steps[i];
        let Some(handler) = step
            .error_handler
            .as_ref()
            .filter(|h| h.handler_type == ErrorHandlerType::Fallback)
        else {
            return Ok(());
        };
        let target = handler.action.as_str();
        let fail = |message: String| {
            Err(Error::invalid(Code::UnknownFallback, message)
                .step(step.id.as_str())
                .field(step_field(i, "errorHandler.action")))
        };
        if target.is_empty() {
            return fail(format!(
                "the fallback handler of step {:?} needs `action`: the id of the step to run \
                 in its place",
                step.id
            ));
        }
        let Some(t) = self.index(target) else {
            return fail(format!(
                "step {:?} falls back to unknown step {target:?}",
                step.id
            ));
        };
        if t == i {
            return fail(format!("step {:?} cannot fall back to itself", step.id));
        }
        let target_step = &self.wf.steps[t];
        if !target_step.dependencies.is_empty() {
            // The target breaks the rule, so it is the step named, at the field to drop.
            return Err(Error::invalid(
                Code::UnknownFallback,
                format!(
                    "fallback step {target:?} (of step {:?}) must not have dependencies: it \
                     runs in place of the failed step, with that step's scope",
                    step.id
                ),
            )
            .step(target)
            .field(step_field(t, "dependencies")));
        }
        if self.depended_on.contains(target) {
            return fail(format!(
                "fallback step {target:?} (of step {:?}) must not be a dependency of any \
                 step: fallback steps are never scheduled on their own",
                step.id
            ));
        }
        if target_step
            .error_handler
            .as_ref()
            .is_some_and(|h| h.handler_type == ErrorHandlerType::Fallback)
        {
            return fail(format!(
                "fallback step {target:?} (of step {:?}) must not have a fallback handler \
                 itself",
                step.id
            ));
        }
        Ok(())
    }
}

/// The dependency graph of a structurally sound workflow.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub(crate) ids: Vec<String>,
    pub(crate) index: HashMap<String, usize>,
    pub(crate) deps: Vec<Vec<usize>>,
    pub(crate) dependents: Vec<Vec<usize>>,
    pub(crate) topo: Vec<usize>,
    pub(crate) fallback_of: Vec<Option<usize>>,
    /// For each step, the steps whose fallback it is (non-empty = fallback-only).
    pub(crate) stands_in_for: Vec<Vec<usize>>,
    /// Scope ancestors in priority order.
    pub(crate) scope: Vec<Vec<usize>>,
    /// The same, sorted, for membership tests.
    scope_sorted: Vec<Vec<usize>>,
}

impl Graph {
    /// Structure checks in document order (duplicate ids, dependencies, fallbacks),
    /// then cycles; then the index.
    pub(crate) fn build(wf: &Workflow) -> Result<Graph> {
        let lookup = Lookup::new(wf);
        for i in 0..wf.steps.len() {
            lookup.check_unique(i)?;
            lookup.check_dependencies(i)?;
            lookup.check_fallback(i)?;
        }
        let n = wf.steps.len();
        let deps: Vec<Vec<usize>> = wf
            .steps
            .iter()
            .map(|s| {
                let mut d: Vec<usize> = s
                    .dependencies
                    .iter()
                    .filter_map(|d| lookup.index(d))
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        let topo = topological_order(&deps, &dependents);
        if topo.len() < n {
            let cycle = find_cycle(&dependents).unwrap_or_default();
            let names: Vec<String> = cycle.iter().map(|&i| wf.steps[i].id.clone()).collect();
            let first = names.first().cloned().unwrap_or_default();
            return Err(Error::invalid(
                Code::CycleDetected,
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .step(first)
            .field(
                cycle
                    .first()
                    .map_or_else(|| "steps".to_owned(), |&i| step_field(i, "dependencies")),
            )
            .with_cycle(names));
        }
        let fallback_of: Vec<Option<usize>> = wf
            .steps
            .iter()
            .map(|s| {
                s.error_handler
                    .as_ref()
                    .filter(|h| h.handler_type == ErrorHandlerType::Fallback)
                    .and_then(|h| lookup.index(&h.action))
            })
            .collect();
        let mut stands_in_for = vec![Vec::new(); n];
        for (i, f) in fallback_of.iter().enumerate() {
            if let Some(f) = *f {
                stands_in_for[f].push(i);
            }
        }
        let distances: Vec<Vec<(usize, usize)>> = (0..n).map(|i| ancestors(&deps, i)).collect();
        let mut scope: Vec<Vec<usize>> = Vec::with_capacity(n);
        for i in 0..n {
            let mut with_distance = if stands_in_for[i].is_empty() {
                distances[i].clone()
            } else {
                let mut nearest: HashMap<usize, usize> = HashMap::new();
                for &r in &stands_in_for[i] {
                    for &(a, d) in &distances[r] {
                        let e = nearest.entry(a).or_insert(d);
                        *e = (*e).min(d);
                    }
                }
                nearest.into_iter().collect()
            };
            with_distance.sort_unstable_by_key(|&(a, d)| (d, Reverse(a)));
            scope.push(with_distance.into_iter().map(|(a, _)| a).collect());
        }
        let scope_sorted = scope
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.sort_unstable();
                s
            })
            .collect();
        Ok(Graph {
            ids: wf.steps.iter().map(|s| s.id.clone()).collect(),
            index: lookup
                .first
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            deps,
            dependents,
            topo,
            fallback_of,
            stands_in_for,
            scope,
            scope_sorted,
        })
    }

    pub(crate) fn is_ancestor(&self, a: usize, of: usize) -> bool {
        self.scope_sorted
            .get(of)
            .is_some_and(|s| s.binary_search(&a).is_ok())
    }
}

/// Kahn's algorithm, the lowest index first among the ready: deterministic and as
/// close to the document order as the dependencies allow.
fn topological_order(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut missing: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = missing
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == 0)
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            missing[d] -= 1;
            if missing[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    order
}

/// A cycle along dependency edges in execution direction (each step is followed by one
/// that depends on it), starting and ending at its lowest-index step: `[a, b, c, a]`.
fn find_cycle(dependents: &[Vec<usize>]) -> Option<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let n = dependents.len();
    let mut color = vec![WHITE; n];
    for start in 0..n {
        if color[start] != WHITE {
            continue;
        }
        color[start] = GREY;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = stack.last_mut() {
            let (u, next) = *top;
            let Some(&v) = dependents[u].get(next) else {
                color[u] = BLACK;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match color[v] {
                WHITE => {
                    color[v] = GREY;
                    stack.push((v, 0));
                }
                GREY => {
                    let from = stack.iter().position(|&(x, _)| x == v)?;
                    let mut cycle: Vec<usize> = stack[from..].iter().map(|&(x, _)| x).collect();
                    let lowest = (0..cycle.len()).min_by_key(|&k| cycle[k])?;
                    cycle.rotate_left(lowest);
                    cycle.push(cycle[0]);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

/// Every ancestor of `i` with its distance (the shortest dependency path), by BFS.
fn ancestors(deps: &[Vec<usize>], i: usize) -> Vec<(usize, usize)> {
    let mut seen = vec![false; deps.len()];
    seen[i] = true;
    let mut out = Vec::new();
    let mut queue: VecDeque<(usize, usize)> = deps[i].iter().map(|&d| (d, 1)).collect();
    for &d in &deps[i] {
        seen[d] = true;
    }
    while let Some((a, dist)) = queue.pop_front() {
        out.push((a, dist));
        for &p in &deps[a] {
            if !seen[p] {
                seen[p] = true;
                queue.push_back((p, dist + 1));
            }
        }
    }
    out
}

/// The precomputed DAG index of one workflow revision: step indices (workflow order),
/// dependencies both ways, a topological order, fallbacks, scope priority, and the
/// compiled CEL programs of the step conditions. Built once per revision, shared by
/// all its executions (`Send + Sync`).
///
/// Methods taking a step index never panic: an index out of range answers empty,
/// `false` or `None`.
#[derive(Debug, Clone)]
pub struct WorkflowPlan {
    graph: Graph,
    conditions: Vec<Option<ExecutionCondition>>,
    programs: Vec<Programs>,
}

impl WorkflowPlan {
    /// Index a workflow. Refuses structure problems with the same errors as
    /// [`validate_workflow`](super::validate_workflow): duplicate step ids, unknown or
    /// self dependencies, misused fallbacks, cycles. Other problems (a condition that
    /// does not compile, say) surface when used, as a [`ConditionError`].
    pub fn new(wf: &Workflow) -> Result<WorkflowPlan> {
        let graph = Graph::build(wf)?;
        let conditions: Vec<Option<ExecutionCondition>> =
            wf.steps.iter().map(|s| s.condition.clone()).collect();
        let programs = conditions
            .iter()
            .map(|c| {
                let mut p = Programs::new();
                if let Some(c) = c {
                    condition::compile_all(c, &mut p, 1);
                }
                p
            })
            .collect();
        Ok(WorkflowPlan {
            graph,
            conditions,
            programs,
        })
    }

    pub fn len(&self) -> usize {
        self.graph.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.ids.is_empty()
    }

    pub fn index_of(&self, step_id: &str) -> Option<usize> {
        self.graph.index.get(step_id).copied()
    }

    /// The id of step `i` (`""` when out of range).
    pub fn step_id(&self, i: usize) -> &str {
        self.graph.ids.get(i).map_or("", String::as_str)
    }

    /// The dependencies of step `i`, as step indices in workflow order.
    pub fn deps(&self, i: usize) -> &[usize] {
        self.graph.deps.get(i).map_or(&[], Vec::as_slice)
    }

    /// The steps that depend on step `i` directly, in workflow order.
    pub fn dependents(&self, i: usize) -> &[usize] {
        self.graph.dependents.get(i).map_or(&[], Vec::as_slice)
    }

    /// All steps, dependencies before dependents; among steps free to go, the one
    /// listed first in the workflow comes first.
    pub fn topo_order(&self) -> &[usize] {
        &self.graph.topo
    }

    /// Step `i` is some step's fallback: never scheduled on its own.
    pub fn is_fallback_only(&self, i: usize) -> bool {
        self.graph
            .stands_in_for
            .get(i)
            .is_some_and(|s| !s.is_empty())
    }

    /// The step that runs in place of step `i` when its fallback handler fires.
    pub fn fallback_of(&self, i: usize) -> Option<usize> {
        self.graph.fallback_of.get(i).copied().flatten()
    }

    /// The steps a fallback-only step `i` stands in for, in workflow order (empty
    /// for other steps).
    pub fn stands_in_for(&self, i: usize) -> &[usize] {
        self.graph.stands_in_for.get(i).map_or(&[], Vec::as_slice)
    }

    /// All ancestors of step `i` in scope priority order: nearest first (distance =
    /// length of the shortest dependency path), at equal distance the step listed
    /// later in the workflow first. For a fallback-only step: the union of the
    /// ancestors of the steps it stands in for (each at its smallest distance), same
    /// order.
    pub fn scope_ancestors(&self, i: usize) -> &[usize] {
        self.graph.scope.get(i).map_or(&[], Vec::as_slice)
    }

    /// `a` is in the scope ancestors of `of` (see [`Self::scope_ancestors`]).
    pub fn is_ancestor(&self, a: usize, of: usize) -> bool {
        self.graph.is_ancestor(a, of)
    }

    /// Every step that depends on step `i`, directly or not, in workflow order.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        let n = self.len();
        if i >= n {
            return Vec::new();
        }
        let mut seen = vec![false; n];
        let mut stack: Vec<usize> = self.dependents(i).to_vec();
        while let Some(d) = stack.pop() {
            if !seen[d] {
                seen[d] = true;
                stack.extend_from_slice(self.dependents(d));
            }
        }
        (0..n).filter(|&d| seen[d]).collect()
    }

    /// Whether the condition of step `i` has CEL in it: its evaluation may then take
    /// up to its [`CelBudget`], and belongs off the executor's loop.
    pub fn condition_has_cel(&self, i: usize) -> bool {
        self.programs.get(i).is_some_and(|p| !p.is_empty())
    }

    /// Evaluate the condition of step `i` (`true` when it has none), using the CEL
    /// programs compiled in [`Self::new`], each refused over `budget`.
    pub fn evaluate_step_condition(
        &self,
        i: usize,
        scope: &Scope<'_>,
        budget: &CelBudget,
    ) -> std::result::Result<bool, ConditionError> {
        let Some(slot) = self.conditions.get(i) else {
            return Err(ConditionError::new(format!("no step with index {i}")));
        };
        let Some(c) = slot else {
            return Ok(true);
        };
        let programs = self.programs.get(i);
        evaluate_with(c, scope, &|expression| {
            let cached = programs.and_then(|p| p.iter().find(|(e, _)| e == expression));
            match cached {
                Some((_, Ok(program))) => cel::evaluate(program, scope, budget),
                Some((_, Err(e))) => {
                    Err(ConditionError::new(format!("invalid CEL expression: {e}")))
                }
                None => {
                    let program = cel::compile(expression)
                        .map_err(|e| ConditionError::new(format!("invalid CEL expression: {e}")))?;
                    cel::evaluate(&program, scope, budget)
                }
            }
        })
    }
}

/// A dependency that lets its dependents go: completed, or skipped by a false
/// condition or the `skip` handler (no error, or one that is not a failure cascade).
fn satisfies(s: &StepExecution) -> bool {
    match s.status {
        StepStatus::Completed => true,
        StepStatus::Skipped => !skipped_by_failure(s),
        _ => false,
    }
}

fn skipped_by_failure(s: &StepExecution) -> bool {
    s.status == StepStatus::Skipped
        && s.error.as_ref().is_some_and(|e| {
            e.code == step_codes::DEPENDENCY_FAILED || e.code == step_codes::CANCELLED
        })
}

/// The steps ready to start, in workflow order: `pending`, not fallback-only, and every
/// dependency completed or skipped without a failure cascade. `steps[i]` is the
/// execution of plan step `i`; a missing entry is never ready and never satisfies.
pub fn get_next_steps(plan: &WorkflowPlan, steps: &[StepExecution]) -> Vec<usize> {
    (0..plan.len())
        .filter(|&i| {
            steps
                .get(i)
                .is_some_and(|s| s.status == StepStatus::Pending)
                && !plan.is_fallback_only(i)
                && plan
                    .deps(i)
                    .iter()
                    .all(|&d| steps.get(d).is_some_and(satisfies))
        })
        .collect()
}

/// Step `i` can never run: some dependency failed, or was skipped with
/// `DEPENDENCY_FAILED` / `CANCELLED`.
pub fn blocked_by_failure(plan: &WorkflowPlan, steps: &[StepExecution], i: usize) -> bool {
    plan.deps(i).iter().any(|&d| {
        steps
            .get(d)
            .is_some_and(|s| s.status == StepStatus::Failed || skipped_by_failure(s))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExecutionError;
    use serde_json::json;

    fn wf(steps: serde_json::Value) -> Workflow {
        serde_json::from_value(json!({"id": "w", "name": "w", "steps": steps})).expect("workflow")
    }

    fn plan(steps: serde_json::Value) -> WorkflowPlan {
        WorkflowPlan::new(&wf(steps)).expect("plan")
    }

    fn ids(p: &WorkflowPlan, v: &[usize]) -> Vec<String> {
        v.iter().map(|&i| p.step_id(i).to_owned()).collect()
    }

    #[test]
    fn plan_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone>() {}
        assert_traits::<WorkflowPlan>();
    }

    #[test]
    fn index_and_orders() {
        let p = plan(json!([
            {"id": "d", "capability": "c", "dependencies": ["b", "c", "b"]},
            {"id": "b", "capability": "c", "dependencies": ["a"]},
            {"id": "a", "capability": "c"},
            {"id": "c", "capability": "c", "dependencies": ["a"]},
        ]));
        assert_eq!(p.len(), 4);
        assert!(!p.is_empty());
        assert_eq!(p.index_of("c"), Some(3));
        assert_eq!(p.index_of("zz"), None);
        assert_eq!(p.deps(0), &[1, 3], "deduplicated, workflow order");
        assert_eq!(p.dependents(2), &[1, 3]);
        assert_eq!(ids(&p, p.topo_order()), ["a", "b", "c", "d"]);
        assert_eq!(ids(&p, &p.descendants(2)), ["d", "b", "c"]);
        assert_eq!(p.descendants(0), Vec::<usize>::new());
        assert!(p.is_ancestor(2, 0));
        assert!(!p.is_ancestor(0, 2));
        // Out of range never panics.
        assert_eq!(p.step_id(99), "");
        assert!(p.deps(99).is_empty() && p.scope_ancestors(99).is_empty());
        assert!(!p.is_ancestor(0, 99) && !p.is_fallback_only(99));
        assert!(p.descendants(99).is_empty());
        assert!(
            p.evaluate_step_condition(99, &Scope::default(), &CelBudget::default())
                .is_err()
        );
        assert_eq!(
            p.evaluate_step_condition(0, &Scope::default(), &CelBudget::default()),
            Ok(true)
        );
    }

    #[test]
    fn scope_priority() {
        // far -> mid -> near -> s, and far -> s directly: far is at distance 1.
        let p = plan(json!([
            {"id": "far", "capability": "c"},
            {"id": "x", "capability": "c"},
            {"id": "mid", "capability": "c", "dependencies": ["x"]},
            {"id": "near", "capability": "c", "dependencies": ["mid"]},
            {"id": "other", "capability": "c"},
            {"id": "s", "capability": "c", "dependencies": ["near", "other", "far"]},
        ]));
        let s = p.index_of("s").expect("s");
        // Distance 1: other, near, far (later-listed first); 2: mid; 3: x.
        assert_eq!(
            ids(&p, p.scope_ancestors(s)),
            ["other", "near", "far", "mid", "x"]
        );
    }

    #[test]
    fn fallbacks() {
        let p = plan(json!([
            {"id": "a", "capability": "c"},
            {"id": "b", "capability": "c"},
            {"id": "x", "capability": "c", "dependencies": ["a"],
             "errorHandler": {"type": "fallback", "action": "fb"}},
            {"id": "y", "capability": "c", "dependencies": ["b"],
             "errorHandler": {"type": "fallback", "action": "fb"}},
            {"id": "fb", "capability": "c"},
        ]));
        let fb = p.index_of("fb").expect("fb");
        assert!(p.is_fallback_only(fb));
        assert!(!p.is_fallback_only(0));
        assert_eq!(p.fallback_of(2), Some(fb));
        assert_eq!(p.fallback_of(0), None);
        assert_eq!(p.stands_in_for(fb), &[2, 3]);
        assert_eq!(ids(&p, p.scope_ancestors(fb)), ["b", "a"]);
        assert!(p.is_ancestor(0, fb));
        let steps: Vec<StepExecution> = (0..p.len())
            .map(|i| StepExecution::new(p.step_id(i)))
            .collect();
        assert_eq!(
            ids(&p, &get_next_steps(&p, &steps)),
            ["a", "b"],
            "fallback-only never ready"
        );
    }

    fn exec(id: &str, status: StepStatus, code: Option<&str>) -> StepExecution {
        let mut s = StepExecution::new(id);
        s.status = status;
        s.error = code.map(|c| ExecutionError {
            code: c.to_owned(),
            message: String::new(),
            details: None,
            timestamp: 0,
            step_id: None,
        });
        s
    }

    #[test]
    fn readiness_and_blocking() {
        let p = plan(json!([
            {"id": "dep", "capability": "c"},
            {"id": "s", "capability": "c", "dependencies": ["dep"]},
        ]));
        let cases = [
            (StepStatus::Pending, None, false, false),
            (StepStatus::Running, None, false, false),
            (StepStatus::Completed, None, true, false),
            (StepStatus::Skipped, None, true, false),
            (StepStatus::Skipped, Some("SKIPPED_BY_HANDLER"), true, false),
            (StepStatus::Skipped, Some("DEPENDENCY_FAILED"), false, true),
            (StepStatus::Skipped, Some("CANCELLED"), false, true),
            (StepStatus::Failed, Some("AGENT_ERROR"), false, true),
            (StepStatus::Compensated, None, false, false),
        ];
        for (status, code, ready, blocked) in cases {
            let steps = vec![
                exec("dep", status, code),
                exec("s", StepStatus::Pending, None),
            ];
            let next = get_next_steps(&p, &steps);
            assert_eq!(next.contains(&1), ready, "{status:?} {code:?}");
            assert_eq!(
                blocked_by_failure(&p, &steps, 1),
                blocked,
                "{status:?} {code:?}"
            );
        }
        // Only pending steps are ready; the root is ready at the start.
        let steps = vec![
            exec("dep", StepStatus::Pending, None),
            exec("s", StepStatus::Pending, None),
        ];
        assert_eq!(get_next_steps(&p, &steps), vec![0]);
        // A short or empty slice never panics.
        assert_eq!(get_next_steps(&p, &[]), Vec::<usize>::new());
        assert_eq!(get_next_steps(&p, &steps[..1]), vec![0]);
        assert!(!blocked_by_failure(&p, &[], 1));
    }

    #[test]
    fn cached_conditions() {
        let p = plan(json!([
            {"id": "a", "capability": "c", "condition": {"type": "logical", "operator": "and",
              "conditions": [{"type": "expression", "expression": "n > 1"},
                             {"type": "expression", "expression": "n < 10"}]}},
            {"id": "b", "capability": "c",
             "condition": {"type": "expression", "expression": "n >"}},
            {"id": "j", "capability": "c", "condition": {"type": "javascript", "code": "1"}},
        ]));
        let vars = json!({"n": 5});
        let layer = vars.as_object().cloned().unwrap_or_default();
        let scope = Scope {
            layers: vec![&layer],
            ..Scope::default()
        };
        let budget = CelBudget::default();
        assert_eq!(p.evaluate_step_condition(0, &scope, &budget), Ok(true));
        assert!(
            p.evaluate_step_condition(1, &scope, &budget).is_err(),
            "bad CEL is a ConditionError"
        );
        assert!(p.evaluate_step_condition(2, &scope, &budget).is_err());
    }

    #[test]
    fn large_dense_plan_is_fast_enough() {
        // 300 steps, each depending on every earlier one: ~45k edges.
        let steps: Vec<serde_json::Value> = (0..300)
            .map(|i| {
                let deps: Vec<String> = (0..i).map(|j| format!("s{j}")).collect();
                json!({"id": format!("s{i}"), "capability": "c", "dependencies": deps})
            })
            .collect();
        let p = plan(json!(steps));
        assert_eq!(p.scope_ancestors(299).len(), 299);
        assert_eq!(p.scope_ancestors(299)[0], 298);
    }
}
