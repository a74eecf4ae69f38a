//! One server on SQLite: the same `Idempotency-Key` sent by concurrent
//! requests starts one execution (one set of agent calls; the others answered
//! 200 with it), a refused request claims no key, and control requests answer
//! what was committed.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Agent, Server};

const KEYS: usize = 10;
const PER_KEY: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_start_one_execution_on_sqlite() {
    let s = Server::start().await;
    let tasks: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = tasks.clone();
    let agent = Agent::start(move |b| {
        let task = b["taskId"].as_str().unwrap_or_default().to_owned();
        seen.lock().unwrap().push(task);
        (200, json!({"outputs": {"ok": true}}))
    })
    .await;
    s.register_http_agent("worker", &agent.endpoint(), &["work"])
        .await;
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "w", "name": "w", "steps": [
                {"id": "a", "agentId": "worker", "capability": "work"},
                {"id": "b", "agentId": "worker", "capability": "work", "dependencies": ["a"]}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let send = |key: String, wait: bool| {
        let req = s
            .client
            .post(s.url(if wait {
                "/maestro/workflows/w/execute?wait=20000"
            } else {
                "/maestro/workflows/w/execute"
            }))
            .bearer_auth(&s.admin)
            .header("Idempotency-Key", key.clone())
            .json(&json!({"inputs": {"key": key}}));
        async move {
            let r = req.send().await.expect("sent");
            let st = r.status();
            let v: Value = r.json().await.unwrap();
            (st, v)
        }
    };
    // Every key's requests at once, all keys at once.
    let mut all = Vec::new();
    for k in 0..KEYS {
        for i in 0..PER_KEY {
            all.push((k, tokio::spawn(send(format!("k{k}"), i % 2 == 1))));
        }
    }
    let mut by_key: BTreeMap<usize, Vec<(StatusCode, Value)>> = BTreeMap::new();
    for (k, t) in all {
        by_key.entry(k).or_default().push(t.await.unwrap());
    }
    let mut executions = HashSet::new();
    for (k, answers) in &by_key {
        let ids: HashSet<&str> = answers
            .iter()
            .map(|(_, v)| v["execution"]["id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(ids.len(), 1, "key k{k}: one execution: {answers:?}");
        let accepted = answers
            .iter()
            .filter(|(st, _)| *st == StatusCode::ACCEPTED)
            .count();
        assert!(
            answers
                .iter()
                .all(|(st, _)| *st == StatusCode::OK || *st == StatusCode::ACCEPTED),
            "{answers:?}"
        );
        // Only the creating request may answer 202 (a waiting one answers 200).
        assert!(accepted <= 1, "key k{k}: {answers:?}");
        executions.insert(ids.into_iter().next().unwrap().to_owned());
    }
    for id in &executions {
        assert_eq!(s.wait_terminal(id).await["status"], "completed");
    }
    let (_, v) = s.get("/maestro/executions?workflowId=w&limit=1000").await;
    assert_eq!(
        v["total"].as_u64(),
        Some(KEYS as u64),
        "no losing execution was stored"
    );
    let tasks = tasks.lock().unwrap().clone();
    assert_eq!(tasks.len(), KEYS * 2, "one set of agent calls: {tasks:?}");
    assert_eq!(tasks.iter().collect::<HashSet<_>>().len(), KEYS * 2);

    // A control of a finished execution: 409 with its status.
    let id = executions.iter().next().unwrap();
    for op in ["cancel", "pause", "resume"] {
        let (st, v) = s
            .post(&format!("/maestro/executions/{id}/{op}"), json!({}))
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["code"], "INVALID_STATE");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains("status completed"), "{msg}");
    }
    s.stop().await;
}
