//! The real server on PostgreSQL (`databaseUrl = postgres://...`), on a fresh
//! schema of the server at `MAESTRO_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When that server cannot be
//! reached the test is skipped with a note, unless `CI=true`: then it fails
//! (`ScratchSchema::with_fresh`).

use std::sync::Arc;

use maestro_store::ScratchSchema;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Agent, Server, auth_flow, settings};

fn seqs(events: &Value) -> Vec<u64> {
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

async fn execute_auth_flow(s: &Server, user: &str) -> Value {
    let (st, v) = s
        .post(
            "/maestro/workflows/auth-flow/execute?wait=10000",
            json!({"inputs": {"userId": user}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["execution"].clone()
}

/// A workflow through two HTTP agents with every row in PostgreSQL; a restart
/// on the same schema finds it all and the event log continues.
async fn workflow_survives_a_restart(url: String) {
    let sentinel = Agent::start(|b| {
        let ok = b["inputs"]["userId"] == "alice";
        (200, json!({"outputs": {"verified": ok}}))
    })
    .await;
    let bridge = Agent::start(|b| {
        let user = b["inputs"]["userId"].as_str().unwrap_or_default();
        (
            200,
            json!({"outputs": {"token": format!("jwt-for-{user}")}}),
        )
    })
    .await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = settings(dir.path());
    config.server.database_url = Some(url);
    config.server.database_max_connections = 4;

    let s = Server::start_in(dir.clone(), config.clone()).await;
    s.register_http_agent("sentinel-1", &sentinel.endpoint(), &["verify-identity"])
        .await;
    s.register_http_agent("bridge-1", &bridge.endpoint(), &["issue-jwt"])
        .await;
    let (st, v) = s
        .post("/maestro/workflows", auth_flow("sentinel-1", "bridge-1"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let e = execute_auth_flow(&s, "alice").await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["result"]["token"], "jwt-for-alice");
    let id = e["id"].as_str().unwrap().to_owned();
    assert_eq!(
        e["stepExecutions"]["issue-token"]["attempts"][0]["attempt"],
        1
    );
    assert_eq!(bridge.calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let (st, events) = s
        .get(&format!("/maestro/events?executionId={id}&limit=100"))
        .await;
    assert_eq!(st, StatusCode::OK, "{events}");
    let first_run = seqs(&events);
    assert!(first_run.len() >= 4, "{events}");
    assert!(
        first_run.windows(2).all(|w| w[0] < w[1]),
        "events come in seq order: {first_run:?}"
    );
    let (_, all) = s.get("/maestro/events?limit=1000").await;
    let last_before = *seqs(&all).last().expect("some events");
    s.stop().await;

    // Same schema, new process state: everything is read back from PostgreSQL.
    let s = Server::start_in(dir, config).await;
    let (st, v) = s.get(&format!("/maestro/executions/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "completed");
    assert_eq!(v["execution"]["result"]["token"], "jwt-for-alice");
    assert_eq!(
        v["execution"]["stepExecutions"]["verify-user"]["outputs"]["verified"],
        true
    );
    let (st, v) = s.get("/maestro/agents/bridge-1").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, events) = s
        .get(&format!("/maestro/events?executionId={id}&limit=100"))
        .await;
    assert_eq!(seqs(&events), first_run, "the event log survives a restart");

    let e = execute_auth_flow(&s, "bob").await;
    assert_eq!(e["status"], "completed", "{e}");
    assert!(e["result"]["token"].is_null(), "bob is not verified: {e}");
    let (_, events) = s
        .get(&format!(
            "/maestro/events?executionId={}&limit=100",
            e["id"].as_str().unwrap()
        ))
        .await;
    let second_run = seqs(&events);
    assert!(
        second_run.first().is_some_and(|s| *s > last_before),
        "seqs continue after a restart: {second_run:?} after {last_before}"
    );
    let (st, v) = s.get("/maestro/executions?workflowId=auth-flow").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 2, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_on_postgres_and_survives_a_restart() {
    ScratchSchema::with_fresh(workflow_survives_a_restart).await;
}
