//! The agent SDK: declare capabilities with typed inputs and outputs, implement
//! each as an async fn, then either serve the push protocol
//! ([`Agent::serve_push`]) or pull tasks from Maestro ([`Agent::run_poll`]).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use maestro_client::agent::{Agent, AgentError, CapabilitySpec, PushConfig, TaskContext};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct SignIn {
//!     data: String,
//! }
//!
//! #[derive(Serialize, JsonSchema)]
//! struct SignOut {
//!     signature: String,
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let agent = Agent::builder("sentinel-1", "sentinel")
//!     .name("Sentinel Agent")
//!     .description("Signs things")
//!     // The declared `inputs`/`outputs` are the JSON Schemas of SignIn and
//!     // SignOut, so Maestro refuses bad inputs before calling.
//!     .capability::<SignIn, SignOut, _, _>("sign", |input: SignIn, ctx: TaskContext| async move {
//!         if input.data.is_empty() {
//!             return Err(AgentError::fatal("EMPTY_DATA", "nothing to sign"));
//!         }
//!         if ctx.is_cancelled() {
//!             return Err(AgentError::retryable("CANCELLED", "cancelled"));
//!         }
//!         Ok(SignOut { signature: format!("sig({})", input.data) })
//!     })
//!     .capability_with(
//!         CapabilitySpec::new("unsign").description("Undoes sign").tag("crypto"),
//!         |_input: serde_json::Map<String, serde_json::Value>, _ctx: TaskContext| async move {
//!             Ok(serde_json::json!({"undone": true}))
//!         },
//!     )
//!     .build();
//!
//! let cancel = CancellationToken::new();
//! // Ctrl-C stops taking calls; calls in flight finish.
//! let on_ctrl_c = cancel.clone();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     on_ctrl_c.cancel();
//! });
//! agent
//!     .serve_push(
//!         PushConfig {
//!             maestro_url: "http://127.0.0.1:7300".into(),
//!             token: std::env::var("MAESTRO_TOKEN")?,
//!             listen: "127.0.0.1:9101".parse()?,
//!             inbound_secret: Some("a-long-random-secret".into()),
//!             heartbeat_every: Duration::from_secs(10),
//!             ..PushConfig::default()
//!         },
//!         cancel,
//!     )
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What the SDK does for you
//!
//! - **Registration**: on start it upserts the agent with
//!   `PUT /maestro/agents/<id>` (capabilities with their schemas, `publicKey`,
//!   `metadata`, `maxConcurrency`; push: `endpoint` = its own URL, `transport:
//!   http` and the `inboundSecret`; poll: `transport: poll`), retrying while
//!   Maestro is unreachable, and heartbeats `POST /maestro/agents/<id>/heartbeat`
//!   every `heartbeat_every` (re-registering if Maestro answers 404).
//! - **Push** ([`Agent::serve_push`], [`Agent::start_push`]): an HTTP server
//!   with `POST /invoke`, `POST /cancel` and `GET /health` (API.md "Agent
//!   protocol"). With an inbound secret, `/invoke` and `/cancel` require it as
//!   the bearer token. Calls are deduplicated by `Idempotency-Key`: a retried
//!   key while the first call runs waits for the same result, and the last
//!   [`PushConfig::result_cache`] results (successes and non-retryable errors)
//!   are answered again without running the handler.
//! - **Poll** ([`Agent::run_poll`], [`Agent::start_poll`]): `pollers` loops
//!   long-poll `POST /maestro/agents/<id>/tasks/poll`, each running one task at
//!   a time; while a handler runs, its lease is extended with
//!   `POST /maestro/tasks/<taskId>/heartbeat` at half the remaining lease, and
//!   the result is reported with `/complete` or `/fail` (transient failures are
//!   retried with a capped backoff; a 409 gives the task up with a warning).
//! - **Errors**: a handler returns `Result<Out, AgentError>`. Inputs that do
//!   not deserialize are answered `INVALID_INPUT` (400, not retryable), an
//!   unknown capability `UNKNOWN_CAPABILITY` (404), a panicking handler
//!   `AGENT_PANIC` (500, retryable). See [`AgentError::http_status`].
//! - **Cancellation**: [`TaskContext::cancel`] fires when Maestro sends
//!   `/cancel` for the task (push), when a lease heartbeat answers
//!   `cancelRequested: true` or the lease is lost (poll), and when a graceful
//!   shutdown outlasts its `shutdown_grace`.
//! - **Shutdown**: cancelling the token passed to `serve_push`/`run_poll` stops
//!   taking new calls (the push server stops accepting, pollers stop polling);
//!   calls already running finish and are answered/reported, for up to
//!   `shutdown_grace`, after which their contexts are cancelled.

mod context;
mod dedupe;
mod error;
mod link;
mod poll;
mod push;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use maestro_core::model::{AgentCapability, AgentStatus, RegisteredAgent, Transport, TypeSpec};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use context::{Task, TaskContext};
pub use error::{AgentError, SdkError, codes};
pub use poll::{PollConfig, PollRunner};
pub use push::{PushConfig, PushServer};

/// What a handler's future resolves to once its output is serialized.
pub type Outputs = Map<String, Value>;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Outputs, AgentError>> + Send>>;
type Handler = Arc<dyn Fn(Map<String, Value>, TaskContext) -> BoxFuture + Send + Sync>;

/// How one capability is declared to Maestro. `inputs`/`outputs` left `None`
/// are generated from the handler's types (JSON Schema, with `schemars`);
/// set them to declare something else, e.g. the simple map
/// `{"data": "string"}`.
///
/// ```
/// use maestro_client::agent::CapabilitySpec;
///
/// let spec = CapabilitySpec::new("issue-jwt")
///     .name("Issue JWT")
///     .compensation("revoke-jwt")
///     .sensitive("token")
///     .tag("auth");
/// assert_eq!(spec.compensation.as_deref(), Some("revoke-jwt"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapabilitySpec {
    pub id: String,
    /// Defaults to the id.
    pub name: String,
    pub description: String,
    /// Defaults to `1.0`.
    pub version: String,
    pub tags: Vec<String>,
    pub deprecated: bool,
    /// The capability of this agent that undoes this one.
    pub compensation: Option<String>,
    /// Output keys Maestro shows as `"***"` to everyone but admins.
    pub sensitive: Vec<String>,
    /// Declared inputs; `None`: the input type's JSON Schema.
    pub inputs: Option<TypeSpec>,
    /// Declared outputs; `None`: the output type's JSON Schema.
    pub outputs: Option<TypeSpec>,
}

impl CapabilitySpec {
    pub fn new(id: impl Into<String>) -> Self {
        CapabilitySpec {
            id: id.into(),
            ..CapabilitySpec::default()
        }
    }
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
    pub fn deprecated(mut self, deprecated: bool) -> Self {
        self.deprecated = deprecated;
        self
    }
    pub fn compensation(mut self, capability: impl Into<String>) -> Self {
        self.compensation = Some(capability.into());
        self
    }
    pub fn sensitive(mut self, output_key: impl Into<String>) -> Self {
        self.sensitive.push(output_key.into());
        self
    }
    pub fn inputs(mut self, spec: TypeSpec) -> Self {
        self.inputs = Some(spec);
        self
    }
    pub fn outputs(mut self, spec: TypeSpec) -> Self {
        self.outputs = Some(spec);
        self
    }

    fn into_capability(self, inputs: TypeSpec, outputs: TypeSpec) -> AgentCapability {
        AgentCapability {
            name: if self.name.is_empty() {
                self.id.clone()
            } else {
                self.name
            },
            id: self.id,
            description: self.description,
            version: if self.version.is_empty() {
                "1.0".to_owned()
            } else {
                self.version
            },
            inputs: self.inputs.unwrap_or(inputs),
            outputs: self.outputs.unwrap_or(outputs),
            tags: self.tags,
            deprecated: self.deprecated,
            compensation: self.compensation,
            sensitive: self.sensitive,
        }
    }
}

/// The JSON Schema of `T` as a capability declaration (an empty declaration,
/// which accepts anything, when the schema is not an object, e.g. for
/// `serde_json::Value`).
pub fn schema_of<T: JsonSchema>() -> TypeSpec {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    match schema.to_value() {
        Value::Object(map) => TypeSpec(map),
        _ => TypeSpec::default(),
    }
}

struct Capability {
    decl: AgentCapability,
    handler: Handler,
}

struct Inner {
    id: String,
    agent_type: String,
    name: String,
    description: String,
    public_key: String,
    metadata: Map<String, Value>,
    max_concurrency: Option<u32>,
    capabilities: Vec<Capability>,
    index: HashMap<String, usize>,
}

/// An agent: its identity and capabilities with their handlers. Cheap to
/// clone (clones share everything). Build one with [`Agent::builder`].
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.inner.id)
            .field("type", &self.inner.agent_type)
            .field("capabilities", &self.capability_ids())
            .finish()
    }
}

/// Builds an [`Agent`]; see the [module docs](self).
pub struct AgentBuilder {
    inner: Inner,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder for agent `id` of type `agent_type` (e.g. `sentinel`).
    pub fn builder(id: impl Into<String>, agent_type: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            inner: Inner {
                id: id.into(),
                agent_type: agent_type.into(),
                name: String::new(),
                description: String::new(),
                public_key: String::new(),
                metadata: Map::new(),
                max_concurrency: None,
                capabilities: Vec::new(),
                index: HashMap::new(),
            },
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The ids of the capabilities, in declaration order.
    pub fn capability_ids(&self) -> Vec<String> {
        self.inner
            .capabilities
            .iter()
            .map(|c| c.decl.id.clone())
            .collect()
    }

    /// The agent as it registers itself, without transport details
    /// (`endpoint`, `transport`, `inboundSecret` are added by the transport).
    pub fn registration(&self) -> RegisteredAgent {
        let i = &self.inner;
        RegisteredAgent {
            id: i.id.clone(),
            agent_type: i.agent_type.clone(),
            name: i.name.clone(),
            description: i.description.clone(),
            public_key: i.public_key.clone(),
            capabilities: i.capabilities.iter().map(|c| c.decl.clone()).collect(),
            status: AgentStatus::Online,
            last_heartbeat: 0,
            endpoint: None,
            transport: None,
            max_concurrency: i.max_concurrency,
            metadata: i.metadata.clone(),
            inbound_secret: None,
            status_hold: false,
        }
    }

    /// The JSON body of `PUT /maestro/agents/<id>`. `status` and
    /// `lastHeartbeat` are left out (Maestro sets them; an operator hold is
    /// kept), and `inboundSecret` is added (it is write-only, so
    /// [`RegisteredAgent`] does not serialize it).
    pub(crate) fn registration_body(
        &self,
        transport: Transport,
        endpoint: Option<&str>,
        inbound_secret: Option<&str>,
    ) -> Value {
        let mut reg = self.registration();
        reg.transport = Some(transport);
        reg.endpoint = endpoint.map(str::to_owned);
        let mut body = match serde_json::to_value(&reg) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        body.remove("status");
        body.remove("lastHeartbeat");
        if let Some(secret) = inbound_secret {
            body.insert("inboundSecret".to_owned(), Value::String(secret.to_owned()));
        }
        Value::Object(body)
    }

    /// Runs `task` with the handler of its capability, the way the push
    /// server and the poll loop do (also handy to test handlers without
    /// Maestro). `cancel` becomes the context's [`TaskContext::cancel`].
    ///
    /// Errors: `UNKNOWN_CAPABILITY`, `INVALID_INPUT`, `INVALID_OUTPUT`,
    /// `AGENT_PANIC`, or the handler's own [`AgentError`].
    pub async fn handle(
        &self,
        task: Task,
        cancel: CancellationToken,
    ) -> Result<Outputs, AgentError> {
        let Some(&at) = self.inner.index.get(&task.capability) else {
            return Err(AgentError::fatal(
                codes::UNKNOWN_CAPABILITY,
                format!(
                    "agent {} has no capability {:?} (it has: {})",
                    self.inner.id,
                    task.capability,
                    self.capability_ids().join(", ")
                ),
            ));
        };
        let handler = self.inner.capabilities[at].handler.clone();
        let ctx = TaskContext::new(&task, &self.inner.id, cancel);
        // The user's code only runs inside the future (see `typed`/`raw`),
        // so catching the future's panics catches them all.
        match AssertUnwindSafe(handler(task.inputs, ctx))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".to_owned());
                tracing::error!(agent = %self.inner.id, capability = %task.capability,
                    task = %task.task_id, panic = %what, "handler panicked");
                Err(AgentError::retryable(
                    codes::AGENT_PANIC,
                    format!("the {} handler panicked: {what}", task.capability),
                ))
            }
        }
    }
}

impl AgentBuilder {
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.inner.name = name.into();
        self
    }
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.inner.description = description.into();
        self
    }
    /// The `publicKey` of the registration (e.g. a base64 Ed25519 key).
    pub fn public_key(mut self, key: impl Into<String>) -> Self {
        self.inner.public_key = key.into();
        self
    }
    /// One entry of the registration's `metadata`.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.inner.metadata.insert(key.into(), value.into());
        self
    }
    /// The `maxConcurrency` Maestro respects when routing calls here.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.inner.max_concurrency = Some(n);
        self
    }

    /// A capability with typed inputs and outputs; its declared `inputs` and
    /// `outputs` are their JSON Schemas.
    pub fn capability<I, O, F, Fut>(self, id: impl Into<String>, handler: F) -> Self
    where
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + JsonSchema + Send + 'static,
        F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, AgentError>> + Send + 'static,
    {
        self.capability_with(CapabilitySpec::new(id), handler)
    }

    /// A typed capability with its declaration spelled out (compensation,
    /// tags, sensitive outputs, or declared inputs/outputs other than the
    /// generated schemas).
    pub fn capability_with<I, O, F, Fut>(self, spec: CapabilitySpec, handler: F) -> Self
    where
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + JsonSchema + Send + 'static,
        F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, AgentError>> + Send + 'static,
    {
        let decl = spec.into_capability(schema_of::<I>(), schema_of::<O>());
        self.push(decl, typed(handler))
    }

    /// A capability working on raw JSON maps: declares `spec.inputs` and
    /// `spec.outputs` as given (absent: accept anything).
    pub fn raw_capability<F, Fut>(self, spec: CapabilitySpec, handler: F) -> Self
    where
        F: Fn(Map<String, Value>, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Outputs, AgentError>> + Send + 'static,
    {
        let decl = spec.into_capability(TypeSpec::default(), TypeSpec::default());
        let handler = Arc::new(handler);
        let h: Handler = Arc::new(move |inputs, ctx| {
            let handler = handler.clone();
            Box::pin(async move { handler(inputs, ctx).await })
        });
        self.push(decl, h)
    }

    fn push(mut self, decl: AgentCapability, handler: Handler) -> Self {
        let i = &mut self.inner;
        assert!(
            !i.index.contains_key(&decl.id),
            "agent {}: capability {:?} declared twice",
            i.id,
            decl.id
        );
        i.index.insert(decl.id.clone(), i.capabilities.len());
        i.capabilities.push(Capability { decl, handler });
        self
    }

    /// The agent.
    ///
    /// # Panics
    /// When the id or type is empty, no capability was declared, or a
    /// `compensation` names a capability the agent does not have (a
    /// capability declared twice panics in the builder call).
    pub fn build(self) -> Agent {
        let i = self.inner;
        assert!(!i.id.is_empty(), "an agent needs an id");
        assert!(!i.agent_type.is_empty(), "agent {}: empty type", i.id);
        assert!(
            !i.capabilities.is_empty(),
            "agent {} declares no capability",
            i.id
        );
        for c in &i.capabilities {
            if let Some(comp) = &c.decl.compensation {
                assert!(
                    i.index.contains_key(comp),
                    "agent {}: capability {:?} names compensation {comp:?}, which it does not have",
                    i.id,
                    c.decl.id
                );
            }
        }
        Agent { inner: Arc::new(i) }
    }
}

/// Wraps a typed handler: deserialize the inputs, run, serialize the outputs.
fn typed<I, O, F, Fut>(handler: F) -> Handler
where
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
    F: Fn(I, TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, AgentError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |inputs: Map<String, Value>, ctx: TaskContext| {
        let handler = handler.clone();
        Box::pin(async move {
            let input: I = serde_json::from_value(Value::Object(inputs)).map_err(|e| {
                AgentError::fatal(
                    codes::INVALID_INPUT,
                    format!("inputs of {} do not match its type: {e}", ctx.capability),
                )
            })?;
            let capability = ctx.capability.clone();
            let output = handler(input, ctx).await?;
            match serde_json::to_value(output) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(other) => Err(AgentError::fatal(
                    codes::INVALID_OUTPUT,
                    format!(
                        "the {capability} handler's output is not a JSON object: {}",
                        maestro_core::model::json_kind(&other)
                    ),
                )),
                Err(e) => Err(AgentError::fatal(
                    codes::INVALID_OUTPUT,
                    format!("the {capability} handler's output does not serialize: {e}"),
                )),
            }
        }) as BoxFuture
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Deserialize, JsonSchema)]
    struct In {
        data: String,
        #[allow(dead_code)]
        n: Option<u32>,
    }

    #[derive(Serialize, JsonSchema)]
    struct Out {
        len: usize,
    }

    fn agent() -> Agent {
        Agent::builder("a-1", "test")
            .capability::<In, Out, _, _>("len", |i: In, _ctx| async move {
                Ok(Out { len: i.data.len() })
            })
            .capability_with(
                CapabilitySpec::new("boom")
                    .compensation("len")
                    .sensitive("x"),
                |_: Map<String, Value>, _ctx: TaskContext| async move {
                    if true {
                        panic!("kaboom");
                    }
                    Ok(json!({}))
                },
            )
            .raw_capability(CapabilitySpec::new("bad-output"), |_, _| async move {
                Ok(Map::new())
            })
            .capability::<Value, Value, _, _>("scalar", |_: Value, _| async move { Ok(json!(3)) })
            .build()
    }

    fn task(capability: &str, inputs: Value) -> Task {
        Task {
            task_id: "e:s:1".into(),
            capability: capability.into(),
            inputs: inputs.as_object().unwrap().clone(),
            ..Task::default()
        }
    }

    #[test]
    fn declared_inputs_are_json_schemas_that_maestro_checks() {
        let reg = agent().registration();
        let len = reg.capability("len").unwrap();
        assert!(len.inputs.is_json_schema());
        assert!(
            len.inputs
                .check(&json!({"data": "x"}).as_object().unwrap().clone())
                .is_ok()
        );
        let err = len
            .inputs
            .check(&json!({"data": 5}).as_object().unwrap().clone())
            .unwrap_err();
        assert!(err.contains("data"), "{err}");
        assert!(len.inputs.check(&Map::new()).is_err());
        assert!(len.outputs.is_json_schema());
        let boom = reg.capability("boom").unwrap();
        assert_eq!(boom.compensation.as_deref(), Some("len"));
        assert_eq!(boom.sensitive, vec!["x".to_owned()]);
        assert_eq!(boom.version, "1.0");
        assert_eq!(boom.name, "boom");
        assert!(reg.capability("bad-output").unwrap().inputs.0.is_empty());
    }

    #[test]
    fn registration_body_has_the_secret_and_no_status() {
        let body = agent().registration_body(Transport::Http, Some("http://h:1"), Some("s3"));
        assert_eq!(body["inboundSecret"], "s3");
        assert_eq!(body["transport"], "http");
        assert_eq!(body["endpoint"], "http://h:1");
        assert!(body.get("status").is_none());
        assert!(body.get("lastHeartbeat").is_none());
        // The server parses it with deny_unknown_fields.
        let _: RegisteredAgent = serde_json::from_value(body).unwrap();
    }

    #[tokio::test]
    async fn handle_maps_every_failure() {
        let a = agent();
        let t = CancellationToken::new;
        let ok = a.handle(task("len", json!({"data": "abc"})), t()).await;
        assert_eq!(ok.unwrap()["len"], 3);
        let e = a.handle(task("nope", json!({})), t()).await.unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.retryable, e.http_status()),
            (codes::UNKNOWN_CAPABILITY, false, 404)
        );
        let e = a
            .handle(task("len", json!({"data": 1})), t())
            .await
            .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.retryable, e.http_status()),
            (codes::INVALID_INPUT, false, 400)
        );
        let e = a.handle(task("boom", json!({})), t()).await.unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.retryable, e.http_status()),
            (codes::AGENT_PANIC, true, 500)
        );
        assert!(e.message.contains("kaboom"));
        let e = a.handle(task("scalar", json!({})), t()).await.unwrap_err();
        assert_eq!(e.code, codes::INVALID_OUTPUT);
        assert!(
            a.handle(task("bad-output", json!({})), t())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn duplicate_capabilities_panic() {
        let _ = Agent::builder("a", "t")
            .raw_capability(CapabilitySpec::new("x"), |_, _| async { Ok(Map::new()) })
            .raw_capability(CapabilitySpec::new("x"), |_, _| async { Ok(Map::new()) });
    }

    #[test]
    #[should_panic(expected = "does not have")]
    fn unknown_compensation_panics() {
        let _ = Agent::builder("a", "t")
            .raw_capability(CapabilitySpec::new("x").compensation("y"), |_, _| async {
                Ok(Map::new())
            })
            .build();
    }
}
