//! `GET /maestro/events/stream`: live events, resume with Last-Event-ID, and a
//! stalled client that is dropped without slowing anyone.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Server;

/// Reads SSE frames from a response.
pub(crate) struct Sse {
    resp: reqwest::Response,
    buf: String,
}

#[derive(Debug)]
pub(crate) struct Frame {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: Value,
}

impl Sse {
    pub(crate) async fn open(
        s: &Server,
        query: &str,
        last_event_id: Option<u64>,
        token: &str,
    ) -> Sse {
        let mut req = s
            .client
            .get(s.url(&format!("/maestro/events/stream{query}")))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            resp,
            buf: String::new(),
        }
    }

    /// The next event frame (keep-alive comments skipped); None at the end.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut f = Frame {
                    id: None,
                    event: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        f.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        f.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                f.data = serde_json::from_str(&data).unwrap();
                return Some(f);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.resp.chunk()).await {
                Ok(Ok(Some(c))) => self.buf.push_str(&String::from_utf8_lossy(&c)),
                Ok(_) => return None,
                Err(_) => panic!("no SSE data within 10 s"),
            }
        }
    }
}

async fn publish(s: &Server, n: usize, payload: Value) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let (st, v) = s
            .post(
                "/maestro/events",
                json!({"type": "agent:event", "sourceAgent": "t", "payload": {"i": i, "p": payload}}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        seqs.push(v["event"]["seq"].as_u64().unwrap());
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_then_resume_with_last_event_id() {
    let s = Server::start().await;
    let reader = s.token("reader", None).await;
    let mut live = Sse::open(&s, "?eventTypes=agent:event", None, &reader).await;
    // An event of another type is filtered out.
    s.post(
        "/maestro/events",
        json!({"type": "agent:alert", "payload": {}}),
    )
    .await;
    let seqs = publish(&s, 3, json!(null)).await;
    for (i, seq) in seqs.iter().enumerate() {
        let f = live.next().await.unwrap();
        assert_eq!(f.id, Some(*seq));
        assert_eq!(f.event.as_deref(), Some("agent:event"));
        assert_eq!(f.data["seq"].as_u64(), Some(*seq));
        assert_eq!(f.data["payload"]["i"], i);
    }
    drop(live);

    // Published while nobody listened; resumed from the log, then live.
    let missed = publish(&s, 2, json!(null)).await;
    let mut resumed = Sse::open(&s, "?eventTypes=agent:event", Some(seqs[2]), &reader).await;
    for seq in &missed {
        assert_eq!(resumed.next().await.unwrap().id, Some(*seq));
    }
    let later = publish(&s, 1, json!(null)).await;
    assert_eq!(resumed.next().await.unwrap().id, Some(later[0]));

    // ?after= works like Last-Event-ID; a bad Last-Event-ID is a 400.
    let mut after = Sse::open(
        &s,
        &format!("?eventTypes=agent:event&after={}", seqs[0]),
        None,
        &reader,
    )
    .await;
    assert_eq!(after.next().await.unwrap().id, Some(seqs[1]));
    let r = s
        .client
        .get(s.url("/maestro/events/stream"))
        .bearer_auth(&reader)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_dropped_and_can_resume() {
    let s = Server::start_with(|c| c.server.sse_queue = 4).await;
    let mut stalled = Sse::open(&s, "?eventTypes=agent:event", None, &s.admin.clone()).await;
    // Far more than the socket buffers hold: the stream's queue overflows.
    let big = json!("x".repeat(200_000));
    let seqs = publish(&s, 80, big).await;
    // Every publish went through while the client read nothing. Now it reads:
    // some events, then the end of the stream.
    let mut got = Vec::new();
    while let Some(f) = stalled.next().await {
        got.push(f.id.unwrap());
    }
    assert!(
        got.len() < seqs.len(),
        "the stalled client was disconnected ({} events)",
        got.len()
    );
    assert_eq!(
        &seqs[..got.len()],
        &got[..],
        "what it got is in order, without gaps"
    );
    // It resumes from where it was, from the log.
    let last = got.last().copied().unwrap_or(seqs[0] - 1);
    let mut resumed = Sse::open(&s, "?eventTypes=agent:event", Some(last), &s.admin.clone()).await;
    let rest = &seqs[got.len()..];
    for seq in rest {
        assert_eq!(resumed.next().await.unwrap().id, Some(*seq));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let s = Server::start().await;
    let mut live = Sse::open(&s, "", None, &s.admin.clone()).await;
    let stop = tokio::spawn(s.stop());
    assert!(live.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
}
