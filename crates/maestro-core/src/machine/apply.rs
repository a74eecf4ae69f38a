//! The transition function. docs/EXECUTION.md states the rules;
//! each rule below names the part of it that it implements.

use serde_json::{Map, Value, json};

use super::state::Phase;
use super::{
    Action, Call, ConditionCheck, ControlOp, Env, ExecutionState, Input, Refusal, TimerKey,
};
use crate::choreography::{self, CelBudget, ConditionError, ScopeSnapshot, get_next_steps};
use crate::model::{
    Attempt, ErrorHandlerType, EventType, ExecutionError, ExecutionStatus, LateResult, NewEvent,
    OnError, RetryPolicy, RollbackEntry, RollbackStatus, StepStatus, Timestamp,
};
use crate::ports::InvokeError;
use crate::step_codes;

/// Why a step was skipped (the `reason` of `workflow:step_skipped`).
const SKIP_CONDITION: &str = "condition";
const SKIP_HANDLER: &str = "error_handler";
const SKIP_DEPENDENCY: &str = "dependency_failed";
const SKIP_CANCELLED: &str = "cancelled";
const SKIP_UNUSED_FALLBACK: &str = "unused_fallback";

struct Ctx<'a> {
    env: &'a mut dyn Env,
    out: Vec<Action>,
    now: Timestamp,
}

impl ExecutionState {
    /// Apply one input; returns the actions to perform once the resulting state
    /// change is committed.
    pub fn apply(&mut self, input: Input, env: &mut dyn Env) -> Vec<Action> {
        let now = env.now();
        let mut cx = Ctx {
            env,
            out: Vec::new(),
            now,
        };
        match input {
            Input::Start => self.on_start(&mut cx),
            Input::Recover => self.on_recover(&mut cx),
            Input::AttemptFinished {
                step_id,
                attempt,
                agent_id,
                outcome,
            } => self.on_attempt_finished(&step_id, attempt, agent_id, outcome, &mut cx),
            Input::CompensationFinished {
                step_id,
                attempt,
                agent_id,
                outcome,
            } => self.on_compensation_finished(&step_id, attempt, agent_id, outcome, &mut cx),
            Input::CallbackFinished { step_id, delivered } => {
                self.on_callback_finished(&step_id, delivered, &mut cx)
            }
            Input::Timer(key) => self.on_timer(key, &mut cx),
            Input::Cancel { reason } => self.on_cancel(reason, &mut cx),
            Input::Pause => self.on_pause(&mut cx),
            Input::Resume => self.on_resume(&mut cx),
            Input::ConditionEvaluated { step_id, verdict } => {
                self.on_condition_evaluated(&step_id, verdict, &mut cx)
            }
        }
        cx.out
    }

    // -- inputs -------------------------------------------------------------

    fn on_start(&mut self, cx: &mut Ctx<'_>) {
        if self.exec.status != ExecutionStatus::Pending {
            return;
        }
        let timeout = self
            .workflow
            .max_duration
            .unwrap_or(cx.env.config().default_workflow_timeout);
        let deadline = cx.now.saturating_add(timeout);
        self.exec.status = ExecutionStatus::Running;
        self.exec.started_at = Some(cx.now);
        self.exec.deadline = Some(deadline);
        self.mark_header();
        let payload = json!({
            "executionId": self.exec.id,
            "workflowId": self.exec.workflow_id,
            "revision": self.exec.revision,
            "inputs": self.exec.context.variables,
        });
        self.publish(cx, EventType::WorkflowStarted, payload);
        cx.out.push(Action::SetTimer {
            key: TimerKey::WorkflowTimeout,
            at: deadline,
        });
        self.schedule(cx);
    }

    fn on_recover(&mut self, cx: &mut Ctx<'_>) {
        match self.phase() {
            Phase::Pending | Phase::Done => {}
            Phase::Active | Phase::Stopping => {
                if let Some(at) = self.exec.deadline {
                    cx.out.push(Action::SetTimer {
                        key: TimerKey::WorkflowTimeout,
                        at,
                    });
                }
                for i in 0..self.plan.len() {
                    let s = self.step(i);
                    if s.status != StepStatus::Running {
                        continue;
                    }
                    if s.awaiting_callback {
                        self.emit_callback(i, cx);
                    } else if let Some(at) = s.next_retry_at {
                        let attempt = s.attempts.len() as u32 + 1;
                        cx.out.push(Action::SetTimer {
                            key: TimerKey::Retry {
                                step_id: s.step_id.clone(),
                                attempt,
                            },
                            at,
                        });
                    } else if s.fallback_step.is_some() {
                        // The fallback step carries the work; if its condition was not
                        // decided before the restart, decide it now.
                        let f = s
                            .fallback_step
                            .as_deref()
                            .and_then(|f| self.plan.index_of(f));
                        if let Some(f) = f
                            && self.step(f).status == StepStatus::Pending
                            && !self.awaiting_verdict[f]
                        {
                            self.begin_step(f, cx);
                        }
                    } else if let Some(a) = s.attempts.last().filter(|a| a.completed_at.is_none()) {
                        // At-least-once: the answer was not committed, send the same
                        // attempt again (same idempotency key).
                        let attempt = a.attempt;
                        let call = self.call_for(i, attempt, s.inputs.clone(), cx);
                        cx.out.push(Action::Invoke(call));
                    } else {
                        let attempt = s.attempts.len() as u32 + 1;
                        self.dispatch_attempt(i, attempt, cx);
                    }
                }
                self.schedule(cx);
            }
            Phase::Compensating => {
                let log = self.exec.rollback_log.clone().unwrap_or_default();
                for e in &log {
                    if e.in_flight {
                        if let Some(i) = self.plan.index_of(&e.step_id) {
                            cx.out
                                .push(Action::Invoke(self.compensation_call(i, e, cx)));
                        }
                    } else if let Some(at) = e.next_attempt_at {
                        cx.out.push(Action::SetTimer {
                            key: TimerKey::CompensationRetry {
                                step_id: e.step_id.clone(),
                                attempt: e.attempts + 1,
                            },
                            at,
                        });
                    }
                }
                self.drive_compensation(cx);
            }
        }
    }

    fn on_attempt_finished(
        &mut self,
        step_id: &str,
        attempt: u32,
        agent_id: Option<String>,
        outcome: Result<Map<String, Value>, InvokeError>,
        cx: &mut Ctx<'_>,
    ) {
        let Some(i) = self.plan.index_of(step_id) else {
            return;
        };
        let current = {
            let s = self.step(i);
            s.status == StepStatus::Running
                && !s.awaiting_callback
                && s.attempts
                    .last()
                    .is_some_and(|a| a.attempt == attempt && a.completed_at.is_none())
        };
        if !current {
            self.record_late(i, attempt, &outcome, cx);
            return;
        }
        let now = cx.now;
        {
            let s = self.step_mut(i);
            if agent_id.is_some() {
                s.agent_id = agent_id.clone();
            }
            let a = s.attempts.last_mut().expect("current attempt");
            a.completed_at = Some(now);
            a.agent_id = agent_id;
            if let Err(e) = &outcome {
                a.error = Some(exec_error(e, now, step_id));
            }
        }
        self.mark_attempt(i, attempt);
        match outcome {
            Ok(outputs) => self.complete_step(i, outputs, cx),
            Err(e) => self.attempt_failed(i, attempt, e, cx),
        }
        self.schedule(cx);
    }

    fn on_compensation_finished(
        &mut self,
        step_id: &str,
        attempt: u32,
        agent_id: Option<String>,
        outcome: Result<Map<String, Value>, InvokeError>,
        cx: &mut Ctx<'_>,
    ) {
        let Some(i) = self.plan.index_of(step_id) else {
            return;
        };
        let Some(pos) = self.rollback_pos(step_id) else {
            return;
        };
        let now = cx.now;
        let policy = self.policy_for(i, cx);
        let entry = &self.exec.rollback_log.as_ref().expect("log")[pos];
        if !(entry.in_flight && entry.attempts == attempt) {
            return; // late answer of an abandoned compensation call
        }
        let mut event = None;
        let mut timer = None;
        {
            let entry = &mut self.exec.rollback_log.as_mut().expect("log")[pos];
            entry.in_flight = false;
            if agent_id.is_some() {
                entry.agent_id = agent_id;
            }
            match outcome {
                Ok(_) => {
                    entry.status = RollbackStatus::Executed;
                    entry.error = None;
                    event = Some(json!({"stepId": step_id, "status": "executed",
                        "capability": entry.rollback_capability, "attempt": attempt}));
                }
                Err(e) => {
                    let retryable = e.retryable && !policy.non_retryable_codes.contains(&e.code);
                    entry.error = Some(exec_error(&e, now, step_id));
                    if retryable && attempt < policy.max_attempts {
                        let delay = jittered(&policy, policy.delay_before_retry(attempt), cx);
                        let at = now.saturating_add(delay);
                        entry.next_attempt_at = Some(at);
                        timer = Some(at);
                    } else {
                        entry.status = RollbackStatus::Failed;
                        event = Some(json!({"stepId": step_id, "status": "failed",
                            "capability": entry.rollback_capability, "attempt": attempt,
                            "error": entry.error}));
                    }
                }
            }
        }
        self.mark_header();
        if let Some(at) = timer {
            cx.out.push(Action::SetTimer {
                key: TimerKey::CompensationRetry {
                    step_id: step_id.to_owned(),
                    attempt: attempt + 1,
                },
                at,
            });
        }
        if let Some(payload) = event {
            if payload["status"] == "executed" {
                self.step_mut(i).status = StepStatus::Compensated;
            }
            self.publish(cx, EventType::StepCompensated, payload);
        }
        self.drive_compensation(cx);
    }

    fn on_callback_finished(&mut self, step_id: &str, delivered: bool, cx: &mut Ctx<'_>) {
        let Some(i) = self.plan.index_of(step_id) else {
            return;
        };
        if !(self.step(i).status == StepStatus::Running && self.step(i).awaiting_callback) {
            return;
        }
        self.step_mut(i).awaiting_callback = false;
        let mut err = self.last_error(i, cx.now);
        if !delivered {
            let d = err.details.get_or_insert_with(|| json!({}));
            if let Some(o) = d.as_object_mut() {
                o.insert("callbackDelivered".into(), Value::Bool(false));
            }
        }
        self.fail_step(i, err, cx);
        self.schedule(cx);
    }

    fn on_timer(&mut self, key: TimerKey, cx: &mut Ctx<'_>) {
        match key {
            TimerKey::WorkflowTimeout => self.on_workflow_timeout(cx),
            TimerKey::Retry { step_id, attempt } => {
                let Some(i) = self.plan.index_of(&step_id) else {
                    return;
                };
                let s = self.step(i);
                let due = s.status == StepStatus::Running
                    && s.next_retry_at.is_some()
                    && s.attempts.len() as u32 + 1 == attempt;
                if !due || self.exec.status == ExecutionStatus::Paused {
                    return; // stale, or dispatched on resume
                }
                if self.phase() != Phase::Active {
                    return;
                }
                self.dispatch_attempt(i, attempt, cx);
                self.schedule(cx);
            }
            TimerKey::CompensationRetry { step_id, attempt } => {
                let Some(pos) = self.rollback_pos(&step_id) else {
                    return;
                };
                let log = self.exec.rollback_log.as_mut().expect("log");
                let e = &mut log[pos];
                if e.next_attempt_at.is_none() || e.attempts + 1 != attempt {
                    return;
                }
                e.next_attempt_at = None;
                self.mark_header();
                self.drive_compensation(cx);
            }
        }
    }

    fn on_workflow_timeout(&mut self, cx: &mut Ctx<'_>) {
        if !matches!(self.phase(), Phase::Active | Phase::Stopping) {
            return;
        }
        let now = cx.now;
        let timeout = self.exec.deadline.unwrap_or(now);
        let err = ExecutionError {
            code: step_codes::WORKFLOW_TIMEOUT.into(),
            message: format!(
                "execution exceeded its time limit (deadline {timeout}); running calls abandoned"
            ),
            details: None,
            timestamp: now,
            step_id: None,
        };
        self.exec.error = Some(err.clone());
        self.mark_header();
        for i in 0..self.plan.len() {
            if self.step(i).status != StepStatus::Running {
                continue;
            }
            self.abandon_in_flight(i, &err, cx);
            let mut e = err.clone();
            e.step_id = Some(self.plan.step_id(i).to_owned());
            self.set_step_terminal(i, StepStatus::Failed, Some(e.clone()), now);
            self.publish(
                cx,
                EventType::StepFailed,
                json!({"stepId": self.plan.step_id(i), "error": e}),
            );
        }
        if cx.env.config().enable_compensation && self.has_completed_steps() {
            self.start_compensation(cx);
        } else {
            self.finish(ExecutionStatus::Failed, cx);
        }
    }

    fn on_cancel(&mut self, reason: Option<String>, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let reason = reason.unwrap_or_else(|| "cancelled".to_owned());
        match self.phase() {
            Phase::Pending => {
                self.exec.cancel_reason = Some(reason);
                self.finish(ExecutionStatus::Cancelled, cx);
            }
            Phase::Active | Phase::Stopping if self.exec.cancel_reason.is_none() => {
                self.exec.cancel_reason = Some(reason.clone());
                self.mark_header();
                let err = ExecutionError {
                    code: step_codes::CANCELLED.into(),
                    message: format!("execution cancelled: {reason}"),
                    details: None,
                    timestamp: now,
                    step_id: None,
                };
                for i in 0..self.plan.len() {
                    if self.step(i).status != StepStatus::Running {
                        continue;
                    }
                    self.abandon_in_flight(i, &err, cx);
                    let mut e = err.clone();
                    e.step_id = Some(self.plan.step_id(i).to_owned());
                    self.skip_step(i, SKIP_CANCELLED, Some(e), cx);
                }
                if cx.env.config().enable_compensation && self.has_completed_steps() {
                    self.start_compensation(cx);
                } else {
                    self.finish(ExecutionStatus::Cancelled, cx);
                }
            }
            Phase::Active | Phase::Stopping => {
                self.refuse(ControlOp::Cancel, "it is already being cancelled", cx)
            }
            Phase::Compensating if self.exec.cancel_reason.is_some() => {
                self.refuse(ControlOp::Cancel, "it is already being cancelled", cx)
            }
            Phase::Compensating => self.refuse(ControlOp::Cancel, "it is compensating", cx),
            Phase::Done => self.refuse(ControlOp::Cancel, "it already finished", cx),
        }
    }

    /// A control input that does not apply now: nothing changes, the caller
    /// is told why.
    fn refuse(&mut self, op: ControlOp, why: &'static str, cx: &mut Ctx<'_>) {
        cx.out.push(Action::Refused(Refusal {
            op,
            status: self.exec.status,
            why,
        }));
    }

    fn on_pause(&mut self, cx: &mut Ctx<'_>) {
        let why = match (self.exec.status, self.phase()) {
            (ExecutionStatus::Running, Phase::Active | Phase::Stopping) => None,
            (_, Phase::Done) => Some("it already finished"),
            (_, Phase::Compensating) => Some("it is compensating"),
            (ExecutionStatus::Pending, _) => Some("it has not started"),
            (ExecutionStatus::Paused, _) => Some("it is already paused"),
            _ => Some("it is not running"),
        };
        if let Some(why) = why {
            return self.refuse(ControlOp::Pause, why, cx);
        }
        self.exec.status = ExecutionStatus::Paused;
        self.mark_header();
        let payload = json!({"executionId": self.exec.id});
        self.publish(cx, EventType::WorkflowPaused, payload);
    }

    fn on_resume(&mut self, cx: &mut Ctx<'_>) {
        if self.exec.status != ExecutionStatus::Paused {
            let why = if self.exec.status.is_terminal() {
                "it already finished"
            } else {
                "it is not paused"
            };
            return self.refuse(ControlOp::Resume, why, cx);
        }
        self.exec.status = ExecutionStatus::Running;
        self.mark_header();
        let payload = json!({"executionId": self.exec.id});
        self.publish(cx, EventType::WorkflowResumed, payload);
        // Retries that came due while paused run now; the others get their timer again.
        for i in 0..self.plan.len() {
            let s = self.step(i);
            if s.status != StepStatus::Running {
                continue;
            }
            if let Some(at) = s.next_retry_at {
                let attempt = s.attempts.len() as u32 + 1;
                if at <= cx.now && self.phase() == Phase::Active {
                    self.dispatch_attempt(i, attempt, cx);
                } else {
                    let step_id = s.step_id.clone();
                    cx.out.push(Action::SetTimer {
                        key: TimerKey::Retry { step_id, attempt },
                        at,
                    });
                }
            }
        }
        self.schedule(cx);
    }

    // -- scheduling ---------------------------------------------------------

    /// Start every ready step (readiness and conditions), skip dependents of
    /// failed steps under `onError: continue`, then see whether the execution is done.
    fn schedule(&mut self, cx: &mut Ctx<'_>) {
        loop {
            if self.phase() != Phase::Active {
                break;
            }
            if self.workflow.on_error == OnError::Continue && self.exec.error.is_some() {
                self.skip_blocked(cx);
            }
            if self.exec.status != ExecutionStatus::Running {
                break;
            }
            let ready: Vec<usize> = get_next_steps(&self.plan, &self.exec.step_executions.0)
                .into_iter()
                .filter(|&i| !self.awaiting_verdict[i])
                .collect();
            if ready.is_empty() {
                break;
            }
            for i in ready {
                if self.phase() != Phase::Active || self.step(i).status != StepStatus::Pending {
                    continue;
                }
                self.begin_step(i, cx);
            }
        }
        self.check_finished(cx);
    }

    fn skip_blocked(&mut self, cx: &mut Ctx<'_>) {
        let order: Vec<usize> = self.plan.topo_order().to_vec();
        for i in order {
            if self.step(i).status == StepStatus::Pending
                && !self.plan.is_fallback_only(i)
                && choreography::blocked_by_failure(&self.plan, &self.exec.step_executions.0, i)
            {
                let err = ExecutionError {
                    code: step_codes::DEPENDENCY_FAILED.into(),
                    message: "a dependency failed".into(),
                    details: None,
                    timestamp: cx.now,
                    step_id: Some(self.plan.step_id(i).to_owned()),
                };
                self.skip_step(i, SKIP_DEPENDENCY, Some(err), cx);
            }
        }
    }

    /// A step became ready: check its condition, then make its first call. A CEL
    /// condition is evaluated by the executor, away from its loop (it may take up to its
    /// budget of CPU): the step stays `pending`, and is not begun again, until
    /// [`Input::ConditionEvaluated`] brings the verdict.
    fn begin_step(&mut self, i: usize, cx: &mut Ctx<'_>) {
        if self.plan.condition_has_cel(i) {
            self.awaiting_verdict[i] = true;
            let check = ConditionCheck {
                step_id: self.plan.step_id(i).to_owned(),
                step: i,
                plan: self.plan.clone(),
                scope: ScopeSnapshot::of(&self.scope_for(i)),
            };
            cx.out.push(Action::EvaluateCondition(check));
            return;
        }
        let verdict = {
            let scope = self.scope_for(i);
            // No CEL: comparisons and logic only, no budget to apply.
            self.plan
                .evaluate_step_condition(i, &scope, &CelBudget::default())
        };
        self.on_verdict(i, verdict, cx);
    }

    /// The verdict of a CEL condition. Stale ones (the step was begun again after a
    /// restart, or is no longer pending) are dropped. While paused, a step's verdict is
    /// dropped too (no step starts): resuming begins the step, and evaluates it, again.
    /// A fallback step's verdict is applied while paused or stopping, as the fallback
    /// itself would have started then.
    fn on_condition_evaluated(
        &mut self,
        step_id: &str,
        verdict: Result<bool, ConditionError>,
        cx: &mut Ctx<'_>,
    ) {
        let Some(i) = self.plan.index_of(step_id) else {
            return;
        };
        if !std::mem::take(&mut self.awaiting_verdict[i])
            || self.step(i).status != StepStatus::Pending
        {
            return;
        }
        let fallback = self.plan.is_fallback_only(i);
        let applies = match self.phase() {
            Phase::Active => fallback || self.exec.status == ExecutionStatus::Running,
            Phase::Stopping => fallback,
            _ => false,
        };
        if !applies {
            return;
        }
        self.on_verdict(i, verdict, cx);
        self.schedule(cx);
    }

    fn on_verdict(&mut self, i: usize, verdict: Result<bool, ConditionError>, cx: &mut Ctx<'_>) {
        match verdict {
            Ok(true) => {
                let attempt = self.step(i).attempts.len() as u32 + 1;
                self.dispatch_attempt(i, attempt, cx);
            }
            Ok(false) => self.skip_step(i, SKIP_CONDITION, None, cx),
            Err(e) => {
                // Not retried: a CEL evaluation error goes straight to the handler.
                let err = InvokeError::new(step_codes::CONDITION_ERROR, e.message, false);
                self.fail_without_call(i, err, cx);
            }
        }
    }

    /// Substitute the step's inputs and send attempt `attempt`.
    fn dispatch_attempt(&mut self, i: usize, attempt: u32, cx: &mut Ctx<'_>) {
        let substituted = {
            let scope = self.scope_for(i);
            choreography::substitute_variables(&self.workflow.steps[i].inputs, &scope)
        };
        let inputs = match substituted {
            Ok(v) => v,
            Err(u) => {
                let err = InvokeError::new(step_codes::UNRESOLVED_VARIABLE, u.to_string(), false);
                self.fail_without_call(i, err, cx);
                return;
            }
        };
        let now = cx.now;
        let named = self.workflow.steps[i].agent_id.clone();
        {
            let s = self.step_mut(i);
            s.status = StepStatus::Running;
            s.started_at.get_or_insert(now);
            s.inputs = inputs.clone();
            s.next_retry_at = None;
            s.retry_count = attempt.saturating_sub(1);
            if named.is_some() {
                s.agent_id = named.clone();
            }
            s.attempts.push(Attempt {
                attempt,
                started_at: now,
                completed_at: None,
                error: None,
                agent_id: None,
                late_result: None,
            });
        }
        self.mark_attempt(i, attempt);
        let step_id = self.plan.step_id(i).to_owned();
        self.publish(
            cx,
            EventType::StepStarted,
            json!({"stepId": step_id, "attempt": attempt,
                   "capability": self.workflow.steps[i].capability, "agentId": named}),
        );
        let call = self.call_for(i, attempt, inputs, cx);
        cx.out.push(Action::Invoke(call));
    }

    fn call_for(&self, i: usize, attempt: u32, inputs: Map<String, Value>, cx: &Ctx<'_>) -> Call {
        let step = &self.workflow.steps[i];
        Call {
            step_id: step.id.clone(),
            attempt,
            agent_id: step.agent_id.clone(),
            capability: step.capability.clone(),
            inputs,
            timeout_ms: step.timeout.unwrap_or(cx.env.config().agent_timeout_ms),
            compensation: false,
        }
    }

    /// A failure found before any call was made (condition error, unresolved
    /// placeholder): recorded as an attempt so it shows in `attempts`.
    fn fail_without_call(&mut self, i: usize, err: InvokeError, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let attempt = self.step(i).attempts.len() as u32 + 1;
        let step_id = self.plan.step_id(i).to_owned();
        {
            let s = self.step_mut(i);
            s.status = StepStatus::Running;
            s.started_at.get_or_insert(now);
            s.next_retry_at = None;
            s.retry_count = attempt.saturating_sub(1);
            s.attempts.push(Attempt {
                attempt,
                started_at: now,
                completed_at: Some(now),
                error: Some(exec_error(&err, now, &step_id)),
                agent_id: None,
                late_result: None,
            });
        }
        self.mark_attempt(i, attempt);
        self.attempt_failed(i, attempt, err, cx);
    }

    // -- outcomes -----------------------------------------------------------

    fn complete_step(&mut self, i: usize, outputs: Map<String, Value>, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let step_id = self.plan.step_id(i).to_owned();
        let (duration, attempt, agent) = {
            let s = self.step_mut(i);
            s.status = StepStatus::Completed;
            s.outputs = Some(outputs.clone());
            s.error = None;
            s.completed_at = Some(now);
            s.next_retry_at = None;
            let d = now.saturating_sub(s.started_at.unwrap_or(now));
            s.duration = Some(d);
            (d, s.attempts.len(), s.agent_id.clone())
        };
        self.completion_order.push(i);
        self.exec
            .context
            .step_outputs
            .insert(step_id.clone(), outputs.clone());
        // `stepOutputs` is derived from step rows when read: no header write.
        self.publish(
            cx,
            EventType::StepCompleted,
            json!({"stepId": step_id, "outputs": outputs, "duration": duration,
                   "attempt": attempt, "agentId": agent}),
        );
        // A fallback step's outputs stand in for the step that failed.
        if self.plan.is_fallback_only(i)
            && let Some(y) = self.delegating_step(i)
        {
            let ystep = self.plan.step_id(y).to_owned();
            let d = {
                let s = self.step_mut(y);
                s.status = StepStatus::Completed;
                s.outputs = Some(outputs.clone());
                s.completed_at = Some(now);
                let d = now.saturating_sub(s.started_at.unwrap_or(now));
                s.duration = Some(d);
                d
            };
            self.exec
                .context
                .step_outputs
                .insert(ystep.clone(), outputs.clone());
            self.publish(
                cx,
                EventType::StepCompleted,
                json!({"stepId": ystep, "outputs": outputs, "duration": d,
                           "fallbackStep": step_id}),
            );
        }
    }

    /// An attempt failed: retry, or apply the error handler, or fail the step.
    fn attempt_failed(&mut self, i: usize, attempt: u32, err: InvokeError, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let policy = self.policy_for(i, cx);
        let round_start = self.step(i).retry_round_start.unwrap_or(1);
        let in_round = attempt.saturating_sub(round_start) + 1;
        let retryable = err.retryable && !policy.non_retryable_codes.contains(&err.code);
        let step_id = self.plan.step_id(i).to_owned();
        let active = self.phase() == Phase::Active;

        if active && retryable && in_round < policy.max_attempts {
            let delay = jittered(&policy, policy.delay_before_retry(in_round), cx);
            self.arm_retry(i, attempt, delay, &err, "policy", cx);
            return;
        }
        let error = exec_error(&err, now, &step_id);
        let handler = self.workflow.steps[i].error_handler.clone();
        if active && let Some(h) = handler {
            match h.handler_type {
                ErrorHandlerType::Skip => {
                    self.skip_step(i, SKIP_HANDLER, Some(error), cx);
                    return;
                }
                ErrorHandlerType::Retry if self.step(i).retry_round_start.is_none() => {
                    let round = handler_policy(h.params.as_ref(), &policy);
                    self.step_mut(i).retry_round_start = Some(attempt + 1);
                    let delay = jittered(&round, round.delay_ms, cx);
                    self.arm_retry(i, attempt, delay, &err, "error_handler", cx);
                    return;
                }
                ErrorHandlerType::Fallback => {
                    if let Some(f) = self.plan.fallback_of(i)
                        && self.step(f).status == StepStatus::Pending
                    {
                        let fid = self.plan.step_id(f).to_owned();
                        {
                            let s = self.step_mut(i);
                            s.fallback_step = Some(fid);
                            s.error = Some(error);
                        }
                        self.begin_step(f, cx);
                        return;
                    }
                }
                ErrorHandlerType::Callback => {
                    {
                        let s = self.step_mut(i);
                        s.awaiting_callback = true;
                        s.error = Some(error);
                    }
                    self.emit_callback(i, cx);
                    return;
                }
                ErrorHandlerType::Retry => {}
            }
        }
        self.fail_step(i, error, cx);
    }

    fn arm_retry(
        &mut self,
        i: usize,
        attempt: u32,
        delay: u64,
        err: &InvokeError,
        by: &str,
        cx: &mut Ctx<'_>,
    ) {
        let at = cx.now.saturating_add(delay);
        self.step_mut(i).next_retry_at = Some(at);
        let step_id = self.plan.step_id(i).to_owned();
        self.publish(
            cx,
            EventType::StepRetrying,
            json!({"stepId": step_id, "attempt": attempt, "nextAttempt": attempt + 1,
                   "delayMs": delay, "retryBy": by,
                   "error": {"code": err.code, "message": err.message}}),
        );
        cx.out.push(Action::SetTimer {
            key: TimerKey::Retry {
                step_id,
                attempt: attempt + 1,
            },
            at,
        });
    }

    /// The step failed for good: record it, then apply the workflow's `onError`.
    fn fail_step(&mut self, i: usize, error: ExecutionError, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let step_id = self.plan.step_id(i).to_owned();
        self.set_step_terminal(i, StepStatus::Failed, Some(error.clone()), now);
        self.publish(
            cx,
            EventType::StepFailed,
            json!({"stepId": step_id, "error": error, "attempts": self.step(i).attempts.len()}),
        );
        // A failed fallback fails the step it stood in for.
        if self.plan.is_fallback_only(i)
            && let Some(y) = self.delegating_step(i)
        {
            let mut e = error.clone();
            e.step_id = Some(self.plan.step_id(y).to_owned());
            self.fail_step(y, e, cx);
            return;
        }
        if self.phase() != Phase::Active {
            return; // already stopping: no new verdict
        }
        if self.exec.error.is_none() {
            self.exec.error = Some(error);
            self.mark_header();
        }
        if self.workflow.on_error != OnError::Continue {
            // stop / rollback: nothing new; steps waiting for a retry fail now.
            for j in 0..self.plan.len() {
                let s = self.step(j);
                if s.status == StepStatus::Running && s.next_retry_at.is_some() {
                    let e = self.last_error(j, now);
                    let sid = self.plan.step_id(j).to_owned();
                    self.set_step_terminal(j, StepStatus::Failed, Some(e.clone()), now);
                    self.publish(
                        cx,
                        EventType::StepFailed,
                        json!({"stepId": sid, "error": e}),
                    );
                }
            }
        }
    }

    fn skip_step(
        &mut self,
        i: usize,
        reason: &str,
        error: Option<ExecutionError>,
        cx: &mut Ctx<'_>,
    ) {
        let now = cx.now;
        let step_id = self.plan.step_id(i).to_owned();
        self.set_step_terminal(i, StepStatus::Skipped, error.clone(), now);
        let mut payload = json!({"stepId": step_id, "reason": reason});
        if let Some(e) = error {
            payload["error"] = serde_json::to_value(e).unwrap_or(Value::Null);
        }
        self.publish(cx, EventType::StepSkipped, payload);
        // A skipped fallback skips the step it stood in for.
        if self.plan.is_fallback_only(i)
            && reason != SKIP_CANCELLED
            && let Some(y) = self.delegating_step(i)
        {
            let e = self.step(y).error.clone();
            self.skip_step(y, reason, e, cx);
        }
    }

    fn set_step_terminal(
        &mut self,
        i: usize,
        status: StepStatus,
        error: Option<ExecutionError>,
        now: Timestamp,
    ) {
        let s = self.step_mut(i);
        s.status = status;
        if error.is_some() {
            s.error = error;
        }
        s.completed_at = Some(now);
        s.next_retry_at = None;
        s.awaiting_callback = false;
        if let Some(st) = s.started_at {
            s.duration = Some(now.saturating_sub(st));
        }
    }

    /// Mark the in-flight attempt of step `i` as ended by `err` and tell the agent.
    fn abandon_in_flight(&mut self, i: usize, err: &ExecutionError, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let in_flight = self
            .step(i)
            .attempts
            .last()
            .filter(|a| a.completed_at.is_none())
            .map(|a| a.attempt);
        if let Some(attempt) = in_flight {
            {
                let s = self.step_mut(i);
                let a = s.attempts.last_mut().expect("attempt");
                a.completed_at = Some(now);
                let mut e = err.clone();
                e.step_id = Some(s.step_id.clone());
                a.error = Some(e);
            }
            self.mark_attempt(i, attempt);
            cx.out.push(Action::CancelCall {
                step_id: self.plan.step_id(i).to_owned(),
                attempt,
                compensation: false,
            });
        }
    }

    fn record_late(
        &mut self,
        i: usize,
        attempt: u32,
        outcome: &Result<Map<String, Value>, InvokeError>,
        cx: &mut Ctx<'_>,
    ) {
        let now = cx.now;
        let found = self.step(i).attempts.iter().any(|a| a.attempt == attempt);
        if !found {
            return;
        }
        {
            let s = self.step_mut(i);
            let a = s
                .attempts
                .iter_mut()
                .find(|a| a.attempt == attempt)
                .expect("attempt");
            if a.late_result.is_some() {
                return;
            }
            a.late_result = Some(LateResult {
                outcome: if outcome.is_ok() {
                    "completed"
                } else {
                    "failed"
                }
                .into(),
                at: now,
                error_code: outcome.as_ref().err().map(|e| e.code.clone()),
            });
        }
        self.mark_attempt(i, attempt);
    }

    // -- finishing ----------------------------------------------------------

    fn check_finished(&mut self, cx: &mut Ctx<'_>) {
        match self.phase() {
            Phase::Active | Phase::Stopping => {}
            Phase::Compensating => {
                self.drive_compensation(cx);
                return;
            }
            Phase::Pending | Phase::Done => return,
        }
        let busy = self
            .exec
            .step_executions
            .iter()
            .any(|s| s.status == StepStatus::Running);
        if busy {
            return;
        }
        if self.phase() == Phase::Active
            && !get_next_steps(&self.plan, &self.exec.step_executions.0).is_empty()
        {
            return; // paused with work left
        }
        // Fallback steps that were never needed.
        for i in 0..self.plan.len() {
            if self.plan.is_fallback_only(i) && self.step(i).status == StepStatus::Pending {
                self.skip_step(i, SKIP_UNUSED_FALLBACK, None, cx);
            }
        }
        if self.exec.error.is_none() {
            let mut outputs = Map::new();
            for s in self.exec.step_executions.iter() {
                if let (StepStatus::Completed, Some(o)) = (s.status, &s.outputs) {
                    outputs.insert(s.step_id.clone(), Value::Object(o.clone()));
                }
            }
            let result = {
                let scope = self.final_scope();
                choreography::resolve_expected_outputs(&self.workflow.expected_outputs, &scope)
            };
            self.exec.outputs = Some(outputs);
            self.exec.result = Some(result);
            self.finish(ExecutionStatus::Completed, cx);
            return;
        }
        let rollback = self.workflow.on_error == OnError::Rollback
            && cx.env.config().enable_rollback
            && self.exec.cancel_reason.is_none();
        if rollback {
            self.start_compensation(cx);
        } else {
            self.finish(ExecutionStatus::Failed, cx);
        }
    }

    fn finish(&mut self, status: ExecutionStatus, cx: &mut Ctx<'_>) {
        let now = cx.now;
        self.exec.status = status;
        self.exec.completed_at = Some(now);
        self.mark_header();
        let duration = self.exec.started_at.map(|s| now.saturating_sub(s));
        let id = self.exec.id.clone();
        let (t, payload) = match status {
            ExecutionStatus::Completed => (
                EventType::WorkflowCompleted,
                json!({"executionId": id, "outputs": self.exec.outputs,
                       "result": self.exec.result, "duration": duration}),
            ),
            ExecutionStatus::RolledBack => (
                EventType::WorkflowRolledBack,
                json!({"executionId": id, "error": self.exec.error,
                       "rollbackLog": self.exec.rollback_log, "duration": duration}),
            ),
            ExecutionStatus::Cancelled => (
                EventType::WorkflowCancelled,
                json!({"executionId": id, "reason": self.exec.cancel_reason,
                       "rollbackLog": self.exec.rollback_log, "duration": duration}),
            ),
            _ => (
                EventType::WorkflowFailed,
                json!({"executionId": id, "error": self.exec.error,
                       "rollbackLog": self.exec.rollback_log, "duration": duration}),
            ),
        };
        self.publish(cx, t, payload);
        cx.out.push(Action::Finished);
    }

    // -- compensation -------------------------------------------------------

    fn has_completed_steps(&self) -> bool {
        self.completion_order.iter().any(|&i| {
            self.step(i).status == StepStatus::Completed && self.step(i).fallback_step.is_none()
        })
    }

    /// Build the rollback log (reverse completion order) and start compensating.
    fn start_compensation(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now;
        let mut log = Vec::new();
        let order: Vec<usize> = self.completion_order.iter().rev().copied().collect();
        for i in order {
            let s = self.step(i);
            if s.status != StepStatus::Completed || s.fallback_step.is_some() {
                continue;
            }
            let step = &self.workflow.steps[i];
            let ran_on = s.agent_id.clone();
            let default_inputs = || {
                let mut m = Map::new();
                m.insert("inputs".into(), Value::Object(s.inputs.clone()));
                m.insert(
                    "outputs".into(),
                    Value::Object(s.outputs.clone().unwrap_or_default()),
                );
                m
            };
            let mut entry = RollbackEntry {
                step_id: step.id.clone(),
                action: "compensate".into(),
                rollback_capability: None,
                agent_id: None,
                inputs: Map::new(),
                status: RollbackStatus::Pending,
                error: None,
                attempts: 0,
                in_flight: false,
                next_attempt_at: None,
            };
            if let Some(c) = &step.compensate {
                entry.rollback_capability = Some(c.capability.clone());
                entry.agent_id = c.agent_id.clone().or(ran_on);
                match &c.inputs {
                    None => entry.inputs = default_inputs(),
                    Some(tpl) => {
                        let scope = self.compensation_scope(i);
                        match choreography::substitute_variables(tpl, &scope) {
                            Ok(v) => entry.inputs = v,
                            Err(u) => {
                                entry.status = RollbackStatus::Failed;
                                entry.error = Some(ExecutionError {
                                    code: step_codes::UNRESOLVED_VARIABLE.into(),
                                    message: u.to_string(),
                                    details: None,
                                    timestamp: now,
                                    step_id: Some(step.id.clone()),
                                });
                            }
                        }
                    }
                }
            } else if let Some(cap) = ran_on
                .as_deref()
                .and_then(|a| cx.env.compensation_for(a, &step.capability))
            {
                entry.rollback_capability = Some(cap);
                entry.agent_id = ran_on;
                entry.inputs = default_inputs();
            } else {
                entry.action = "none".into();
                entry.status = RollbackStatus::Skipped;
                entry.agent_id = ran_on;
            }
            log.push(entry);
        }
        self.exec.rollback_log = Some(log);
        self.mark_header();
        self.drive_compensation(cx);
    }

    /// Send the next compensation (one at a time), or finish when none is left.
    fn drive_compensation(&mut self, cx: &mut Ctx<'_>) {
        let Some(log) = self.exec.rollback_log.as_ref() else {
            return;
        };
        if log
            .iter()
            .any(|e| e.in_flight || e.next_attempt_at.is_some())
        {
            return;
        }
        if let Some(pos) = log.iter().position(|e| e.status == RollbackStatus::Pending) {
            let step_id = log[pos].step_id.clone();
            let Some(i) = self.plan.index_of(&step_id) else {
                return;
            };
            let entry = {
                let e = &mut self.exec.rollback_log.as_mut().expect("log")[pos];
                e.attempts += 1;
                e.in_flight = true;
                e.clone()
            };
            self.mark_header();
            let call = self.compensation_call(i, &entry, cx);
            cx.out.push(Action::Invoke(call));
            return;
        }
        let any_failed = log.iter().any(|e| e.status == RollbackStatus::Failed);
        let status = if self.exec.cancel_reason.is_some() {
            ExecutionStatus::Cancelled
        } else if any_failed
            || self
                .exec
                .error
                .as_ref()
                .is_some_and(|e| e.code == step_codes::WORKFLOW_TIMEOUT)
        {
            ExecutionStatus::Failed
        } else {
            ExecutionStatus::RolledBack
        };
        self.finish(status, cx);
    }

    fn compensation_call(&self, i: usize, entry: &RollbackEntry, cx: &Ctx<'_>) -> Call {
        let step = &self.workflow.steps[i];
        Call {
            step_id: step.id.clone(),
            attempt: entry.attempts,
            agent_id: entry.agent_id.clone(),
            capability: entry.rollback_capability.clone().unwrap_or_default(),
            inputs: entry.inputs.clone(),
            timeout_ms: step.timeout.unwrap_or(cx.env.config().agent_timeout_ms),
            compensation: true,
        }
    }

    fn rollback_pos(&self, step_id: &str) -> Option<usize> {
        self.exec
            .rollback_log
            .as_ref()?
            .iter()
            .position(|e| e.step_id == step_id)
    }

    // -- helpers ------------------------------------------------------------

    /// The retry policy in force for step `i`'s current round.
    fn policy_for(&self, i: usize, cx: &Ctx<'_>) -> RetryPolicy {
        let step = &self.workflow.steps[i];
        let base = step
            .retry_policy
            .clone()
            .unwrap_or_else(|| cx.env.config().default_retry_policy.clone());
        if self.step(i).retry_round_start.is_some()
            && let Some(h) = &step.error_handler
        {
            return handler_policy(h.params.as_ref(), &base);
        }
        base
    }

    /// The step that fell back to fallback-only step `f` and waits for it.
    fn delegating_step(&self, f: usize) -> Option<usize> {
        let fid = self.plan.step_id(f);
        (0..self.plan.len()).find(|&y| {
            let s = self.step(y);
            s.status == StepStatus::Running && s.fallback_step.as_deref() == Some(fid)
        })
    }

    fn last_error(&self, i: usize, now: Timestamp) -> ExecutionError {
        let s = self.step(i);
        s.attempts
            .iter()
            .rev()
            .find_map(|a| a.error.clone())
            .or_else(|| s.error.clone())
            .unwrap_or(ExecutionError {
                code: step_codes::AGENT_ERROR.into(),
                message: "step failed".into(),
                details: None,
                timestamp: now,
                step_id: Some(s.step_id.clone()),
            })
    }

    fn emit_callback(&self, i: usize, cx: &mut Ctx<'_>) {
        let Some(h) = &self.workflow.steps[i].error_handler else {
            return;
        };
        let s = self.step(i);
        let body = json!({
            "execution": {
                "id": self.exec.id,
                "workflowId": self.exec.workflow_id,
                "revision": self.exec.revision,
                "status": self.exec.status,
                "correlationId": self.exec.context.correlation_id,
            },
            "step": s,
            "error": self.last_error(i, cx.now),
        });
        cx.out.push(Action::Callback {
            step_id: s.step_id.clone(),
            url: h.action.clone(),
            body,
        });
    }

    fn publish(&self, cx: &mut Ctx<'_>, t: EventType, payload: Value) {
        let mut e = NewEvent::engine(t, payload, cx.now);
        e.workflow_id = Some(self.exec.workflow_id.clone());
        e.execution_id = Some(self.exec.id.clone());
        e.correlation_id = self.exec.context.correlation_id.clone();
        cx.out.push(Action::Publish(e));
    }
}

fn exec_error(e: &InvokeError, now: Timestamp, step_id: &str) -> ExecutionError {
    let mut details = e.details.clone();
    if !e.retryable {
        let d = details.get_or_insert_with(|| json!({}));
        if let Some(o) = d.as_object_mut() {
            o.insert("retryable".into(), Value::Bool(false));
        }
    }
    ExecutionError {
        code: e.code.clone(),
        message: e.message.clone(),
        details,
        timestamp: now,
        step_id: Some(step_id.to_owned()),
    }
}

/// The `retry` handler's round: its `params` as a retry policy, else the step's.
fn handler_policy(params: Option<&Value>, base: &RetryPolicy) -> RetryPolicy {
    params
        .and_then(|p| serde_json::from_value::<RetryPolicy>(p.clone()).ok())
        .unwrap_or_else(|| base.clone())
}

/// Full jitter: a uniform draw in `0..=delay` when the policy asks for it.
fn jittered(policy: &RetryPolicy, delay: u64, cx: &mut Ctx<'_>) -> u64 {
    if policy.jitter && delay > 0 {
        cx.env.jitter(delay).min(delay)
    } else {
        delay
    }
}
