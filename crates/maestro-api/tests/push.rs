//! The HTTP push invoker and health probe against hand-rolled HTTP/1.1 agents
//! on loopback: what is sent, and how every kind of answer is classified.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_api::outbound::AllowList;
use maestro_api::push::{HttpHealthProbe, HttpPushInvoker, PushOptions, traceparent};
use maestro_core::model::RegisteredAgent;
use maestro_core::ports::{Invocation, InvokeError, Invoker};
use maestro_engine::health::HealthProbe;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A scriptable agent
// ---------------------------------------------------------------------------

/// One request as the agent saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// What the agent does with a request.
enum Reply {
    /// A complete answer; the connection stays open for the next request.
    Answer(&'static str, String),
    /// These bytes as they are, then close.
    Raw(String),
    /// Never answer (the connection stays open).
    Hang,
    /// These bytes, then nothing more (the connection stays open).
    Stall(String),
    /// These bytes, then a TCP reset.
    Reset(String),
}

fn answer(status: &'static str, body: Value) -> Reply {
    Reply::Answer(status, body.to_string())
}

struct Agent {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Agent {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An agent on 127.0.0.1 answering every request with `handler`'s reply.
async fn agent(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Agent {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let connections: Arc<AtomicUsize> = Arc::default();
    let handler = Arc::new(handler);
    let (log, count) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock, handler.clone(), log.clone()));
        }
    });
    Agent {
        port,
        seen,
        connections,
    }
}

async fn serve(
    mut sock: TcpStream,
    handler: Arc<impl Fn(&Seen) -> Reply>,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut words = head.split_whitespace();
        let request = Seen {
            method: words.next().unwrap_or_default().to_owned(),
            path: words.next().unwrap_or_default().to_owned(),
            body: buf[head_end..head_end + len].to_vec(),
            head,
        };
        buf.drain(..head_end + len);
        let reply = handler(&request);
        log.lock().unwrap().push(request);
        match reply {
            Reply::Answer(status, body) => {
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if sock.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Raw(bytes) => {
                let _ = sock.write_all(bytes.as_bytes()).await;
                let _ = sock.shutdown().await;
                return;
            }
            Reply::Hang | Reply::Stall(_) => {
                if let Reply::Stall(bytes) = reply {
                    let _ = sock.write_all(bytes.as_bytes()).await;
                }
                // Dropped with the test's runtime.
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            Reply::Reset(bytes) => {
                let _ = sock.write_all(bytes.as_bytes()).await;
                let _ = sock.flush().await;
                sock.set_zero_linger().unwrap();
                drop(sock);
                return;
            }
        }
    }
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

const EXEC: &str = "exec_0192f0c1d2e3a4b5c6d7e8f901234567";

fn registered(endpoint: &str, secret: Option<&str>) -> RegisteredAgent {
    let mut a: RegisteredAgent = serde_json::from_value(json!({
        "id": "signer", "type": "test", "endpoint": endpoint,
    }))
    .unwrap();
    a.inbound_secret = secret.map(str::to_owned);
    a
}

fn call_attempt(attempt: u32, timeout_ms: u64) -> Invocation {
    let key = Invocation::idempotency_key_for(EXEC, "sign", attempt, false);
    Invocation {
        task_id: key.clone(),
        execution_id: EXEC.to_owned(),
        workflow_id: "contracts".to_owned(),
        step_id: "sign".to_owned(),
        attempt,
        capability: "sign".to_owned(),
        inputs: json!({"doc": "d-1", "n": 3}).as_object().unwrap().clone(),
        correlation_id: "corr-1".to_owned(),
        deadline: 1_764_100_010_000,
        timeout_ms,
        idempotency_key: key,
        compensation: false,
    }
}

fn call() -> Invocation {
    call_attempt(1, 5_000)
}

fn invoker() -> HttpPushInvoker {
    HttpPushInvoker::new(AllowList::default_for_listen(true), PushOptions::default())
}

async fn invoke(agent: &Agent) -> Result<Map<String, Value>, InvokeError> {
    invoker()
        .invoke(&registered(&agent.endpoint(), None), call())
        .await
}

#[track_caller]
fn assert_failure(
    r: Result<Map<String, Value>, InvokeError>,
    code: &str,
    retryable: bool,
) -> InvokeError {
    let e = r.expect_err("a failure");
    assert_eq!(e.code, code, "{e:?}");
    assert_eq!(e.retryable, retryable, "{e:?}");
    e
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn success_returns_the_outputs() {
    let a = agent(|_| answer("200 OK", json!({"outputs": {"signature": "abc", "n": 1}}))).await;
    let outputs = invoke(&a).await.unwrap();
    assert_eq!(Value::Object(outputs), json!({"signature": "abc", "n": 1}));
    // Other 2xx statuses and extra fields are fine.
    let a = agent(|_| answer("201 Created", json!({"outputs": {}, "note": "x"}))).await;
    assert_eq!(invoke(&a).await.unwrap(), Map::new());
}

#[tokio::test]
async fn sends_the_protocol_body_and_headers() {
    let a = agent(|_| answer("200 OK", json!({"outputs": {}}))).await;
    // A trailing slash and a base path are both handled.
    let endpoint = format!("{}/agents/signer/", a.endpoint());
    invoker()
        .invoke(
            &registered(&endpoint, Some("s3cret")),
            call_attempt(2, 10_000),
        )
        .await
        .unwrap();
    let seen = a.seen();
    assert_eq!(seen.len(), 1, "one attempt");
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/agents/signer/invoke")
    );
    assert_eq!(
        r.header("idempotency-key").as_deref(),
        Some(format!("{EXEC}:sign:2").as_str())
    );
    assert_eq!(r.header("authorization").as_deref(), Some("Bearer s3cret"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let trace = r.header("traceparent").unwrap();
    assert_eq!(trace, traceparent(EXEC, &format!("{EXEC}:sign:2")));
    assert_eq!(
        r.json(),
        json!({
            "taskId": format!("{EXEC}:sign:2"),
            "executionId": EXEC,
            "workflowId": "contracts",
            "stepId": "sign",
            "attempt": 2,
            "capability": "sign",
            "inputs": {"doc": "d-1", "n": 3},
            "correlationId": "corr-1",
            "deadline": 1_764_100_010_000u64,
            "timeoutMs": 10_000,
            "traceparent": trace,
        })
    );
}

#[tokio::test]
async fn no_secret_no_authorization_header() {
    let a = agent(|_| answer("200 OK", json!({"outputs": {}}))).await;
    invoker()
        .invoke(&registered(&a.endpoint(), None), call())
        .await
        .unwrap();
    invoker()
        .invoke(&registered(&a.endpoint(), Some("")), call())
        .await
        .unwrap();
    let seen = a.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.header("authorization").is_none()));
    assert!(seen.iter().all(|r| r.path == "/invoke"));
}

#[test]
fn retries_of_one_execution_share_a_trace() {
    let first = traceparent(EXEC, &format!("{EXEC}:sign:1"));
    let retry = traceparent(EXEC, &format!("{EXEC}:sign:2"));
    let parts: Vec<&str> = first.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "0192f0c1d2e3a4b5c6d7e8f901234567");
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(parts[3], "01");
    assert_eq!(first[..36], retry[..36], "same trace id");
    assert_ne!(first, retry, "one span per attempt");
    // An execution id that is not hex still gives a stable, valid trace id.
    let odd = traceparent("run-42", "t");
    assert_eq!(odd, traceparent("run-42", "t"));
    assert_eq!(odd.len(), 55);
    assert_ne!(odd[3..35], traceparent("run-43", "t")[3..35]);
}

#[tokio::test]
async fn connections_are_reused() {
    let a = agent(|_| answer("200 OK", json!({"outputs": {}}))).await;
    let inv = invoker();
    let agent = registered(&a.endpoint(), None);
    let calls = 4;
    for _ in 0..calls {
        inv.invoke(&agent, call()).await.unwrap();
        // A connection goes back to the pool from a background task of the
        // client: let it run before the next call.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(a.seen().len(), calls);
    // Normally 1; the pool may open a spare connection if a call starts
    // before the previous connection is back, which is still reuse.
    let opened = a.connections.load(Ordering::SeqCst);
    assert!(opened < calls, "{opened} connections for {calls} calls");
}

// ---------------------------------------------------------------------------
// Failures the agent reports
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_4xx_error_body_is_passed_on_not_retryable() {
    let a = agent(|_| {
        answer(
            "422 Unprocessable Entity",
            json!({"error": {"code": "BAD_DOC", "message": "doc d-1 is unsigned", "details": {"doc": "d-1"}}}),
        )
    })
    .await;
    let e = assert_failure(invoke(&a).await, "BAD_DOC", false);
    assert_eq!(e.message, "doc d-1 is unsigned");
    assert_eq!(e.details, Some(json!({"doc": "d-1"})));
}

#[tokio::test]
async fn an_explicit_retryable_decides_for_every_status() {
    let a = agent(|_| {
        answer(
            "409 Conflict",
            json!({"error": {"code": "LOCKED", "message": "try again", "retryable": true}}),
        )
    })
    .await;
    let e = assert_failure(invoke(&a).await, "LOCKED", true);
    assert_eq!(e.message, "try again");

    let a = agent(|_| {
        answer(
            "500 Internal Server Error",
            json!({"error": {"code": "BROKEN", "message": "for good", "retryable": false}}),
        )
    })
    .await;
    // API.md: the agent's own `retryable` wins over the status.
    assert_failure(invoke(&a).await, "BROKEN", false);

    for status in ["429 Too Many Requests", "503 Service Unavailable"] {
        let a = agent(move |_| {
            answer(
                status,
                json!({"error": {"code": "QUOTA", "message": "gone", "retryable": false}}),
            )
        })
        .await;
        assert_failure(invoke(&a).await, "QUOTA", false);
    }
}

#[tokio::test]
async fn status_429_and_5xx_are_retryable() {
    for status in [
        "429 Too Many Requests",
        "500 Internal Server Error",
        "503 Service Unavailable",
    ] {
        let a = agent(move |_| {
            answer(
                status,
                json!({"error": {"code": "BUSY", "message": "later"}}),
            )
        })
        .await;
        assert_failure(invoke(&a).await, "BUSY", true);
    }
}

#[tokio::test]
async fn a_non_conforming_error_body_is_agent_error() {
    let cases: [(&'static str, &'static str, bool); 5] = [
        ("502 Bad Gateway", "<html>upstream down</html>", true),
        ("429 Too Many Requests", "slow down", true),
        ("404 Not Found", "no such route", false),
        ("400 Bad Request", r#"{"error": "just a string"}"#, false),
        (
            "403 Forbidden",
            r#"{"error": {"code": 7, "message": "x"}}"#,
            false,
        ),
    ];
    for (status, body, retryable) in cases {
        let a = agent(move |_| Reply::Answer(status, body.to_owned())).await;
        let e = assert_failure(invoke(&a).await, "AGENT_ERROR", retryable);
        let code = &status[..3];
        assert!(e.message.contains(code), "{e:?}");
        assert!(e.message.contains(&body[..5]), "snippet of the body: {e:?}");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let a = agent(|_| {
        Reply::Raw(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n\
             Content-Length: 0\r\n\r\n"
                .to_owned(),
        )
    })
    .await;
    let e = assert_failure(invoke(&a).await, "AGENT_ERROR", false);
    assert!(e.message.contains("307"), "{e:?}");
    assert_eq!(a.seen().len(), 1);
}

// ---------------------------------------------------------------------------
// Unusable answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_non_json_2xx_is_an_invalid_response_retryable() {
    let a = agent(|_| Reply::Answer("200 OK", "<html>hello</html>".to_owned())).await;
    let e = assert_failure(invoke(&a).await, "INVALID_AGENT_RESPONSE", true);
    assert!(e.message.contains("<html>hello"), "{e:?}");
}

#[tokio::test]
async fn a_2xx_without_object_outputs_is_an_invalid_response() {
    for body in [
        json!({"result": {"x": 1}}),
        json!({"outputs": [1, 2]}),
        json!({"outputs": null}),
        json!([{"outputs": {}}]),
        json!("outputs"),
    ] {
        let a = agent(move |_| answer("200 OK", body.clone())).await;
        assert_failure(invoke(&a).await, "INVALID_AGENT_RESPONSE", true);
    }
    let a = agent(|_| Reply::Answer("204 No Content", String::new())).await;
    assert_failure(invoke(&a).await, "INVALID_AGENT_RESPONSE", true);
}

#[tokio::test]
async fn an_oversized_answer_is_output_too_large() {
    let opts = PushOptions {
        max_response_bytes: 1_000,
        ..PushOptions::default()
    };
    let inv = HttpPushInvoker::new(AllowList::default_for_listen(true), opts);
    // Declared too long.
    let big = json!({"outputs": {"blob": "x".repeat(2_000)}});
    let a = agent(move |_| answer("200 OK", big.clone())).await;
    let r = inv.invoke(&registered(&a.endpoint(), None), call()).await;
    assert_failure(r, "OUTPUT_TOO_LARGE", false);
    // Not declared (chunked): found too long while reading.
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        "200\r\n".to_owned()
            + &"x".repeat(0x200)
            + "\r\n"
            + "200\r\n"
            + &"x".repeat(0x200)
            + "\r\n0\r\n\r\n"
    );
    let a = agent(move |_| Reply::Raw(chunked.clone())).await;
    let r = inv.invoke(&registered(&a.endpoint(), None), call()).await;
    assert_failure(r, "OUTPUT_TOO_LARGE", false);
    // Just under the limit is fine.
    let fits = json!({"outputs": {"blob": "x".repeat(900)}});
    let a = agent(move |_| answer("200 OK", fits.clone())).await;
    inv.invoke(&registered(&a.endpoint(), None), call())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------
// Transport failures
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_connection_is_unreachable_retryable() {
    let endpoint = format!("http://127.0.0.1:{}", dead_port());
    let r = invoker().invoke(&registered(&endpoint, None), call()).await;
    assert_failure(r, "AGENT_UNREACHABLE", true);
}

#[tokio::test]
async fn no_answer_before_the_deadline_is_a_step_timeout() {
    let a = agent(|_| Reply::Hang).await;
    let r = invoker()
        .invoke(&registered(&a.endpoint(), None), call_attempt(1, 200))
        .await;
    let e = assert_failure(r, "STEP_TIMEOUT", true);
    assert!(e.message.contains("200 ms"), "{e:?}");
}

#[tokio::test]
async fn a_body_that_never_ends_is_a_step_timeout() {
    // Headers promise 100 bytes, 10 arrive, then silence.
    let a = agent(|_| {
        Reply::Stall("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"outputs\"".to_owned())
    })
    .await;
    let r = invoker()
        .invoke(&registered(&a.endpoint(), None), call_attempt(1, 200))
        .await;
    assert_failure(r, "STEP_TIMEOUT", true);
}

#[tokio::test]
async fn a_reset_before_the_answer_is_unreachable_retryable() {
    let a = agent(|_| Reply::Reset(String::new())).await;
    assert_failure(invoke(&a).await, "AGENT_UNREACHABLE", true);
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_answer_is_unreachable_retryable() {
    let a = agent(|_| {
        Reply::Reset(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"outputs\": {\"a\": ".to_owned(),
        )
    })
    .await;
    assert_failure(invoke(&a).await, "AGENT_UNREACHABLE", true);
    // A clean close after part of the body is just as broken.
    let a = agent(|_| {
        Reply::Raw("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"outputs\": {".to_owned())
    })
    .await;
    assert_failure(invoke(&a).await, "AGENT_UNREACHABLE", true);
}

// ---------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_allow_list_refuses_the_endpoint() {
    let a = agent(|_| answer("200 OK", json!({"outputs": {}}))).await;
    let only_ten = AllowList::new(&["10.0.0.0/8".into()]).unwrap();
    let inv = HttpPushInvoker::new(only_ten, PushOptions::default());
    // An IP literal, and a name resolving to loopback.
    for endpoint in [a.endpoint(), format!("http://localhost:{}", a.port)] {
        let r = inv.invoke(&registered(&endpoint, None), call()).await;
        let e = assert_failure(r, "OUTBOUND_REFUSED", false);
        assert!(e.message.contains("not in outboundAllowList"), "{e:?}");
    }
    assert!(a.seen().is_empty(), "nothing reached the agent");
    // Metadata addresses are refused even by the permissive default.
    let r = invoker()
        .invoke(&registered("http://169.254.169.254/", None), call())
        .await;
    assert_failure(r, "OUTBOUND_REFUSED", false);
}

#[tokio::test]
async fn a_missing_or_invalid_endpoint_is_not_retryable() {
    let mut no_endpoint = registered("http://127.0.0.1:1", None);
    no_endpoint.endpoint = None;
    let r = invoker().invoke(&no_endpoint, call()).await;
    assert_failure(r, "INVALID_AGENT_ENDPOINT", false);
    for endpoint in [
        "",
        "not a url",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
    ] {
        let r = invoker().invoke(&registered(endpoint, None), call()).await;
        assert_failure(r, "INVALID_AGENT_ENDPOINT", false);
    }
}

// ---------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cancel_posts_the_task_id_to_cancel() {
    let a = agent(|_| answer("202 Accepted", json!({}))).await;
    let endpoint = format!("{}/", a.endpoint());
    let c = call();
    invoker()
        .cancel(&registered(&endpoint, Some("s3cret")), &c)
        .await;
    let seen = a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/cancel")
    );
    assert_eq!(seen[0].json(), json!({"taskId": c.task_id}));
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some("Bearer s3cret")
    );
}

#[tokio::test]
async fn cancel_ignores_failures_and_gives_up_quickly() {
    let opts = PushOptions {
        cancel_timeout_ms: 100,
        ..PushOptions::default()
    };
    let inv = HttpPushInvoker::new(AllowList::default_for_listen(true), opts);
    // A hung agent (returns after the cancel timeout, not the agent's 60 s),
    // a dead port, an error answer, a refused and a missing endpoint.
    let hung = agent(|_| Reply::Hang).await;
    inv.cancel(&registered(&hung.endpoint(), None), &call())
        .await;
    let dead = format!("http://127.0.0.1:{}", dead_port());
    inv.cancel(&registered(&dead, None), &call()).await;
    let failing = agent(|_| answer("500 Internal Server Error", json!({}))).await;
    // With the default cancel timeout: this one must arrive.
    invoker()
        .cancel(&registered(&failing.endpoint(), None), &call())
        .await;
    assert_eq!(failing.seen().len(), 1);
    inv.cancel(&registered("http://169.254.169.254/", None), &call())
        .await;
    let mut none = registered("http://127.0.0.1:1", None);
    none.endpoint = None;
    inv.cancel(&none, &call()).await;
}

// ---------------------------------------------------------------------------
// Health probe
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_health_probe_is_up_on_2xx() {
    let a = agent(|r| {
        if r.path == "/health" {
            answer("200 OK", json!({"status": "ok"}))
        } else {
            answer("404 Not Found", json!({}))
        }
    })
    .await;
    let probe = invoker().health_probe();
    assert!(
        probe
            .probe(&registered(&a.endpoint(), Some("s3cret")), 1_000)
            .await
    );
    let seen = a.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/health")
    );
    assert_eq!(
        seen[0].header("authorization").as_deref(),
        Some("Bearer s3cret")
    );
    // A probe of its own works the same.
    let own = HttpHealthProbe::new(AllowList::default_for_listen(true));
    assert!(
        own.probe(&registered(&format!("{}/", a.endpoint()), None), 1_000)
            .await
    );
    assert_eq!(a.seen()[1].path, "/health");
}

#[tokio::test]
async fn the_health_probe_is_down_otherwise() {
    let probe = HttpHealthProbe::new(AllowList::default_for_listen(true));
    let failing = agent(|_| answer("503 Service Unavailable", json!({}))).await;
    assert!(
        !probe
            .probe(&registered(&failing.endpoint(), None), 1_000)
            .await
    );
    let dead = format!("http://127.0.0.1:{}", dead_port());
    assert!(!probe.probe(&registered(&dead, None), 1_000).await);
    let hung = agent(|_| Reply::Hang).await;
    assert!(!probe.probe(&registered(&hung.endpoint(), None), 150).await);
    let reset = agent(|_| Reply::Reset(String::new())).await;
    assert!(
        !probe
            .probe(&registered(&reset.endpoint(), None), 1_000)
            .await
    );
    let mut none = registered("http://127.0.0.1:1", None);
    none.endpoint = None;
    assert!(!probe.probe(&none, 1_000).await);

    // Refused by the allow-list: never contacted.
    let up = agent(|_| answer("200 OK", json!({}))).await;
    let only_ten = AllowList::new(&["10.0.0.0/8".into()]).unwrap();
    let refused = HttpHealthProbe::new(only_ten);
    assert!(
        !refused
            .probe(&registered(&up.endpoint(), None), 1_000)
            .await
    );
    assert!(up.seen().is_empty());
}
