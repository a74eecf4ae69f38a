//! The health checker with a short interval: HTTP agents are probed, poll
//! agents judged by their heartbeats (polling counts), and every status change
//! publishes `agent:health`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Agent, Server};

async fn status_becomes(s: &Server, id: &str, want: &str) {
    for _ in 0..200 {
        let (_, v) = s.get(&format!("/maestro/agents/{id}")).await;
        if v["agent"]["status"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, v) = s.get(&format!("/maestro/agents/{id}")).await;
    panic!("{id} did not become {want}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_heartbeats_drive_status_with_events() {
    let s = Server::start_with(|c| c.runtime.health_check_interval_ms = 100).await;
    let alive = Agent::echo().await;
    s.register_http_agent("alive", &alive.endpoint(), &["say"])
        .await;
    // An HTTP agent whose endpoint answers nothing: the probe fails.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    s.register_http_agent("dead", &dead, &["say"]).await;
    // A poll agent that stays silent, then polls.
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "poller", "type": "worker", "transport": "poll",
            "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let token = v["agentToken"].as_str().unwrap().to_owned();

    status_becomes(&s, "dead", "offline").await;
    status_becomes(&s, "poller", "offline").await; // silent for 3 × 100 ms
    let (_, v) = s.get("/maestro/agents/alive").await;
    assert_eq!(v["agent"]["status"], "online");

    // Polling is a heartbeat: back online.
    let (st, _) = s
        .call(
            Method::POST,
            "/maestro/agents/poller/tasks/poll",
            Some(&token),
            Some(json!({"waitMs": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    status_becomes(&s, "poller", "online").await;

    let (_, v) = s
        .get("/maestro/events?eventTypes=agent:health&limit=100")
        .await;
    let changes: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["payload"]["agentId"].as_str().unwrap().to_owned(),
                e["payload"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("dead".into(), "offline".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("poller".into(), "offline".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("poller".into(), "online".into())),
        "{changes:?}"
    );
    assert!(!changes.iter().any(|(a, _)| a == "alive"), "{changes:?}");

    // Health computed from the probes: the dead agent is unhealthy with no uptime.
    let (_, v) = s.get("/maestro/agents/dead/health").await;
    assert_eq!(v["health"]["status"], "unhealthy", "{v}");
    assert_eq!(v["health"]["uptime"], 0.0);
    let (_, v) = s.get("/maestro/metrics").await;
    assert!(
        v["metrics"]["agentHealthScores"]["alive"].as_f64().unwrap() > 90.0,
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_turns_degraded_from_its_error_rate() {
    let s = Server::start_with(|c| c.runtime.health_check_interval_ms = 100).await;
    let flaky = Agent::start(|b| {
        if b["inputs"]["fail"] == true {
            (422, json!({"error": {"code": "NOPE", "message": "no"}}))
        } else {
            (200, json!({"outputs": {}}))
        }
    })
    .await;
    s.register_http_agent("flaky", &flaky.endpoint(), &["do"])
        .await;
    s.post(
        "/maestro/workflows",
        json!({"id": "w", "name": "w", "steps": [
        {"id": "a", "agentId": "flaky", "capability": "do", "inputs": {"fail": "${fail}"}}]}),
    )
    .await;
    for i in 0..10 {
        let fail = i % 3 == 0; // 4 of 10 fail: 40 % > the 10 % threshold
        s.post(
            "/maestro/workflows/w/execute?wait=5000",
            json!({"inputs": {"fail": fail}}),
        )
        .await;
    }
    status_becomes(&s, "flaky", "degraded").await;
    let (_, v) = s.get("/maestro/agents/flaky/health").await;
    let h = &v["health"];
    assert_eq!(h["status"], "degraded");
    assert!((h["errorRate"].as_f64().unwrap() - 0.4).abs() < 1e-9, "{h}");
    assert_eq!(h["capabilities"][0]["invocations"], 10);
    s.stop().await;
}
