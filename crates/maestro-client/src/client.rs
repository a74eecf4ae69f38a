//! The typed client of the Maestro HTTP API (docs/API.md).
//!
//! One async method per route (the agent task routes `tasks/poll|complete|
//! fail|heartbeat` live in the agent SDK, [`crate::agent`]). Request bodies and
//! answers are read and written as the server's own types
//! ([`maestro_core::protocol`]), carrying those of [`maestro_core::model`];
//! every failure is one
//! [`Error`]: an API error envelope becomes
//! [`Error::Api`] with its status, code, message and
//! details.
//!
//! ```no_run
//! # async fn demo() -> Result<(), maestro_client::Error> {
//! use maestro_client::client::{Client, ExecuteOptions};
//!
//! let client = Client::new("http://127.0.0.1:7300", "mst_...");
//! let run = client
//!     .execute_workflow(
//!         "auth-flow",
//!         &ExecuteOptions::default()
//!             .input("userId", "alice")
//!             .wait(std::time::Duration::from_secs(10)),
//!     )
//!     .await?;
//! println!("{} is {}", run.execution.id, run.execution.status.as_str());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use maestro_core::model::{
    AgentHealth, AgentStatus, ChoreographyEvent, ChoreographyMetrics, EventType, ExecutionStatus,
    MaestroConfig, RegisteredAgent, Timestamp, Workflow, WorkflowExecution,
};
use maestro_core::ports::{SubscriptionRecord, TokenRecord};
use maestro_core::protocol::{
    AgentAnswer, AgentCreated, AgentList, CancelBody, ConfigAnswer, EventAnswer, EventList,
    ExecuteBody, ExecutionAnswer, ExecutionList, HealthAnswer, HealthList, HeartbeatBody, Message,
    MetricsAnswer, StatusBody, SubscriptionCreated, SubscriptionList, TokenCreated, TokenList,
    WorkflowAnswer, WorkflowList,
};
pub use maestro_core::protocol::{DeliveryCounters, SubscriptionListed};
/// The request bodies of `POST /maestro/events`, `/maestro/tokens` and
/// `/maestro/subscriptions` (the server reads the same types).
pub use maestro_core::protocol::{NewSubscription, NewToken, PublishEvent};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::Error;

/// A client of one Maestro server, authenticated with one bearer token.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash.
    base: String,
    /// `None`: no `Authorization` header (only `/healthz` and `/readyz` answer).
    token: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("token", &self.inner.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One page of a list answer (`{<items>, count, total}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this answer.
    pub items: Vec<T>,
    /// Items in this answer (`items.len()`).
    pub count: usize,
    /// Items that match the query, over all pages.
    pub total: usize,
}

impl<T> Page<T> {
    fn of(items: Vec<T>, count: usize, total: u64) -> Page<T> {
        Page {
            items,
            count,
            total: usize::try_from(total).unwrap_or(usize::MAX),
        }
    }
}

/// `limit` / `offset` of the list routes that take nothing else
/// (tokens, subscriptions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paging {
    /// Items per answer (server default 100, max 1000).
    pub limit: Option<usize>,
    /// Items to skip (default 0).
    pub offset: Option<usize>,
}

/// The answer of registering an agent (`POST /maestro/agents`,
/// `PUT /maestro/agents/:id`).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRegistration {
    /// The agent as stored.
    pub agent: RegisteredAgent,
    /// The agent's own token (`role: agent`), answered once, when the agent
    /// was created; `None` when an existing agent was updated.
    pub agent_token: Option<String>,
    /// Whether the agent was created (201) rather than updated (200).
    pub created: bool,
}

/// Filters of `GET /maestro/agents`. Empty lists and `None` do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentQuery {
    /// Agent types (any of).
    pub types: Vec<String>,
    /// Statuses (any of).
    pub status: Vec<AgentStatus>,
    /// Agents having every one of these capabilities.
    pub capabilities: Vec<String>,
    /// Agents with a capability carrying one of these tags.
    pub tags: Vec<String>,
    /// Items per answer (default 100, max 1000).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

/// Filters of `GET /maestro/workflows`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowQuery {
    /// Workflows carrying every one of these tags.
    pub tags: Vec<String>,
    /// Items per answer (default 100, max 1000).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

/// The syntax of a workflow document given as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkflowFormat {
    /// `application/json`.
    Json,
    /// `application/yaml`.
    Yaml,
}

impl WorkflowFormat {
    /// The format a file name suggests: `.yaml` / `.yml` are YAML, anything
    /// else JSON.
    pub fn from_path(path: &std::path::Path) -> WorkflowFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                WorkflowFormat::Yaml
            }
            _ => WorkflowFormat::Json,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            WorkflowFormat::Json => "application/json",
            WorkflowFormat::Yaml => "application/yaml",
        }
    }
}

/// Options of `POST /maestro/workflows/:id/execute`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecuteOptions {
    /// Inputs of this run (over the workflow's `initialInputs`).
    pub inputs: Map<String, Value>,
    /// Correlation id of the run's events (default: the execution id).
    pub correlation_id: Option<String>,
    /// The execution that started this one.
    pub parent_execution_id: Option<String>,
    /// `Idempotency-Key` header: the same key (per workflow, 24 h) answers the
    /// existing execution instead of starting another.
    pub idempotency_key: Option<String>,
    /// `?wait=`: wait up to this long for the execution to finish.
    pub wait: Option<Duration>,
}

impl ExecuteOptions {
    /// Set one input.
    pub fn input(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.inputs.insert(key.into(), value.into());
        self
    }

    /// Wait up to `d` for the execution to finish.
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = Some(d);
        self
    }

    /// Set the `Idempotency-Key`.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Set the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// The answer of executing a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// The execution: just started (`pending`/`running`), or finished when
    /// `wait` was given and it finished in time.
    pub execution: WorkflowExecution,
    /// 202: a new execution that is still going. 200: finished in time (with
    /// `wait`), or an existing execution answered for a repeated
    /// `Idempotency-Key`.
    pub status: u16,
}

/// Filters of `GET /maestro/executions`. Empty lists and `None` do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionQuery {
    /// Executions of this workflow.
    pub workflow_id: Option<String>,
    /// Statuses (any of).
    pub status: Vec<ExecutionStatus>,
    /// Executions with a step that ran on this agent.
    pub agent_id: Option<String>,
    /// Executions of workflows carrying every one of these tags.
    pub tags: Vec<String>,
    /// Executions with this correlation id.
    pub correlation_id: Option<String>,
    /// Created at or after (ms since the epoch).
    pub created_after: Option<Timestamp>,
    /// Created before (ms since the epoch).
    pub created_before: Option<Timestamp>,
    /// Items per answer (default 100, max 1000).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

/// Filters of the event history and the event stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Event types (any of); empty: every type.
    pub event_types: Vec<EventType>,
    /// Events from this agent.
    pub source_agent: Option<String>,
    /// Events from or to this agent.
    pub agent_id: Option<String>,
    /// Events of this workflow.
    pub workflow_id: Option<String>,
    /// Events of this execution.
    pub execution_id: Option<String>,
    /// Events with this correlation id.
    pub correlation_id: Option<String>,
    /// Events at or after this time (ms since the epoch).
    pub since: Option<Timestamp>,
    /// Events after this seq. History: the first `limit` after it (without it
    /// the newest `limit`). Stream: resume from the log after it (as
    /// `Last-Event-ID`).
    pub after: Option<u64>,
    /// Events per answer of the history (default 100, max 10000); the stream
    /// ignores it.
    pub limit: Option<usize>,
}

/// The answer of creating a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedToken {
    /// The stored token (never its secret).
    pub token: TokenRecord,
    /// The bearer secret `mst_<id>_<secret>`: answered once.
    pub secret: String,
}

/// The answer of creating a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedSubscription {
    /// The stored subscription (never its secret).
    pub subscription: SubscriptionRecord,
    /// HMAC-SHA256 key of the `X-Maestro-Signature` header: answered once.
    pub secret: String,
}

/// Query parameters under construction.
#[derive(Default)]
struct Params(Vec<(&'static str, String)>);

impl Params {
    fn opt(&mut self, name: &'static str, v: Option<impl ToString>) -> &mut Self {
        if let Some(v) = v {
            self.0.push((name, v.to_string()));
        }
        self
    }
    fn list<S: AsRef<str>>(&mut self, name: &'static str, v: &[S]) -> &mut Self {
        if !v.is_empty() {
            let joined: Vec<&str> = v.iter().map(AsRef::as_ref).collect();
            self.0.push((name, joined.join(",")));
        }
        self
    }
}

fn event_params(q: &EventQuery, with_limit: bool) -> Params {
    let types: Vec<&str> = q.event_types.iter().map(|t| t.as_str()).collect();
    let mut p = Params::default();
    p.list("eventTypes", &types)
        .opt("sourceAgent", q.source_agent.as_ref())
        .opt("agentId", q.agent_id.as_ref())
        .opt("workflowId", q.workflow_id.as_ref())
        .opt("executionId", q.execution_id.as_ref())
        .opt("correlationId", q.correlation_id.as_ref())
        .opt("since", q.since)
        .opt("after", q.after);
    if with_limit {
        p.opt("limit", q.limit);
    }
    p
}

/// What a request carries.
enum Body<'a> {
    None,
    Json(&'a Value),
    Text(&'a str, &'static str),
}

/// How long an idle pooled connection is kept: below the server's
/// `keepAliveIdleTimeoutMs` (60 s by default), so that a request never goes out
/// on a connection the server is closing for idleness at that moment.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7300`,
    /// without the `/maestro` base path) sending `token` as the bearer token.
    /// An empty token sends no `Authorization` header.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client::with_http_client(base_url, token, http)
    }

    /// Like [`Client::new`], over a `reqwest::Client` of your making
    /// (timeouts, proxies, TLS roots).
    pub fn with_http_client(
        base_url: impl Into<String>,
        token: impl Into<String>,
        http: reqwest::Client,
    ) -> Client {
        let base = base_url.into().trim_end_matches('/').to_owned();
        let token = Some(token.into()).filter(|t| !t.is_empty());
        Client {
            inner: Arc::new(Inner { http, base, token }),
        }
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// A client of the same server with another token (sharing the pool).
    pub fn with_token(&self, token: impl Into<String>) -> Client {
        Client::with_http_client(self.inner.base.clone(), token, self.inner.http.clone())
    }

    // ---------------------------------------------------------------- agents

    /// `POST /maestro/agents`: register an agent (409 `ALREADY_EXISTS` if the
    /// id is taken). Answers the agent's token once. The agent's
    /// `inboundSecret` is sent although it never comes back.
    pub async fn register_agent(
        &self,
        agent: &RegisteredAgent,
    ) -> Result<AgentRegistration, Error> {
        let body = agent_body(agent)?;
        let (status, v) = self
            .call(
                Method::POST,
                &["maestro", "agents"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        registration(status, v)
    }

    /// `PUT /maestro/agents/:id`: create (201, with a token) or update (200:
    /// endpoint, capabilities, metadata; tokens kept) — how a restarted agent
    /// re-registers.
    pub async fn upsert_agent(&self, agent: &RegisteredAgent) -> Result<AgentRegistration, Error> {
        let body = agent_body(agent)?;
        let (status, v) = self
            .call(
                Method::PUT,
                &["maestro", "agents", &agent.id],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        registration(status, v)
    }

    /// `GET /maestro/agents`: agents matching `q`.
    pub async fn list_agents(&self, q: &AgentQuery) -> Result<Page<RegisteredAgent>, Error> {
        let status: Vec<&str> = q.status.iter().map(|s| s.as_str()).collect();
        let mut p = Params::default();
        p.list("types", &q.types)
            .list("status", &status)
            .list("capabilities", &q.capabilities)
            .list("tags", &q.tags)
            .opt("limit", q.limit)
            .opt("offset", q.offset);
        let v: AgentList = self.get(&["maestro", "agents"], p).await?;
        Ok(Page::of(v.agents, v.count, v.total))
    }

    /// `GET /maestro/agents/:id`.
    pub async fn get_agent(&self, id: &str) -> Result<RegisteredAgent, Error> {
        let v: AgentAnswer = self
            .get(&["maestro", "agents", id], Params::default())
            .await?;
        Ok(v.agent)
    }

    /// `PATCH /maestro/agents/:id/status`: an operator hold (heartbeats do not
    /// override it until it is set back to `online`).
    pub async fn set_agent_status(
        &self,
        id: &str,
        status: AgentStatus,
    ) -> Result<RegisteredAgent, Error> {
        let body = to_value(&StatusBody { status })?;
        let (_, v): (_, AgentAnswer) = self
            .call(
                Method::PATCH,
                &["maestro", "agents", id, "status"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        Ok(v.agent)
    }

    /// `POST /maestro/agents/:id/heartbeat`, optionally with a health report.
    pub async fn heartbeat(
        &self,
        id: &str,
        health: Option<&AgentHealth>,
    ) -> Result<RegisteredAgent, Error> {
        let body = health
            .map(|h| {
                to_value(&HeartbeatBody {
                    health: Some(h.clone()),
                })
            })
            .transpose()?;
        let (_, v): (_, AgentAnswer) = self
            .call(
                Method::POST,
                &["maestro", "agents", id, "heartbeat"],
                Params::default(),
                body.as_ref().map_or(Body::None, Body::Json),
                None,
            )
            .await?;
        Ok(v.agent)
    }

    /// `DELETE /maestro/agents/:id`: deregister (its queued tasks fail with
    /// `AGENT_DEREGISTERED`). Answers the server's message.
    pub async fn delete_agent(&self, id: &str) -> Result<String, Error> {
        self.delete(&["maestro", "agents", id]).await
    }

    /// `GET /maestro/agents/:id/health`.
    pub async fn get_agent_health(&self, id: &str) -> Result<AgentHealth, Error> {
        let v: HealthAnswer = self
            .get(&["maestro", "agents", id, "health"], Params::default())
            .await?;
        Ok(v.health)
    }

    /// `PUT /maestro/agents/:id/health`: the agent's own health report.
    pub async fn put_agent_health(
        &self,
        id: &str,
        health: &AgentHealth,
    ) -> Result<AgentHealth, Error> {
        let body = to_value(health)?;
        let (_, v): (_, HealthAnswer) = self
            .call(
                Method::PUT,
                &["maestro", "agents", id, "health"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        Ok(v.health)
    }

    /// `GET /maestro/capabilities/:capability/agents`: the agents offering a
    /// capability.
    pub async fn agents_by_capability(
        &self,
        capability: &str,
    ) -> Result<Page<RegisteredAgent>, Error> {
        let v: AgentList = self
            .get(
                &["maestro", "capabilities", capability, "agents"],
                Params::default(),
            )
            .await?;
        Ok(Page::of(v.agents, v.count, v.total))
    }

    // ------------------------------------------------------------- workflows

    /// `POST /maestro/workflows`: define a workflow (409 `ALREADY_EXISTS` if
    /// the id is taken; 400 with a specific code when it is invalid).
    pub async fn define_workflow(&self, workflow: &Workflow) -> Result<Workflow, Error> {
        let body = to_value(workflow)?;
        self.define_workflow_json(&body).await
    }

    /// `POST /maestro/workflows` with a workflow document as JSON.
    pub async fn define_workflow_json(&self, workflow: &Value) -> Result<Workflow, Error> {
        let (_, v): (_, WorkflowAnswer) = self
            .call(
                Method::POST,
                &["maestro", "workflows"],
                Params::default(),
                Body::Json(workflow),
                None,
            )
            .await?;
        Ok(v.workflow)
    }

    /// `POST /maestro/workflows` with a workflow document as text (JSON or
    /// YAML), sent as is: the server parses it and reports errors in it.
    pub async fn define_workflow_text(
        &self,
        text: &str,
        format: WorkflowFormat,
    ) -> Result<Workflow, Error> {
        let (_, v): (_, WorkflowAnswer) = self
            .call(
                Method::POST,
                &["maestro", "workflows"],
                Params::default(),
                Body::Text(text, format.content_type()),
                None,
            )
            .await?;
        Ok(v.workflow)
    }

    /// `GET /maestro/workflows`: the latest revision of each workflow.
    pub async fn list_workflows(&self, q: &WorkflowQuery) -> Result<Page<Workflow>, Error> {
        let mut p = Params::default();
        p.list("tags", &q.tags)
            .opt("limit", q.limit)
            .opt("offset", q.offset);
        let v: WorkflowList = self.get(&["maestro", "workflows"], p).await?;
        Ok(Page::of(v.workflows, v.count, v.total))
    }

    /// `GET /maestro/workflows/:id`: the latest revision, or `revision`.
    pub async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Workflow, Error> {
        let mut p = Params::default();
        p.opt("revision", revision);
        let v: WorkflowAnswer = self.get(&["maestro", "workflows", id], p).await?;
        Ok(v.workflow)
    }

    /// `PATCH /maestro/workflows/:id`: apply a JSON merge patch (RFC 7386; a
    /// `null` removes a key), making a new revision.
    pub async fn update_workflow(&self, id: &str, patch: &Value) -> Result<Workflow, Error> {
        let (_, v): (_, WorkflowAnswer) = self
            .call(
                Method::PATCH,
                &["maestro", "workflows", id],
                Params::default(),
                Body::Json(patch),
                None,
            )
            .await?;
        Ok(v.workflow)
    }

    /// `DELETE /maestro/workflows/:id` (409 `INVALID_STATE` while executions
    /// of it are active). Answers the server's message.
    pub async fn delete_workflow(&self, id: &str) -> Result<String, Error> {
        self.delete(&["maestro", "workflows", id]).await
    }

    /// `POST /maestro/workflows/:id/execute`: start an execution (429
    /// `QUEUE_FULL` when the queue is full).
    pub async fn execute_workflow(
        &self,
        id: &str,
        options: &ExecuteOptions,
    ) -> Result<Executed, Error> {
        let body = to_value(&ExecuteBody {
            inputs: options.inputs.clone(),
            correlation_id: options.correlation_id.clone(),
            parent_execution_id: options.parent_execution_id.clone(),
        })?;
        let mut p = Params::default();
        p.opt("wait", options.wait.map(|d| d.as_millis()));
        let (status, v): (_, ExecutionAnswer) = self
            .call(
                Method::POST,
                &["maestro", "workflows", id, "execute"],
                p,
                Body::Json(&body),
                options.idempotency_key.as_deref(),
            )
            .await?;
        Ok(Executed {
            execution: v.execution,
            status,
        })
    }

    // ------------------------------------------------------------ executions

    /// `GET /maestro/executions/:id`.
    pub async fn get_execution(&self, id: &str) -> Result<WorkflowExecution, Error> {
        let v: ExecutionAnswer = self
            .get(&["maestro", "executions", id], Params::default())
            .await?;
        Ok(v.execution)
    }

    /// `GET /maestro/executions`: executions matching `q`, newest first.
    pub async fn list_executions(
        &self,
        q: &ExecutionQuery,
    ) -> Result<Page<WorkflowExecution>, Error> {
        let status: Vec<&str> = q.status.iter().map(|s| s.as_str()).collect();
        let mut p = Params::default();
        p.opt("workflowId", q.workflow_id.as_ref())
            .list("status", &status)
            .opt("agentId", q.agent_id.as_ref())
            .list("tags", &q.tags)
            .opt("correlationId", q.correlation_id.as_ref())
            .opt("createdAfter", q.created_after)
            .opt("createdBefore", q.created_before)
            .opt("limit", q.limit)
            .opt("offset", q.offset);
        let v: ExecutionList = self.get(&["maestro", "executions"], p).await?;
        Ok(Page::of(v.executions, v.count, v.total))
    }

    /// `POST /maestro/executions/:id/cancel` (409 `INVALID_STATE` if already
    /// finished).
    pub async fn cancel_execution(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<WorkflowExecution, Error> {
        let body = reason
            .map(|r| {
                to_value(&CancelBody {
                    reason: Some(r.to_owned()),
                })
            })
            .transpose()?;
        let (_, v): (_, ExecutionAnswer) = self
            .call(
                Method::POST,
                &["maestro", "executions", id, "cancel"],
                Params::default(),
                body.as_ref().map_or(Body::None, Body::Json),
                None,
            )
            .await?;
        Ok(v.execution)
    }

    /// `POST /maestro/executions/:id/pause`: no new steps start.
    pub async fn pause_execution(&self, id: &str) -> Result<WorkflowExecution, Error> {
        let (_, v): (_, ExecutionAnswer) = self
            .call(
                Method::POST,
                &["maestro", "executions", id, "pause"],
                Params::default(),
                Body::None,
                None,
            )
            .await?;
        Ok(v.execution)
    }

    /// `POST /maestro/executions/:id/resume`.
    pub async fn resume_execution(&self, id: &str) -> Result<WorkflowExecution, Error> {
        let (_, v): (_, ExecutionAnswer) = self
            .call(
                Method::POST,
                &["maestro", "executions", id, "resume"],
                Params::default(),
                Body::None,
                None,
            )
            .await?;
        Ok(v.execution)
    }

    // ---------------------------------------------------------------- events

    /// `GET /maestro/events`: persisted events in seq order (with
    /// `q.after`: the first `limit` after it; without: the newest `limit`).
    pub async fn event_history(&self, q: &EventQuery) -> Result<Page<ChoreographyEvent>, Error> {
        let v: EventList = self
            .get(&["maestro", "events"], event_params(q, true))
            .await?;
        Ok(Page::of(v.events, v.count, v.total))
    }

    /// `GET /maestro/events/:correlationId`: the events of one correlation
    /// id, in seq order.
    pub async fn events_by_correlation(
        &self,
        correlation_id: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Page<ChoreographyEvent>, Error> {
        let mut p = Params::default();
        p.opt("after", after).opt("limit", limit);
        let v: EventList = self.get(&["maestro", "events", correlation_id], p).await?;
        Ok(Page::of(v.events, v.count, v.total))
    }

    /// `POST /maestro/events`: publish an `agent:event` or `agent:alert`.
    pub async fn publish_event(&self, event: &PublishEvent) -> Result<ChoreographyEvent, Error> {
        let body = to_value(event)?;
        let (_, v): (_, EventAnswer) = self
            .call(
                Method::POST,
                &["maestro", "events"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        Ok(v.event)
    }

    /// `GET /maestro/events/stream`: the live events matching `filter` as
    /// they happen (Server-Sent Events).
    ///
    /// `last_event_id` (or `filter.after`) first replays the persisted events
    /// after that seq, then goes on live without a gap; without either, only
    /// events published from now on arrive. This method returns once the
    /// server has subscribed the stream, so any event published after it
    /// returns is received. The stream ends when the server closes it
    /// (shutdown, or the client fell too far behind): open another with
    /// [`EventStream::last_event_id`] to resume where it stopped.
    pub async fn stream_events(
        &self,
        filter: &EventQuery,
        last_event_id: Option<u64>,
    ) -> Result<EventStream, Error> {
        let url = self.url(
            &["maestro", "events", "stream"],
            event_params(filter, false),
        )?;
        let mut req = self
            .request(Method::GET, url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = self.send(req, &url).await?;
        let state = SseState {
            resp,
            url: url.to_string(),
            buf: Vec::new(),
            data: String::new(),
            has_data: false,
            done: false,
        };
        let inner = futures_util::stream::unfold(state, |mut st| async move {
            st.next_event().await.map(|item| (item, st))
        });
        Ok(EventStream {
            inner: Box::pin(inner),
            last_seq: last_event_id.or(filter.after),
        })
    }

    // ---------------------------------------------------- monitoring, config

    /// `GET /maestro/metrics`: orchestration metrics.
    pub async fn metrics(&self) -> Result<ChoreographyMetrics, Error> {
        let v: MetricsAnswer = self.get(&["maestro", "metrics"], Params::default()).await?;
        Ok(v.metrics)
    }

    /// `GET /maestro/health`: the health of every agent.
    pub async fn all_agent_health(&self) -> Result<Vec<AgentHealth>, Error> {
        let v: HealthList = self.get(&["maestro", "health"], Params::default()).await?;
        Ok(v.health)
    }

    /// `GET /maestro/config`: the runtime configuration.
    pub async fn get_config(&self) -> Result<MaestroConfig, Error> {
        let v: ConfigAnswer = self.get(&["maestro", "config"], Params::default()).await?;
        Ok(v.config)
    }

    /// `PATCH /maestro/config`: merge-patch the runtime configuration
    /// (admin only); validated and applied at once.
    pub async fn update_config(&self, patch: &Value) -> Result<MaestroConfig, Error> {
        let (_, v): (_, ConfigAnswer) = self
            .call(
                Method::PATCH,
                &["maestro", "config"],
                Params::default(),
                Body::Json(patch),
                None,
            )
            .await?;
        Ok(v.config)
    }

    /// `GET /maestro/openapi.json`: the OpenAPI 3.1 document of the API.
    pub async fn openapi(&self) -> Result<Value, Error> {
        self.get(&["maestro", "openapi.json"], Params::default())
            .await
    }

    /// `GET /metrics`: Prometheus metrics in the text format.
    pub async fn prometheus(&self) -> Result<String, Error> {
        let url = self.url(&["metrics"], Params::default())?;
        let resp = self
            .send(self.request(Method::GET, url.clone()), &url)
            .await?;
        resp.text().await.map_err(|e| unreachable(&url, &e))
    }

    /// `GET /healthz`: the process is alive (no token needed).
    pub async fn healthz(&self) -> Result<Value, Error> {
        self.get(&["healthz"], Params::default()).await
    }

    /// `GET /readyz`: the store is reachable and the engine running (no token
    /// needed); 503 `NOT_READY` while starting or draining.
    pub async fn readyz(&self) -> Result<Value, Error> {
        self.get(&["readyz"], Params::default()).await
    }

    // ---------------------------------------------------------------- tokens

    /// `POST /maestro/tokens` (admin only): the secret is answered once.
    pub async fn create_token(&self, token: &NewToken) -> Result<CreatedToken, Error> {
        let body = to_value(token)?;
        let (_, v): (_, TokenCreated) = self
            .call(
                Method::POST,
                &["maestro", "tokens"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        Ok(CreatedToken {
            token: v.token,
            secret: v.secret,
        })
    }

    /// `GET /maestro/tokens` (admin only): never their secrets.
    pub async fn list_tokens(&self, paging: Paging) -> Result<Page<TokenRecord>, Error> {
        let v: TokenList = self
            .get(&["maestro", "tokens"], paging_params(paging))
            .await?;
        Ok(Page::of(v.tokens, v.count, v.total))
    }

    /// `DELETE /maestro/tokens/:id` (admin only). Answers the server's message.
    pub async fn revoke_token(&self, id: &str) -> Result<String, Error> {
        self.delete(&["maestro", "tokens", id]).await
    }

    // --------------------------------------------------------- subscriptions

    /// `POST /maestro/subscriptions`: Maestro POSTs each matching event to
    /// the URL, signed with the answered secret.
    pub async fn create_subscription(
        &self,
        sub: &NewSubscription,
    ) -> Result<CreatedSubscription, Error> {
        let body = to_value(sub)?;
        let (_, v): (_, SubscriptionCreated) = self
            .call(
                Method::POST,
                &["maestro", "subscriptions"],
                Params::default(),
                Body::Json(&body),
                None,
            )
            .await?;
        Ok(CreatedSubscription {
            subscription: v.subscription,
            secret: v.secret,
        })
    }

    /// `GET /maestro/subscriptions`: each with its delivery counters.
    pub async fn list_subscriptions(
        &self,
        paging: Paging,
    ) -> Result<Page<SubscriptionListed>, Error> {
        let v: SubscriptionList = self
            .get(&["maestro", "subscriptions"], paging_params(paging))
            .await?;
        Ok(Page::of(v.subscriptions, v.count, v.total))
    }

    /// `DELETE /maestro/subscriptions/:id`. Answers the server's message.
    pub async fn delete_subscription(&self, id: &str) -> Result<String, Error> {
        self.delete(&["maestro", "subscriptions", id]).await
    }

    // ------------------------------------------------------------- plumbing

    /// `base` + the percent-encoded `segments` + the query.
    fn url(&self, segments: &[&str], params: Params) -> Result<Url, Error> {
        let mut url = Url::parse(&self.inner.base)
            .map_err(|e| Error::InvalidInput(format!("server URL {:?}: {e}", self.inner.base)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidInput(format!(
                "server URL {:?}: expected http:// or https://",
                self.inner.base
            )));
        }
        url.path_segments_mut()
            .map_err(|_| {
                Error::InvalidInput(format!(
                    "server URL {:?} cannot have a path",
                    self.inner.base
                ))
            })?
            .pop_if_empty()
            .extend(segments);
        if !params.0.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in &params.0 {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.inner.http.request(method, url);
        match &self.inner.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Send; a non-2xx answer becomes [`Error::Api`].
    async fn send(&self, req: RequestBuilder, url: &Url) -> Result<Response, Error> {
        let resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                Error::InvalidInput(format!("{url}: {}", cause(&e)))
            } else {
                unreachable(url, &e)
            }
        })?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(api_error(resp).await)
        }
    }

    /// One JSON exchange: the status and the body of a 2xx answer, read as
    /// `T` (an answer type of [`maestro_core::protocol`]).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        params: Params,
        body: Body<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, T), Error> {
        let url = self.url(segments, params)?;
        let mut req = self.request(method, url.clone());
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(v).map_err(|e| Error::InvalidInput(e.to_string()))?),
            Body::Text(t, ct) => req
                .header(reqwest::header::CONTENT_TYPE, ct)
                .body(t.to_owned()),
        };
        if let Some(k) = idempotency_key {
            let v = reqwest::header::HeaderValue::from_str(k)
                .map_err(|_| Error::InvalidInput("Idempotency-Key must be visible ASCII".into()))?;
            req = req.header("Idempotency-Key", v);
        }
        let resp = self.send(req, &url).await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&url, &e))?;
        let v = serde_json::from_slice(&bytes).map_err(|e| {
            if e.is_data() {
                Error::Decode(format!("{url}: unexpected answer: {e}"))
            } else {
                Error::Decode(format!("{url}: the answer is not JSON: {e}"))
            }
        })?;
        Ok((status, v))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        params: Params,
    ) -> Result<T, Error> {
        let (_, v) = self
            .call(Method::GET, segments, params, Body::None, None)
            .await?;
        Ok(v)
    }

    async fn delete(&self, segments: &[&str]) -> Result<String, Error> {
        let (_, v): (_, Message) = self
            .call(
                Method::DELETE,
                segments,
                Params::default(),
                Body::None,
                None,
            )
            .await?;
        Ok(v.message)
    }
}

fn paging_params(p: Paging) -> Params {
    let mut params = Params::default();
    params.opt("limit", p.limit).opt("offset", p.offset);
    params
}

/// `RegisteredAgent` with its write-only `inboundSecret` (which serde skips).
fn agent_body(agent: &RegisteredAgent) -> Result<Value, Error> {
    let mut v = to_value(agent)?;
    if let (Some(s), Some(obj)) = (&agent.inbound_secret, v.as_object_mut()) {
        obj.insert("inboundSecret".into(), json!(s));
    }
    Ok(v)
}

/// 201 [`AgentCreated`] (with the agent's token) or 200 [`AgentAnswer`].
fn registration(status: u16, v: Value) -> Result<AgentRegistration, Error> {
    let decode = |e: serde_json::Error| Error::Decode(format!("unexpected answer: {e}"));
    if status == 201 {
        let c: AgentCreated = serde_json::from_value(v).map_err(decode)?;
        Ok(AgentRegistration {
            agent: c.agent,
            agent_token: Some(c.agent_token),
            created: true,
        })
    } else {
        let a: AgentAnswer = serde_json::from_value(v).map_err(decode)?;
        Ok(AgentRegistration {
            agent: a.agent,
            agent_token: None,
            created: false,
        })
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::InvalidInput(e.to_string()))
}

/// The innermost cause of a reqwest error ("Connection refused (os error
/// 111)"), which says more than the outer "error sending request".
fn cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if e.is_timeout() && !msg.contains("timed out") {
        msg = format!("timed out ({msg})");
    }
    msg
}

fn unreachable(url: &Url, e: &reqwest::Error) -> Error {
    let mut shown = url.clone();
    shown.set_query(None);
    Error::Unreachable(format!("cannot reach Maestro at {shown}: {}", cause(e)))
}

/// A non-2xx answer as [`Error::Api`].
async fn api_error(resp: Response) -> Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v["code"].is_string() => Error::Api {
            status: status.as_u16(),
            code: v["code"].as_str().unwrap_or_default().to_owned(),
            message: v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| status.to_string()),
            details: v.get("details").cloned().filter(|d| !d.is_null()),
        },
        _ => {
            let body: String = text.trim().chars().take(200).collect();
            Error::Api {
                status: status.as_u16(),
                code: format!("HTTP_{}", status.as_u16()),
                message: if body.is_empty() {
                    status.to_string()
                } else {
                    body
                },
                details: None,
            }
        }
    }
}

/// The live events of [`Client::stream_events`]: a `Stream` of
/// `Result<ChoreographyEvent, Error>` (an item that does not parse is an
/// `Err` and the stream goes on; a broken connection is a last `Err`).
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<ChoreographyEvent, Error>> + Send>>,
    last_seq: Option<u64>,
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl EventStream {
    /// The seq of the last event received (or the resume point the stream
    /// was opened with): pass it as `last_event_id` to resume.
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_seq
    }
}

impl Stream for EventStream {
    type Item = Result<ChoreographyEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(e))) = &polled {
            self.last_seq = Some(e.seq);
        }
        polled
    }
}

/// The SSE parser over `Response::chunk()`.
struct SseState {
    resp: Response,
    url: String,
    /// Bytes not yet split into lines.
    buf: Vec<u8>,
    /// `data:` lines of the event being read, joined by `\n`.
    data: String,
    has_data: bool,
    done: bool,
}

impl SseState {
    async fn next_event(&mut self) -> Option<Result<ChoreographyEvent, Error>> {
        loop {
            if self.done {
                return None;
            }
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(item) = self.line(&String::from_utf8_lossy(&line)) {
                    return Some(item);
                }
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) => {
                    // The server closed the stream; an unterminated event is dropped.
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(Error::Unreachable(format!(
                        "event stream {}: {}",
                        self.url,
                        cause(&e)
                    ))));
                }
            }
        }
    }

    /// One line of the stream; an event when it was the blank line ending one.
    fn line(&mut self, line: &str) -> Option<Result<ChoreographyEvent, Error>> {
        if line.is_empty() {
            if !self.has_data {
                return None;
            }
            let data = std::mem::take(&mut self.data);
            self.has_data = false;
            return Some(
                serde_json::from_str(&data)
                    .map_err(|e| Error::Decode(format!("event stream: {e}: {data}"))),
            );
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        // `id` and `event` repeat what the JSON carries (`seq`, `type`).
        None
    }
}
