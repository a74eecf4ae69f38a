//! The execution state machine: `apply(state, input, env) -> Vec<Action>`.
//!
//! [`ExecutionState`] is one execution (the API-visible [`WorkflowExecution`](crate::model::WorkflowExecution) plus
//! its pinned workflow and plan). [`ExecutionState::apply`] takes one [`Input`]
//! (an agent answered, a timer fired, an operator cancelled...) and returns the
//! [`Action`]s the executor must perform *after* it has committed the state
//! change: invoke an agent, arm a timer, POST a callback, publish an event.
//! Nothing here reads a clock, draws randomness or does I/O: time, jitter and
//! registry look-ups come from the [`Env`] passed in, so every rule of the
//! execution semantics is testable without a runtime.
//!
//! Everything the machine needs to continue is part of the persisted record
//! (step statuses, attempts, `nextRetryAt`, `retryRoundStart`, `fallbackStep`,
//! `awaitingCallback`, the rollback log), so [`ExecutionState::restore`] followed
//! by [`Input::Recover`] resumes an execution after a crash: in-flight attempts are
//! re-sent with the same attempt number (and therefore the same idempotency key).
//! A CEL condition being evaluated is not persisted: its step is still `pending`, and
//! is begun (its condition evaluated) again.

mod apply;
mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::{Map, Value};

pub use state::{Changes, ExecutionState, Phase};

use crate::choreography::{CelBudget, ConditionError, ScopeSnapshot, WorkflowPlan};

use crate::model::{ExecutionStatus, MaestroConfig, NewEvent, Timestamp};
use crate::ports::InvokeError;

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The execution got a slot: `pending` → `running`.
    Start,
    /// The process restarted: re-send in-flight calls, re-arm timers.
    Recover,
    /// A call of a step's capability ended.
    AttemptFinished {
        step_id: String,
        attempt: u32,
        /// The agent that served it, when one was chosen.
        agent_id: Option<String>,
        outcome: Result<Map<String, Value>, InvokeError>,
    },
    /// A compensation call ended.
    CompensationFinished {
        step_id: String,
        attempt: u32,
        agent_id: Option<String>,
        outcome: Result<Map<String, Value>, InvokeError>,
    },
    /// The `callback` error handler's POST ended (delivered or given up).
    CallbackFinished {
        step_id: String,
        delivered: bool,
    },
    /// A timer armed by [`Action::SetTimer`] fired.
    Timer(TimerKey),
    Cancel {
        reason: Option<String>,
    },
    Pause,
    Resume,
    /// The verdict on a step's CEL condition asked by [`Action::EvaluateCondition`].
    ConditionEvaluated {
        step_id: String,
        verdict: Result<bool, ConditionError>,
    },
}

/// Identifies a timer; a timer that no longer matches the state is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TimerKey {
    /// Run attempt `attempt` of the step.
    Retry { step_id: String, attempt: u32 },
    /// Run compensation attempt `attempt` of the step.
    CompensationRetry { step_id: String, attempt: u32 },
    /// `maxDuration` / `defaultWorkflowTimeout` reached.
    WorkflowTimeout,
}

/// A call the executor must make.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub step_id: String,
    pub attempt: u32,
    /// The agent named by the step (or its `compensate`), else routed by capability.
    pub agent_id: Option<String>,
    pub capability: String,
    pub inputs: Map<String, Value>,
    /// Per-attempt timeout.
    pub timeout_ms: u64,
    pub compensation: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Invoke(Call),
    /// Best-effort notice to the agent that a call in flight is abandoned.
    CancelCall {
        step_id: String,
        attempt: u32,
        compensation: bool,
    },
    SetTimer {
        key: TimerKey,
        at: Timestamp,
    },
    /// POST `body` to `url` (the `callback` error handler), then report
    /// [`Input::CallbackFinished`].
    Callback {
        step_id: String,
        url: String,
        body: Value,
    },
    /// Evaluate a step's CEL condition (see [`ConditionCheck`]), then report
    /// [`Input::ConditionEvaluated`]. Until then the step stays `pending`.
    EvaluateCondition(ConditionCheck),
    /// Publish after commit (`workflowId`, `executionId`, `correlationId` are set).
    Publish(NewEvent),
    /// An operator's [`Input::Cancel`], [`Input::Pause`] or [`Input::Resume`]
    /// does not apply in the execution's current state: nothing changed. The
    /// only action of such an input.
    Refused(Refusal),
    /// The execution reached a terminal status: free its slot.
    Finished,
}

/// An operator's request on an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOp {
    Cancel,
    Pause,
    Resume,
}

impl ControlOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlOp::Cancel => "cancel",
            ControlOp::Pause => "pause",
            ControlOp::Resume => "resume",
        }
    }
}

/// Why a control request was refused: the execution's state when it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub op: ControlOp,
    /// The current status of the execution.
    pub status: ExecutionStatus,
    /// What about the state forbids it ("it already finished", "it is compensating"...).
    pub why: &'static str,
}

impl Refusal {
    /// The refusal for an execution that finished (judged from its stored
    /// status, by a node where it is not live): nothing applies to it any more.
    pub fn finished(op: ControlOp, status: ExecutionStatus) -> Self {
        Refusal {
            op,
            status,
            why: "it already finished",
        }
    }

    /// The message of the 409 `INVALID_STATE` answer.
    pub fn message(&self, execution_id: &str) -> String {
        format!(
            "cannot {} execution {execution_id}: {} (status {})",
            self.op.as_str(),
            self.why,
            self.status.as_str()
        )
    }
}

/// A step's condition with CEL in it, and what it needs to be evaluated: CEL can take up
/// to its budget of CPU, so the executor runs it away from its loop, where it delays only
/// its own execution. Evaluating again gives the same verdict (same plan, same values).
#[derive(Debug, Clone)]
pub struct ConditionCheck {
    pub step_id: String,
    step: usize,
    plan: Arc<WorkflowPlan>,
    scope: ScopeSnapshot,
}

impl ConditionCheck {
    /// The verdict, each CEL expression refused over `budget`. CPU-bound: call it on a
    /// thread that may block.
    pub fn evaluate(&self, budget: &CelBudget) -> Result<bool, ConditionError> {
        self.plan
            .evaluate_step_condition(self.step, &self.scope.scope(), budget)
    }
}

impl PartialEq for ConditionCheck {
    fn eq(&self, other: &Self) -> bool {
        self.step_id == other.step_id
            && self.step == other.step
            && Arc::ptr_eq(&self.plan, &other.plan)
            && self.scope == other.scope
    }
}

/// What the machine may ask of its surroundings.
pub trait Env {
    fn now(&self) -> Timestamp;
    fn config(&self) -> &MaestroConfig;
    /// A uniformly random value in `0..=max` (full jitter).
    fn jitter(&mut self, max: u64) -> u64;
    /// The capability on `agent_id` that undoes `capability`: its declared
    /// `compensation`, else `<capability>_rollback` if the agent has it.
    fn compensation_for(&self, agent_id: &str, capability: &str) -> Option<String>;
}
