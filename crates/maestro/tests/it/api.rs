//! Each route's success and failure cases.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Agent, Server, auth_flow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flow_runs_against_real_http_agents() {
    let s = Server::start().await;
    let sentinel = Agent::start(|b| {
        let ok = b["inputs"]["userId"] == "alice";
        (200, json!({"outputs": {"verified": ok}}))
    })
    .await;
    let bridge = Agent::start(|b| {
        (200, json!({"outputs": {"token": format!("jwt-for-{}", b["inputs"]["userId"].as_str().unwrap())}}))
    })
    .await;
    s.register_http_agent("sentinel-1", &sentinel.endpoint(), &["verify-identity"])
        .await;
    s.register_http_agent("bridge-1", &bridge.endpoint(), &["issue-jwt"])
        .await;
    let (st, v) = s
        .post("/maestro/workflows", auth_flow("sentinel-1", "bridge-1"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["workflow"]["revision"], 1);

    let (st, v) = s
        .post(
            "/maestro/workflows/auth-flow/execute?wait=5000",
            json!({"inputs": {"userId": "alice"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let e = &v["execution"];
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["result"]["token"], "jwt-for-alice");
    assert_eq!(
        e["stepExecutions"]["verify-user"]["attempts"][0]["attempt"],
        1
    );

    // The push body and headers as API.md says.
    let (body, headers) = bridge.bodies.lock().unwrap()[0].clone();
    let exec_id = e["id"].as_str().unwrap();
    assert_eq!(body["executionId"], exec_id);
    assert_eq!(body["stepId"], "issue-token");
    assert_eq!(body["attempt"], 1);
    assert_eq!(body["capability"], "issue-jwt");
    assert!(body["deadline"].as_u64().unwrap() > 0);
    assert!(body["traceparent"].as_str().unwrap().starts_with("00-"));
    assert_eq!(
        headers["idempotency-key"].to_str().unwrap(),
        format!("{exec_id}:issue-token:1")
    );

    // Its events, by execution and by correlation.
    let (st, v) = s
        .get(&format!("/maestro/events?executionId={exec_id}"))
        .await;
    assert_eq!(st, StatusCode::OK);
    let types: Vec<_> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types.first().map(String::as_str),
        Some("workflow:started"),
        "{types:?}"
    );
    assert_eq!(
        types.last().map(String::as_str),
        Some("workflow:completed"),
        "{types:?}"
    );
    let (_, v2) = s.get(&format!("/maestro/events/{exec_id}")).await;
    assert_eq!(v2["count"], v["count"]);

    // Unverified user: issue-token is skipped by its condition.
    let (st, v) = s
        .post(
            "/maestro/workflows/auth-flow/execute?wait=5000",
            json!({"inputs": {"userId": "mallory"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["execution"]["stepExecutions"]["issue-token"]["status"],
        "skipped"
    );
    assert_eq!(sentinel.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_routes() {
    let s = Server::start().await;
    let agent = json!({"id": "sentinel-1", "type": "sentinel", "endpoint": "http://127.0.0.1:9",
        "inboundSecret": "s3cret", "capabilities": [{"id": "sign", "tags": ["crypto"]}]});
    let (st, v) = s.post("/maestro/agents", agent.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["agentToken"].as_str().unwrap().starts_with("mst_"));
    assert!(v["agent"].get("inboundSecret").is_none(), "write-only");
    let (st, v) = s.post("/maestro/agents", agent.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_EXISTS"))
    );

    let (st, v) = s.get("/maestro/agents/sentinel-1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["agent"]["status"], "online");
    let (st, v) = s.get("/maestro/agents/nobody").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (st, _) = s.get("/maestro/agents/bad%20id").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (_, v) = s
        .get("/maestro/agents?types=sentinel,bridge&capabilities=sign&tags=crypto")
        .await;
    assert_eq!(
        (v["count"].as_u64(), v["total"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, v) = s.get("/maestro/agents?types=bridge").await;
    assert_eq!(v["count"], 0);
    let (st, v) = s.get("/maestro/agents?status=sleeping").await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
    let (st, _) = s.get("/maestro/agents?limit=1001").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Upsert: update keeps the agent, answers 200; create answers 201 with a token.
    let mut updated = agent.clone();
    updated["endpoint"] = json!("http://127.0.0.1:10");
    let (st, v) = s.put("/maestro/agents/sentinel-1", updated).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agent"]["endpoint"], "http://127.0.0.1:10");
    assert!(v.get("agentToken").is_none());
    let (st, v) = s
        .put(
            "/maestro/agents/bridge-1",
            json!({"id": "bridge-1", "type": "bridge", "capabilities": []}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["agentToken"].is_string());
    let (st, v) = s
        .put(
            "/maestro/agents/bridge-1",
            json!({"id": "other", "type": "bridge"}),
        )
        .await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );

    // Status hold, heartbeat, health.
    let (st, v) = s
        .patch(
            "/maestro/agents/sentinel-1/status",
            json!({"status": "degraded"}),
        )
        .await;
    assert_eq!(
        (st, v["agent"]["status"].as_str()),
        (StatusCode::OK, Some("degraded"))
    );
    let (st, v) = s
        .post("/maestro/agents/sentinel-1/heartbeat", json!({}))
        .await;
    assert_eq!(
        (st, v["agent"]["status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "hold kept"
    );
    let (st, _) = s
        .patch(
            "/maestro/agents/sentinel-1/status",
            json!({"status": "asleep"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, v) = s.get("/maestro/agents/sentinel-1/health").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["health"]["agentId"], "sentinel-1");
    let (st, v) = s
        .put(
            "/maestro/agents/sentinel-1/health",
            json!({"status": "healthy", "uptime": 99.0}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s.get("/maestro/capabilities/sign/agents").await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(1)));
    let (st, v) = s.get("/maestro/health").await;
    assert_eq!((st, v["count"].as_u64()), (StatusCode::OK, Some(2)));

    let (st, _) = s.delete("/maestro/agents/bridge-1").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.delete("/maestro/agents/bridge-1").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_routes_and_revisions() {
    let s = Server::start().await;
    let agent = Agent::echo().await;
    s.register_http_agent("echo", &agent.endpoint(), &["say"])
        .await;
    let wf = json!({"id": "w1", "name": "W", "tags": ["t"],
        "steps": [{"id": "a", "agentId": "echo", "capability": "say", "inputs": {"x": "${x}"}}]});
    let (st, v) = s.post("/maestro/workflows", wf.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(!v["workflow"]["createdBy"].as_str().unwrap().is_empty());
    let (st, v) = s.post("/maestro/workflows", wf.clone()).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_EXISTS"))
    );

    // YAML body.
    let yaml = "id: w2\nname: From YAML\nsteps:\n  - id: a\n    capability: say\n";
    let resp = s
        .client
        .post(s.url("/maestro/workflows"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Validation codes with the step id.
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "bad", "name": "B", "steps": [
            {"id": "a", "capability": "c", "dependencies": ["b"]},
            {"id": "b", "capability": "c", "dependencies": ["a"]}]}),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("CYCLE_DETECTED")),
        "{v}"
    );
    assert!(v["details"]["cycle"].is_array());
    let (_, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "bad", "name": "B", "steps": [
            {"id": "a", "capability": "c", "condition": {"type": "javascript", "code": "1"}}]}),
        )
        .await;
    assert_eq!(v["code"], "UNSAFE_CONDITION", "{v}");
    let (_, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "bad", "name": "B", "steps": [
            {"id": "a", "capability": "c", "dependencies": ["zz"]}]}),
        )
        .await;
    assert_eq!(v["code"], "UNKNOWN_DEPENDENCY");
    assert_eq!(v["details"]["stepId"], "a");

    let (st, v) = s
        .patch("/maestro/workflows/w1", json!({"description": "v2"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["workflow"]["revision"], 2);
    let (_, v) = s.get("/maestro/workflows/w1?revision=1").await;
    assert_eq!(v["workflow"]["description"], "");
    let (_, v) = s.get("/maestro/workflows/w1").await;
    assert_eq!(v["workflow"]["description"], "v2");
    let (st, _) = s.get("/maestro/workflows/w1?revision=9").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.get("/maestro/workflows/w1?revision=x").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, v) = s.get("/maestro/workflows?tags=t").await;
    assert_eq!(
        (v["count"].as_u64(), v["total"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, v) = s.get("/maestro/workflows?limit=1").await;
    assert_eq!(
        (v["count"].as_u64(), v["total"].as_u64()),
        (Some(1), Some(2))
    );

    // Execute: 202, idempotency, wait.
    let key_req = |key: &str, body: serde_json::Value| {
        s.client
            .post(s.url("/maestro/workflows/w1/execute"))
            .bearer_auth(&s.admin)
            .header("Idempotency-Key", key.to_owned())
            .json(&body)
            .send()
    };
    let r = key_req("k1", json!({"inputs": {"x": 1}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first: serde_json::Value = r.json().await.unwrap();
    let r = key_req("k1", json!({"inputs": {"x": 1}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(first["execution"]["id"], again["execution"]["id"]);
    let r = key_req("k1", json!({"inputs": {"x": 2}})).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "IDEMPOTENCY_KEY_REUSED");
    let done = s
        .wait_terminal(first["execution"]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["revision"], 2, "pinned the revision it started with");

    let (st, v) = s.post("/maestro/workflows/nope/execute", json!({})).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (st, v) = s
        .post("/maestro/workflows/w1/execute", json!({"inptus": {}}))
        .await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("inptus"))
    );
    // No body at all is an empty request.
    let r = s
        .client
        .post(s.url("/maestro/workflows/w1/execute"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let (st, _) = s.delete("/maestro/workflows/w2").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.get("/maestro/workflows/w2").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refused_while_active_and_execution_controls() {
    let s = Server::start().await;
    // An agent that never answers within the test: the execution stays running.
    let slow = Agent::start(|_| (200, json!({"outputs": {}}))).await;
    slow.delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    s.register_http_agent("slow", &slow.endpoint(), &["wait"])
        .await;
    s.post(
        "/maestro/workflows",
        json!({"id": "w", "name": "W", "steps": [
        {"id": "a", "agentId": "slow", "capability": "wait"},
        {"id": "b", "agentId": "slow", "capability": "wait", "dependencies": ["a"]}]}),
    )
    .await;
    let (st, v) = s.post("/maestro/workflows/w/execute", json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let id = v["execution"]["id"].as_str().unwrap().to_owned();
    let (st, v) = s.delete("/maestro/workflows/w").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("INVALID_STATE"))
    );

    let (st, v) = s
        .post(&format!("/maestro/executions/{id}/pause"), json!({}))
        .await;
    assert_eq!(
        (st, v["execution"]["status"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{v}"
    );
    let (st, v) = s
        .post(&format!("/maestro/executions/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (st, v["execution"]["status"].as_str()),
        (StatusCode::OK, Some("running")),
        "{v}"
    );
    let (st, v) = s
        .post(
            &format!("/maestro/executions/{id}/cancel"),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let done = s.wait_terminal(&id).await;
    assert_eq!(done["status"], "cancelled");
    let (st, v) = s
        .post(&format!("/maestro/executions/{id}/cancel"), json!({}))
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("INVALID_STATE"))
    );
    let (st, _) = s
        .post("/maestro/executions/exec_nope/cancel", json!({}))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (_, v) = s
        .get("/maestro/executions?workflowId=w&status=cancelled")
        .await;
    assert_eq!(v["count"], 1);
    let (_, v) = s.get("/maestro/executions?status=completed,failed").await;
    assert_eq!(v["count"], 0);
    let (st, v) = s.get("/maestro/executions?status=done").await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
    let (st, _) = s.get("/maestro/executions?createdAfter=yesterday").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s.delete("/maestro/workflows/w").await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_config_metrics_tokens_subscriptions() {
    let s = Server::start().await;
    let (st, v) = s
        .post(
            "/maestro/events",
            json!({"type": "agent:alert", "payload": {"level": "high"}, "sourceAgent": "ops"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let seq = v["event"]["seq"].as_u64().unwrap();
    let (st, v) = s
        .post(
            "/maestro/events",
            json!({"type": "workflow:completed", "payload": {}}),
        )
        .await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("type"))
    );
    let (_, v) = s.get("/maestro/events?eventTypes=agent:alert").await;
    assert_eq!(v["count"], 1);
    for i in 0..3 {
        s.post(
            "/maestro/events",
            json!({"type": "agent:event", "payload": {"i": i}}),
        )
        .await;
    }
    let (_, v) = s
        .get("/maestro/events?eventTypes=agent:event&limit=2")
        .await;
    assert_eq!(
        (v["count"].as_u64(), v["total"].as_u64()),
        (Some(2), Some(3)),
        "{v}"
    );
    assert_eq!(
        v["events"][1]["payload"]["i"], 2,
        "the newest, in seq order"
    );
    let (_, v) = s.get(&format!("/maestro/events?after={seq}&limit=1")).await;
    assert_eq!(
        (v["count"].as_u64(), v["total"].as_u64()),
        (Some(1), Some(3)),
        "{v}"
    );
    let (st, _) = s.get("/maestro/events?eventTypes=nope").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s.get("/maestro/events?limit=10001").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let (st, v) = s.get("/maestro/config").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["config"]["agentTimeoutMs"], 10000);
    let (st, v) = s
        .patch("/maestro/config", json!({"agentTimeoutMs": 2500}))
        .await;
    assert_eq!(
        (st, v["config"]["agentTimeoutMs"].as_u64()),
        (StatusCode::OK, Some(2500))
    );
    let (st, v) = s
        .patch("/maestro/config", json!({"agentTimeoutMs": 0}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .patch("/maestro/config", json!({"listen": "0.0.0.0:1"}))
        .await;
    assert_eq!(
        (st, v["details"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("listen"))
    );
    let (_, v) = s.get("/maestro/config").await;
    assert_eq!(
        v["config"]["agentTimeoutMs"], 2500,
        "refused patches changed nothing"
    );

    let (st, v) = s.get("/maestro/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["metrics"]["successRate"], 0.0);

    let (st, v) = s
        .post("/maestro/tokens", json!({"role": "reader", "name": "dash"}))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let id = v["token"]["id"].as_str().unwrap().to_owned();
    assert!(v["token"].get("secretHash").is_none());
    let (st, _) = s.post("/maestro/tokens", json!({"role": "agent"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s.post("/maestro/tokens", json!({"role": "king"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, v) = s.get("/maestro/tokens").await;
    assert!(v["count"].as_u64().unwrap() >= 2);
    let (st, _) = s.delete(&format!("/maestro/tokens/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.delete(&format!("/maestro/tokens/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:completed"], "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["secret"].as_str().unwrap().len(), 64);
    let sub = v["subscription"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": [], "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": "ftp://x"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, v) = s.get("/maestro/subscriptions").await;
    assert_eq!(v["count"], 1);
    assert!(v["subscriptions"][0].get("secret").is_none());
    let (st, _) = s.delete(&format!("/maestro/subscriptions/{sub}")).await;
    assert_eq!(st, StatusCode::OK);

    let (st, body) = s.get("/metrics").await;
    assert_eq!(st, StatusCode::OK);
    let text = body.as_str().unwrap();
    assert!(text.contains("maestro_http_requests_total"), "{text}");
    assert!(
        text.contains("maestro_executions{status=\"completed\"}"),
        "{text}"
    );

    let (st, v) = s
        .call(Method::PUT, "/maestro/config", Some(&s.admin.clone()), None)
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("METHOD_NOT_ALLOWED"))
    );
    let (st, v) = s.get("/maestro/nothing-here").await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_failures_are_classified_end_to_end() {
    let s = Server::start().await;
    // 4xx with an error body: the agent's code, not retried.
    let refuse = Agent::start(|_| {
        (
            422,
            json!({"error": {"code": "BAD_SIGNATURE", "message": "nope", "retryable": false}}),
        )
    })
    .await;
    // 503 twice, then success: retried by the policy.
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let flaky = Agent::start(move |_| {
        if n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            (503, json!({"error": {"code": "BUSY", "message": "later"}}))
        } else {
            (200, json!({"outputs": {"ok": true}}))
        }
    })
    .await;
    // 200 without outputs: INVALID_AGENT_RESPONSE (retryable, so 3 attempts).
    let garbage = Agent::start(|_| (200, json!("garbage"))).await;
    // A hang past the attempt timeout.
    let hang = Agent::start(|_| (200, json!({"outputs": {}}))).await;
    hang.delay_ms
        .store(5_000, std::sync::atomic::Ordering::SeqCst);
    // Nobody listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for (id, ep) in [
        ("refuse", refuse.endpoint()),
        ("flaky", flaky.endpoint()),
        ("garbage", garbage.endpoint()),
        ("hang", hang.endpoint()),
        ("dead", dead),
    ] {
        s.register_http_agent(id, &ep, &["do"]).await;
        let (st, v) = s
            .post(
                "/maestro/workflows",
                json!({"id": format!("wf-{id}"), "name": id, "steps": [
                {"id": "a", "agentId": id, "capability": "do", "timeout": 200,
                 "retryPolicy": {"maxAttempts": 3, "delayMs": 10}}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    let sref = &s;
    let run = |id: &str| {
        let path = format!("/maestro/workflows/wf-{id}/execute?wait=10000");
        async move {
            let (st, v) = sref.post(&path, json!({})).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            v["execution"]["stepExecutions"]["a"].clone()
        }
    };
    let a = run("refuse").await;
    assert_eq!(
        (a["status"].as_str(), a["error"]["code"].as_str()),
        (Some("failed"), Some("BAD_SIGNATURE"))
    );
    assert_eq!(
        a["attempts"].as_array().unwrap().len(),
        1,
        "a 4xx is not retried"
    );
    let a = run("flaky").await;
    assert_eq!(a["status"], "completed");
    assert_eq!(a["retryCount"], 2);
    let a = run("garbage").await;
    assert_eq!(a["error"]["code"], "INVALID_AGENT_RESPONSE");
    assert_eq!(a["attempts"].as_array().unwrap().len(), 3);
    let a = run("hang").await;
    assert_eq!(a["error"]["code"], "STEP_TIMEOUT");
    assert_eq!(a["attempts"].as_array().unwrap().len(), 3);
    let a = run("dead").await;
    assert_eq!(a["status"], "failed");
    assert_eq!(
        a["attempts"].as_array().unwrap().len(),
        3,
        "refused connections are retried"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_show_the_transport_in_effect() {
    let s = Server::start().await;
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "poller", "type": "worker", "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["agent"]["transport"], "poll", "{v}");
    let echo = Agent::echo().await;
    s.register_http_agent("pushed", &echo.endpoint(), &["say"])
        .await;
    for (id, transport) in [("poller", "poll"), ("pushed", "http")] {
        let (_, v) = s.get(&format!("/maestro/agents/{id}")).await;
        assert_eq!(v["agent"]["transport"], transport, "{v}");
    }
    let (_, v) = s.get("/maestro/agents").await;
    assert!(
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["transport"].is_string()),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_explicit_retryable_decides_and_non_retryable_codes_win() {
    let s = Server::start().await;
    let agent = Agent::start(|b| match b["capability"].as_str() {
        Some("final") => (
            500,
            json!({"error": {"code": "BROKEN", "message": "for good", "retryable": false}}),
        ),
        Some("again") => (
            409,
            json!({"error": {"code": "LOCKED", "message": "later", "retryable": true}}),
        ),
        _ => (503, json!({"error": {"code": "BUSY", "message": "later"}})),
    })
    .await;
    s.register_http_agent("a", &agent.endpoint(), &["final", "again", "busy"])
        .await;
    let policy = json!({"maxAttempts": 3, "delayMs": 10});
    for (cap, policy, calls) in [
        ("final", policy.clone(), 1),
        ("again", policy.clone(), 3),
        ("busy", policy.clone(), 3),
        (
            "again",
            json!({"maxAttempts": 3, "delayMs": 10, "nonRetryableCodes": ["LOCKED"]}),
            1,
        ),
    ] {
        let id = format!("w-{cap}-{calls}");
        let (st, v) = s
            .post(
                "/maestro/workflows",
                json!({"id": id, "name": id,
                       "steps": [{"id": "s", "capability": cap, "retryPolicy": policy}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let before = agent.calls.load(std::sync::atomic::Ordering::SeqCst);
        let (_, v) = s
            .post(
                &format!("/maestro/workflows/{id}/execute?wait=10000"),
                json!({}),
            )
            .await;
        assert_eq!(v["execution"]["status"], "failed", "{v}");
        let made = agent.calls.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(made, calls, "{cap}: {v}");
    }
    s.stop().await;
}
