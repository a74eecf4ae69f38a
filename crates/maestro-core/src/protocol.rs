//! The wire contract of the HTTP API (docs/API.md): the request body and the
//! success answer of every route, in one place. The server answers with these
//! types, the OpenAPI document takes its schemas from them (feature `schema`)
//! and the typed client (`maestro-client`) reads them back, so a field added
//! to an answer reaches all three, or something fails to compile.
//!
//! Answers are `{"success": true, <key>: ...}` ([`True`] always writes `true`);
//! lists add `count` (items in this answer) and `total` (all that match).
//! Request bodies refuse unknown fields, as the model types do.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::model::{
    AgentHealth, AgentStatus, ChoreographyEvent, ChoreographyMetrics, EventType, MaestroConfig,
    RegisteredAgent, Timestamp, Workflow, WorkflowExecution,
};
use crate::ports::{SubscriptionRecord, TaskStatus, TokenRecord};

/// The server settings: read at start (`maestro.toml`, `MAESTRO_*`, flags),
/// never changed at run time. `PATCH /maestro/config` refuses them by name.
/// The binary's `ServerSettings` has exactly these fields (checked by a test
/// there).
pub const SERVER_SETTINGS: &[&str] = &[
    "listen",
    "dataDir",
    "databaseUrl",
    "databaseMaxConnections",
    "clusterLeaseTtlMs",
    "authFailuresPerMinute",
    "retentionExecutionsMs",
    "retentionEventsMs",
    "adminToken",
    "logFormat",
    "maxBodyBytes",
    "maxQueuedExecutions",
    "maxStepsPerWorkflow",
    "celMaxCost",
    "celMaxListSize",
    "maxJsonDepth",
    "maxOutputBytes",
    "drainTimeoutMs",
    "outboundAllowList",
    "maxWaitMs",
    "sseQueue",
    "sseKeepaliveMs",
    "headerReadTimeoutMs",
    "keepAliveIdleTimeoutMs",
    "maxConnections",
];

/// The `success` of an answer: always `true` on the wire (failures are the
/// error envelope, `success: false`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct True;

impl Serialize for True {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for True {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? {
            Ok(True)
        } else {
            Err(serde::de::Error::custom("expected `success: true`"))
        }
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for True {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "True".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "boolean", "const": true})
    }
}

/// `{"success": true, <key>: T}`.
macro_rules! answer {
    ($(#[$m:meta])* $name:ident { $(#[$fm:meta])* $key:ident : $ty:ty }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub struct $name {
            pub success: True,
            $(#[$fm])*
            pub $key: $ty,
        }

        impl $name {
            pub fn new($key: $ty) -> Self {
                $name { success: True, $key }
            }
        }
    };
}

/// `{"success": true, "count": n, "total": t, <key>: [T]}`.
macro_rules! list {
    ($(#[$m:meta])* $name:ident { $key:ident : $ty:ty }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub struct $name {
            pub success: True,
            /// Items in this answer.
            pub count: usize,
            /// All items that match.
            pub total: u64,
            pub $key: Vec<$ty>,
        }

        impl $name {
            /// `total` is at least the items answered.
            pub fn new($key: Vec<$ty>, total: u64) -> Self {
                let count = $key.len();
                $name {
                    success: True,
                    count,
                    total: total.max(count as u64),
                    $key,
                }
            }

            /// A whole list (`total` = `count`).
            pub fn all($key: Vec<$ty>) -> Self {
                Self::new($key, 0)
            }
        }
    };
}

// ------------------------------------------------------------------ answers

/// `{"success": true, "message": ...}` (deletions, revocations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Message {
    pub success: True,
    pub message: String,
}

impl Message {
    pub fn new(message: impl Into<String>) -> Self {
        Message {
            success: True,
            message: message.into(),
        }
    }
}

/// `/healthz`, `/readyz`: `{"status": "ok" | "ready"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Probe {
    pub status: String,
}

answer!(
    /// One agent.
    AgentAnswer { agent: RegisteredAgent }
);

/// A new agent (201) with its first token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AgentCreated {
    pub success: True,
    pub agent: RegisteredAgent,
    /// The agent's token (`mst_<id>_<secret>`), shown once.
    pub agent_token: String,
}

list!(
    /// Agents.
    AgentList { agents: RegisteredAgent }
);

answer!(
    /// One agent's health.
    HealthAnswer { health: AgentHealth }
);

list!(
    /// The health of every agent.
    HealthList { health: AgentHealth }
);

answer!(
    /// One workflow.
    WorkflowAnswer { workflow: Workflow }
);

list!(
    /// Workflows.
    WorkflowList { workflows: Workflow }
);

answer!(
    /// One execution.
    ExecutionAnswer { execution: WorkflowExecution }
);

list!(
    /// Executions.
    ExecutionList { executions: WorkflowExecution }
);

answer!(
    /// A published event.
    EventAnswer { event: ChoreographyEvent }
);

list!(
    /// Events, in seq order.
    EventList { events: ChoreographyEvent }
);

answer!(
    /// Orchestration metrics.
    MetricsAnswer { metrics: ChoreographyMetrics }
);

answer!(
    /// The runtime configuration.
    ConfigAnswer { config: MaestroConfig }
);

/// Answer of `POST /maestro/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenCreated {
    pub success: True,
    pub token: TokenRecord,
    /// `mst_<id>_<secret>`: shown once.
    pub secret: String,
}

list!(
    /// Tokens (never their secrets).
    TokenList { tokens: TokenRecord }
);

/// Answer of `POST /maestro/subscriptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscriptionCreated {
    pub success: True,
    pub subscription: SubscriptionRecord,
    /// HMAC-SHA256 key of `X-Maestro-Signature`: shown once.
    pub secret: String,
}

/// A subscription as listed: the record and its delivery counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SubscriptionListed {
    #[serde(flatten)]
    pub subscription: SubscriptionRecord,
    pub delivery: DeliveryCounters,
}

/// Delivery counters of a subscription since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeliveryCounters {
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Events given up on after their attempts (or refused by the allow-list).
    pub failed: u64,
    /// Times the live backlog overflowed and the worker caught up from the log.
    pub catch_ups: u64,
    /// POSTs made, retries included.
    pub attempts: u64,
    /// Seq of the last event delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

list!(
    /// Webhook subscriptions with their delivery counters.
    SubscriptionList { subscriptions: SubscriptionListed }
);

/// Answer of a poll: each task is the push body plus `leaseExpiresAt` (and
/// `deadline`, the lease's end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PollAnswer {
    pub success: True,
    pub tasks: Vec<Value>,
}

/// A task after complete/fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskState {
    pub task_id: String,
    pub status: TaskStatus,
}

answer!(
    /// Answer of complete/fail.
    TaskAnswer { task: TaskState }
);

/// Answer of a task heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LeaseAnswer {
    pub success: True,
    pub lease_expires_at: Timestamp,
    pub cancel_requested: bool,
}

// ------------------------------------------------------------ request bodies

/// `PATCH /maestro/agents/{agentId}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    pub status: AgentStatus,
}

/// `POST /maestro/agents/{agentId}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// What the agent reports about itself (any subset of AgentHealth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<AgentHealth>,
}

/// `POST /maestro/workflows/{workflowId}/execute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteBody {
    /// Inputs of this run (over the workflow's initialInputs).
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Defaults to the execution id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_execution_id: Option<String>,
}

/// `POST /maestro/executions/{executionId}/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Kept with the execution and in the `workflow:cancelled` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /maestro/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishEvent {
    /// `agent:event` or `agent:alert`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Any JSON.
    #[serde(default)]
    pub payload: Value,
    /// Defaults to the token's agent (agent tokens) or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_agent: Option<String>,
    /// The agent the event is meant for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_agent: Option<String>,
    /// Correlation id of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl PublishEvent {
    /// An `agent:event` with `payload`.
    pub fn new(payload: Value) -> Self {
        PublishEvent {
            event_type: EventType::AgentEvent,
            payload,
            source_agent: None,
            target_agent: None,
            correlation_id: None,
            metadata: None,
        }
    }
}

/// `POST /maestro/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    /// admin, operator, reader or agent.
    pub role: String,
    /// Required for role agent: the only agent the token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// A name for humans (default: the role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// `POST /maestro/subscriptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSubscription {
    /// Event types to deliver (at least one).
    pub event_types: Vec<EventType>,
    /// Only events from or to this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Only events of this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    /// http(s) URL; checked against the outbound allow-list on delivery.
    pub url: String,
}

/// `POST /maestro/agents/{agentId}/tasks/poll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollBody {
    /// Only tasks of these capabilities (default: all of the agent's).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Most tasks to lease (default 1, at most 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    /// Longest wait for a task, ms (default 30000, at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// `POST /maestro/tasks/{taskId}/complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub outputs: Map<String, Value>,
}

/// `POST /maestro/tasks/{taskId}/fail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub error: AgentFailure,
}

/// The agent's error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentFailure {
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// Whether the retry policy may try again (default false).
    #[serde(default)]
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `POST /maestro/tasks/{taskId}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskHeartbeatBody {
    /// New lease length from now, ms (default: the attempt timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn success_is_always_true() {
        let m = Message::new("gone");
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"success": true, "message": "gone"})
        );
        assert!(
            serde_json::from_value::<Message>(json!({"success": false, "message": ""})).is_err()
        );
        assert!(serde_json::from_value::<Message>(json!({"message": ""})).is_err());
    }

    #[test]
    fn lists_count_their_items() {
        let l = TokenList::new(Vec::new(), 3);
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"success": true, "count": 0, "total": 3, "tokens": []})
        );
        let back: TokenList = serde_json::from_value(json!(
            {"success": true, "count": 0, "total": 0, "tokens": []}))
        .unwrap();
        assert_eq!(back, TokenList::all(Vec::new()));
    }

    #[test]
    fn bodies_round_trip_and_refuse_unknown_fields() {
        let b = ExecuteBody {
            correlation_id: Some("c".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v, json!({"inputs": {}, "correlationId": "c"}));
        assert_eq!(serde_json::from_value::<ExecuteBody>(v).unwrap(), b);
        assert!(serde_json::from_value::<ExecuteBody>(json!({"input": {}})).is_err());
        assert_eq!(
            serde_json::to_value(HeartbeatBody::default()).unwrap(),
            json!({})
        );
    }

    #[cfg(feature = "schema")]
    #[test]
    fn success_schema_is_const_true() {
        let s = schemars::schema_for!(Message).to_value();
        assert_eq!(s["properties"]["success"]["const"], json!(true));
        let req = s["required"].as_array().unwrap();
        assert!(req.contains(&json!("success")) && req.contains(&json!("message")));
    }
}
