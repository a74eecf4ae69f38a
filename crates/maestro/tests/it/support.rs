//! A real server on 127.0.0.1:0 over a temp data dir, a real HTTP client, and
//! agents as real HTTP servers on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use maestro_core::model::MaestroConfig;
use maestro_server::serve::{self, Running};
use maestro_server::settings::{ServerSettings, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A server under test and its admin token.
pub struct Server {
    pub running: Option<Running>,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
    pub dir: Arc<TempDir>,
}

pub fn settings(dir: &std::path::Path) -> Settings {
    let mut runtime = MaestroConfig::default();
    runtime.default_retry_policy.delay_ms = 10;
    runtime.default_retry_policy.max_delay_ms = Some(50);
    Settings {
        server: ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.to_path_buf(),
            sse_keepalive_ms: 200,
            // The auth matrix sends many bad tokens on purpose; the limit has a test of its own.
            auth_failures_per_minute: 1_000_000,
            ..ServerSettings::default()
        },
        runtime,
    }
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut s = settings(dir.path());
        tweak(&mut s);
        Self::start_in(dir, s).await
    }

    pub async fn start_in(dir: Arc<TempDir>, s: Settings) -> Server {
        let running = serve::start(s).await.expect("server starts");
        let admin = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Server {
            base: format!("http://{}", running.addr),
            running: Some(running),
            admin,
            client: reqwest::Client::new(),
            dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with `token` (None: no Authorization header).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.admin.clone()), None)
            .await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&self.admin.clone()), Some(body))
            .await
    }
    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(&self.admin.clone()), Some(body))
            .await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(&self.admin.clone()), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(&self.admin.clone()), None)
            .await
    }

    /// Create a token of `role` and answer its secret.
    pub async fn token(&self, role: &str, agent_id: Option<&str>) -> String {
        let mut body = json!({"role": role});
        if let Some(a) = agent_id {
            body["agentId"] = json!(a);
        }
        let (st, v) = self.post("/maestro/tokens", body).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v["secret"].as_str().unwrap().to_owned()
    }

    /// Register an HTTP agent with `capabilities` at `endpoint`.
    pub async fn register_http_agent(
        &self,
        id: &str,
        endpoint: &str,
        capabilities: &[&str],
    ) -> Value {
        let caps: Vec<Value> = capabilities.iter().map(|c| json!({"id": c})).collect();
        let (st, v) = self
            .post(
                "/maestro/agents",
                json!({"id": id, "type": "test", "endpoint": endpoint, "capabilities": caps}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v
    }

    /// Poll an execution until it is terminal.
    pub async fn wait_terminal(&self, id: &str) -> Value {
        for _ in 0..500 {
            let (st, v) = self.get(&format!("/maestro/executions/{id}")).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            let status = v["execution"]["status"].as_str().unwrap().to_owned();
            if ["completed", "failed", "rolled_back", "cancelled"].contains(&status.as_str()) {
                return v["execution"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("execution {id} did not finish");
    }
}

/// An agent: a real HTTP server on loopback answering `/invoke` with `handler`.
pub struct Agent {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub bodies: Arc<std::sync::Mutex<Vec<(Value, axum::http::HeaderMap)>>>,
    /// Each answer waits this long first (ms).
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `handler(body) -> (status, json answer)`.
    pub async fn start<F>(handler: F) -> Agent
    where
        F: Fn(&Value) -> (u16, Value) + Send + Sync + 'static,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (c, b, d) = (calls.clone(), bodies.clone(), delay_ms.clone());
        let app = Router::new()
            .route(
                "/invoke",
                post(
                    move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                        let (c, b, h, d) = (c.clone(), b.clone(), handler.clone(), d.clone());
                        async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            let wait = d.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            let (status, answer) = h(&body.0);
                            b.lock().unwrap().push((body.0, headers));
                            (
                                axum::http::StatusCode::from_u16(status).unwrap(),
                                axum::Json(answer),
                            )
                        }
                    },
                ),
            )
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route("/cancel", post(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Agent {
            addr,
            calls,
            bodies,
            delay_ms,
            task,
        }
    }

    /// Echo the inputs back as outputs, plus `by: <capability>`.
    pub async fn echo() -> Agent {
        Agent::start(|b| {
            let mut out = b["inputs"].clone();
            out["by"] = b["capability"].clone();
            (200, json!({"outputs": out}))
        })
        .await
    }
}

/// The original's auth-flow over two agents.
pub fn auth_flow(sentinel: &str, bridge: &str) -> Value {
    json!({
        "id": "auth-flow", "name": "Authentication Flow", "version": "1.0",
        "steps": [
            {"id": "verify-user", "agentId": sentinel, "capability": "verify-identity",
             "inputs": {"userId": "${userId}"}},
            {"id": "issue-token", "agentId": bridge, "capability": "issue-jwt",
             "inputs": {"userId": "${userId}"}, "dependencies": ["verify-user"],
             "condition": {"type": "comparison", "operator": "eq", "variable": "verified", "value": true}}
        ],
        "expectedOutputs": {"token": "string"}
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The answer of [`raw_http`]: status, headers (lowercased names) and body
/// (JSON when it parses, else a string).
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

/// One raw HTTP/1.1 exchange over a fresh TCP connection to `server`, for
/// requests reqwest will not send (a chunked body without its `stream`
/// feature, bytes in the path that are not valid UTF-8). `request` is the
/// whole request as sent; it should carry `Connection: close`, as the answer
/// is read to the end of the connection.
pub async fn raw_http(server: &Server, request: &[u8]) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and stop reading) before the whole request is
    // written, e.g. a body over the limit: the answer is what counts.
    let _ = conn.write_all(request).await;
    let _ = conn.flush().await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "no answer within 5 s to {:?}",
        String::from_utf8_lossy(request)
    );
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    RawAnswer {
        status,
        headers,
        body,
    }
}

/// Decode a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// `body` in `Transfer-Encoding: chunked` framing, in pieces of `piece` bytes.
pub fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Whether `v` is the API's error envelope:
/// `{"success": false, "code": <UPPER_SNAKE>, "error": <string>, "details"?: {..}}`.
pub fn is_error_envelope(v: &Value) -> bool {
    let code_ok = v["code"].as_str().is_some_and(|c| {
        !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_uppercase())
            && c.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
    });
    v["success"] == Value::Bool(false)
        && code_ok
        && v["error"].is_string()
        && v.get("details").is_none_or(Value::is_object)
}
