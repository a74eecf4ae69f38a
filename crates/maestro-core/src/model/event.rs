//! Events on the Event Bus (API.md "Events").

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Timestamp;

/// Every event type Maestro publishes or accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum EventType {
    #[serde(rename = "agent:registered")]
    AgentRegistered,
    #[serde(rename = "agent:deregistered")]
    AgentDeregistered,
    #[serde(rename = "agent:health")]
    AgentHealth,
    #[serde(rename = "agent:event")]
    AgentEvent,
    #[serde(rename = "agent:alert")]
    AgentAlert,
    #[serde(rename = "workflow:created")]
    WorkflowCreated,
    #[serde(rename = "workflow:updated")]
    WorkflowUpdated,
    #[serde(rename = "workflow:started")]
    WorkflowStarted,
    #[serde(rename = "workflow:step_started")]
    StepStarted,
    #[serde(rename = "workflow:step_completed")]
    StepCompleted,
    #[serde(rename = "workflow:step_failed")]
    StepFailed,
    #[serde(rename = "workflow:step_retrying")]
    StepRetrying,
    #[serde(rename = "workflow:step_skipped")]
    StepSkipped,
    /// A compensation call of a rollback ended (`payload.status`: executed | failed).
    #[serde(rename = "workflow:step_compensated")]
    StepCompensated,
    #[serde(rename = "workflow:completed")]
    WorkflowCompleted,
    #[serde(rename = "workflow:failed")]
    WorkflowFailed,
    #[serde(rename = "workflow:paused")]
    WorkflowPaused,
    #[serde(rename = "workflow:resumed")]
    WorkflowResumed,
    #[serde(rename = "workflow:cancelled")]
    WorkflowCancelled,
    #[serde(rename = "workflow:rolled_back")]
    WorkflowRolledBack,
    #[serde(rename = "choreography:sync")]
    ChoreographySync,
    /// Admin actions (token created/revoked, config changed, ...), for the audit trail.
    #[serde(rename = "maestro:audit")]
    Audit,
}

impl EventType {
    pub const ALL: [EventType; 22] = [
        EventType::AgentRegistered,
        EventType::AgentDeregistered,
        EventType::AgentHealth,
        EventType::AgentEvent,
        EventType::AgentAlert,
        EventType::WorkflowCreated,
        EventType::WorkflowUpdated,
        EventType::WorkflowStarted,
        EventType::StepStarted,
        EventType::StepCompleted,
        EventType::StepFailed,
        EventType::StepRetrying,
        EventType::StepSkipped,
        EventType::StepCompensated,
        EventType::WorkflowCompleted,
        EventType::WorkflowFailed,
        EventType::WorkflowPaused,
        EventType::WorkflowResumed,
        EventType::WorkflowCancelled,
        EventType::WorkflowRolledBack,
        EventType::ChoreographySync,
        EventType::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AgentRegistered => "agent:registered",
            EventType::AgentDeregistered => "agent:deregistered",
            EventType::AgentHealth => "agent:health",
            EventType::AgentEvent => "agent:event",
            EventType::AgentAlert => "agent:alert",
            EventType::WorkflowCreated => "workflow:created",
            EventType::WorkflowUpdated => "workflow:updated",
            EventType::WorkflowStarted => "workflow:started",
            EventType::StepStarted => "workflow:step_started",
            EventType::StepCompleted => "workflow:step_completed",
            EventType::StepFailed => "workflow:step_failed",
            EventType::StepRetrying => "workflow:step_retrying",
            EventType::StepSkipped => "workflow:step_skipped",
            EventType::StepCompensated => "workflow:step_compensated",
            EventType::WorkflowCompleted => "workflow:completed",
            EventType::WorkflowFailed => "workflow:failed",
            EventType::WorkflowPaused => "workflow:paused",
            EventType::WorkflowResumed => "workflow:resumed",
            EventType::WorkflowCancelled => "workflow:cancelled",
            EventType::WorkflowRolledBack => "workflow:rolled_back",
            EventType::ChoreographySync => "choreography:sync",
            EventType::Audit => "maestro:audit",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The terminal event types: every execution publishes exactly one of them.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::WorkflowCompleted
                | EventType::WorkflowFailed
                | EventType::WorkflowRolledBack
                | EventType::WorkflowCancelled
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as stored and delivered. `seq` is a strictly increasing cursor
/// allocated in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChoreographyEvent {
    pub id: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub source_agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    pub payload: Value,
    pub timestamp: Timestamp,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

/// An event before it is committed: it gets its `seq` (and `id`) from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub source_agent: String,
    pub target_agent: Option<String>,
    pub workflow_id: Option<String>,
    pub execution_id: Option<String>,
    pub payload: Value,
    pub timestamp: Timestamp,
    pub correlation_id: String,
    pub metadata: Option<Map<String, Value>>,
}

impl NewEvent {
    /// An engine event (`sourceAgent: "maestro"`).
    pub fn engine(event_type: EventType, payload: Value, timestamp: Timestamp) -> Self {
        NewEvent {
            event_type,
            source_agent: "maestro".to_owned(),
            target_agent: None,
            workflow_id: None,
            execution_id: None,
            payload,
            timestamp,
            correlation_id: String::new(),
            metadata: None,
        }
    }

    /// Give the event its cursor. `id` is derived from `seq` (`evt_<seq>`) so it
    /// is unique and needs no generator.
    pub fn into_event(self, seq: u64) -> ChoreographyEvent {
        ChoreographyEvent {
            id: format!("evt_{seq}"),
            seq,
            event_type: self.event_type,
            source_agent: self.source_agent,
            target_agent: self.target_agent,
            workflow_id: self.workflow_id,
            execution_id: self.execution_id,
            payload: self.payload,
            timestamp: self.timestamp,
            correlation_id: self.correlation_id,
            metadata: self.metadata,
        }
    }
}

/// Filters of `getEventHistory` / `GET /maestro/events` and of subscriptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Empty: every type.
    pub event_types: Vec<EventType>,
    /// Matches the source or the target agent.
    pub agent_id: Option<String>,
    /// Matches the source agent only.
    pub source_agent: Option<String>,
    pub workflow_id: Option<String>,
    pub execution_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Only events with `timestamp >= since`.
    pub since: Option<Timestamp>,
    /// Only events with `seq > after`.
    pub after: Option<u64>,
}

impl EventFilter {
    pub fn matches(&self, e: &ChoreographyEvent) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&e.event_type))
            && self
                .agent_id
                .as_ref()
                .is_none_or(|a| &e.source_agent == a || e.target_agent.as_ref() == Some(a))
            && self
                .source_agent
                .as_ref()
                .is_none_or(|a| &e.source_agent == a)
            && self
                .workflow_id
                .as_ref()
                .is_none_or(|w| e.workflow_id.as_ref() == Some(w))
            && self
                .execution_id
                .as_ref()
                .is_none_or(|x| e.execution_id.as_ref() == Some(x))
            && self
                .correlation_id
                .as_ref()
                .is_none_or(|c| &e.correlation_id == c)
            && self.since.is_none_or(|s| e.timestamp >= s)
            && self.after.is_none_or(|a| e.seq > a)
    }
}
