//! The `callback` error handler end to end: a real Maestro, an in-process agent
//! that fails, the real `HttpOutbound`, and a receiver on a loopback port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maestro_api::outbound::{AllowList, HttpOutbound};
use maestro_core::model::{ExecutionStatus, RegisteredAgent, Workflow, WorkflowExecution};
use maestro_core::ports::InvokeError;
use maestro_engine::{ExecuteOptions, Maestro, MaestroOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// A minimal HTTP/1.1 receiver on 127.0.0.1: answers 500 to the first
/// `fail_first` requests, then 200. Records every request.
async fn receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let n = {
                let mut l = log.lock().unwrap();
                l.push(Received {
                    head,
                    body: buf[head_end..].to_vec(),
                });
                l.len()
            };
            let status = if n <= fail_first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let answer =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = sock.write_all(answer.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    (port, seen)
}

async fn maestro(allow: AllowList) -> Maestro {
    let mut o = MaestroOptions::new(Arc::new(maestro_store::MemoryStore::new()));
    o.outbound = Some(Arc::new(HttpOutbound::new(allow)));
    o.health_checker = false;
    o.drain_timeout_ms = 2_000;
    o.config.default_retry_policy.max_attempts = 1;
    o.config.default_retry_policy.delay_ms = 10;
    Maestro::initialize(o).await.expect("initialize")
}

/// An in-process agent whose capability `charge` always fails, not retryably.
async fn failing_agent(m: &Maestro) {
    let agent: RegisteredAgent = serde_json::from_value(json!({
        "id": "payments", "type": "test", "name": "payments", "transport": "inprocess",
        "capabilities": [{"id": "charge"}]
    }))
    .unwrap();
    m.upsert_agent(agent).await.expect("register agent");
    m.in_process().register("payments", "charge", |_| async {
        Err(InvokeError::new(
            "CARD_DECLINED",
            "the card was declined",
            false,
        ))
    });
}

/// Define a one-step workflow whose step calls back to `url` when it fails,
/// run it, and wait for the end.
async fn run_with_callback(m: &Maestro, url: &str) -> (WorkflowExecution, Duration) {
    let wf: Workflow = serde_json::from_value(json!({
        "id": "pay", "name": "pay", "steps": [
            {"id": "charge", "capability": "charge",
             "errorHandler": {"type": "callback", "action": url}}
        ]
    }))
    .unwrap();
    m.define_workflow(wf, "test")
        .await
        .expect("define workflow");
    let t0 = Instant::now();
    let (e, _) = m
        .execute_workflow("pay", ExecuteOptions::default())
        .await
        .expect("execute");
    let done = m
        .wait_for_execution(&e.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("execution exists");
    (done, t0.elapsed())
}

#[tokio::test]
async fn callback_is_delivered_after_retries_then_the_execution_fails() {
    let (port, seen) = receiver(2).await;
    let m = maestro(AllowList::default_for_listen(true)).await;
    failing_agent(&m).await;

    let (e, took) = run_with_callback(&m, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_eq!(e.status, ExecutionStatus::Failed, "{:?}", e.error);
    // Two failed deliveries, backoff 200 ms then 400 ms, the third succeeds.
    assert!(took >= Duration::from_millis(600), "{took:?}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "500, 500, then 200");
    let delivery = seen[0]
        .header("x-maestro-delivery")
        .expect("delivery header");
    assert_eq!(delivery, format!("{}:charge:callback", e.id));
    for r in &seen {
        assert!(r.head.starts_with("POST /hook HTTP/1.1\r\n"), "{}", r.head);
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            r.header("x-maestro-delivery").as_deref(),
            Some(delivery.as_str()),
            "same delivery id on every attempt"
        );
        assert!(r.header("user-agent").unwrap().starts_with("maestro/"));
    }
    let body: Value = serde_json::from_slice(&seen[2].body).expect("JSON body");
    assert_eq!(body["execution"]["id"], json!(e.id));
    assert_eq!(body["execution"]["workflowId"], "pay");
    assert_eq!(body["step"]["stepId"], "charge");
    assert_eq!(body["error"]["code"], "CARD_DECLINED");
    assert_eq!(body["error"]["message"], "the card was declined");
    m.shutdown().await;
}

#[tokio::test]
async fn callback_to_metadata_address_is_refused_without_connecting() {
    let m = maestro(AllowList::default_for_listen(true)).await;
    failing_agent(&m).await;

    let (e, took) = run_with_callback(
        &m,
        "http://169.254.169.254/latest/meta-data/iam/credentials",
    )
    .await;
    assert_eq!(e.status, ExecutionStatus::Failed, "{:?}", e.error);
    // Refused is final: no retries, no backoff, no connection timeout.
    assert!(took < Duration::from_millis(500), "{took:?}");
    m.shutdown().await;
}

#[tokio::test]
async fn explicit_allow_list_without_loopback_refuses_the_receiver() {
    let (port, seen) = receiver(0).await;
    let allow = AllowList::new(&["hooks.example.com".to_owned(), "10.0.0.0/8".to_owned()])
        .expect("valid list");
    let m = maestro(allow).await;
    failing_agent(&m).await;

    let (e, took) = run_with_callback(&m, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_eq!(e.status, ExecutionStatus::Failed, "{:?}", e.error);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Give a stray delivery time to arrive before asserting there was none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.lock().unwrap().is_empty(), "receiver got nothing");
    m.shutdown().await;
}
