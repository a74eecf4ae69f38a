//! `sensitive` outputs (API.md §6): every copy of a sensitive value — whole,
//! inside longer strings, in error messages — is masked for reader, operator
//! and agent tokens in execution reads, the event history, the SSE stream and
//! webhook deliveries; admins see the values.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::sse::Sse;
use crate::support::{Agent, Server};
use crate::webhooks::{receiver, wait_for};

/// The sensitive value, and another one only reachable inside a sensitive object.
const SECRET: &str = "tok-S3cr3t-4711";
const NESTED: &str = "nested-k3y-0815";

/// `issue` declares `secret` and `vault` sensitive and answers them plus a
/// `copy` of the secret; `greet` echoes its `auth` input; `reject` fails
/// quoting its `token` input.
async fn agent(s: &Server) -> Agent {
    let agent = Agent::start(|b| match b["capability"].as_str() {
        Some("issue") => (
            200,
            json!({"outputs": {"secret": SECRET, "copy": SECRET,
                               "vault": {"key": NESTED}, "user": "alice"}}),
        ),
        Some("greet") => (200, json!({"outputs": {"echo": b["inputs"]["auth"]}})),
        _ => (
            400,
            json!({"error": {"code": "REJECTED",
                             "message": format!("token {} refused", b["inputs"]["token"].as_str().unwrap_or("?"))}}),
        ),
    })
    .await;
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "bridge-1", "type": "bridge", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "issue", "sensitive": ["secret", "vault"]},
                                    {"id": "greet"}, {"id": "reject"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for wf in [
        json!({"id": "w-copy", "name": "copies", "steps": [
            {"id": "s1", "agentId": "bridge-1", "capability": "issue"},
            {"id": "s2", "agentId": "bridge-1", "capability": "greet", "dependencies": ["s1"],
             "inputs": {"auth": "Bearer ${steps.s1.outputs.secret}"}}],
            "expectedOutputs": {"all": "${steps.s1.outputs}",
                                "greeting": "${steps.s2.outputs.echo}"}}),
        json!({"id": "w-fail", "name": "errors", "steps": [
            {"id": "s1", "agentId": "bridge-1", "capability": "issue"},
            {"id": "s2", "agentId": "bridge-1", "capability": "reject", "dependencies": ["s1"],
             "inputs": {"token": "${steps.s1.outputs.copy}",
                        "key": "${steps.s1.outputs.vault.key}"}}]}),
    ] {
        let (st, v) = s.post("/maestro/workflows", wf).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    agent
}

fn leaks(v: &impl ToString) -> bool {
    let t = v.to_string();
    t.contains(SECRET) || t.contains(NESTED)
}

async fn get(s: &Server, path: &str, token: &str) -> Value {
    let (st, v) = s.call(Method::GET, path, Some(token), None).await;
    assert_eq!(st, StatusCode::OK, "{path}: {v}");
    v
}

/// Frames of `sse` until both terminal events of the test's executions.
async fn until_both_finished(sse: &mut Sse) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut terminal = 0;
    while terminal < 2 {
        let f = sse.next().await.expect("the stream goes on");
        if matches!(
            f.event.as_deref(),
            Some("workflow:completed" | "workflow:failed")
        ) {
            terminal += 1;
        }
        frames.push(f.data);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_nested_values_and_error_messages_are_masked_for_every_non_admin() {
    let s = Server::start().await;
    let _agent = agent(&s).await;
    let tokens = [
        ("reader", s.token("reader", None).await),
        ("operator", s.token("operator", None).await),
        ("agent", s.token("agent", Some("bridge-1")).await),
    ];
    let (url, got, _) = receiver(0).await;
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"url": url, "eventTypes": ["workflow:started", "workflow:step_completed",
                   "workflow:step_failed", "workflow:completed", "workflow:failed"]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Live streams, open before anything runs.
    let mut streams = Vec::new();
    for (_, t) in &tokens {
        streams.push(Sse::open(&s, "?eventTypes=workflow:step_completed,workflow:step_failed,workflow:completed,workflow:failed", None, t).await);
    }

    let (_, done) = s
        .post("/maestro/workflows/w-copy/execute?wait=5000", json!({}))
        .await;
    let done = &done["execution"];
    assert_eq!(done["status"], "completed", "{done}");
    let (_, failed) = s
        .post("/maestro/workflows/w-fail/execute?wait=5000", json!({}))
        .await;
    let failed = &failed["execution"];
    assert_eq!(failed["status"], "failed", "{failed}");
    let ids = [
        done["id"].as_str().unwrap().to_owned(),
        failed["id"].as_str().unwrap().to_owned(),
    ];

    // The admin sees everything in clear.
    assert_eq!(done["result"]["all"]["secret"], SECRET);
    assert_eq!(done["stepExecutions"]["s1"]["outputs"]["copy"], SECRET);
    let (_, h) = s
        .get(&format!("/maestro/events?executionId={}", ids[1]))
        .await;
    assert!(
        h.to_string().contains(&format!("token {SECRET} refused")),
        "{h}"
    );

    for ((who, t), mut sse) in tokens.iter().zip(streams) {
        // Execution reads.
        let e = get(&s, &format!("/maestro/executions/{}", ids[0]), t).await;
        let e = &e["execution"];
        assert!(!leaks(e), "{who}: {e}");
        assert_eq!(e["result"]["all"]["secret"], "***", "{who}");
        assert_eq!(e["result"]["all"]["copy"], "***", "{who}");
        assert_eq!(e["result"]["all"]["vault"], "***", "{who}");
        assert_eq!(e["result"]["all"]["user"], "alice", "{who}");
        assert_eq!(e["result"]["greeting"], "Bearer ***", "{who}");
        assert_eq!(e["stepExecutions"]["s1"]["outputs"]["copy"], "***", "{who}");
        assert_eq!(e["context"]["stepOutputs"]["s1"]["copy"], "***", "{who}");
        assert_eq!(e["stepExecutions"]["s2"]["inputs"]["auth"], "Bearer ***");
        let e = get(&s, &format!("/maestro/executions/{}", ids[1]), t).await;
        let e = &e["execution"];
        assert!(!leaks(e), "{who}: {e}");
        let s2 = &e["stepExecutions"]["s2"];
        assert_eq!(s2["inputs"]["token"], "***", "{who}");
        assert_eq!(s2["inputs"]["key"], "***", "{who}");
        assert_eq!(s2["error"]["message"], "token *** refused", "{who}: {s2}");
        assert_eq!(s2["attempts"][0]["error"]["message"], "token *** refused");
        let list = get(&s, "/maestro/executions", t).await;
        assert_eq!(list["count"], 2, "{who}");
        assert!(!leaks(&list), "{who}: {list}");

        // Event history, by execution and by correlation id.
        for id in &ids {
            let h = get(&s, &format!("/maestro/events?executionId={id}"), t).await;
            assert!(h["count"].as_u64().unwrap() >= 5, "{who}: {h}");
            assert!(!leaks(&h), "{who}: {h}");
            let c = get(&s, &format!("/maestro/events/{id}"), t).await;
            assert!(c["count"].as_u64().unwrap() >= 5, "{who}: {c}");
            assert!(!leaks(&c), "{who}: {c}");
        }
        let h = get(
            &s,
            &format!(
                "/maestro/events?executionId={}&eventTypes=workflow:completed",
                ids[0]
            ),
            t,
        )
        .await;
        let p = &h["events"][0]["payload"];
        assert_eq!(p["result"]["all"]["copy"], "***", "{who}: {p}");
        assert_eq!(p["outputs"]["s1"]["copy"], "***", "{who}: {p}");
        let h = get(
            &s,
            &format!(
                "/maestro/events?executionId={}&eventTypes=workflow:step_failed",
                ids[1]
            ),
            t,
        )
        .await;
        assert_eq!(
            h["events"][0]["payload"]["error"]["message"], "token *** refused",
            "{who}: {h}"
        );

        // The live stream.
        let frames = until_both_finished(&mut sse).await;
        assert!(frames.len() >= 5, "{who}: {frames:?}");
        assert!(!leaks(&json!(frames)), "{who}: {frames:?}");
        assert!(
            frames
                .iter()
                .any(|f| f["payload"]["error"]["message"] == "token *** refused"),
            "{who}: {frames:?}"
        );
    }

    // Webhook deliveries: 2 started, 3 step completions, 1 step failure,
    // 1 completion, 1 failure.
    wait_for(&got, 8).await;
    let got = got.lock().unwrap().clone();
    for (_, body) in &got {
        let body = String::from_utf8_lossy(body);
        assert!(!leaks(&body), "{body}");
    }
    let bodies: Vec<Value> = got
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    let completed = bodies
        .iter()
        .find(|b| b["type"] == "workflow:completed")
        .unwrap();
    assert_eq!(completed["payload"]["result"]["all"]["copy"], "***");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_from_the_log_is_masked_too() {
    let s = Server::start().await;
    let _agent = agent(&s).await;
    let reader = s.token("reader", None).await;
    for wf in ["w-copy", "w-fail"] {
        s.post(
            &format!("/maestro/workflows/{wf}/execute?wait=5000"),
            json!({}),
        )
        .await;
    }
    let mut sse = Sse::open(&s, "", Some(0), &reader).await;
    let frames = until_both_finished(&mut sse).await;
    assert!(frames.iter().any(|f| f["type"] == "workflow:step_failed"));
    assert!(!leaks(&json!(frames)), "{frames:?}");
    s.stop().await;
}
