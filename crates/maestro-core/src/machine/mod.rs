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

mod apply;
mod state;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

pub use state::{Changes, ExecutionState, Phase};

use crate::model::{MaestroConfig, NewEvent, Timestamp};
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
    /// Publish after commit (`workflowId`, `executionId`, `correlationId` are set).
    Publish(NewEvent),
    /// The execution reached a terminal status: free its slot.
    Finished,
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
