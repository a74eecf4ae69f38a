//! Runtime config keys apply while the server runs (docs/CONFIGURATION.md,
//! "When a change takes effect"): each key is changed with
//! `PATCH /maestro/config` and the next piece of work must follow it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Agent, Server};

/// Poll `GET path` until `pred` holds, for at most `within`.
async fn eventually(s: &Server, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) {
    let until = Instant::now() + within;
    loop {
        let (_, v) = s.get(path).await;
        if pred(&v) {
            return;
        }
        assert!(Instant::now() < until, "{path} never matched: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn patch_config(s: &Server, patch: Value) {
    let (st, v) = s.patch("/maestro/config", patch).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

async fn register_poller(s: &Server, id: &str) {
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": id, "type": "worker", "transport": "poll",
                   "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

async fn define(s: &Server, id: &str, steps: Value, extra: Value) {
    let mut body = json!({"id": id, "name": id, "steps": steps});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (st, v) = s.post("/maestro/workflows", body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// Execute `workflow` and wait for its end (`?wait=`).
async fn run(s: &Server, workflow: &str) -> Value {
    let (st, v) = s
        .post(
            &format!("/maestro/workflows/{workflow}/execute?wait=10000"),
            json!({}),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    v["execution"].clone()
}

async fn start(s: &Server, workflow: &str) -> String {
    let (st, v) = s
        .post(&format!("/maestro/workflows/{workflow}/execute"), json!({}))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    v["execution"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_health_interval_restarts_the_checker_at_once() {
    // The default interval is 30 s: without the change, a silent poll agent
    // stays online for half a minute.
    let s = Server::start().await;
    register_poller(&s, "poller").await;
    patch_config(&s, json!({"healthCheckIntervalMs": 100})).await;
    // Silent for 3 × 100 ms, checked every 100 ms from the change on.
    eventually(&s, "/maestro/agents/poller", Duration::from_secs(3), |v| {
        v["agent"]["status"] == "offline"
    })
    .await;
    // The status is set before its event is committed: wait for the event too.
    eventually(
        &s,
        "/maestro/events?eventTypes=agent:health&limit=10",
        Duration::from_secs(3),
        |v| {
            v["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["payload"]["agentId"] == "poller" && e["payload"]["status"] == "offline"
                })
            })
        },
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_hold_checks_the_agent_at_once() {
    let s = Server::start_with(|c| c.runtime.health_check_interval_ms = 100).await;
    register_poller(&s, "poller").await;
    let (st, v) = s
        .patch(
            "/maestro/agents/poller/status",
            json!({"status": "degraded"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agent"]["statusHold"], true, "{v}");
    // Silent for longer than 3 × the interval while held: the checker left it alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = s.get("/maestro/agents/poller").await;
    assert_eq!(v["agent"]["status"], "degraded", "{v}");
    // Released: checked before the answer, which shows the outcome.
    let (st, v) = s
        .patch("/maestro/agents/poller/status", json!({"status": "online"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agent"]["status"], "offline", "{v}");
    assert!(v["agent"].get("statusHold").is_none(), "{v}");
    let (_, v) = s
        .get("/maestro/events?eventTypes=agent:health&limit=10")
        .await;
    let statuses: Vec<&Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["payload"]["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("degraded"), &json!("online"), &json!("offline")],
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_concurrency_limit_starts_queued_executions_at_once() {
    let s = Server::start_with(|c| c.runtime.max_concurrent_workflows = 1).await;
    let slow = Agent::echo().await;
    slow.delay_ms.store(3_000, Ordering::SeqCst);
    s.register_http_agent("slow", &slow.endpoint(), &["say"])
        .await;
    define(
        &s,
        "w",
        json!([{"id": "a", "capability": "say"}]),
        json!({}),
    )
    .await;
    let first = start(&s, "w").await;
    let second = start(&s, "w").await;
    eventually(
        &s,
        &format!("/maestro/executions/{first}"),
        Duration::from_secs(2),
        |v| v["execution"]["status"] == "running",
    )
    .await;
    let (_, v) = s.get(&format!("/maestro/executions/{second}")).await;
    assert_eq!(v["execution"]["status"], "pending", "queued: {v}");
    patch_config(&s, json!({"maxConcurrentWorkflows": 2})).await;
    // Started by the change, not by the first one finishing (3 s away).
    eventually(
        &s,
        &format!("/maestro/executions/{second}"),
        Duration::from_millis(1_500),
        |v| v["execution"]["status"] == "running",
    )
    .await;
    let (_, v) = s.get(&format!("/maestro/executions/{first}")).await;
    assert_eq!(v["execution"]["status"], "running", "{v}");
    for id in [&first, &second] {
        let (st, v) = s
            .post(&format!("/maestro/executions/{id}/cancel"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_retry_policy_apply_to_later_work() {
    let s = Server::start().await;
    let agent = Agent::start(|b| {
        if b["capability"] == "boom" {
            (500, json!({"error": {"code": "BOOM", "message": "no"}}))
        } else {
            (200, json!({"outputs": {"ok": true}}))
        }
    })
    .await;
    s.register_http_agent("a", &agent.endpoint(), &["say", "boom"])
        .await;
    define(
        &s,
        "say",
        json!([{"id": "a", "capability": "say"}]),
        json!({}),
    )
    .await;
    define(
        &s,
        "boom",
        json!([{"id": "a", "capability": "boom"}]),
        json!({}),
    )
    .await;

    // agentTimeoutMs: later attempts get the new timeout.
    agent.delay_ms.store(600, Ordering::SeqCst);
    patch_config(
        &s,
        json!({"agentTimeoutMs": 150, "defaultRetryPolicy": {"maxAttempts": 1}}),
    )
    .await;
    let e = run(&s, "say").await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(
        e["stepExecutions"]["a"]["error"]["code"], "STEP_TIMEOUT",
        "{e}"
    );
    patch_config(&s, json!({"agentTimeoutMs": 5000})).await;
    let e = run(&s, "say").await;
    assert_eq!(e["status"], "completed", "{e}");
    agent.delay_ms.store(0, Ordering::SeqCst);

    // defaultRetryPolicy: later retries follow it.
    let before = agent.calls.load(Ordering::SeqCst);
    let e = run(&s, "boom").await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(
        agent.calls.load(Ordering::SeqCst) - before,
        1,
        "one attempt"
    );
    patch_config(
        &s,
        json!({"defaultRetryPolicy": {"maxAttempts": 3, "delayMs": 10}}),
    )
    .await;
    let before = agent.calls.load(Ordering::SeqCst);
    let e = run(&s, "boom").await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(
        agent.calls.load(Ordering::SeqCst) - before,
        3,
        "three attempts"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_timeout_and_rollback_apply_to_later_executions() {
    let s = Server::start().await;
    let agent = Agent::start(|b| match b["capability"].as_str() {
        Some("boom") => (
            400,
            json!({"error": {"code": "BOOM", "message": "no", "retryable": false}}),
        ),
        _ => (200, json!({"outputs": {"ok": true}})),
    })
    .await;
    s.register_http_agent("a", &agent.endpoint(), &["say", "say_rollback", "boom"])
        .await;
    define(
        &s,
        "saga",
        json!([{"id": "a", "capability": "say"},
               {"id": "b", "capability": "boom", "dependencies": ["a"]}]),
        json!({"onError": "rollback"}),
    )
    .await;
    define(
        &s,
        "say",
        json!([{"id": "a", "capability": "say"}]),
        json!({}),
    )
    .await;

    // enableRollback: a failure handled after the change follows it.
    let e = run(&s, "saga").await;
    assert_eq!(e["status"], "rolled_back", "{e}");
    patch_config(&s, json!({"enableRollback": false})).await;
    let e = run(&s, "saga").await;
    assert_eq!(e["status"], "failed", "rollback is off: {e}");

    // defaultWorkflowTimeout: the deadline of a later execution.
    agent.delay_ms.store(2_000, Ordering::SeqCst);
    patch_config(&s, json!({"defaultWorkflowTimeout": 300})).await;
    let e = run(&s, "say").await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["error"]["code"], "WORKFLOW_TIMEOUT", "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compensation_on_cancel_applies_to_cancels_handled_later() {
    let s = Server::start().await;
    let fast = Agent::echo().await;
    s.register_http_agent("fast", &fast.endpoint(), &["say", "say_rollback"])
        .await;
    let slow = Agent::echo().await;
    slow.delay_ms.store(3_000, Ordering::SeqCst);
    s.register_http_agent("slow", &slow.endpoint(), &["hang"])
        .await;
    define(
        &s,
        "w",
        json!([{"id": "a", "capability": "say"},
               {"id": "b", "capability": "hang", "dependencies": ["a"]}]),
        json!({}),
    )
    .await;
    let compensations = || {
        fast.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| b["capability"] == "say_rollback")
            .count()
    };
    for (enabled, expected) in [(false, 0), (true, 1)] {
        patch_config(&s, json!({"enableCompensation": enabled})).await;
        let id = start(&s, "w").await;
        eventually(
            &s,
            &format!("/maestro/executions/{id}"),
            Duration::from_secs(3),
            |v| v["execution"]["stepExecutions"]["b"]["status"] == "running",
        )
        .await;
        let (st, v) = s
            .post(&format!("/maestro/executions/{id}/cancel"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let e = s.wait_terminal(&id).await;
        assert_eq!(compensations(), expected, "compensation {enabled}: {e}");
    }
    s.stop().await;
}
