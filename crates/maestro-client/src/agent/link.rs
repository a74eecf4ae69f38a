//! The calls an agent makes to Maestro: register, heartbeat, poll, and the
//! task's heartbeat/complete/fail. Each call is one HTTP exchange; the loops
//! decide what to retry, with [`Backoff`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use maestro_core::model::Transport;
use maestro_core::protocol::{
    AgentFailure, CompleteBody, FailBody, HeartbeatBody, LeaseAnswer, PollAnswer, PollBody,
    TaskHeartbeatBody,
};
use maestro_core::url::shown;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Agent, AgentError, SdkError};

/// Time limit of calls other than the long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to a long poll's `waitMs` for the answer to arrive.
const POLL_MARGIN: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, Clone)]
pub(crate) enum CallError {
    /// Worth retrying: no connection, a timeout, a 5xx or a 429.
    Transient(String),
    /// An answer that retrying will not change.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

impl CallError {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CallError::Transient(_) => None,
            CallError::Refused { status, .. } => Some(*status),
        }
    }

    pub(crate) fn into_sdk(self, what: &str) -> SdkError {
        match self {
            CallError::Refused {
                status,
                code,
                message,
            } => SdkError::Refused {
                what: what.to_owned(),
                status,
                code,
                message,
            },
            CallError::Transient(m) => SdkError::Refused {
                what: what.to_owned(),
                status: 0,
                code: "UNREACHABLE".to_owned(),
                message: m,
            },
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transient(m) => write!(f, "{m}"),
            CallError::Refused {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
        }
    }
}

/// A capped exponential backoff: 100 ms doubling up to 5 s, with a little
/// jitter so pollers that failed together do not retry together.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    seed: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(1);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let seed = super::context::now_ms() ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Backoff {
            next: Self::FIRST,
            seed: seed | 1,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next wait, then doubles it up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // xorshift: jitter of up to a quarter of the delay.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let quarter = u64::try_from(base.as_millis() / 4).unwrap_or(0).max(1);
        base + Duration::from_millis(self.seed % quarter)
    }

    /// Sleeps the next delay; false when `cancel` fired first.
    pub(crate) async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// A lease heartbeat's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub(crate) expires_at: Option<u64>,
    pub(crate) cancel_requested: bool,
}

/// Maestro as seen by one agent.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    http: reqwest::Client,
    base: String,
    token: String,
    agent_id: String,
}

impl Link {
    pub(crate) fn new(maestro_url: &str, token: &str, agent_id: &str) -> Result<Link, SdkError> {
        let base = maestro_url.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| SdkError::Config(format!("invalid Maestro URL {maestro_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SdkError::Config(format!(
                "invalid Maestro URL {maestro_url:?}: expected http:// or https://"
            )));
        }
        if token.trim().is_empty() {
            return Err(SdkError::Config(
                "no Maestro token (an admin/operator token, or an agent token for this agent)"
                    .to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            // Below the server's keep-alive idle timeout (60 s by default), so
            // that a pooled connection is not reused as the server closes it.
            .pool_idle_timeout(crate::client::POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| SdkError::Config(format!("HTTP client: {e}")))?;
        Ok(Link {
            http,
            base,
            token: token.trim().to_owned(),
            agent_id: agent_id.to_owned(),
        })
    }

    /// One exchange; the answer's JSON body on a 2xx.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), CallError> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok((status, v));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CallError::Transient(format!(
                "HTTP {status}: {}",
                message_of(&v, &text)
            )));
        }
        Err(CallError::Refused {
            status: status.as_u16(),
            code: v["code"].as_str().unwrap_or("").to_owned(),
            message: message_of(&v, &text),
        })
    }

    /// `PUT /maestro/agents/<id>`; true when it created the agent.
    pub(crate) async fn register(
        &self,
        agent: &Agent,
        transport: Transport,
        endpoint: Option<&str>,
        inbound_secret: Option<&str>,
    ) -> Result<bool, CallError> {
        let body = agent.registration_body(transport, endpoint, inbound_secret);
        let (status, _) = self
            .call(
                Method::PUT,
                &format!("/maestro/agents/{}", self.agent_id),
                &body,
                CALL_TIMEOUT,
            )
            .await?;
        Ok(status == StatusCode::CREATED)
    }

    /// Registers, retrying transient failures until `cancel` fires.
    pub(crate) async fn register_until_done(
        &self,
        agent: &Agent,
        transport: Transport,
        endpoint: Option<&str>,
        inbound_secret: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<(), SdkError> {
        let mut backoff = Backoff::new();
        loop {
            match self
                .register(agent, transport, endpoint, inbound_secret)
                .await
            {
                Ok(created) => {
                    let what = if created {
                        "agent registered"
                    } else {
                        "agent re-registered"
                    };
                    let transport = match transport {
                        Transport::Http => "http",
                        Transport::Poll => "poll",
                        Transport::Inprocess => "inprocess",
                    };
                    // URLs as logs may show them (no userinfo, no query).
                    let maestro = shown(&self.base);
                    match endpoint {
                        Some(endpoint) => tracing::info!(agent = %self.agent_id,
                            %maestro, transport, endpoint = %shown(endpoint), "{what}"),
                        None => tracing::info!(agent = %self.agent_id,
                            %maestro, transport, "{what}"),
                    }
                    return Ok(());
                }
                Err(CallError::Transient(why)) => {
                    tracing::warn!(agent = %self.agent_id, maestro = %shown(&self.base), error = %why,
                        "cannot reach Maestro to register; retrying");
                    if !backoff.wait(cancel).await {
                        return Err(SdkError::Cancelled);
                    }
                }
                Err(e) => return Err(e.into_sdk("the registration")),
            }
        }
    }

    /// `POST /maestro/agents/<id>/heartbeat`.
    pub(crate) async fn heartbeat(&self) -> Result<(), CallError> {
        self.call(
            Method::POST,
            &format!("/maestro/agents/{}/heartbeat", self.agent_id),
            &HeartbeatBody::default(),
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// `POST /maestro/agents/<id>/tasks/poll`: the tasks as JSON (each may
    /// still fail to parse as a task).
    pub(crate) async fn poll(
        &self,
        capabilities: &[String],
        max: u32,
        wait_ms: u64,
    ) -> Result<Vec<Value>, CallError> {
        let body = PollBody {
            capabilities: capabilities.to_vec(),
            max: Some(max as usize),
            wait_ms: Some(wait_ms),
        };
        let (_, v) = self
            .call(
                Method::POST,
                &format!("/maestro/agents/{}/tasks/poll", self.agent_id),
                &body,
                Duration::from_millis(wait_ms) + POLL_MARGIN,
            )
            .await?;
        serde_json::from_value::<PollAnswer>(v)
            .map(|a| a.tasks)
            .map_err(|e| CallError::Transient(format!("unexpected poll answer: {e}")))
    }

    /// `POST /maestro/tasks/<taskId>/heartbeat`.
    pub(crate) async fn task_heartbeat(&self, task_id: &str) -> Result<Lease, CallError> {
        let (_, v) = self
            .call(
                Method::POST,
                &format!("/maestro/tasks/{task_id}/heartbeat"),
                &TaskHeartbeatBody::default(),
                CALL_TIMEOUT,
            )
            .await?;
        let a: LeaseAnswer = serde_json::from_value(v)
            .map_err(|e| CallError::Transient(format!("unexpected heartbeat answer: {e}")))?;
        Ok(Lease {
            expires_at: Some(a.lease_expires_at),
            cancel_requested: a.cancel_requested,
        })
    }

    /// `POST /maestro/tasks/<taskId>/complete`.
    pub(crate) async fn complete(
        &self,
        task_id: &str,
        outputs: &serde_json::Map<String, Value>,
    ) -> Result<(), CallError> {
        self.call(
            Method::POST,
            &format!("/maestro/tasks/{task_id}/complete"),
            &CompleteBody {
                outputs: outputs.clone(),
            },
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// `POST /maestro/tasks/<taskId>/fail`. `details` are sent when the error
    /// has them; a server that refuses them (400) gets the error without.
    pub(crate) async fn fail(&self, task_id: &str, error: &AgentError) -> Result<(), CallError> {
        let path = format!("/maestro/tasks/{task_id}/fail");
        let failure = |details: Option<Value>| FailBody {
            error: AgentFailure {
                code: error.code.clone(),
                message: error.message.clone(),
                retryable: error.retryable,
                details,
            },
        };
        if error.details.is_some() {
            match self
                .call(
                    Method::POST,
                    &path,
                    &failure(error.details.clone()),
                    CALL_TIMEOUT,
                )
                .await
            {
                Err(CallError::Refused { status: 400, .. }) => {}
                other => return other.map(|_| ()),
            }
        }
        self.call(Method::POST, &path, &failure(None), CALL_TIMEOUT)
            .await
            .map(|_| ())
    }
}

fn message_of(v: &Value, text: &str) -> String {
    match v["error"].as_str() {
        Some(m) => m.to_owned(),
        None => text.chars().take(200).collect(),
    }
}

/// A reqwest error with its causes (reqwest's own message is terse).
fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(126));
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(6250), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(126));
    }

    #[test]
    fn links_need_a_url_and_a_token() {
        assert!(Link::new("http://127.0.0.1:7300/", "t", "a").is_ok());
        assert!(matches!(
            Link::new("ftp://x", "t", "a"),
            Err(SdkError::Config(_))
        ));
        assert!(matches!(
            Link::new("http://x", " ", "a"),
            Err(SdkError::Config(_))
        ));
    }
}
