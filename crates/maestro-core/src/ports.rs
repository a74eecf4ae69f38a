//! The ports Maestro's engine needs from the outside world: persistence
//! ([`Store`], split into one small trait per aggregate) and agent calls
//! ([`Invoker`]). Adapters implement them (`maestro-store`, `maestro-api`);
//! the engine depends only on these traits.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Result;
use crate::model::{
    Attempt, ChoreographyEvent, EventFilter, EventType, ExecutionStatus, NewEvent, RegisteredAgent,
    StepExecution, Timestamp, Workflow, WorkflowExecution,
};

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// Everything that changes in one group commit: many executions' header rows,
/// step rows and attempt rows, the events they publish, and execute idempotency
/// keys. Committed in one transaction; events get their `seq` in commit order.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Execution header rows to upsert (their `stepExecutions` are ignored: steps
    /// are written through `steps`).
    pub executions: Vec<Arc<ExecutionHeader>>,
    /// Step rows to upsert (their `attempts` are ignored: see `attempts`).
    pub steps: Vec<StepRow>,
    /// Attempt rows to upsert.
    pub attempts: Vec<AttemptRow>,
    pub events: Vec<NewEvent>,
    pub idempotency_keys: Vec<IdempotencyRecord>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
            && self.steps.is_empty()
            && self.attempts.is_empty()
            && self.events.is_empty()
            && self.idempotency_keys.is_empty()
    }
}

/// The execution row: a [`WorkflowExecution`] without its step executions, plus
/// what queries need (the workflow's tags, the queue position).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionHeader {
    /// `step_executions` is left empty here.
    pub execution: WorkflowExecution,
    pub workflow_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub execution_id: String,
    /// Position of the step in the workflow (keeps `stepExecutions` in order).
    pub position: u32,
    /// `attempts` is ignored: attempts are rows of their own.
    pub step: StepExecution,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub execution_id: String,
    pub step_id: String,
    pub attempt: Attempt,
}

/// `Idempotency-Key` of an execute call, scoped to the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub workflow_id: String,
    pub key: String,
    /// Hash of the request body, to tell a replay from a reuse.
    pub request_hash: String,
    pub execution_id: String,
    pub created_at: Timestamp,
}

/// Filters of `GET /maestro/executions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionQuery {
    pub workflow_id: Option<String>,
    /// Empty: any status.
    pub statuses: Vec<ExecutionStatus>,
    /// Executions with a step that ran on this agent.
    pub agent_id: Option<String>,
    /// Executions of workflows carrying every one of these tags.
    pub tags: Vec<String>,
    pub correlation_id: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub limit: usize,
    pub offset: usize,
}

/// A page of results and the number of all that match.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// How to pick a page of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOrder {
    /// The first `limit` matching events with `seq > filter.after` (ascending).
    Ascending,
    /// The newest `limit` matching events, returned in ascending seq order.
    Newest,
}

/// Counts of executions by status, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionStats {
    pub by_status: Vec<(ExecutionStatus, u64)>,
    /// Sum and count of wall times (ms) of finished executions.
    pub finished_time_sum_ms: u64,
    pub finished_count: u64,
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Insert or replace an agent (its `inboundSecret` included).
    async fn put_agent(&self, agent: &RegisteredAgent) -> Result<()>;
    /// `true` if it existed.
    async fn delete_agent(&self, agent_id: &str) -> Result<bool>;
    async fn get_agent(&self, agent_id: &str) -> Result<Option<RegisteredAgent>>;
    /// All agents (the registry caches them in memory).
    async fn list_agents(&self) -> Result<Vec<RegisteredAgent>>;
}

#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Store a new revision. `Error::AlreadyExists` if that (id, revision) exists,
    /// which is how two concurrent updates are told apart.
    async fn insert_workflow_revision(&self, workflow: &Workflow) -> Result<()>;
    /// The latest revision, or the given one. Deleted workflows are not found.
    async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>>;
    /// Latest revisions, ordered by id; `tags`: workflows carrying all of them.
    async fn list_workflows(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>>;
    /// Hide a workflow (its revisions stay for executions that pinned them).
    /// `true` if it existed.
    async fn delete_workflow(&self, id: &str) -> Result<bool>;
}

#[async_trait]
pub trait ExecutionStore: Send + Sync {
    /// Commit a batch in one transaction (one fsync). Returns the batch's events
    /// with their `seq` assigned, in order.
    async fn commit(&self, batch: Batch) -> Result<Vec<ChoreographyEvent>>;
    /// One execution with its steps and their attempts.
    async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>>;
    /// Newest first.
    async fn query_executions(&self, query: &ExecutionQuery) -> Result<Page<WorkflowExecution>>;
    /// Every execution that is `pending`, `running` or `paused` (to resume after a
    /// restart), oldest first, with steps and attempts.
    async fn unfinished_executions(&self) -> Result<Vec<WorkflowExecution>>;
    async fn execution_stats(&self) -> Result<ExecutionStats>;
    async fn get_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>>;
    /// Whether any execution of the workflow is pending, running or paused.
    async fn has_active_executions(&self, workflow_id: &str) -> Result<bool>;
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Append events outside an execution batch (registry, API). Same seq rules.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>>;
    async fn query_events(
        &self,
        filter: &EventFilter,
        order: EventOrder,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>>;
    /// The highest committed seq (0 when empty).
    async fn last_seq(&self) -> Result<u64>;
    /// Events with timestamp >= `since` (for throughput).
    async fn count_events_since(&self, since: Timestamp) -> Result<u64>;
}

/// A stored API token: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// `Error::AlreadyExists` on a duplicate id.
    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Mark revoked; `true` if it existed and was not revoked yet.
    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool>;
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    pub id: String,
    pub event_types: Vec<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    pub url: String,
    #[serde(skip)]
    pub secret: String,
    pub created_at: Timestamp,
}

#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    async fn insert_subscription(&self, sub: &SubscriptionRecord) -> Result<()>;
    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>>;
    async fn delete_subscription(&self, id: &str) -> Result<bool>;
}

#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The runtime config keys that were PATCHed, as a JSON object.
    async fn load_config(&self) -> Result<Option<Value>>;
    async fn save_config(&self, config: &Value) -> Result<()>;
}

/// The whole persistence port.
pub trait Store:
    AgentStore
    + WorkflowStore
    + ExecutionStore
    + EventStore
    + TokenStore
    + SubscriptionStore
    + ConfigStore
{
}

impl<T> Store for T where
    T: AgentStore
        + WorkflowStore
        + ExecutionStore
        + EventStore
        + TokenStore
        + SubscriptionStore
        + ConfigStore
{
}

// ---------------------------------------------------------------------------
// Invoker
// ---------------------------------------------------------------------------

/// One call of a capability on an agent (API.md "Agent protocol" push body).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub task_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub capability: String,
    pub inputs: Map<String, Value>,
    pub correlation_id: String,
    /// Wall-clock deadline of this attempt (ms since epoch).
    pub deadline: Timestamp,
    pub timeout_ms: u64,
    /// `<executionId>:<stepId>:<attempt>`, or `<executionId>:<stepId>:compensate:<attempt>`.
    #[serde(skip)]
    pub idempotency_key: String,
    #[serde(skip)]
    pub compensation: bool,
}

impl Invocation {
    pub fn idempotency_key_for(
        execution_id: &str,
        step_id: &str,
        attempt: u32,
        compensation: bool,
    ) -> String {
        if compensation {
            format!("{execution_id}:{step_id}:compensate:{attempt}")
        } else {
            format!("{execution_id}:{step_id}:{attempt}")
        }
    }
}

/// Why a call failed. `retryable` decides whether the retry policy applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvokeError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl InvokeError {
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        InvokeError {
            code: code.into(),
            message: message.into(),
            retryable,
            details: None,
        }
    }
}

/// Calls an agent's capability and returns its outputs.
#[async_trait]
pub trait Invoker: Send + Sync {
    async fn invoke(
        &self,
        agent: &RegisteredAgent,
        invocation: Invocation,
    ) -> std::result::Result<Map<String, Value>, InvokeError>;

    /// Best-effort notice that a call in flight is no longer wanted.
    async fn cancel(&self, _agent: &RegisteredAgent, _invocation: &Invocation) {}
}

// ---------------------------------------------------------------------------
// Outbound HTTP
// ---------------------------------------------------------------------------

/// Why an outbound POST did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboundError {
    /// The URL's host is not allowed by `outboundAllowList` (never retried).
    #[error("destination refused by the outbound allow-list: {0}")]
    Refused(String),
    /// Bad URL (never retried).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Connection error, timeout or a non-2xx answer (may be retried).
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// POSTs JSON to URLs outside the process (callbacks, webhooks), enforcing the
/// outbound allow-list.
#[async_trait]
pub trait Outbound: Send + Sync {
    /// One attempt; `Ok(status)` for a 2xx answer.
    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(String, String)],
        timeout_ms: u64,
    ) -> std::result::Result<u16, OutboundError>;
}
