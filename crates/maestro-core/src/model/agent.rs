//! Agents, their capabilities and their health (API.md "Agents").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Timestamp;

/// Reachability and willingness of an agent, as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    #[default]
    Online,
    Offline,
    Degraded,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Degraded => "degraded",
        }
    }
}

/// How Maestro reaches an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Maestro pushes `POST <endpoint>/invoke`.
    Http,
    /// The agent pulls tasks with `tasks/poll`.
    Poll,
    /// A handler registered in the same process (library use).
    Inprocess,
}

/// The declared shape of a capability's inputs or outputs: either the simple map
/// `field -> type` of the original (`string number integer boolean object array any`,
/// suffix `?` = optional) or a JSON Schema object (recognised by a top-level `type`,
/// `properties`, `$schema` or `required` key whose value is not a type name string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct TypeSpec(pub Map<String, Value>);

/// One thing an agent can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentCapability {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub inputs: TypeSpec,
    #[serde(default)]
    pub outputs: TypeSpec,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub deprecated: bool,
    /// Capability on the same agent that undoes this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// Output keys shown as `"***"` to everyone but admins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
}

fn default_version() -> String {
    "1.0".to_owned()
}

/// An agent as registered with Maestro.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisteredAgent {
    pub id: String,
    #[serde(rename = "type")]
    pub agent_type: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub public_key: String,
    #[serde(default)]
    pub capabilities: Vec<AgentCapability>,
    #[serde(default)]
    pub status: AgentStatus,
    /// Last heartbeat, ms since the Unix epoch. Set to the registration time when
    /// omitted (0 on the wire means "not given").
    #[serde(default)]
    pub last_heartbeat: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Bearer token Maestro sends on push calls. Write-only: accepted on input,
    /// never returned (an update without it keeps the stored one).
    #[serde(default, skip_serializing)]
    pub inbound_secret: Option<String>,
    /// Set when an operator fixed the status with `PATCH .../status`: heartbeats
    /// do not override it until the next PATCH back to `online`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status_hold: bool,
}

impl RegisteredAgent {
    /// The transport in effect: explicit, else `http` with an endpoint, else `poll`.
    pub fn effective_transport(&self) -> Transport {
        match (self.transport, &self.endpoint) {
            (Some(t), _) => t,
            (None, Some(_)) => Transport::Http,
            (None, None) => Transport::Poll,
        }
    }

    /// Write the transport in effect into `transport`, so that every read
    /// shows it (a definition replaced later is settled again).
    pub fn settle_transport(&mut self) {
        self.transport = Some(self.effective_transport());
    }

    pub fn capability(&self, id: &str) -> Option<&AgentCapability> {
        self.capabilities.iter().find(|c| c.id == id)
    }

    /// The capability that undoes `capability` on this agent: its declared
    /// `compensation`, else `<capability>_rollback` when the agent has it.
    pub fn compensation_for(&self, capability: &str) -> Option<String> {
        if let Some(c) = self
            .capability(capability)
            .and_then(|c| c.compensation.clone())
        {
            return Some(c);
        }
        let fallback = format!("{capability}_rollback");
        self.capability(&fallback).map(|_| fallback)
    }
}

/// An agent's health as Maestro computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    /// The original's status score: healthy 100, degraded 50, unhealthy 0.
    pub fn score(self) -> f64 {
        match self {
            HealthStatus::Healthy => 100.0,
            HealthStatus::Degraded => 50.0,
            HealthStatus::Unhealthy => 0.0,
        }
    }
}

/// Call statistics of one capability of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapabilityHealth {
    pub name: String,
    /// Fraction 0..=1 of successful calls.
    #[serde(default)]
    pub success_rate: f64,
    /// Mean call time in ms.
    #[serde(default)]
    pub average_time: f64,
    #[serde(default)]
    pub invocations: u64,
}

/// Health of one agent. Computed by Maestro from real invocations and health
/// checks, merged with what the agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentHealth {
    #[serde(default)]
    pub agent_id: String,
    #[serde(default)]
    pub status: HealthStatus,
    /// Mean response time in ms over the window.
    #[serde(default)]
    pub response_time: f64,
    /// Fraction 0..=1 of failed calls over the window.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub last_check: Timestamp,
    /// Percentage 0..=100 of health checks that found the agent online.
    #[serde(default)]
    pub uptime: f64,
    #[serde(default)]
    pub score: f64,
    #[serde(default)]
    pub capabilities: Vec<CapabilityHealth>,
}

impl AgentHealth {
    /// The original's formula: (statusScore + (1 − errorRate) × 100 + uptime) / 3.
    pub fn compute_score(status: HealthStatus, error_rate: f64, uptime: f64) -> f64 {
        (status.score() + (1.0 - error_rate.clamp(0.0, 1.0)) * 100.0 + uptime.clamp(0.0, 100.0))
            / 3.0
    }
}
