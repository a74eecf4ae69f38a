//! The agent SDK (`maestro_client::agent`) against the real server, in one
//! process: push agents that register themselves, errors and retries, input
//! schemas, cancel, graceful shutdown, idempotency, poll agents, and the demo
//! Sentinel and Bridge running the auth-flow.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use maestro_client::agent::{
    Agent, AgentError, CapabilitySpec, PollConfig, PushConfig, PushServer, TaskContext,
};
use maestro_client::demo::bridge::Bridge;
use maestro_client::demo::sentinel::Sentinel;
use reqwest::StatusCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{Server, now_ms};

#[derive(Deserialize, JsonSchema)]
struct SignIn {
    data: String,
}

#[derive(Serialize, JsonSchema)]
struct SignOut {
    signature: String,
}

#[derive(Deserialize, JsonSchema)]
struct Empty {}

#[derive(Serialize, JsonSchema)]
struct Done {
    ok: bool,
}

fn push_config(s: &Server, token: &str) -> PushConfig {
    PushConfig {
        maestro_url: s.base.clone(),
        token: token.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_every: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        ..PushConfig::default()
    }
}

fn poll_config(s: &Server, token: &str, pollers: usize) -> PollConfig {
    PollConfig {
        maestro_url: s.base.clone(),
        token: token.to_owned(),
        pollers,
        wait_ms: 500,
        heartbeat_every: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
    }
}

async fn define(s: &Server, wf: Value) {
    let (st, v) = s.post("/maestro/workflows", wf).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// Starts an execution of `wf` and answers its id.
async fn start(s: &Server, wf: &str, inputs: Value) -> String {
    let (st, v) = s
        .post(
            &format!("/maestro/workflows/{wf}/execute"),
            json!({ "inputs": inputs }),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    v["execution"]["id"].as_str().unwrap().to_owned()
}

/// Runs `wf` to its end and answers the execution.
async fn run(s: &Server, wf: &str, inputs: Value) -> Value {
    let id = start(s, wf, inputs).await;
    s.wait_terminal(&id).await
}

fn one_step(id: &str, agent: &str, capability: &str, inputs: Value, attempts: u32) -> Value {
    json!({"id": id, "name": id, "steps": [{"id": "only", "agentId": agent,
        "capability": capability, "inputs": inputs,
        "retryPolicy": {"maxAttempts": attempts, "delayMs": 10}}]})
}

fn attempts(e: &Value, step: &str) -> usize {
    e["stepExecutions"][step]["attempts"]
        .as_array()
        .map_or(0, Vec::len)
}

fn step_error(e: &Value, step: &str) -> String {
    e["stepExecutions"][step]["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// `POST <agent>/invoke` as Maestro would.
async fn invoke(
    url: &str,
    secret: Option<&str>,
    key: &str,
    capability: &str,
    inputs: Value,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/invoke"))
        .header("Idempotency-Key", key)
        .json(
            &json!({"taskId": key, "executionId": "exec_t", "workflowId": "w",
            "stepId": "s", "attempt": 1, "capability": capability, "inputs": inputs,
            "correlationId": "c", "deadline": now_ms() + 10_000, "timeoutMs": 10_000}),
        );
    if let Some(secret) = secret {
        req = req.bearer_auth(secret);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_agent_registers_itself_and_runs_a_workflow() {
    let s = Server::start().await;
    // An agent token made before the agent exists: it registers itself.
    let token = s.token("agent", Some("signer-1")).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<TaskContext>::new()));
    let seen2 = seen.clone();
    let agent = Agent::builder("signer-1", "sentinel")
        .name("Signer")
        .description("signs")
        .public_key("pk-1")
        .capability_with(
            CapabilitySpec::new("sign").tag("crypto"),
            move |i: SignIn, ctx: TaskContext| {
                let seen = seen2.clone();
                async move {
                    seen.lock().unwrap().push(ctx);
                    Ok(SignOut {
                        signature: format!("sig({})", i.data),
                    })
                }
            },
        )
        .build();
    let cancel = CancellationToken::new();
    let cfg = PushConfig {
        inbound_secret: Some("in-secret".into()),
        ..push_config(&s, &token)
    };
    let server = agent.start_push(cfg, cancel.clone()).await.unwrap();

    let (st, v) = s.get("/maestro/agents/signer-1").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let a = &v["agent"];
    assert_eq!(a["endpoint"], server.url());
    assert_eq!(a["transport"], "http");
    assert_eq!(a["publicKey"], "pk-1");
    assert_eq!(a["status"], "online");
    assert!(a.get("inboundSecret").is_none());
    let cap = &a["capabilities"][0];
    assert_eq!(cap["id"], "sign");
    assert_eq!(cap["tags"], json!(["crypto"]));
    assert_eq!(
        cap["inputs"]["properties"]["data"]["type"], "string",
        "{cap}"
    );
    assert_eq!(cap["inputs"]["required"], json!(["data"]));
    assert_eq!(cap["outputs"]["properties"]["signature"]["type"], "string");

    define(
        &s,
        json!({"id": "sign-twice", "name": "sign twice", "steps": [
            {"id": "first", "agentId": "signer-1", "capability": "sign", "inputs": {"data": "${text}"}},
            {"id": "second", "capability": "sign", "dependencies": ["first"],
             "inputs": {"data": "${steps.first.outputs.signature}"}}]}),
    )
    .await;
    let (st, v) = s
        .post(
            "/maestro/workflows/sign-twice/execute?wait=10000",
            json!({"inputs": {"text": "hi"}, "correlationId": "corr-1"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let e = &v["execution"];
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        e["stepExecutions"]["second"]["outputs"]["signature"],
        "sig(sig(hi))"
    );

    // What the handler learnt about its calls.
    let exec = e["id"].as_str().unwrap();
    let ctxs = seen.lock().unwrap().clone();
    assert_eq!(ctxs.len(), 2);
    let c = &ctxs[0];
    assert_eq!(c.agent_id, "signer-1");
    assert_eq!(c.execution_id, exec);
    assert_eq!(c.workflow_id, "sign-twice");
    assert_eq!(c.step_id, "first");
    assert_eq!(c.attempt, 1);
    assert_eq!(c.correlation_id, "corr-1");
    assert_eq!(c.idempotency_key, format!("{exec}:first:1"));
    assert!(c.deadline > now_ms() - 60_000);
    assert!(c.traceparent.as_deref().unwrap().starts_with("00-"));
    assert!(!c.is_compensation());

    // The inbound secret is required; /health is open.
    let (st, v) = invoke(server.url(), None, "k1", "sign", json!({"data": "x"})).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED"))
    );
    let (st, _) = invoke(
        server.url(),
        Some("wrong"),
        "k1",
        "sign",
        json!({"data": "x"}),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, v) = invoke(
        server.url(),
        Some("in-secret"),
        "k1",
        "sign",
        json!({"data": "x"}),
    )
    .await;
    assert_eq!(
        (st, &v["outputs"]["signature"]),
        (StatusCode::OK, &json!("sig(x)"))
    );
    let health: Value = reqwest::get(format!("{}/health", server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["agentId"], "signer-1");

    // Heartbeats move lastHeartbeat on.
    let (_, v) = s.get("/maestro/agents/signer-1").await;
    let before = v["agent"]["lastHeartbeat"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = s.get("/maestro/agents/signer-1").await;
    assert!(
        v["agent"]["lastHeartbeat"].as_u64().unwrap() > before,
        "{v}"
    );

    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_fatal_retryable_and_panics() {
    let s = Server::start().await;
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let fc = flaky_calls.clone();
    let agent = Agent::builder("errs-1", "test")
        .capability::<Empty, Done, _, _>("fatal", |_: Empty, _| async {
            Err(AgentError::fatal("BAD_THING", "no way"))
        })
        .capability::<Empty, Done, _, _>("retryable", |_: Empty, _| async {
            Err(AgentError::retryable("TRY_AGAIN", "later").with_details(json!({"why": "busy"})))
        })
        .capability::<Empty, Done, _, _>("flaky", move |_: Empty, ctx: TaskContext| {
            fc.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt < 3 {
                    Err(AgentError::retryable("TRY_AGAIN", "not yet"))
                } else {
                    Ok(Done { ok: true })
                }
            }
        })
        .capability::<Empty, Done, _, _>("panics", |_: Empty, _| async {
            if now_ms() > 0 {
                panic!("handler bug");
            }
            Ok(Done { ok: false })
        })
        .build();
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    for cap in ["fatal", "retryable", "flaky", "panics"] {
        define(&s, one_step(cap, "errs-1", cap, json!({}), 3)).await;
    }

    let e = run(&s, "fatal", json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(step_error(&e, "only"), "BAD_THING");
    assert_eq!(e["stepExecutions"]["only"]["error"]["message"], "no way");
    assert_eq!(attempts(&e, "only"), 1, "not retried: {e}");

    let e = run(&s, "retryable", json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(step_error(&e, "only"), "TRY_AGAIN");
    assert_eq!(attempts(&e, "only"), 3, "{e}");

    let e = run(&s, "flaky", json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["only"]["retryCount"], 2);
    assert_eq!(flaky_calls.load(Ordering::SeqCst), 3);

    let e = run(&s, "panics", json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(step_error(&e, "only"), "AGENT_PANIC");
    assert_eq!(attempts(&e, "only"), 3, "a panic is retryable: {e}");

    // The agent is still serving after its handler panicked.
    let (st, _) = invoke(server.url(), None, "k", "flaky", json!({})).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_capabilities_and_undecodable_inputs() {
    let s = Server::start().await;
    let agent = Agent::builder("caps-1", "test")
        .capability::<SignIn, SignOut, _, _>("sign", |i: SignIn, _| async move {
            Ok(SignOut { signature: i.data })
        })
        .build();
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();

    // Straight to the agent.
    let (st, v) = invoke(server.url(), None, "k1", "nope", json!({})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "UNKNOWN_CAPABILITY");
    assert_eq!(v["error"]["retryable"], false);
    let (st, v) = invoke(server.url(), None, "k2", "sign", json!({"data": 7})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "INVALID_INPUT");
    assert_eq!(v["error"]["retryable"], false);
    let resp = reqwest::Client::new()
        .post(format!("{}/invoke", server.url()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Through Maestro: an operator declares a capability the agent does not
    // implement; the call fails once, not retried.
    let (_, v) = s.get("/maestro/agents/caps-1").await;
    let mut reg = v["agent"].clone();
    reg["capabilities"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "ghost"}));
    let (st, v) = s.put("/maestro/agents/caps-1", reg).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    define(&s, one_step("ghost", "caps-1", "ghost", json!({}), 3)).await;
    let e = run(&s, "ghost", json!({})).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(step_error(&e, "only"), "UNKNOWN_CAPABILITY");
    assert_eq!(attempts(&e, "only"), 1);
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_off_the_declared_schema_are_refused_before_the_call() {
    let s = Server::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let agent = Agent::builder("schema-1", "test")
        .capability::<SignIn, SignOut, _, _>("sign", move |i: SignIn, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async move { Ok(SignOut { signature: i.data }) }
        })
        .build();
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    define(
        &s,
        one_step("wrong-type", "schema-1", "sign", json!({"data": 42}), 3),
    )
    .await;
    define(
        &s,
        one_step("missing", "schema-1", "sign", json!({"other": "x"}), 3),
    )
    .await;
    define(
        &s,
        one_step(
            "right",
            "schema-1",
            "sign",
            json!({"data": "ok", "extra": 1}),
            3,
        ),
    )
    .await;
    for wf in ["wrong-type", "missing"] {
        let e = run(&s, wf, json!({})).await;
        assert_eq!(e["status"], "failed", "{e}");
        assert_eq!(step_error(&e, "only"), "INPUT_SCHEMA_MISMATCH", "{e}");
        assert_eq!(attempts(&e, "only"), 1, "not retried: {e}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    // Undeclared inputs pass through (and serde ignores them).
    let e = run(&s, "right", json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

/// A capability `wait` that reports its start, then waits to be cancelled
/// (up to 10 s) and reports whether it was.
fn waiting_agent(
    id: &str,
    started: mpsc::UnboundedSender<String>,
    ended: mpsc::UnboundedSender<bool>,
) -> Agent {
    Agent::builder(id, "test")
        .capability::<Empty, Done, _, _>("wait", move |_: Empty, ctx: TaskContext| {
            let (started, ended) = (started.clone(), ended.clone());
            async move {
                let _ = started.send(ctx.task_id.clone());
                let cancelled = tokio::select! {
                    _ = ctx.cancelled() => true,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => false,
                };
                let _ = ended.send(cancelled);
                if cancelled {
                    Err(AgentError::fatal("CANCELLED", "cancelled by Maestro"))
                } else {
                    Ok(Done { ok: true })
                }
            }
        })
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_execution_reaches_the_push_handler() {
    let s = Server::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let agent = waiting_agent("waiter-1", started_tx, ended_tx);
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    define(&s, one_step("wait", "waiter-1", "wait", json!({}), 1)).await;
    let exec = start(&s, "wait", json!({})).await;
    let task = tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task, format!("{exec}:only:1"));
    let (st, v) = s
        .post(&format!("/maestro/executions/{exec}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let cancelled = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("the handler ends soon after the cancel")
        .unwrap();
    assert!(cancelled, "the handler's context was cancelled");
    assert_eq!(s.wait_terminal(&exec).await["status"], "cancelled");
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_calls_in_flight() {
    let s = Server::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let agent = Agent::builder("slow-1", "test")
        .capability::<Empty, Done, _, _>("slow", move |_: Empty, ctx: TaskContext| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok(Done {
                    ok: !ctx.is_cancelled(),
                })
            }
        })
        .build();
    let cancel = CancellationToken::new();
    let server: PushServer = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    let url = server.url().to_owned();
    define(&s, one_step("slow", "slow-1", "slow", json!({}), 1)).await;
    let exec = start(&s, "slow", json!({})).await;
    tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap()
        .unwrap();
    let asked = Instant::now();
    cancel.cancel();
    server.wait().await.unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "waited for the call: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The call in flight was answered; nothing is listening any more.
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["only"]["outputs"]["ok"], true);
    assert!(reqwest::get(format!("{url}/health")).await.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_agent_registers_again_on_its_next_heartbeat() {
    let s = Server::start().await;
    let agent = Agent::builder("phoenix-1", "test")
        .capability::<Empty, Done, _, _>("rise", |_: Empty, _| async { Ok(Done { ok: true }) })
        .build();
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    let (st, v) = s.delete("/maestro/agents/phoenix-1").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (st, v) = s.get("/maestro/agents/phoenix-1").await;
        if st == StatusCode::OK {
            assert_eq!(v["agent"]["endpoint"], server.url());
            back = true;
            break;
        }
    }
    assert!(back, "the heartbeat's 404 made the agent register again");
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_runs_the_handler_once() {
    let s = Server::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let agent = Agent::builder("once-1", "test")
        .capability::<SignIn, SignOut, _, _>("sign", move |i: SignIn, _| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(SignOut {
                    signature: format!("{}#{n}", i.data),
                })
            }
        })
        .build();
    let cancel = CancellationToken::new();
    let server = agent
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    let url = server.url().to_owned();
    let (a, b) = tokio::join!(
        invoke(&url, None, "e:s:1", "sign", json!({"data": "x"})),
        invoke(&url, None, "e:s:1", "sign", json!({"data": "x"})),
    );
    assert_eq!(a.0, StatusCode::OK);
    assert_eq!(a, b, "the retry waited for the first call's result");
    let c = invoke(&url, None, "e:s:1", "sign", json!({"data": "x"})).await;
    assert_eq!(c, a, "answered from the cache");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (st, v) = invoke(&url, None, "e:s:1", "sign", json!({"data": "y"})).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("IDEMPOTENCY_KEY_REUSED"))
    );
    let d = invoke(&url, None, "e:s:2", "sign", json!({"data": "x"})).await;
    assert_eq!(d.1["outputs"]["signature"], "x#1");
    cancel.cancel();
    server.wait().await.unwrap();
    s.stop().await;
}

// ---------------------------------------------------------------------------
// Poll agents
// ---------------------------------------------------------------------------

#[derive(Deserialize, JsonSchema)]
struct WorkIn {
    n: u64,
}

#[derive(Serialize, JsonSchema)]
struct WorkOut {
    n: u64,
    double: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_agent_with_four_pollers_runs_a_five_step_workflow() {
    let s = Server::start().await;
    let token = s.token("agent", Some("puller-1")).await;
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, m2) = (now.clone(), max.clone());
    let agent = Agent::builder("puller-1", "worker")
        .capability::<WorkIn, WorkOut, _, _>("work", move |i: WorkIn, _| {
            let (now, max) = (n2.clone(), m2.clone());
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(WorkOut {
                    n: i.n,
                    double: i.n * 2,
                })
            }
        })
        .build();
    let cancel = CancellationToken::new();
    let runner = agent
        .start_poll(poll_config(&s, &token, 4), cancel.clone())
        .await
        .unwrap();
    let (_, v) = s.get("/maestro/agents/puller-1").await;
    assert_eq!(v["agent"]["transport"], "poll", "{v}");
    assert!(v["agent"].get("endpoint").is_none());

    // a -> (b, c, d) -> e
    let step = |id: &str, n: u64, deps: &[&str]| {
        json!({"id": id, "agentId": "puller-1", "capability": "work", "inputs": {"n": n},
            "dependencies": deps})
    };
    define(
        &s,
        json!({"id": "fan", "name": "fan", "steps": [
            step("a", 1, &[]), step("b", 2, &["a"]), step("c", 3, &["a"]),
            step("d", 4, &["a"]), step("e", 5, &["b", "c", "d"])]}),
    )
    .await;
    let e = run(&s, "fan", json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    for (id, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
        assert_eq!(e["stepExecutions"][id]["outputs"]["double"], n * 2, "{id}");
        assert_eq!(attempts(&e, id), 1);
    }
    assert!(
        max.load(Ordering::SeqCst) >= 2,
        "b, c and d ran side by side on several pollers"
    );

    // Handler errors are reported with /fail.
    cancel.cancel();
    runner.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_handler_slower_than_its_lease_is_kept_alive_and_errors_are_reported() {
    let s = Server::start().await;
    let agent = Agent::builder("slowpoll-1", "worker")
        .capability::<Empty, Done, _, _>("slow", |_: Empty, ctx: TaskContext| async move {
            // 1.5 s of work under a 600 ms lease.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(Done {
                ok: !ctx.is_cancelled(),
            })
        })
        .capability::<Empty, Done, _, _>("fatal", |_: Empty, _| async {
            Err(AgentError::fatal("BAD_THING", "no way"))
        })
        .capability::<Empty, Done, _, _>("flaky", |_: Empty, ctx: TaskContext| async move {
            if ctx.attempt < 2 {
                Err(AgentError::retryable("TRY_AGAIN", "not yet"))
            } else {
                Ok(Done { ok: true })
            }
        })
        .build();
    let cancel = CancellationToken::new();
    let runner = agent
        .start_poll(poll_config(&s, &s.admin, 2), cancel.clone())
        .await
        .unwrap();
    define(
        &s,
        json!({"id": "slow", "name": "slow", "steps": [{"id": "only", "agentId": "slowpoll-1",
            "capability": "slow", "timeout": 600, "retryPolicy": {"maxAttempts": 1}}]}),
    )
    .await;
    let e = run(&s, "slow", json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["only"]["outputs"]["ok"], true);
    assert_eq!(attempts(&e, "only"), 1);

    define(&s, one_step("fatal", "slowpoll-1", "fatal", json!({}), 3)).await;
    let e = run(&s, "fatal", json!({})).await;
    assert_eq!(step_error(&e, "only"), "BAD_THING", "{e}");
    assert_eq!(attempts(&e, "only"), 1);
    define(&s, one_step("flaky", "slowpoll-1", "flaky", json!({}), 3)).await;
    let e = run(&s, "flaky", json!({})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(attempts(&e, "only"), 2);
    cancel.cancel();
    runner.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_execution_reaches_the_poll_handler_and_shutdown_is_graceful() {
    let s = Server::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let agent = waiting_agent("pwaiter-1", started_tx, ended_tx);
    let cancel = CancellationToken::new();
    let runner = agent
        .start_poll(poll_config(&s, &s.admin, 1), cancel.clone())
        .await
        .unwrap();
    // A 600 ms lease: heartbeats every ~300 ms carry the cancel request.
    define(
        &s,
        json!({"id": "wait", "name": "wait", "steps": [{"id": "only", "agentId": "pwaiter-1",
            "capability": "wait", "timeout": 600, "retryPolicy": {"maxAttempts": 1}}]}),
    )
    .await;
    let exec = start(&s, "wait", json!({})).await;
    tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap()
        .unwrap();
    let (st, v) = s
        .post(&format!("/maestro/executions/{exec}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let cancelled = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("the handler ends soon after the cancel")
        .unwrap();
    assert!(cancelled);
    assert_eq!(s.wait_terminal(&exec).await["status"], "cancelled");

    // Shutdown while idle (a long poll waiting) is prompt.
    let asked = Instant::now();
    cancel.cancel();
    runner.wait().await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_agent_shutting_down_finishes_and_reports_its_running_task() {
    let s = Server::start().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let agent = Agent::builder("pslow-1", "worker")
        .capability::<Empty, Done, _, _>("slow", move |_: Empty, ctx: TaskContext| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok(Done {
                    ok: !ctx.is_cancelled(),
                })
            }
        })
        .build();
    let cancel = CancellationToken::new();
    let runner = agent
        .start_poll(poll_config(&s, &s.admin, 2), cancel.clone())
        .await
        .unwrap();
    define(&s, one_step("pslow", "pslow-1", "slow", json!({}), 1)).await;
    let exec = start(&s, "pslow", json!({})).await;
    tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap()
        .unwrap();
    let asked = Instant::now();
    cancel.cancel();
    runner.wait().await.unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "waited for the task: {took:?}"
    );
    // Reported before the runner ended (else the lease would run out and
    // the only attempt fail with LEASE_EXPIRED).
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["only"]["outputs"]["ok"], true);
    s.stop().await;
}

// ---------------------------------------------------------------------------
// The demo agents
// ---------------------------------------------------------------------------

fn auth_flow_json() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/auth-flow.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    sub: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// Runs examples/auth-flow.json over the demo agents and checks the JWT and
/// the Sentinel's signature with independent code.
async fn auth_flow_checks(s: &Server, sentinel: &Sentinel, bridge: &Bridge, secret: &[u8]) {
    define(s, auth_flow_json()).await;
    let (_, v) = s.get("/maestro/agents/sentinel-1").await;
    let public_key = v["agent"]["publicKey"].as_str().unwrap().to_owned();
    assert_eq!(public_key, sentinel.public_key());

    let e = run(s, "auth-flow", json!({"userId": "alice"})).await;
    assert_eq!(e["status"], "completed", "{e}");
    let verify = &e["stepExecutions"]["verify-user"]["outputs"];
    assert_eq!(verify["verified"], true);
    assert_eq!(verify["userId"], "alice");
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = b64.decode(verify["signature"].as_str().unwrap()).unwrap();
    let key: [u8; 32] = b64.decode(&public_key).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    use ed25519_dalek::Verifier;
    assert!(
        key.verify(b"alice", &sig).is_ok(),
        "the Sentinel signed the userId"
    );
    assert!(key.verify(b"bob", &sig).is_err());

    let token = e["result"]["token"]
        .as_str()
        .expect("result.token")
        .to_owned();
    assert_eq!(
        e["stepExecutions"]["issue-token"]["outputs"]["token"],
        token.as_str()
    );
    let data = jsonwebtoken::decode::<JwtClaims>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("a JWT signed with the bridge's secret");
    let exec = e["id"].as_str().unwrap();
    assert_eq!(data.claims.sub, "alice");
    assert_eq!(data.claims.jti, format!("{exec}:issue-token:1"));
    assert!(data.claims.exp > data.claims.iat);
    assert_eq!(
        e["stepExecutions"]["issue-token"]["outputs"]["expiresAt"],
        data.claims.exp * 1000
    );
    assert!(
        jsonwebtoken::decode::<JwtClaims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"another secret"),
            &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
        )
        .is_err()
    );
    assert_eq!(bridge.verify(&token).unwrap().sub, "alice");

    // The token is sensitive: a reader sees it masked.
    let reader = s.token("reader", None).await;
    let (_, v) = s
        .call(
            reqwest::Method::GET,
            &format!("/maestro/executions/{exec}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(
        v["execution"]["stepExecutions"]["issue-token"]["outputs"]["token"],
        "***"
    );

    // An unknown user: no token.
    let e = run(s, "auth-flow", json!({"userId": "mallory"})).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        e["stepExecutions"]["verify-user"]["outputs"]["verified"],
        false
    );
    assert_eq!(e["stepExecutions"]["issue-token"]["status"], "skipped");
    assert!(e["result"].get("token").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agents_run_the_auth_flow_over_push_and_compensate() {
    let s = Server::start().await;
    let secret = b"bridge-test-secret".to_vec();
    let sentinel = Arc::new(Sentinel::generate(["alice", "bob"]));
    let bridge = Arc::new(Bridge::new(secret.clone()));
    let cancel = CancellationToken::new();
    let sentinel_token = s.token("agent", Some("sentinel-1")).await;
    let a = sentinel
        .clone()
        .agent("sentinel-1")
        .start_push(
            PushConfig {
                inbound_secret: Some("sentinel-inbound".into()),
                ..push_config(&s, &sentinel_token)
            },
            cancel.clone(),
        )
        .await
        .unwrap();
    let b = bridge
        .clone()
        .agent("bridge-1")
        .start_push(push_config(&s, &s.admin), cancel.clone())
        .await
        .unwrap();
    auth_flow_checks(&s, &sentinel, &bridge, &secret).await;

    // Rollback: issue-jwt is compensated by revoke-jwt, which revokes it.
    define(
        &s,
        json!({"id": "issue-then-fail", "name": "x", "onError": "rollback", "steps": [
            {"id": "issue", "agentId": "bridge-1", "capability": "issue-jwt",
             "inputs": {"userId": "bob"}},
            {"id": "boom", "agentId": "sentinel-1", "capability": "verify-identity",
             "inputs": {"userId": " "}, "dependencies": ["issue"]}]}),
    )
    .await;
    let e = run(&s, "issue-then-fail", json!({})).await;
    assert_eq!(e["status"], "rolled_back", "{e}");
    assert_eq!(step_error(&e, "boom"), "INVALID_INPUT");
    let log = e["rollbackLog"].as_array().unwrap();
    let entry = log.iter().find(|r| r["stepId"] == "issue").unwrap();
    assert_eq!(entry["rollbackCapability"], "revoke-jwt", "{entry}");
    assert_eq!(entry["status"], "executed", "{entry}");
    let token = e["stepExecutions"]["issue"]["outputs"]["token"]
        .as_str()
        .unwrap();
    assert_eq!(bridge.verify(token).unwrap_err(), "revoked");

    cancel.cancel();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agents_run_the_auth_flow_as_poll_agents() {
    let s = Server::start().await;
    let secret = b"bridge-poll-secret".to_vec();
    let sentinel = Arc::new(Sentinel::generate(["alice"]));
    let bridge = Arc::new(Bridge::new(secret.clone()));
    let cancel = CancellationToken::new();
    let a = sentinel
        .clone()
        .agent("sentinel-1")
        .start_poll(poll_config(&s, &s.admin, 2), cancel.clone())
        .await
        .unwrap();
    let b = bridge
        .clone()
        .agent("bridge-1")
        .start_poll(poll_config(&s, &s.admin, 2), cancel.clone())
        .await
        .unwrap();
    auth_flow_checks(&s, &sentinel, &bridge, &secret).await;
    cancel.cancel();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    s.stop().await;
}
