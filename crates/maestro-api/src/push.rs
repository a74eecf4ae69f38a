//! The HTTP push transport of API.md "Agent protocol": [`HttpPushInvoker`]
//! calls `transport: http` agents with `POST <endpoint>/invoke`, and
//! [`HttpHealthProbe`] probes them with `GET <endpoint>/health`.
//!
//! Agent endpoints obey `outboundAllowList` exactly like callbacks: both use a
//! client from [`checked_client_builder`] (checking resolver, no proxy, no
//! redirects, no transparent retries) and vet URLs with [`check_url`].
//!
//! How an answer becomes a result:
//!
//! | answer | result | retryable |
//! |---|---|---|
//! | 2xx, JSON object with an object `outputs` | `Ok(outputs)` | |
//! | 2xx, anything else | `INVALID_AGENT_RESPONSE` | yes |
//! | 2xx, body over `max_response_bytes` | `OUTPUT_TOO_LARGE` | no |
//! | 4xx/5xx with `{"error": {"code", "message", "retryable"?}}` | that code and message | a boolean `retryable` decides, for every status; without it 5xx and 429 yes, other 4xx no |
//! | 4xx/5xx with another body | `AGENT_ERROR` (status and a snippet) | 429 and 5xx yes, other 4xx no |
//! | 1xx/3xx (redirects are not followed) | `AGENT_ERROR` | no |
//! | refused, reset, broken answer | `AGENT_UNREACHABLE` | yes |
//! | nothing within `timeoutMs` | `STEP_TIMEOUT` | yes |
//! | endpoint refused by the allow-list | `OUTBOUND_REFUSED` | no |
//! | no endpoint or an invalid one | `INVALID_AGENT_ENDPOINT` | no |
//!
//! ```no_run
//! use std::sync::Arc;
//! use maestro_api::outbound::AllowList;
//! use maestro_api::push::{HttpPushInvoker, PushOptions};
//!
//! let invoker = HttpPushInvoker::new(AllowList::default_for_listen(true), PushOptions::default());
//! // The probe shares the invoker's connection pool.
//! let probe = Arc::new(invoker.health_probe());
//! let invoker = Arc::new(invoker);
//! # let _ = (invoker, probe);
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::model::RegisteredAgent;
use maestro_core::ports::{Invocation, InvokeError, Invoker, OutboundError};
use maestro_core::step_codes;
use maestro_engine::health::HealthProbe;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::outbound::{AllowList, build_client, check_url, checked_client_builder, send_error};

/// Default of [`PushOptions::max_response_bytes`]: `maxOutputBytes`' default
/// (1 MiB) plus room for the `{"outputs": ...}` wrapper and formatting, so
/// that outputs near the limit are judged by the engine's exact check.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = (1 << 20) + (64 << 10);
/// Default of [`PushOptions::cancel_timeout_ms`].
pub const DEFAULT_CANCEL_TIMEOUT_MS: u64 = 2_000;

/// Idle connections are kept this long: long enough to span a typical health
/// check interval's worth of gaps between calls, short enough that agents
/// behind load balancers (often 60–350 s idle limits) rarely close them first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Enough idle connections per agent to absorb a burst of parallel steps
/// without reconnecting, without holding hundreds of sockets per agent.
const POOL_MAX_IDLE_PER_HOST: usize = 64;
/// At most this much of a body goes into an error message.
const SNIPPET_BYTES: usize = 200;
/// A health answer's body is read (so the connection can be reused) up to this.
const HEALTH_BODY_BYTES: usize = 64 << 10;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Options of [`HttpPushInvoker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOptions {
    /// The largest answer body read from an agent. A 2xx answer over it fails
    /// with `OUTPUT_TOO_LARGE` (not retryable) without being read further;
    /// an error answer over it is reported as `AGENT_ERROR`.
    pub max_response_bytes: usize,
    /// How long a best-effort `POST <endpoint>/cancel` may take.
    pub cancel_timeout_ms: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            cancel_timeout_ms: DEFAULT_CANCEL_TIMEOUT_MS,
        }
    }
}

/// The [`Invoker`] of `transport: http` agents (see the [module](self) docs
/// for the classification of answers).
///
/// Cheap to clone: clones share one connection pool. Each call is one attempt
/// (retries are the engine's policy), bounded as a whole (connect, answer and
/// body) by the invocation's `timeoutMs`.
#[derive(Debug, Clone)]
pub struct HttpPushInvoker {
    allow: Arc<AllowList>,
    client: reqwest::Client,
    opts: PushOptions,
}

impl HttpPushInvoker {
    /// An invoker whose agent endpoints must be allowed by `allow`.
    pub fn new(allow: AllowList, opts: PushOptions) -> Self {
        let allow = Arc::new(allow);
        let client = build_client(
            checked_client_builder(allow.clone())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                // Calls are small request/answer exchanges: Nagle's delay
                // would only add latency.
                .tcp_nodelay(true),
        );
        HttpPushInvoker {
            allow,
            client,
            opts,
        }
    }

    /// The options this invoker was built with.
    pub fn options(&self) -> PushOptions {
        self.opts
    }

    /// A health probe sharing this invoker's allow-list and connection pool.
    pub fn health_probe(&self) -> HttpHealthProbe {
        HttpHealthProbe {
            allow: self.allow.clone(),
            client: self.client.clone(),
        }
    }

    async fn exchange(&self, req: RequestBuilder) -> Result<Map<String, Value>, InvokeError> {
        let resp = req
            .send()
            .await
            .map_err(|e| outbound_failure(send_error(e)))?;
        let status = resp.status();
        let body = read_body(resp, self.opts.max_response_bytes).await;
        classify(status, body, self.opts.max_response_bytes)
    }
}

#[async_trait]
impl Invoker for HttpPushInvoker {
    async fn invoke(
        &self,
        agent: &RegisteredAgent,
        invocation: Invocation,
    ) -> Result<Map<String, Value>, InvokeError> {
        let url = endpoint_url(&self.allow, agent, "invoke")?;
        let trace = traceparent(&invocation.execution_id, &invocation.task_id);
        let body = invocation_body(&invocation);
        // Keys are built from ids, so only control characters could make one
        // unsendable; that would fail the same way on every attempt.
        let key = HeaderValue::from_bytes(invocation.idempotency_key.as_bytes()).map_err(|_| {
            InvokeError::new(
                step_codes::AGENT_ERROR,
                "the idempotency key cannot be sent as an HTTP header",
                false,
            )
        })?;
        let req = with_auth(self.client.post(url), agent)?
            .header(IDEMPOTENCY_KEY, key)
            .header(TRACEPARENT, trace)
            .json(&body);
        let timeout_ms = invocation.timeout_ms;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.exchange(req)).await {
            Ok(result) => result,
            Err(_) => Err(InvokeError::new(
                step_codes::STEP_TIMEOUT,
                format!("agent {} did not answer within {timeout_ms} ms", agent.id),
                true,
            )),
        }
    }

    async fn cancel(&self, agent: &RegisteredAgent, invocation: &Invocation) {
        let url = match endpoint_url(&self.allow, agent, "cancel") {
            Ok(url) => url,
            Err(e) => {
                tracing::debug!(agent = %agent.id, task = %invocation.task_id, error = %e,
                    "cancel notice not sent");
                return;
            }
        };
        let req = match with_auth(self.client.post(url), agent) {
            Ok(req) => req
                .header(
                    TRACEPARENT,
                    traceparent(&invocation.execution_id, &invocation.task_id),
                )
                .json(&json!({"taskId": invocation.task_id})),
            Err(e) => {
                tracing::debug!(agent = %agent.id, error = %e, "cancel notice not sent");
                return;
            }
        };
        let limit = Duration::from_millis(self.opts.cancel_timeout_ms);
        let sent = tokio::time::timeout(limit, async {
            let resp = req.send().await.map_err(send_error)?;
            let status = resp.status();
            // Read the (small) answer so the connection goes back to the pool.
            let _ = read_body(resp, HEALTH_BODY_BYTES).await;
            Ok::<_, OutboundError>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) if status.is_success() => {}
            Ok(Ok(status)) => tracing::debug!(agent = %agent.id, task = %invocation.task_id,
                %status, "cancel notice answered with a failure"),
            Ok(Err(e)) => tracing::debug!(agent = %agent.id, task = %invocation.task_id,
                error = %e, "cancel notice failed"),
            Err(_) => tracing::debug!(agent = %agent.id, task = %invocation.task_id,
                timeout_ms = self.opts.cancel_timeout_ms, "cancel notice timed out"),
        }
    }
}

// ---------------------------------------------------------------------------
// Health probe
// ---------------------------------------------------------------------------

/// The [`HealthProbe`] of `transport: http` agents: `GET <endpoint>/health`
/// (with the agent's bearer secret when it has one); any 2xx within the
/// timeout means alive. Refused endpoints, errors and timeouts mean down.
///
/// Get one sharing the invoker's pool with [`HttpPushInvoker::health_probe`].
#[derive(Debug, Clone)]
pub struct HttpHealthProbe {
    allow: Arc<AllowList>,
    client: reqwest::Client,
}

impl HttpHealthProbe {
    /// A probe with a connection pool of its own.
    pub fn new(allow: AllowList) -> Self {
        HttpPushInvoker::new(allow, PushOptions::default()).health_probe()
    }
}

#[async_trait]
impl HealthProbe for HttpHealthProbe {
    async fn probe(&self, agent: &RegisteredAgent, timeout_ms: u64) -> bool {
        let Ok(url) = endpoint_url(&self.allow, agent, "health") else {
            return false;
        };
        let Ok(req) = with_auth(self.client.get(url), agent) else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        match tokio::time::timeout_at(deadline, req.send()).await {
            Ok(Ok(resp)) => {
                let alive = resp.status().is_success();
                // The status decides; the body is only read so the connection
                // can be reused, within what is left of the timeout.
                let _ = tokio::time::timeout_at(deadline, read_body(resp, HEALTH_BODY_BYTES)).await;
                alive
            }
            Ok(Err(e)) => {
                tracing::debug!(agent = %agent.id, error = %send_error(e), "health probe failed");
                false
            }
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Request pieces
// ---------------------------------------------------------------------------

pub use maestro_core::ports::traceparent;

/// The JSON body of `POST <endpoint>/invoke` (API.md "Agent protocol"): the
/// invocation's fields plus its [`traceparent`]. Poll tasks carry the same body.
pub fn invocation_body(invocation: &Invocation) -> Value {
    let mut body = match serde_json::to_value(invocation) {
        Ok(Value::Object(map)) => map,
        // A struct of strings, numbers and a JSON map always serializes to an
        // object; an empty body would be refused by the agent anyway.
        _ => Map::new(),
    };
    body.insert(
        "traceparent".to_owned(),
        Value::String(traceparent(&invocation.execution_id, &invocation.task_id)),
    );
    Value::Object(body)
}

/// `<endpoint>/<leaf>`, the endpoint vetted by the allow-list. A trailing `/`
/// on the endpoint is not doubled; a query string is kept.
fn endpoint_url(
    allow: &AllowList,
    agent: &RegisteredAgent,
    leaf: &str,
) -> Result<Url, InvokeError> {
    let Some(endpoint) = agent
        .endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        return Err(InvokeError::new(
            step_codes::INVALID_AGENT_ENDPOINT,
            format!("agent {} has no endpoint", agent.id),
            false,
        ));
    };
    let mut url = check_url(allow, endpoint).map_err(outbound_failure)?;
    // check_url only lets http(s) URLs with a host through, which always have
    // a path to extend.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().push(leaf);
    }
    Ok(url)
}

/// Adds `Authorization: Bearer <inboundSecret>` when the agent has a secret.
fn with_auth(req: RequestBuilder, agent: &RegisteredAgent) -> Result<RequestBuilder, InvokeError> {
    let Some(secret) = agent.inbound_secret.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(req);
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
        InvokeError::new(
            step_codes::INVALID_AGENT_ENDPOINT,
            format!(
                "agent {}: its inboundSecret cannot be sent in an HTTP header",
                agent.id
            ),
            false,
        )
    })?;
    // Keeps the secret out of any debug output of the request.
    value.set_sensitive(true);
    Ok(req.header(AUTHORIZATION, value))
}

/// An error before any answer: allow-list refusals and bad URLs are the
/// configuration's fault (retrying cannot help); the rest is the network's.
fn outbound_failure(e: OutboundError) -> InvokeError {
    match e {
        OutboundError::Refused(why) => InvokeError::new(
            step_codes::OUTBOUND_REFUSED,
            format!("agent endpoint refused by outboundAllowList: {why}"),
            false,
        ),
        OutboundError::InvalidUrl(why) => InvokeError::new(
            step_codes::INVALID_AGENT_ENDPOINT,
            format!("invalid agent endpoint: {why}"),
            false,
        ),
        OutboundError::Failed(why) => InvokeError::new(
            step_codes::AGENT_UNREACHABLE,
            format!("agent unreachable: {why}"),
            true,
        ),
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// An answer's body as far as it was read.
enum Body {
    Complete(Vec<u8>),
    /// Longer than the limit (declared or read); the rest was not read.
    TooLarge,
    /// The connection broke while reading it.
    Broken(String),
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> Body {
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Body::TooLarge;
    }
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    return Body::TooLarge;
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Body::Complete(buf),
            Err(e) => {
                let why = match send_error(e) {
                    OutboundError::Failed(m)
                    | OutboundError::Refused(m)
                    | OutboundError::InvalidUrl(m) => m,
                };
                return Body::Broken(why);
            }
        }
    }
}

fn classify(status: StatusCode, body: Body, max: usize) -> Result<Map<String, Value>, InvokeError> {
    if status.is_success() {
        return match body {
            Body::Complete(bytes) => success_outputs(status, &bytes),
            Body::TooLarge => Err(InvokeError::new(
                step_codes::OUTPUT_TOO_LARGE,
                format!("the agent's answer is larger than {max} bytes"),
                false,
            )),
            Body::Broken(why) => Err(InvokeError::new(
                step_codes::AGENT_UNREACHABLE,
                format!("the agent's HTTP {status} answer broke off: {why}"),
                true,
            )),
        };
    }
    if !(status.is_client_error() || status.is_server_error()) {
        return Err(InvokeError::new(
            step_codes::AGENT_ERROR,
            format!("agent answered HTTP {status} (redirects are not followed)"),
            false,
        ));
    }
    let by_status = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
    let bytes = match body {
        Body::Complete(bytes) => bytes,
        Body::TooLarge => {
            return Err(InvokeError::new(
                step_codes::AGENT_ERROR,
                format!("agent answered HTTP {status} with a body over {max} bytes"),
                by_status,
            ));
        }
        Body::Broken(why) => {
            return Err(InvokeError::new(
                step_codes::AGENT_ERROR,
                format!("agent answered HTTP {status}; the body broke off: {why}"),
                by_status,
            ));
        }
    };
    if let Some(e) = agent_error(&bytes) {
        return Err(InvokeError {
            code: e.code,
            message: e.message,
            // API.md: the agent's own `retryable` decides, whatever the
            // status; without it, 5xx and 429 are retried, other 4xx not.
            retryable: e.retryable.unwrap_or(by_status),
            details: e.details,
        });
    }
    let text = snippet(&bytes);
    Err(InvokeError::new(
        step_codes::AGENT_ERROR,
        if text.is_empty() {
            format!("agent answered HTTP {status}")
        } else {
            format!("agent answered HTTP {status}: {text}")
        },
        by_status,
    ))
}

fn success_outputs(status: StatusCode, bytes: &[u8]) -> Result<Map<String, Value>, InvokeError> {
    let why = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(mut answer)) => match answer.remove("outputs") {
            Some(Value::Object(outputs)) => return Ok(outputs),
            Some(_) => "`outputs` is not a JSON object",
            None => "it has no `outputs`",
        },
        Ok(_) => "it is not a JSON object",
        Err(_) => "it is not JSON",
    };
    let text = snippet(bytes);
    Err(InvokeError::new(
        step_codes::INVALID_AGENT_RESPONSE,
        if text.is_empty() {
            format!("the agent's HTTP {status} answer is empty")
        } else {
            format!("the agent's HTTP {status} answer is not usable ({why}): {text}")
        },
        true,
    ))
}

/// The agent's own error, when the body is `{"error": {"code", "message", "retryable"?}}`.
struct AgentError {
    code: String,
    message: String,
    retryable: Option<bool>,
    details: Option<Value>,
}

fn agent_error(bytes: &[u8]) -> Option<AgentError> {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    let Some(Value::Object(mut error)) = answer.remove("error") else {
        return None;
    };
    let code = match error.remove("code") {
        Some(Value::String(code)) if !code.trim().is_empty() => code,
        _ => return None,
    };
    let message = match error.remove("message") {
        Some(Value::String(message)) => message,
        _ => return None,
    };
    let retryable = match error.remove("retryable") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return None,
    };
    let details = error.remove("details").filter(|d| !d.is_null());
    Some(AgentError {
        code,
        message,
        retryable,
        details,
    })
}

/// The start of a body for an error message, on a character boundary.
fn snippet(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(SNIPPET_BYTES)];
    let text = String::from_utf8_lossy(head);
    let text = text.trim_end_matches('\u{fffd}').trim();
    if bytes.len() > SNIPPET_BYTES {
        format!("{text}…")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_comes_from_a_hex_execution_id() {
        let exec = "exec_0192F0C1D2E3A4B5C6D7E8F901234567";
        let a = traceparent(exec, "t1");
        assert_eq!(&a[..36], "00-0192f0c1d2e3a4b5c6d7e8f901234567-");
        assert!(a.ends_with("-01"));
        assert_eq!(a.len(), 55);
    }

    #[test]
    fn other_execution_ids_are_hashed() {
        for exec in [
            "exec_nothex",
            "x",
            "",
            "exec_00000000000000000000000000000000",
        ] {
            let t = traceparent(exec, "t");
            let trace = &t[3..35];
            assert!(
                trace
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_ne!(trace, "00000000000000000000000000000000");
            assert_eq!(t, traceparent(exec, "t"), "deterministic");
        }
    }

    #[test]
    fn snippets_are_bounded_and_valid_utf8() {
        assert_eq!(snippet(b"  short \n"), "short");
        let long = "é".repeat(300);
        let s = snippet(long.as_bytes());
        assert!(s.ends_with('…'));
        assert!(s.len() <= SNIPPET_BYTES + '…'.len_utf8());
        assert!(!s.contains('\u{fffd}'));
    }
}
