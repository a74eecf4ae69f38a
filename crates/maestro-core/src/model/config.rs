//! Runtime configuration (API.md "MaestroConfig").

use serde::{Deserialize, Serialize};

use super::RetryPolicy;
use crate::Error;

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The runtime keys: stored, PATCHable by an admin, applied cluster-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaestroConfig {
    /// Executions `running` or `paused` at once; the rest wait `pending` in a queue.
    /// Greater than 0.
    pub max_concurrent_workflows: u32,
    /// Wall-time limit of an execution in ms when its workflow sets no
    /// `maxDuration`. Greater than 0.
    pub default_workflow_timeout: u64,
    /// Events queued for each in-process event subscription
    /// (`Maestro::subscribe_to_events`) before a slow one loses events; the
    /// server's own event streams have their own bounds. Greater than 0.
    pub event_bus_buffer_size: u32,
    /// Interval of the agent health checks in ms. Greater than 0.
    pub health_check_interval_ms: u64,
    /// Per-attempt timeout of a step in ms when the step sets no `timeout`.
    /// Greater than 0.
    pub agent_timeout_ms: u64,
    /// `false`: `onError: rollback` behaves as `stop`.
    pub enable_rollback: bool,
    /// `true`: also compensate completed steps on cancel and on workflow timeout.
    pub enable_compensation: bool,
    pub log_level: LogLevel,
    /// The retry policy of steps that set none.
    pub default_retry_policy: RetryPolicy,
}

impl Default for MaestroConfig {
    /// The original's defaults.
    fn default() -> Self {
        MaestroConfig {
            max_concurrent_workflows: 100,
            default_workflow_timeout: 300_000,
            event_bus_buffer_size: 10_000,
            health_check_interval_ms: 30_000,
            agent_timeout_ms: 10_000,
            enable_rollback: true,
            enable_compensation: false,
            log_level: LogLevel::Info,
            default_retry_policy: RetryPolicy::default(),
        }
    }
}

impl MaestroConfig {
    /// Reject values that cannot work (zero limits, zero intervals).
    pub fn validate(&self) -> Result<(), Error> {
        let positive: [(&str, u64); 5] = [
            (
                "maxConcurrentWorkflows",
                self.max_concurrent_workflows as u64,
            ),
            ("defaultWorkflowTimeout", self.default_workflow_timeout),
            ("eventBusBufferSize", self.event_bus_buffer_size as u64),
            ("healthCheckIntervalMs", self.health_check_interval_ms),
            ("agentTimeoutMs", self.agent_timeout_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(
                    Error::validation(format!("{field} must be greater than 0")).field(field)
                );
            }
        }
        crate::choreography::validate_retry_policy(&self.default_retry_policy)
            .map_err(|e| e.field("defaultRetryPolicy"))
    }

    /// Apply a JSON merge patch (RFC 7386 semantics on the camelCase document),
    /// then validate. Unknown keys are refused.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<MaestroConfig, Error> {
        let serde_json::Value::Object(p) = patch else {
            return Err(Error::validation("config patch must be a JSON object"));
        };
        let mut doc = serde_json::to_value(self).expect("config serializes");
        merge_patch(&mut doc, &serde_json::Value::Object(p.clone()));
        let cfg: MaestroConfig = crate::model::from_value_at_path(doc, "invalid config")?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}
