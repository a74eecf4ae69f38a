//! Fault injection, end to end: an agent (a raw TCP server, so that it can
//! misbehave below HTTP) hangs, resets connections, drips its answer byte by
//! byte, answers too much, answers garbage, or answers outputs of the wrong
//! type. Each fault ends its step in the classification of API.md ("How
//! answers are classified"), retried exactly when that says so, and the
//! execution always ends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::Server;

const MAX_OUTPUT: usize = 4096;

/// Read one HTTP request: (request line, body).
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = head.lines().next().unwrap_or_default().to_owned();
    Some((line, buf[head_end..head_end + len].to_vec()))
}

fn answer(status: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn misbehave(mut s: TcpStream) {
    let Some((line, body)) = read_request(&mut s).await else {
        return;
    };
    if !line.starts_with("POST /invoke") {
        // Health probes and cancels: fine.
        let _ = s.write_all(&answer("200 OK", b"{}")).await;
        return;
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    match v["capability"].as_str().unwrap_or_default() {
        "hang" => tokio::time::sleep(Duration::from_secs(30)).await,
        "reset" => {
            // Close at once, without an answer (RST with linger 0).
            let _ = s.set_zero_linger();
        }
        "drip" => {
            let body = br#"{"outputs": {"slow": "drip drip drip drip drip drip"}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            for b in body {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        "huge" => {
            let big = "x".repeat(MAX_OUTPUT + 70_000);
            let body = serde_json::to_vec(&json!({"outputs": {"big": big}})).unwrap();
            let _ = s.write_all(&answer("200 OK", &body)).await;
        }
        "garbage" => {
            let _ = s.write_all(&answer("200 OK", b"<html>not json")).await;
        }
        "wrongtype" => {
            let _ = s
                .write_all(&answer("200 OK", br#"{"outputs": {"n": "seven"}}"#))
                .await;
        }
        _ => {
            let _ = s
                .write_all(&answer("200 OK", br#"{"outputs": {"n": 7}}"#))
                .await;
        }
    }
}

async fn faulty_agent() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(misbehave(s));
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_fault_ends_in_its_classification() {
    let s = Server::start_with(|c| c.server.max_output_bytes = MAX_OUTPUT).await;
    let endpoint = faulty_agent().await;
    let caps: Vec<Value> = [
        "hang",
        "reset",
        "drip",
        "huge",
        "garbage",
        "wrongtype",
        "fine",
    ]
    .iter()
    .map(|c| json!({"id": c, "outputs": {"n": "integer?"}}))
    .collect();
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "faulty", "type": "test", "endpoint": endpoint, "capabilities": caps}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    // (capability, expected code, retryable → 2 attempts)
    let cases = [
        ("hang", "STEP_TIMEOUT", true),
        ("reset", "AGENT_UNREACHABLE", true),
        ("drip", "STEP_TIMEOUT", true),
        ("huge", "OUTPUT_TOO_LARGE", false),
        ("garbage", "INVALID_AGENT_RESPONSE", true),
        ("wrongtype", "OUTPUT_SCHEMA_MISMATCH", false),
    ];
    let mut ids = Vec::new();
    for (cap, _, _) in &cases {
        let wf = json!({"id": format!("f-{cap}"), "name": cap, "steps": [{
            "id": "s", "agentId": "faulty", "capability": cap, "timeout": 400,
            "retryPolicy": {"maxAttempts": 2, "delayMs": 10}}]});
        let (st, v) = s.post("/maestro/workflows", wf).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let (st, v) = s
            .post(&format!("/maestro/workflows/f-{cap}/execute"), json!({}))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    for ((cap, code, retryable), id) in cases.iter().zip(&ids) {
        let e = s.wait_terminal(id).await;
        assert_eq!(e["status"], "failed", "{cap}: {e}");
        let step = &e["stepExecutions"]["s"];
        assert_eq!(step["error"]["code"], *code, "{cap}: {step}");
        let attempts = step["attempts"].as_array().unwrap().len();
        assert_eq!(
            attempts,
            if *retryable { 2 } else { 1 },
            "{cap}: retried exactly when retryable: {step}"
        );
    }
    // The agent's good answers still work.
    let wf = json!({"id": "f-fine", "name": "fine", "steps": [
        {"id": "s", "agentId": "faulty", "capability": "fine"}]});
    s.post("/maestro/workflows", wf).await;
    let (st, v) = s
        .post("/maestro/workflows/f-fine/execute?wait=5000", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "completed", "{v}");
    assert_eq!(v["execution"]["stepExecutions"]["s"]["outputs"]["n"], 7);
    s.stop().await;
}
