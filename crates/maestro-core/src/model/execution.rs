//! Executions of workflows (API.md "Executions").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Timestamp;

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    RolledBack,
    Cancelled,
}

impl ExecutionStatus {
    pub const ALL: [ExecutionStatus; 7] = [
        ExecutionStatus::Pending,
        ExecutionStatus::Running,
        ExecutionStatus::Paused,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::RolledBack,
        ExecutionStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed
                | ExecutionStatus::Failed
                | ExecutionStatus::RolledBack
                | ExecutionStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "pending",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Paused => "paused",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::RolledBack => "rolled_back",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Where a step of an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Skipped,
    Compensated,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Compensated => "compensated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            StepStatus::Pending,
            StepStatus::Running,
            StepStatus::Completed,
            StepStatus::Failed,
            StepStatus::Skipped,
            StepStatus::Compensated,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// `{code, message, details?, timestamp, stepId?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
}

/// One call of a step's capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    /// Agent that served the attempt (routing may pick another one per attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// An answer that arrived after the attempt had already ended (timeout,
    /// cancel, workflow timeout): recorded here, otherwise ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_result: Option<LateResult>,
}

/// An agent's answer that came after its attempt had ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LateResult {
    /// `completed` or `failed`.
    pub outcome: String,
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// The state of one step of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepExecution {
    pub step_id: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    pub retry_count: u32,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due while the step waits out a retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Timestamp>,
    /// The fallback step whose outputs stand in for this step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_step: Option<String>,
    /// Attempt number at which the `retry` error handler's extra round started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_round_start: Option<u32>,
    /// The `callback` error handler's POST is under way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_callback: bool,
}

impl StepExecution {
    pub fn new(step_id: impl Into<String>) -> Self {
        StepExecution {
            step_id: step_id.into(),
            status: StepStatus::Pending,
            agent_id: None,
            inputs: Map::new(),
            outputs: None,
            error: None,
            started_at: None,
            completed_at: None,
            duration: None,
            retry_count: 0,
            attempts: Vec::new(),
            next_retry_at: None,
            fallback_step: None,
            retry_round_start: None,
            awaiting_callback: false,
        }
    }
}

/// What an execution's steps can refer to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExecutionContext {
    pub execution_id: String,
    pub workflow_id: String,
    /// `initialInputs` overlaid with the execute call's `inputs`.
    pub variables: Map<String, Value>,
    /// Outputs of every completed step, by step id.
    pub step_outputs: BTreeMap<String, Map<String, Value>>,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_execution_id: Option<String>,
}

/// Where the compensation of one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RollbackStatus {
    Pending,
    Executed,
    Failed,
    Skipped,
}

/// One line of the rollback log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RollbackEntry {
    pub step_id: String,
    /// `compensate` (a call was made or planned) or `none` (nothing undoes the step).
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    pub status: RollbackStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    /// Compensation calls made so far.
    #[serde(default)]
    pub attempts: u32,
    /// A compensation call is under way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_flight: bool,
    /// When the next compensation call is due while waiting out a backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Timestamp>,
}

/// A run of a workflow at a pinned revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowExecution {
    pub id: String,
    pub workflow_id: String,
    pub revision: u64,
    pub status: ExecutionStatus,
    /// By step id, in the workflow's step order.
    pub step_executions: StepMap,
    pub context: ExecutionContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Map<String, Value>>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_log: Option<Vec<RollbackEntry>>,
    /// Wall-clock instant after which the execution fails with `WORKFLOW_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// Set by a cancel request (kept for the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
}

impl WorkflowExecution {
    /// `context.stepOutputs` follows from the step rows: the outputs of every
    /// step that has some. Stores call this when they assemble an execution, so
    /// the header row need not carry a copy that grows with every step.
    pub fn derive_step_outputs(&mut self) {
        self.context.step_outputs = self
            .step_executions
            .iter()
            .filter_map(|s| s.outputs.as_ref().map(|o| (s.step_id.clone(), o.clone())))
            .collect();
    }

    pub fn duration(&self) -> Option<u64> {
        Some(self.completed_at?.saturating_sub(self.started_at?))
    }
}

pub use step_map::StepMap;

/// Step executions keyed by step id, serialized as a JSON object in workflow order.
mod step_map {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::StepExecution;

    /// An ordered map from step id to [`StepExecution`] (workflow order). Small and
    /// index-addressable: the state machine refers to steps by position.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct StepMap(pub Vec<StepExecution>);

    impl StepMap {
        pub fn get(&self, step_id: &str) -> Option<&StepExecution> {
            self.0.iter().find(|s| s.step_id == step_id)
        }
        pub fn get_mut(&mut self, step_id: &str) -> Option<&mut StepExecution> {
            self.0.iter_mut().find(|s| s.step_id == step_id)
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        pub fn iter(&self) -> impl Iterator<Item = &StepExecution> {
            self.0.iter()
        }
    }

    impl Serialize for StepMap {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|st| (&st.step_id, st)))
        }
    }

    /// A JSON object from step id to step execution (the order of its keys is the
    /// workflow's step order).
    #[cfg(feature = "schema")]
    impl schemars::JsonSchema for StepMap {
        fn inline_schema() -> bool {
            true
        }

        fn schema_name() -> std::borrow::Cow<'static, str> {
            "StepMap".into()
        }

        fn schema_id() -> std::borrow::Cow<'static, str> {
            concat!(module_path!(), "::StepMap").into()
        }

        fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "type": "object",
                "additionalProperties": generator.subschema_for::<StepExecution>()
            })
        }
    }

    impl<'de> Deserialize<'de> for StepMap {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let m = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
            let mut v = Vec::with_capacity(m.len());
            for (_, st) in m {
                v.push(serde_json::from_value(st).map_err(serde::de::Error::custom)?);
            }
            Ok(StepMap(v))
        }
    }
}
