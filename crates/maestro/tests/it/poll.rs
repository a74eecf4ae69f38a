//! The poll transport over HTTP: long polls, leases, heartbeats, expiry and
//! re-delivery, answers, ownership, deregistration, durability, routing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Server;

/// Register a poll agent; answers its agent token.
async fn poll_agent(s: &Server, id: &str, caps: &[&str]) -> String {
    let caps: Vec<Value> = caps.iter().map(|c| json!({"id": c})).collect();
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": id, "type": "worker", "transport": "poll", "capabilities": caps}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    v["agentToken"].as_str().unwrap().to_owned()
}

async fn poll(s: &Server, agent: &str, token: &str, wait_ms: u64) -> Vec<Value> {
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/maestro/agents/{agent}/tasks/poll"),
            Some(token),
            Some(json!({"waitMs": wait_ms, "max": 10})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["tasks"].as_array().unwrap().clone()
}

async fn answer(
    s: &Server,
    token: &str,
    task: &str,
    verb: &str,
    body: Value,
) -> (StatusCode, Value) {
    s.call(
        Method::POST,
        &format!("/maestro/tasks/{task}/{verb}"),
        Some(token),
        Some(body),
    )
    .await
}

fn chain(id: &str, agent: Option<&str>, steps: usize, timeout: u64, attempts: u32) -> Value {
    let steps: Vec<Value> = (0..steps)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "capability": "work", "inputs": {"n": i},
                "timeout": timeout, "retryPolicy": {"maxAttempts": attempts, "delayMs": 10}});
            if let Some(a) = agent {
                s["agentId"] = json!(a);
            }
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"id": id, "name": id, "steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_agent_runs_a_workflow_and_long_polls_time_out_empty() {
    let s = Server::start().await;
    let token = poll_agent(&s, "w1", &["work"]).await;
    // Nothing queued: the long poll ends empty after its wait.
    assert!(poll(&s, "w1", &token, 100).await.is_empty());

    s.post("/maestro/workflows", chain("c", Some("w1"), 3, 5_000, 1))
        .await;
    let (st, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let mut done = 0;
    while done < 3 {
        for t in poll(&s, "w1", &token, 2_000).await {
            assert_eq!(t["executionId"], exec.as_str());
            assert_eq!(t["capability"], "work");
            assert!(t["leaseExpiresAt"].as_u64().unwrap() > 0);
            assert!(t["traceparent"].as_str().unwrap().starts_with("00-"));
            let n = t["inputs"]["n"].as_u64().unwrap();
            let (st, v) = answer(
                &s,
                &token,
                t["taskId"].as_str().unwrap(),
                "complete",
                json!({"outputs": {"double": n * 2}}),
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            assert_eq!(v["task"]["status"], "completed");
            done += 1;
        }
    }
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["s2"]["outputs"]["double"], 4);
    // Polling counted as a heartbeat.
    let (_, a) = s.get("/maestro/agents/w1").await;
    assert_eq!(a["agent"]["status"], "online");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_fails_the_attempt_and_the_retry_redelivers() {
    let s = Server::start().await;
    let token = poll_agent(&s, "w1", &["work"]).await;
    s.post("/maestro/workflows", chain("c", Some("w1"), 1, 300, 2))
        .await;
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let first = poll(&s, "w1", &token, 2_000).await;
    assert_eq!(first.len(), 1);
    let first_id = first[0]["taskId"].as_str().unwrap().to_owned();
    assert_eq!(first[0]["attempt"], 1);
    // Do not answer: the lease (the 300 ms attempt timeout) runs out, and the
    // retry policy delivers attempt 2 as a new task.
    let second = loop {
        let t = poll(&s, "w1", &token, 2_000).await;
        if !t.is_empty() {
            break t;
        }
    };
    assert_eq!(second[0]["attempt"], 2);
    // The late answer to attempt 1 is refused.
    let (st, v) = answer(&s, &token, &first_id, "complete", json!({"outputs": {}})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("LEASE_EXPIRED")),
        "{v}"
    );
    let (st, _) = answer(
        &s,
        &token,
        second[0]["taskId"].as_str().unwrap(),
        "complete",
        json!({"outputs": {"ok": true}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed", "{e}");
    let attempts = e["stepExecutions"]["s0"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["error"]["code"], "LEASE_EXPIRED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_slow_task_alive_and_answers_are_checked() {
    let s = Server::start().await;
    let token = poll_agent(&s, "w1", &["work"]).await;
    let other = poll_agent(&s, "w2", &["work"]).await;
    let reader = s.token("reader", None).await;
    s.post("/maestro/workflows", chain("c", Some("w1"), 1, 300, 1))
        .await;
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let t = poll(&s, "w1", &token, 2_000).await.remove(0);
    let id = t["taskId"].as_str().unwrap().to_owned();
    // 900 ms of work under a 300 ms lease, kept alive by heartbeats.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (st, v) = answer(&s, &token, &id, "heartbeat", json!({})).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["cancelRequested"], false);
    }
    // Not yours / not allowed.
    let (st, _) = answer(&s, &other, &id, "complete", json!({"outputs": {}})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = answer(&s, &reader, &id, "complete", json!({"outputs": {}})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = answer(&s, &token, "nope:s0:1", "complete", json!({"outputs": {}})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = answer(&s, &token, &id, "complete", json!({"output": {}})).await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("output"))
    );

    let (st, _) = answer(&s, &token, &id, "complete", json!({"outputs": {"v": 1}})).await;
    assert_eq!(st, StatusCode::OK);
    // The same answer again is fine; a different one is a conflict.
    let (st, _) = answer(&s, &token, &id, "complete", json!({"outputs": {"v": 1}})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = answer(&s, &token, &id, "complete", json!({"outputs": {"v": 2}})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("INVALID_STATE"))
    );
    let (st, _) = answer(
        &s,
        &token,
        &id,
        "fail",
        json!({"error": {"code": "X", "message": "m", "retryable": false}}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed");
    assert_eq!(
        e["stepExecutions"]["s0"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_cancel_and_deregistration() {
    let s = Server::start().await;
    let token = poll_agent(&s, "w1", &["work"]).await;
    s.post("/maestro/workflows", chain("c", Some("w1"), 1, 5_000, 3))
        .await;

    // An agent's fail with retryable:false ends the step with its code.
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let t = poll(&s, "w1", &token, 2_000).await.remove(0);
    let (st, _) = answer(
        &s,
        &token,
        t["taskId"].as_str().unwrap(),
        "fail",
        json!({"error": {"code": "BAD_INPUT", "message": "no", "retryable": false}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["stepExecutions"]["s0"]["error"]["code"], "BAD_INPUT");
    assert_eq!(
        e["stepExecutions"]["s0"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Cancelling the execution: the leased task's heartbeat says so, and its
    // answer is refused.
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let t = poll(&s, "w1", &token, 2_000).await.remove(0);
    let id = t["taskId"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(&format!("/maestro/executions/{exec}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.wait_terminal(&exec).await["status"], "cancelled");
    let (st, v) = answer(&s, &token, &id, "heartbeat", json!({})).await;
    assert_eq!(
        (st, v["cancelRequested"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    let (st, _) = answer(&s, &token, &id, "complete", json!({"outputs": {}})).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Deregistering the agent fails its queued task with AGENT_DEREGISTERED.
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (st, _) = s.delete("/maestro/agents/w1").await;
    assert_eq!(st, StatusCode::OK);
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "failed");
    assert_eq!(
        e["stepExecutions"]["s0"]["attempts"][0]["error"]["code"], "AGENT_DEREGISTERED",
        "{e}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_survive_a_restart() {
    let s = Server::start().await;
    let token = poll_agent(&s, "w1", &["work"]).await;
    s.post("/maestro/workflows", chain("c", Some("w1"), 2, 5_000, 1))
        .await;
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dir = s.dir.clone();
    let settings = crate::support::settings(dir.path());
    s.stop().await;

    let s = Server::start_in(dir, settings).await;
    for _ in 0..2 {
        let t = poll(&s, "w1", &token, 5_000).await.remove(0);
        let (st, v) = answer(
            &s,
            &token,
            t["taskId"].as_str().unwrap(),
            "complete",
            json!({"outputs": {}}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        e["stepExecutions"]["s0"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_goes_around_an_offline_agent_and_fails_fast_without_the_capability() {
    let s = Server::start().await;
    // An HTTP agent with the capability, held offline by an operator...
    s.register_http_agent("down", "http://127.0.0.1:9", &["work"])
        .await;
    s.patch("/maestro/agents/down/status", json!({"status": "offline"}))
        .await;
    // ...and a poll agent with it, online.
    let token = poll_agent(&s, "up", &["work"]).await;
    s.post("/maestro/workflows", chain("c", None, 1, 5_000, 1))
        .await;
    let (_, v) = s.post("/maestro/workflows/c/execute", json!({})).await;
    let exec = v["execution"]["id"].as_str().unwrap().to_owned();
    let t = poll(&s, "up", &token, 2_000).await.remove(0);
    answer(
        &s,
        &token,
        t["taskId"].as_str().unwrap(),
        "complete",
        json!({"outputs": {}}),
    )
    .await;
    let e = s.wait_terminal(&exec).await;
    assert_eq!(e["status"], "completed");
    assert_eq!(e["stepExecutions"]["s0"]["agentId"], "up");

    // Nobody has the capability at all: CAPABILITY_NOT_FOUND at once.
    let mut wf = chain("d", None, 1, 5_000, 3);
    wf["steps"][0]["capability"] = json!("nobody-does-this");
    s.post("/maestro/workflows", wf).await;
    let (_, v) = s
        .post("/maestro/workflows/d/execute?wait=5000", json!({}))
        .await;
    let st = &v["execution"]["stepExecutions"]["s0"];
    assert_eq!(st["error"]["code"], "CAPABILITY_NOT_FOUND", "{v}");
    assert_eq!(st["attempts"].as_array().map(Vec::len), Some(1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_shortened_to_max_wait_ms() {
    let s = Server::start_with(|c| c.server.max_wait_ms = 200).await;
    let token = poll_agent(&s, "w", &["work"]).await;
    // 30 s asked for (the default is the same), at most 200 ms given: the
    // empty answer comes long before the asked-for wait.
    for body in [json!({"waitMs": 30_000}), json!({})] {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            s.call(
                Method::POST,
                "/maestro/agents/w/tasks/poll",
                Some(&token),
                Some(body),
            ),
        )
        .await
        .expect("answered before the asked-for wait");
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        assert_eq!(answer.1["tasks"], json!([]), "{}", answer.1);
    }
    // Above the protocol's own limit is still refused.
    let (st, v) = s
        .call(
            Method::POST,
            "/maestro/agents/w/tasks/poll",
            Some(&token),
            Some(json!({"waitMs": 60_001})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    s.stop().await;
}
