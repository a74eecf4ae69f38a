//! Webhook subscriptions: signed, in-order deliveries with retries to a real
//! receiver on loopback, delivery counters, sensitive outputs masked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Agent, Server};

pub(crate) type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A receiver that answers 500 to its first `fail_first` requests.
pub(crate) async fn receiver(fail_first: usize) -> (String, Received, Arc<AtomicUsize>) {
    gated_receiver(fail_first, Arc::new(AtomicBool::new(true))).await
}

/// A receiver that answers 503 while `open` is false, then 500 to its first
/// `fail_first` requests.
async fn gated_receiver(
    fail_first: usize,
    open: Arc<AtomicBool>,
) -> (String, Received, Arc<AtomicUsize>) {
    let got: Received = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, c) = (got.clone(), calls.clone());
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let (g, c, o) = (g.clone(), c.clone(), open.clone());
            async move {
                if !o.load(Ordering::SeqCst) {
                    return AxStatus::SERVICE_UNAVAILABLE;
                }
                if c.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return AxStatus::INTERNAL_SERVER_ERROR;
                }
                g.lock().unwrap().push((headers, body));
                AxStatus::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, calls)
}

pub(crate) async fn wait_for(got: &Received, n: usize) {
    for _ in 0..300 {
        if got.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("only {} deliveries", got.lock().unwrap().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_in_order_and_retried() {
    let s = Server::start().await;
    let (url, got, calls) = receiver(3).await;
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": url}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let sub = v["subscription"]["id"].as_str().unwrap().to_owned();

    let mut seqs = Vec::new();
    for i in 0..5 {
        let (_, v) = s
            .post(
                "/maestro/events",
                json!({"type": "agent:event", "payload": {"i": i}}),
            )
            .await;
        seqs.push(v["event"]["seq"].as_u64().unwrap());
    }
    // Not subscribed to: not delivered.
    s.post(
        "/maestro/events",
        json!({"type": "agent:alert", "payload": {}}),
    )
    .await;
    wait_for(&got, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "exactly the subscribed events");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        8,
        "the first event took 4 attempts"
    );
    for (i, (headers, body)) in got.iter().enumerate() {
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["seq"].as_u64(), Some(seqs[i]), "in order");
        assert_eq!(event["payload"]["i"], i);
        assert_eq!(
            headers["x-maestro-delivery"].to_str().unwrap(),
            format!("{sub}:{}", seqs[i])
        );
        assert_eq!(headers["x-maestro-event"].to_str().unwrap(), "agent:event");
        assert_eq!(
            headers["x-maestro-signature"].to_str().unwrap(),
            maestro_engine::webhooks::signature(&secret, body),
            "HMAC-SHA256 of the exact body"
        );
    }
    let (_, v) = s.get("/maestro/subscriptions").await;
    let d = &v["subscriptions"][0]["delivery"];
    assert_eq!(d["delivered"], 5, "{v}");
    assert_eq!(d["attempts"], 8);
    assert_eq!(d["failed"], 0);
    assert_eq!(d["lastDeliveredSeq"].as_u64(), Some(seqs[4]));

    // Deleted: nothing more is delivered.
    s.delete(&format!("/maestro/subscriptions/{sub}")).await;
    s.post(
        "/maestro/events",
        json!({"type": "agent:event", "payload": {}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_events_filtered_by_workflow_with_sensitive_outputs_masked() {
    let s = Server::start().await;
    let agent = Agent::start(|_| {
        (
            200,
            json!({"outputs": {"token": "s3cr3t", "user": "alice"}}),
        )
    })
    .await;
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "bridge-1", "type": "bridge", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "issue-jwt", "sensitive": ["token"]}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for id in ["w-a", "w-b"] {
        s.post(
            "/maestro/workflows",
            json!({"id": id, "name": id, "steps": [
            {"id": "issue", "agentId": "bridge-1", "capability": "issue-jwt"}]}),
        )
        .await;
    }
    let (url, got, _) = receiver(0).await;
    s.post(
        "/maestro/subscriptions",
        json!({"eventTypes": ["workflow:step_completed", "workflow:completed"],
               "workflowId": "w-a", "url": url}),
    )
    .await;
    s.post("/maestro/workflows/w-b/execute?wait=5000", json!({}))
        .await;
    let (_, v) = s
        .post("/maestro/workflows/w-a/execute?wait=5000", json!({}))
        .await;
    assert_eq!(v["execution"]["status"], "completed");
    // Admins see the value in the execution; the webhook does not.
    assert_eq!(
        v["execution"]["stepExecutions"]["issue"]["outputs"]["token"],
        "s3cr3t"
    );
    wait_for(&got, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "only w-a's events");
    let step: Value = serde_json::from_slice(&got[0].1).unwrap();
    assert_eq!(step["type"], "workflow:step_completed");
    assert_eq!(step["payload"]["outputs"]["token"], "***");
    assert_eq!(step["payload"]["outputs"]["user"], "alice");
    let done: Value = serde_json::from_slice(&got[1].1).unwrap();
    assert_eq!(done["payload"]["outputs"]["issue"]["token"], "***");
    assert!(!String::from_utf8_lossy(&got[1].1).contains("s3cr3t"));

    // A reader sees it masked too.
    let reader = s.token("reader", None).await;
    let id = v["execution"]["id"].as_str().unwrap();
    let (_, r) = s
        .call(
            reqwest::Method::GET,
            &format!("/maestro/executions/{id}"),
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(
        r["execution"]["stepExecutions"]["issue"]["outputs"]["token"],
        "***"
    );
    assert!(!r.to_string().contains("s3cr3t"), "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_destination_is_counted_not_retried() {
    // Listening on loopback allows loopback receivers; an explicit list that
    // does not include them refuses them.
    let s = Server::start_with(|c| c.server.outbound_allow_list = Some(vec!["10.0.0.0/8".into()]))
        .await;
    let (url, _got, calls) = receiver(0).await;
    // The literal address is refused at creation (urls.rs); a host name is
    // resolved, and refused, at delivery.
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": url}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let by_name = url.replace("127.0.0.1", "localhost");
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": by_name}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    s.post(
        "/maestro/events",
        json!({"type": "agent:event", "payload": {}}),
    )
    .await;
    let mut d = Value::Null;
    for _ in 0..100 {
        let (_, v) = s.get("/maestro/subscriptions").await;
        d = v["subscriptions"][0]["delivery"].clone();
        if d["failed"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d["failed"], 1, "{d}");
    assert_eq!(d["attempts"], 1, "not retried");
    assert!(
        d["lastError"].as_str().unwrap().contains("allow-list"),
        "{d}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_delivered_after_a_restart() {
    // A receiver that refuses until told otherwise.
    let open = Arc::new(AtomicBool::new(false));
    let (url, got, _) = gated_receiver(0, open.clone()).await;

    let s = Server::start().await;
    s.post(
        "/maestro/subscriptions",
        json!({"eventTypes": ["agent:event"], "url": url}),
    )
    .await;
    let mut seqs = Vec::new();
    for i in 0..3 {
        let (_, v) = s
            .post(
                "/maestro/events",
                json!({"type": "agent:event", "payload": {"i": i}}),
            )
            .await;
        seqs.push(v["event"]["seq"].as_u64().unwrap());
    }
    // The worker is retrying the first event when the server stops.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let dir = s.dir.clone();
    let settings = crate::support::settings(dir.path());
    s.stop().await;

    open.store(true, Ordering::SeqCst);
    let s = Server::start_in(dir, settings).await;
    wait_for(&got, 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered: Vec<u64> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<Value>(b).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        delivered, seqs,
        "every event once, in order, after the restart"
    );
    s.stop().await;
}
