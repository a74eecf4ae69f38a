//! The push transport: an HTTP server speaking API.md "Agent protocol"
//! (`POST /invoke`, `POST /cancel`, `GET /health`), registered with Maestro as
//! a `transport: http` agent.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maestro_core::model::Transport;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dedupe::{Claim, Dedupe, Outcome, fingerprint};
use super::link::{CallError, Link};
use super::{Agent, AgentError, SdkError, Task, codes};

/// The largest `/invoke` body accepted (a step's inputs can carry several
/// earlier steps' outputs of up to 1 MiB each).
const MAX_BODY_BYTES: usize = 16 << 20;
/// After the grace period, cancelled handlers get this long to answer.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// How [`Agent::serve_push`] serves and registers.
#[derive(Clone)]
pub struct PushConfig {
    /// Maestro's base URL, e.g. `http://127.0.0.1:7300`.
    pub maestro_url: String,
    /// An admin/operator token, or an agent token of this agent.
    pub token: String,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The URL Maestro reaches this agent at (its registered `endpoint`).
    /// Default: `http://<the bound address>` (loopback when listening on an
    /// unspecified address such as 0.0.0.0).
    pub advertise_url: Option<String>,
    /// Registered as `inboundSecret`; `/invoke` and `/cancel` then require
    /// `Authorization: Bearer <secret>`.
    pub inbound_secret: Option<String>,
    /// Agent heartbeat period (`Duration::ZERO`: none).
    pub heartbeat_every: Duration,
    /// On shutdown, how long calls in flight may take to finish before their
    /// contexts are cancelled.
    pub shutdown_grace: Duration,
    /// How many recent results are answered again for a repeated
    /// `Idempotency-Key` (0: only calls in flight are deduplicated).
    pub result_cache: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            maestro_url: "http://127.0.0.1:7300".to_owned(),
            token: String::new(),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            advertise_url: None,
            inbound_secret: None,
            heartbeat_every: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            result_cache: 1024,
        }
    }
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("maestro_url", &self.maestro_url)
            .field("token", &"<redacted>")
            .field("listen", &self.listen)
            .field("advertise_url", &self.advertise_url)
            .field(
                "inbound_secret",
                &self.inbound_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("heartbeat_every", &self.heartbeat_every)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("result_cache", &self.result_cache)
            .finish()
    }
}

/// A running push agent (see [`Agent::start_push`]).
#[derive(Debug)]
pub struct PushServer {
    addr: SocketAddr,
    url: String,
    done: JoinHandle<Result<(), SdkError>>,
}

impl PushServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint registered with Maestro.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Resolves when the server has shut down (after the cancellation token
    /// fired and the calls in flight finished).
    pub async fn wait(self) -> Result<(), SdkError> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(SdkError::Server(std::io::Error::other(e.to_string()))),
        }
    }
}

impl Agent {
    /// Serves the push protocol until `cancel` fires, then shuts down
    /// gracefully: [`start_push`](Self::start_push) followed by
    /// [`PushServer::wait`].
    pub async fn serve_push(
        &self,
        config: PushConfig,
        cancel: CancellationToken,
    ) -> Result<(), SdkError> {
        self.start_push(config, cancel).await?.wait().await
    }

    /// Binds, starts serving, registers with Maestro (retrying while it is
    /// unreachable) and starts the heartbeats; answers once registered.
    ///
    /// When `cancel` fires the server stops accepting connections, the calls
    /// in flight finish (up to `shutdown_grace`, then their contexts are
    /// cancelled) and the heartbeats stop.
    pub async fn start_push(
        &self,
        config: PushConfig,
        cancel: CancellationToken,
    ) -> Result<PushServer, SdkError> {
        let link = Link::new(&config.maestro_url, &config.token, self.id())?;
        let secret = match config.inbound_secret.as_deref().map(str::trim) {
            Some("") => {
                return Err(SdkError::Config(
                    "the inbound secret is empty (use None for no secret)".to_owned(),
                ));
            }
            other => other.map(str::to_owned),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SdkError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(SdkError::Server)?;
        let url = match &config.advertise_url {
            Some(u) => u.trim().trim_end_matches('/').to_owned(),
            None => default_url(addr),
        };

        // `stop` ends serving (the caller's cancel, or a failed start);
        // `hard` cancels handlers once the grace period is over.
        let stop = cancel.child_token();
        let hard = CancellationToken::new();
        let tracker = TaskTracker::new();
        let state = Arc::new(PushState {
            agent: self.clone(),
            secret: secret.clone(),
            dedupe: Dedupe::new(config.result_cache),
            running: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            hard: hard.clone(),
            tracker: tracker.clone(),
        });
        let app = router(state);
        let shutdown = stop.clone();
        let mut server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });

        // Serve first: Maestro may probe /health right after registering.
        if let Err(e) = link
            .register_until_done(self, Transport::Http, Some(&url), secret.as_deref(), &stop)
            .await
        {
            stop.cancel();
            let _ = tokio::time::timeout(LAST_WORDS, &mut server).await;
            server.abort();
            return Err(e);
        }
        tracing::info!(agent = %self.id(), url = %maestro_core::url::shown(&url), "push agent serving");

        let heartbeats = tokio::spawn(heartbeat_loop(
            link,
            self.clone(),
            config.heartbeat_every,
            Some(url.clone()),
            secret,
            stop.clone(),
        ));
        let grace = config.shutdown_grace;
        let agent_id = self.id().to_owned();
        let done = tokio::spawn(async move {
            let early = tokio::select! {
                r = &mut server => Some(r),
                _ = stop.cancelled() => None,
            };
            let result = match early {
                // The server stopped by itself: an accept loop failure.
                Some(r) => {
                    stop.cancel();
                    flatten(r)
                }
                None => {
                    tracing::info!(agent = %agent_id, "push agent shutting down");
                    tracker.close();
                    let drained = tokio::time::timeout(grace, async {
                        let r = (&mut server).await;
                        tracker.wait().await;
                        r
                    })
                    .await;
                    match drained {
                        Ok(r) => flatten(r),
                        Err(_) => {
                            tracing::warn!(agent = %agent_id, grace_ms = grace.as_millis(),
                                "calls still running after the grace period; cancelling them");
                            hard.cancel();
                            let _ = tokio::time::timeout(LAST_WORDS, async {
                                let _ = (&mut server).await;
                                tracker.wait().await;
                            })
                            .await;
                            server.abort();
                            Ok(())
                        }
                    }
                }
            };
            let _ = heartbeats.await;
            tracing::info!(agent = %agent_id, "push agent stopped");
            result
        });
        Ok(PushServer { addr, url, done })
    }
}

fn flatten(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), SdkError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SdkError::Server(e)),
        Err(e) => Err(SdkError::Server(std::io::Error::other(e.to_string()))),
    }
}

/// `http://<addr>`, loopback instead of an unspecified address.
fn default_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Heartbeats every `every` until `stop`; re-registers when Maestro no
/// longer knows the agent (404).
pub(crate) async fn heartbeat_loop(
    link: Link,
    agent: Agent,
    every: Duration,
    endpoint: Option<String>,
    secret: Option<String>,
    stop: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let transport = if endpoint.is_some() {
        Transport::Http
    } else {
        Transport::Poll
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; registration just happened
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match link.heartbeat().await {
            Ok(()) => {}
            Err(CallError::Refused { status: 404, .. }) => {
                tracing::warn!(agent = %agent.id(), "Maestro no longer knows this agent; re-registering");
                if let Err(e) = link
                    .register(&agent, transport, endpoint.as_deref(), secret.as_deref())
                    .await
                {
                    tracing::warn!(agent = %agent.id(), error = %e, "re-registration failed");
                }
            }
            Err(e) => tracing::warn!(agent = %agent.id(), error = %e, "heartbeat failed"),
        }
    }
}

struct PushState {
    agent: Agent,
    secret: Option<String>,
    dedupe: Dedupe,
    /// Cancellation of the calls running, by task id (with a count, should
    /// one task id run under two keys).
    running: Mutex<HashMap<String, (CancellationToken, usize)>>,
    in_flight: AtomicUsize,
    hard: CancellationToken,
    tracker: TaskTracker,
}

impl PushState {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, (CancellationToken, usize)>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(secret) = &self.secret else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), secret.as_bytes()))
    }

    /// Runs one call with a cancellation token registered under its task id.
    async fn run(self: Arc<Self>, task: Task) -> Result<super::Outputs, AgentError> {
        let task_id = task.task_id.clone();
        let token = {
            let mut running = self.running();
            let entry = running
                .entry(task_id.clone())
                .or_insert_with(|| (self.hard.child_token(), 0));
            entry.1 += 1;
            entry.0.clone()
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let capability = task.capability.clone();
        let started = std::time::Instant::now();
        let result = self.agent.handle(task, token).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        {
            let mut running = self.running();
            if let Some(entry) = running.get_mut(&task_id) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    running.remove(&task_id);
                }
            }
        }
        match &result {
            Ok(_) => tracing::debug!(agent = %self.agent.id(), %capability, task = %task_id,
                ms = started.elapsed().as_millis(), "call done"),
            Err(e) => tracing::debug!(agent = %self.agent.id(), %capability, task = %task_id,
                ms = started.elapsed().as_millis(), code = %e.code, "call failed"),
        }
        result
    }
}

fn router(state: Arc<PushState>) -> Router {
    Router::new()
        .route("/invoke", post(invoke))
        .route("/cancel", post(cancel))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error_answer(e: &AgentError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.to_body())).into_response()
}

fn answer(outcome: &Outcome) -> Response {
    match outcome.as_ref() {
        Ok(outputs) => axum::Json(json!({ "outputs": outputs })).into_response(),
        Err(e) => error_answer(e),
    }
}

fn unauthorized() -> Response {
    error_answer(&AgentError::fatal(
        codes::UNAUTHORIZED,
        "missing or wrong bearer token (the agent's inbound secret)",
    ))
}

async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(abandoned),
        Err(_) => abandoned(),
    }
}

fn abandoned() -> Outcome {
    Arc::new(Err(AgentError::retryable(
        "CALL_ABANDONED",
        "the call stopped without a result (the agent is shutting down)",
    )))
}

async fn invoke(State(s): State<Arc<PushState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let task: Task = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return error_answer(&AgentError::fatal(
                codes::INVALID_REQUEST,
                format!("the body is not a task: {e}"),
            ));
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .or_else(|| task.idempotency_key.clone().filter(|k| !k.is_empty()))
        .unwrap_or_else(|| task.task_id.clone());
    if key.is_empty() {
        // Nothing to deduplicate on: run it as it comes.
        let run = s.tracker.spawn(s.clone().run(task));
        let outcome = match run.await {
            Ok(r) => Arc::new(r),
            Err(_) => abandoned(),
        };
        return answer(&outcome);
    }
    let fp = fingerprint(&task.capability, &task.inputs);
    let outcome = match s.dedupe.claim(&key, fp) {
        Claim::Done(o) => o,
        Claim::Wait(rx) => wait(rx).await,
        Claim::Conflict => {
            return error_answer(&AgentError::fatal(
                codes::IDEMPOTENCY_KEY_REUSED,
                format!("Idempotency-Key {key:?} was used for another capability or other inputs"),
            ));
        }
        Claim::Run(tx) => {
            let rx = tx.subscribe();
            // Spawned, so a caller that hangs up does not abort the call:
            // its retry gets the result.
            let state = s.clone();
            s.tracker.spawn(async move {
                let outcome = Arc::new(state.clone().run(task).await);
                state.dedupe.finish(&key, fp, outcome, tx);
            });
            wait(rx).await
        }
    };
    answer(&outcome)
}

async fn cancel(State(s): State<Arc<PushState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !s.authorized(&headers) {
        return unauthorized();
    }
    let task_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("taskId").and_then(Value::as_str).map(str::to_owned));
    let Some(task_id) = task_id else {
        return error_answer(&AgentError::fatal(
            codes::INVALID_REQUEST,
            "expected {\"taskId\": \"...\"}",
        ));
    };
    let token = s.running().get(&task_id).map(|(t, _)| t.clone());
    let cancelled = token.is_some();
    if let Some(t) = token {
        tracing::info!(agent = %s.agent.id(), task = %task_id, "Maestro cancelled a call");
        t.cancel();
    }
    axum::Json(json!({"cancelled": cancelled, "taskId": task_id})).into_response()
}

async fn health(State(s): State<Arc<PushState>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "agentId": s.agent.id(),
        "inFlight": s.in_flight.load(Ordering::SeqCst),
        "capabilities": s.agent.capability_ids(),
    }))
    .into_response()
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_urls_avoid_unspecified_addresses() {
        assert_eq!(
            default_url("0.0.0.0:9101".parse().unwrap()),
            "http://127.0.0.1:9101"
        );
        assert_eq!(default_url("[::]:9".parse().unwrap()), "http://[::1]:9");
        assert_eq!(
            default_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = PushConfig {
            token: "tok-123".into(),
            inbound_secret: Some("sec-456".into()),
            ..PushConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("tok-123") && !s.contains("sec-456"), "{s}");
    }
}
