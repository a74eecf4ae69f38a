//! Orchestration metrics (API.md "Monitoring").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /maestro/metrics`. Each finished execution counts in exactly one of
/// completed / failed / rolledBack / cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChoreographyMetrics {
    /// Workflows defined.
    pub total_workflows: u64,
    pub total_executions: u64,
    pub completed_workflows: u64,
    pub failed_workflows: u64,
    pub rolled_back_workflows: u64,
    pub cancelled_workflows: u64,
    /// Mean wall time of finished executions, ms.
    pub average_execution_time: f64,
    /// 0–100: completed / finished; 0 before any finished.
    pub success_rate: f64,
    pub active_executions: u64,
    pub queued_executions: u64,
    pub agent_health_scores: BTreeMap<String, f64>,
    /// Events per second over the last 60 s.
    pub event_throughput: f64,
}
