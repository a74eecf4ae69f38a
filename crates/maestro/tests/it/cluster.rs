//! Several nodes on one PostgreSQL schema (docs/OPERATIONS.md "Running a
//! cluster"): real `maestro serve` processes killed with SIGKILL, in-process
//! servers for the event fan-out, and database connections killed with
//! `pg_terminate_backend`. Each test has a fresh schema (`ScratchSchema`); with
//! `CI=true` an unreachable PostgreSQL fails the test.

use std::collections::{BTreeMap, HashSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_store::ScratchSchema;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::{serve_command, start_serve};
use crate::sse::Sse;
use crate::support::{Agent, Server, now_ms, settings};

const ADMIN: &str = "cluster-test-admin-token";
const TERMINAL: [&str; 4] = ["completed", "failed", "rolled_back", "cancelled"];

/// A `maestro serve` process of the cluster.
struct Node {
    child: Child,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    fn spawn(url: &str, ttl_ms: u64) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (child, base) = start_serve(
            serve_command(dir.path())
                .env("MAESTRO_DATABASE_URL", url)
                .env("MAESTRO_DATABASE_MAX_CONNECTIONS", "6")
                .env("MAESTRO_CLUSTER_LEASE_TTL_MS", ttl_ms.to_string())
                .env("MAESTRO_ADMIN_TOKEN", ADMIN),
        );
        Node {
            child,
            base,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(r) => {
                let st = r.status();
                (st, r.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": e.to_string()}),
            ),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls an agent saw: (idempotency key, when the call arrived).
type Calls = Arc<Mutex<Vec<(String, u64)>>>;

async fn recording_agent(delay_ms: u64) -> (Agent, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let agent = Agent::start(move |b| {
        let key = b["taskId"].as_str().unwrap_or_default().to_owned();
        c.lock()
            .unwrap()
            .push((key, now_ms().saturating_sub(delay_ms)));
        (200, json!({"outputs": {"step": b["stepId"]}}))
    })
    .await;
    agent
        .delay_ms
        .store(delay_ms, std::sync::atomic::Ordering::SeqCst);
    (agent, calls)
}

fn chain(steps: usize) -> Value {
    let steps: Vec<_> = (0..steps)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "agentId": "worker", "capability": "work"});
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"id": "chain", "name": "Chain", "steps": steps})
}

/// Wait until `node` sees agent `id` (registered through another node).
async fn wait_agent(node: &Node, id: &str) {
    for _ in 0..200 {
        if node.get(&format!("/maestro/agents/{id}")).await.0 == StatusCode::OK {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("agent {id} never seen by {}", node.base);
}

async fn wait_terminal(node: &Node, id: &str, within: Duration) -> Value {
    let until = tokio::time::Instant::now() + within;
    loop {
        let (st, v) = node.get(&format!("/maestro/executions/{id}")).await;
        if st == StatusCode::OK {
            let status = v["execution"]["status"].as_str().unwrap_or_default();
            if TERMINAL.contains(&status) {
                return v["execution"].clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "execution {id} did not finish: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three nodes; executions started through each; one node SIGKILLed mid-run.
async fn three_nodes_one_killed(url: String) {
    let (agent, calls) = recording_agent(300).await;
    let mut nodes: Vec<Node> = (0..3).map(|_| Node::spawn(&url, 1500)).collect();
    let (st, v) = nodes[0]
        .post(
            "/maestro/agents",
            json!({"id": "worker", "type": "worker", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = nodes[0].post("/maestro/workflows", chain(4)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for n in &nodes[1..] {
        wait_agent(n, "worker").await;
    }

    let mut ids = Vec::new();
    for i in 0..30 {
        let (st, v) = nodes[i % 3]
            .post("/maestro/workflows/chain/execute", json!({}))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    // Mid-run: every execution has had a step or so.
    while calls.lock().unwrap().len() < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = nodes.remove(1);
    let killed_at = now_ms();
    drop(victim); // SIGKILL

    let mut finished = Vec::new();
    for id in &ids {
        finished.push(wait_terminal(&nodes[0], id, Duration::from_secs(60)).await);
    }
    for e in &finished {
        assert_eq!(e["status"], "completed", "{e}");
    }

    // Per idempotency key: every call's arrival time.
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, at) in calls.lock().unwrap().iter() {
        by_key.entry(key.clone()).or_default().push(*at);
    }
    let mut resent = 0;
    for e in &finished {
        let id = e["id"].as_str().unwrap();
        for (step, s) in e["stepExecutions"].as_object().unwrap() {
            let attempts = s["attempts"].as_array().unwrap();
            assert_eq!(
                attempts.len(),
                1,
                "one attempt per step, kept across the takeover: {s}"
            );
            let key = format!("{id}:{step}:1");
            let seen = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("{key} was never called"));
            // Only these keys: the attempt number never changed.
            assert!(seen.len() <= 2, "{key} called {} times", seen.len());
            let completed = s["completedAt"].as_u64().unwrap();
            if completed < killed_at {
                // Committed before the kill: never invoked again.
                assert!(
                    seen.iter().all(|at| *at <= completed),
                    "{key} completed at {completed} (before the kill at {killed_at}) was called again: {seen:?}"
                );
            }
            if seen.len() == 2 {
                resent += 1;
            }
        }
    }
    let keys: HashSet<&String> = by_key.keys().collect();
    assert!(
        keys.iter().all(|k| k.ends_with(":1")),
        "no attempt number changed: {keys:?}"
    );
    // The killed node's executions were resumed by the others. (Its
    // interrupted calls may not be recorded: the agent drops a request whose
    // client went away before answering it.)
    let victims: Vec<&String> = ids.iter().skip(1).step_by(3).collect();
    let resumed = victims.iter().any(|id| {
        by_key
            .iter()
            .any(|(k, at)| k.starts_with(id.as_str()) && at.iter().any(|t| *t > killed_at))
    });
    assert!(resumed, "the killed node's executions were taken over");
    let _ = resent;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_one_is_killed() {
    ScratchSchema::with_fresh(three_nodes_one_killed).await;
}

/// An in-process node of the cluster on `url`.
async fn node_in_process(url: &str) -> Server {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut s = settings(dir.path());
    s.server.database_url = Some(url.to_owned());
    s.server.database_max_connections = 4;
    s.server.cluster_lease_ttl_ms = 2000;
    s.server.admin_token = Some(ADMIN.to_owned());
    let running = maestro_server::serve::start(s).await.expect("node starts");
    Server {
        base: format!("http://{}", running.addr),
        running: Some(running),
        admin: ADMIN.to_owned(),
        client: reqwest::Client::new(),
        dir,
    }
}

/// An SSE client on node A sees, in seq order and without gaps, the events of
/// executions started through node B.
async fn events_cross_nodes(url: String) {
    let agent = Agent::echo().await;
    let a = node_in_process(&url).await;
    let b = node_in_process(&url).await;
    a.register_http_agent("worker", &agent.endpoint(), &["work"])
        .await;
    let (st, v) = a.post("/maestro/workflows", chain(3)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for _ in 0..200 {
        if b.get("/maestro/agents/worker").await.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, last) = a.get("/maestro/events?limit=1").await;
    let after = last["events"][0]["seq"].as_u64().unwrap_or(0);
    let mut stream = Sse::open(&a, &format!("?after={after}"), None, ADMIN).await;

    let mut ids = HashSet::new();
    for _ in 0..5 {
        let (st, v) = b
            .post("/maestro/workflows/chain/execute?wait=10000", json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["execution"]["status"], "completed", "{v}");
        ids.insert(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    let mut seqs = Vec::new();
    let mut completed = HashSet::new();
    while completed.len() < ids.len() {
        let f = stream.next().await.expect("the stream stays open");
        seqs.push(f.id.expect("every event has its seq as id"));
        if f.event.as_deref() == Some("workflow:completed") {
            completed.insert(
                f.data["executionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    assert_eq!(seqs[0], after + 1, "starts right after the resume point");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in seq order without gaps: {seqs:?}"
    );
    assert_eq!(completed, ids);
    drop(stream);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_on_one_node_sees_executions_of_another_in_order() {
    ScratchSchema::with_fresh(events_cross_nodes).await;
}

/// Connections killed under load with `pg_terminate_backend`: the nodes
/// reconnect, and every execution acknowledged completes.
async fn connections_killed(url: String) {
    let app = format!("maestro_kill_{}", now_ms());
    let url = if url.contains('?') {
        format!("{url}&application_name={app}")
    } else {
        format!("{url}?application_name={app}")
    };
    let (agent, _calls) = recording_agent(20).await;
    let nodes: Vec<Node> = (0..2).map(|_| Node::spawn(&url, 1500)).collect();
    let (st, v) = nodes[0]
        .post(
            "/maestro/agents",
            json!({"id": "worker", "type": "worker", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = nodes[0].post("/maestro/workflows", chain(3)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    wait_agent(&nodes[1], "worker").await;

    let killer = {
        let (app, url) = (app.clone(), url.clone());
        tokio::spawn(async move {
            let mut killed = 0u64;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                killed += ScratchSchema::terminate_backends(&url, &app)
                    .await
                    .expect("pg_terminate_backend");
            }
            killed
        })
    };
    // Each execute is retried with its Idempotency-Key until acknowledged.
    let mut ids = Vec::new();
    for i in 0..40 {
        let node = &nodes[i % 2];
        let mut tries = 0;
        loop {
            let req = node
                .client
                .post(format!("{}/maestro/workflows/chain/execute", node.base))
                .bearer_auth(ADMIN)
                .header("Idempotency-Key", format!("k{i}"))
                .json(&json!({}));
            let last = match req.send().await {
                Ok(r) if r.status() == StatusCode::ACCEPTED || r.status() == StatusCode::OK => {
                    let v: Value = r.json().await.unwrap();
                    ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
                    break;
                }
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            tries += 1;
            assert!(tries < 200, "execute {i} never acknowledged: {last}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let killed = killer.await.unwrap();
    assert!(killed > 0, "connections were killed");
    for (i, id) in ids.iter().enumerate() {
        let e = wait_terminal(&nodes[i % 2], id, Duration::from_secs(60)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 40, "one execution per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_after_connections_are_killed() {
    ScratchSchema::with_fresh(connections_killed).await;
}

/// `maxConcurrentWorkflows` holds for the whole cluster; a config patch and a
/// token revocation through one node apply on the other.
async fn cluster_wide_limits(url: String) {
    let agent = Agent::echo().await;
    agent
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let a = node_in_process(&url).await;
    let b = node_in_process(&url).await;
    a.register_http_agent("worker", &agent.endpoint(), &["work"])
        .await;
    let (st, v) = a.post("/maestro/workflows", chain(1)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    // Config through A, seen by B.
    let (st, v) = a
        .patch("/maestro/config", json!({"maxConcurrentWorkflows": 2}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut seen = false;
    for _ in 0..200 {
        let (_, c) = b.get("/maestro/config").await;
        let agent_seen = b.get("/maestro/agents/worker").await.0 == StatusCode::OK;
        if c["config"]["maxConcurrentWorkflows"] == 2 && agent_seen {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "B applies the config patched through A");

    let mut ids = Vec::new();
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (st, v) = node
            .post("/maestro/workflows/chain/execute", json!({}))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    let mut most = 0;
    loop {
        let (_, running) = a.get("/maestro/executions?status=running&limit=100").await;
        let n = running["total"].as_u64().unwrap_or(0);
        assert!(n <= 2, "at most 2 running in the cluster: {running}");
        most = most.max(n);
        let (_, done) = a
            .get("/maestro/executions?status=completed&limit=100")
            .await;
        if done["total"].as_u64() == Some(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2, "the limit was reached, not exceeded");

    // A token revoked through A stops working on B.
    let (st, v) = a.post("/maestro/tokens", json!({"role": "reader"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let token_id = v["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(read_with(&b, &secret).await, StatusCode::OK);
    let (st, v) = a.delete(&format!("/maestro/tokens/{token_id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut refused = false;
    for _ in 0..40 {
        if read_with(&b, &secret).await == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        refused,
        "B refuses the token revoked through A within 1 s (its cache TTL is 5 s)"
    );
    a.stop().await;
    b.stop().await;
}

async fn read_with(s: &Server, token: &str) -> StatusCode {
    s.call(reqwest::Method::GET, "/maestro/agents", Some(token), None)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_config_and_revocations_are_cluster_wide() {
    ScratchSchema::with_fresh(cluster_wide_limits).await;
}

/// A poll agent long-polls node B while its executions run on node A: the
/// waiting poll is woken by A's enqueue, and the answer given to B reaches the
/// call waiting on A.
async fn poll_across_nodes(url: String) {
    let a = node_in_process(&url).await;
    let b = node_in_process(&url).await;
    let (st, v) = a
        .post(
            "/maestro/agents",
            json!({"id": "puller", "type": "worker", "transport": "poll",
                   "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let token = v["agentToken"].as_str().unwrap().to_owned();
    let wf = json!({"id": "pulled", "name": "pulled", "steps": [
        {"id": "s0", "agentId": "puller", "capability": "work"},
        {"id": "s1", "agentId": "puller", "capability": "work", "dependencies": ["s0"]}]});
    let (st, v) = a.post("/maestro/workflows", wf).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for _ in 0..200 {
        if b.get("/maestro/agents/puller").await.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The agent works through B only.
    let worker = {
        let (base, client, token) = (b.base.clone(), b.client.clone(), token.clone());
        tokio::spawn(async move {
            let mut answered = 0;
            while answered < 6 {
                let r: Value = client
                    .post(format!("{base}/maestro/agents/puller/tasks/poll"))
                    .bearer_auth(&token)
                    .json(&json!({"waitMs": 5000, "max": 10}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for t in r["tasks"].as_array().cloned().unwrap_or_default() {
                    let id = t["taskId"].as_str().unwrap();
                    let st = client
                        .post(format!("{base}/maestro/tasks/{id}/complete"))
                        .bearer_auth(&token)
                        .json(&json!({"outputs": {"by": "b"}}))
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert_eq!(st, StatusCode::OK);
                    answered += 1;
                }
            }
        })
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (st, v) = a.post("/maestro/workflows/pulled/execute", json!({})).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let e = a.wait_terminal(id).await;
        assert_eq!(e["status"], "completed", "{e}");
        assert_eq!(e["stepExecutions"]["s1"]["outputs"]["by"], "b", "{e}");
    }
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker answered every task")
        .unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_agent_on_one_node_serves_executions_of_another() {
    ScratchSchema::with_fresh(poll_across_nodes).await;
}

/// Webhooks are delivered once, by the leader, whichever node took the
/// subscription and the events; when the leader stops another node carries on.
async fn webhooks_from_the_leader(url: String) {
    let a = node_in_process(&url).await;
    let b = node_in_process(&url).await;
    let (hook, got, _) = crate::webhooks::receiver(0).await;
    let (st, v) = b
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": hook}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let mut seqs = Vec::new();
    for i in 0..5 {
        let (st, v) = publish_event(&b, i).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        seqs.push(v["event"]["seq"].as_u64().unwrap());
    }
    crate::webhooks::wait_for(&got, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = |got: &crate::webhooks::Received| -> Vec<u64> {
        got.lock()
            .unwrap()
            .iter()
            .map(|(_, body)| {
                serde_json::from_slice::<Value>(body).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(delivered(&got), seqs, "each event once, in order");

    // The leader goes away: B takes over from the stored cursor.
    a.stop().await;
    for i in 5..8 {
        let (st, v) = publish_event(&b, i).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        seqs.push(v["event"]["seq"].as_u64().unwrap());
    }
    crate::webhooks::wait_for(&got, 8).await;
    let after: HashSet<u64> = delivered(&got).into_iter().collect();
    assert!(
        seqs.iter().all(|s| after.contains(s)),
        "every event delivered after the failover: {after:?} vs {seqs:?}"
    );
    b.stop().await;
}

async fn publish_event(s: &Server, i: u64) -> (StatusCode, Value) {
    s.post(
        "/maestro/events",
        json!({"type": "agent:event", "payload": {"i": i}}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_by_the_leader_and_fail_over() {
    ScratchSchema::with_fresh(webhooks_from_the_leader).await;
}

/// Each key's requests at once, one through each node: `(status, execution id)`
/// per node.
async fn race_key(nodes: &[Node], key: &str, query: &str) -> Vec<(StatusCode, String, Value)> {
    let send = |n: &Node| {
        n.client
            .post(format!("{}/maestro/workflows/chain/execute{query}", n.base))
            .bearer_auth(ADMIN)
            .header("Idempotency-Key", key.to_owned())
            .json(&json!({"inputs": {"key": key}}))
            .send()
    };
    let (a, b, c) = tokio::join!(send(&nodes[0]), send(&nodes[1]), send(&nodes[2]));
    let mut out = Vec::new();
    for r in [a, b, c] {
        let r = r.expect("execute sent");
        let st = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let id = v["execution"]["id"].as_str().unwrap_or_default().to_owned();
        out.push((st, id, v));
    }
    out
}

/// The same `Idempotency-Key` sent at the same moment through three nodes:
/// exactly one execution per key and one set of agent calls; the other
/// requests are answered 200 with that execution (with `?wait=`, after
/// waiting for it, wherever it runs).
async fn one_execution_per_key_across_nodes(url: String) {
    let (agent, calls) = recording_agent(20).await;
    let nodes: Vec<Node> = (0..3).map(|_| Node::spawn(&url, 1500)).collect();
    let (st, v) = nodes[0]
        .post(
            "/maestro/agents",
            json!({"id": "worker", "type": "worker", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = nodes[0].post("/maestro/workflows", chain(2)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for n in &nodes[1..] {
        wait_agent(n, "worker").await;
        for _ in 0..200 {
            if n.get("/maestro/workflows/chain").await.0 == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    const KEYS: usize = 12;
    let mut executions = HashSet::new();
    // Without wait: one 202 (the winner), two 200 with the same execution.
    for k in 0..KEYS {
        let answers = race_key(&nodes, &format!("race-{k}"), "").await;
        let ids: HashSet<&str> = answers.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(ids.len(), 1, "key race-{k}: one execution: {answers:?}");
        let created = answers
            .iter()
            .filter(|(st, ..)| *st == StatusCode::ACCEPTED)
            .count();
        let replayed = answers
            .iter()
            .filter(|(st, ..)| *st == StatusCode::OK)
            .count();
        assert_eq!(
            (created, replayed),
            (1, 2),
            "key race-{k}: one 202, two 200: {answers:?}"
        );
        executions.insert(answers[0].1.clone());
    }
    // With wait: every request answers the finished winner, 200.
    for k in 0..KEYS {
        let answers = race_key(&nodes, &format!("race-wait-{k}"), "?wait=20000").await;
        let ids: HashSet<&str> = answers.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(
            ids.len(),
            1,
            "key race-wait-{k}: one execution: {answers:?}"
        );
        for (st, _, v) in &answers {
            assert_eq!(*st, StatusCode::OK, "{v}");
            assert_eq!(v["execution"]["status"], "completed", "{v}");
        }
        executions.insert(answers[0].1.clone());
    }
    assert_eq!(executions.len(), 2 * KEYS);
    for id in &executions {
        let e = wait_terminal(&nodes[0], id, Duration::from_secs(30)).await;
        assert_eq!(e["status"], "completed", "{e}");
    }
    let (st, v) = nodes[1]
        .get("/maestro/executions?workflowId=chain&limit=1000")
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["total"].as_u64(),
        Some(2 * KEYS as u64),
        "no losing execution was stored"
    );
    // One set of agent calls: each step of each execution called once.
    let calls = calls.lock().unwrap().clone();
    let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
    for (task, _) in &calls {
        *by_task.entry(task.clone()).or_default() += 1;
    }
    assert_eq!(
        calls.len(),
        2 * 2 * KEYS,
        "2 steps per execution: {by_task:?}"
    );
    assert!(by_task.values().all(|n| *n == 1), "{by_task:?}");
    for task in by_task.keys() {
        let exec = task.split(':').next().unwrap_or_default();
        assert!(
            executions.contains(exec),
            "a call of an unknown execution {task}"
        );
    }
    println!(
        "cross-node idempotency race: {} keys x 3 nodes -> {} executions, {} agent calls",
        2 * KEYS,
        executions.len(),
        calls.len()
    );
}

#[tokio::test]
async fn an_idempotency_key_raced_through_three_nodes_starts_one_execution() {
    ScratchSchema::with_fresh(one_execution_per_key_across_nodes).await;
}
