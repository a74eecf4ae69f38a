//! One execution's state and what changed in it since the last commit.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::choreography::{Scope, WorkflowPlan};
use crate::model::{
    ExecutionContext, ExecutionStatus, OnError, StepExecution, StepMap, StepStatus, Timestamp,
    Workflow, WorkflowExecution,
};

/// Where an execution is in its life, derived from the persisted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a slot.
    Pending,
    /// Scheduling steps (possibly paused).
    Active,
    /// A step failed (stop / rollback), the execution timed out, or it was
    /// cancelled: nothing new is scheduled; waiting for calls in flight.
    Stopping,
    /// Running compensations one at a time.
    Compensating,
    Done,
}

/// What changed since the last [`ExecutionState::take_changes`]: the rows to write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub header: bool,
    /// Step indices (workflow order).
    pub steps: Vec<usize>,
    /// (step index, attempt number).
    pub attempts: Vec<(usize, u32)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.header && self.steps.is_empty() && self.attempts.is_empty()
    }
}

/// One execution, its pinned workflow revision and that revision's plan.
#[derive(Debug, Clone)]
pub struct ExecutionState {
    pub(super) exec: WorkflowExecution,
    pub(super) workflow: Arc<Workflow>,
    pub(super) plan: Arc<WorkflowPlan>,
    /// Step indices in completion order (for compensation).
    pub(super) completion_order: Vec<usize>,
    pub(super) changes: Changes,
    step_dirty: Vec<bool>,
    /// Steps whose CEL condition is being evaluated (not persisted: see
    /// [`Input::Recover`](super::Input::Recover)).
    pub(super) awaiting_verdict: Vec<bool>,
}

impl ExecutionState {
    /// A new `pending` execution. `variables` is `initialInputs` overlaid with the
    /// execute call's inputs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        workflow: Arc<Workflow>,
        plan: Arc<WorkflowPlan>,
        inputs: Map<String, Value>,
        correlation_id: Option<String>,
        parent_execution_id: Option<String>,
        now: Timestamp,
    ) -> Self {
        let mut variables = workflow.initial_inputs.clone();
        for (k, v) in inputs {
            variables.insert(k, v);
        }
        let steps = workflow
            .steps
            .iter()
            .map(|s| StepExecution::new(s.id.clone()))
            .collect();
        let exec = WorkflowExecution {
            workflow_id: workflow.id.clone(),
            revision: workflow.revision,
            status: ExecutionStatus::Pending,
            step_executions: StepMap(steps),
            context: ExecutionContext {
                execution_id: id.clone(),
                workflow_id: workflow.id.clone(),
                variables,
                step_outputs: Default::default(),
                correlation_id: correlation_id.unwrap_or_else(|| id.clone()),
                parent_execution_id,
            },
            id,
            outputs: None,
            result: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            error: None,
            rollback_log: None,
            deadline: None,
            cancel_reason: None,
        };
        let n = workflow.steps.len();
        let mut st = ExecutionState {
            exec,
            workflow,
            plan,
            completion_order: Vec::new(),
            changes: Changes::default(),
            step_dirty: vec![false; n],
            awaiting_verdict: vec![false; n],
        };
        st.changes.header = true;
        for i in 0..n {
            st.mark_step(i);
        }
        st
    }

    /// Rebuild from a persisted record (after a restart). Steps are matched to
    /// the plan by id; the completion order is rebuilt from `completedAt`.
    pub fn restore(
        exec: WorkflowExecution,
        workflow: Arc<Workflow>,
        plan: Arc<WorkflowPlan>,
    ) -> Self {
        let mut by_plan: Vec<StepExecution> = (0..plan.len())
            .map(|i| StepExecution::new(plan.step_id(i)))
            .collect();
        for s in exec.step_executions.0.iter() {
            if let Some(i) = plan.index_of(&s.step_id) {
                by_plan[i] = s.clone();
            }
        }
        let mut exec = exec;
        exec.step_executions = StepMap(by_plan);
        let mut completed: Vec<(Timestamp, usize)> = exec
            .step_executions
            .0
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.status, StepStatus::Completed | StepStatus::Compensated))
            .map(|(i, s)| (s.completed_at.unwrap_or(0), i))
            .collect();
        completed.sort();
        let n = plan.len();
        ExecutionState {
            exec,
            workflow,
            plan,
            completion_order: completed.into_iter().map(|(_, i)| i).collect(),
            changes: Changes::default(),
            step_dirty: vec![false; n],
            awaiting_verdict: vec![false; n],
        }
    }

    pub fn execution(&self) -> &WorkflowExecution {
        &self.exec
    }

    pub fn workflow(&self) -> &Arc<Workflow> {
        &self.workflow
    }

    pub fn plan(&self) -> &Arc<WorkflowPlan> {
        &self.plan
    }

    pub fn id(&self) -> &str {
        &self.exec.id
    }

    pub fn status(&self) -> ExecutionStatus {
        self.exec.status
    }

    pub fn step(&self, i: usize) -> &StepExecution {
        &self.exec.step_executions.0[i]
    }

    /// Rows changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        for &i in &self.changes.steps {
            self.step_dirty[i] = false;
        }
        std::mem::take(&mut self.changes)
    }

    pub fn phase(&self) -> Phase {
        let e = &self.exec;
        if e.status.is_terminal() {
            return Phase::Done;
        }
        if e.status == ExecutionStatus::Pending {
            return Phase::Pending;
        }
        if e.rollback_log.is_some() {
            return Phase::Compensating;
        }
        if e.cancel_reason.is_some() {
            return Phase::Stopping;
        }
        match &e.error {
            Some(err) if err.code == crate::step_codes::WORKFLOW_TIMEOUT => Phase::Stopping,
            Some(_) if self.workflow.on_error != OnError::Continue => Phase::Stopping,
            _ => Phase::Active,
        }
    }

    pub(super) fn step_mut(&mut self, i: usize) -> &mut StepExecution {
        self.mark_step(i);
        &mut self.exec.step_executions.0[i]
    }

    pub(super) fn mark_step(&mut self, i: usize) {
        if !self.step_dirty[i] {
            self.step_dirty[i] = true;
            self.changes.steps.push(i);
        }
    }

    pub(super) fn mark_attempt(&mut self, i: usize, attempt: u32) {
        if !self.changes.attempts.contains(&(i, attempt)) {
            self.changes.attempts.push((i, attempt));
        }
    }

    pub(super) fn mark_header(&mut self) {
        self.changes.header = true;
    }

    /// The scope of step `i`: its completed ancestors' outputs (nearest first),
    /// then the execution's variables.
    pub fn scope_for(&self, i: usize) -> Scope<'_> {
        self.scope_over(self.plan.scope_ancestors(i).iter().copied())
    }

    /// A scope whose layers are the outputs of `steps` (highest priority first)
    /// over the execution's variables; only those steps are visible as `steps.X`.
    fn scope_over(&self, steps: impl Iterator<Item = usize>) -> Scope<'_> {
        let all = &self.exec.step_executions.0;
        let mut layers = Vec::new();
        let mut visible = Vec::new();
        for a in steps {
            if let Some(out) = all[a].outputs.as_ref() {
                layers.push(out);
                visible.push((all[a].step_id.as_str(), out));
            }
        }
        layers.push(&self.exec.context.variables);
        Scope {
            layers,
            steps: visible,
            execution_id: &self.exec.id,
            correlation_id: &self.exec.context.correlation_id,
        }
    }

    /// The scope seen by a step's compensation: the step's own outputs first, then its scope.
    pub(super) fn compensation_scope(&self, i: usize) -> Scope<'_> {
        let mut scope = self.scope_for(i);
        if let Some(out) = self.exec.step_executions.0[i].outputs.as_ref() {
            scope.layers.insert(0, out);
            scope
                .steps
                .push((self.exec.step_executions.0[i].step_id.as_str(), out));
        }
        scope
    }

    /// The final scope (for `result`): every completed step, later in topological
    /// order winning, over the execution's variables.
    pub(super) fn final_scope(&self) -> Scope<'_> {
        self.scope_over(self.plan.topo_order().iter().rev().copied())
    }
}
