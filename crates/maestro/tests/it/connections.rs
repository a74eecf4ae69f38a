//! Connection limits (docs/SECURITY.md "Connections"): the header read
//! timeout, the keep-alive idle timeout, the connection cap and the drain
//! deadline, over raw TCP connections to a real server with small settings.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Server;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: maestro\r\n\r\n";
/// Far longer than any timeout a test sets: a connection still open after it
/// was not closed by the server.
const PATIENCE: Duration = Duration::from_secs(10);

async fn connect(s: &Server) -> TcpStream {
    let addr = s.running.as_ref().unwrap().addr;
    TcpStream::connect(addr).await.unwrap()
}

/// Read one response (head and `content-length` body): its status and body.
async fn response(c: &mut TcpStream) -> (u16, String) {
    try_response(c).await.expect("a whole answer in time")
}

/// One response, or `None` when the connection ends, fails or stalls first.
async fn try_response(c: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("content-length");
        if body.len() >= len {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return Some((status, body[..len].to_owned()));
        }
    }
}

/// Send `req` on a new connection until it is not refused (a closed
/// connection's slot comes free once the server has seen it close).
async fn served(s: &Server, req: &[u8]) -> (u16, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = connect(s).await;
        if c.write_all(req).await.is_ok() {
            match try_response(&mut c).await {
                Some((503, _)) | None => {}
                Some(answer) => return answer,
            }
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server closed the connection (EOF or reset) within `within`,
/// reading and discarding whatever else it sends.
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_request_heads_are_closed_after_the_header_read_timeout() {
    let s = Server::start_with(|st| {
        st.server.header_read_timeout_ms = 300;
        st.server.keep_alive_idle_timeout_ms = 600_000;
    })
    .await;
    // Connected, and never a byte.
    let mut silent = connect(&s).await;
    // Half a head, then nothing.
    let mut partial = connect(&s).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: maestro\r\n")
        .await
        .unwrap();
    // A header line every 50 ms, never the end of the head: each byte is
    // progress, but the head as a whole is late.
    let mut trickle = connect(&s).await;
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let trickling = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0.. {
            let line = format!("x-slow-{i}: 1\r\n");
            if trickle.write_all(line.as_bytes()).await.is_err() {
                return Some(started.elapsed());
            }
            if started.elapsed() > PATIENCE {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    assert!(
        closed_within(&mut silent, PATIENCE).await,
        "silent connection left open"
    );
    assert!(
        closed_within(&mut partial, PATIENCE).await,
        "partial head left open"
    );
    assert!(
        trickling.await.unwrap().is_some(),
        "a trickled head was still accepted after {PATIENCE:?}"
    );
    // A whole head in time is served.
    let mut ok = connect(&s).await;
    ok.write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut ok).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let s = Server::start_with(|st| {
        st.server.header_read_timeout_ms = 600_000;
        st.server.keep_alive_idle_timeout_ms = 300;
    })
    .await;
    let mut c = connect(&s).await;
    c.write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut c).await.0, 200);
    assert!(
        closed_within(&mut c, PATIENCE).await,
        "idle connection left open"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_requests_the_idle_timeout_applies_not_the_header_timeout() {
    let s = Server::start_with(|st| {
        st.server.header_read_timeout_ms = 200;
        st.server.keep_alive_idle_timeout_ms = 600_000;
    })
    .await;
    let mut c = connect(&s).await;
    c.write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut c).await.0, 200);
    // Idle for five header timeouts: still open, and serves the next request.
    assert!(!closed_within(&mut c, Duration::from_secs(1)).await);
    c.write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut c).await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_outlives_both_timeouts() {
    let s = Server::start_with(|st| {
        st.server.header_read_timeout_ms = 200;
        st.server.keep_alive_idle_timeout_ms = 200;
    })
    .await;
    // An event stream (keep-alive comments every 200 ms) open for 1.5 s.
    let mut c = connect(&s).await;
    let req = format!(
        "GET /maestro/events/stream HTTP/1.1\r\nhost: maestro\r\nauthorization: Bearer {}\r\n\r\n",
        s.admin
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while started.elapsed() < Duration::from_millis(1500) {
        let n = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
            .await
            .expect("the stream goes on")
            .expect("the stream is not reset");
        assert!(n > 0, "stream closed after {:?}", started.elapsed());
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_until_one_closes() {
    let s = Server::start_with(|st| {
        st.server.max_connections = 2;
        st.server.header_read_timeout_ms = 600_000;
        st.server.keep_alive_idle_timeout_ms = 600_000;
    })
    .await;
    // Two kept-alive connections hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&s).await;
        c.write_all(HEALTHZ).await.unwrap();
        assert_eq!(response(&mut c).await.0, 200);
        held.push(c);
    }
    // A third is answered 503 (or, if the answer is lost, closed) at once.
    let mut third = connect(&s).await;
    let _ = third.write_all(HEALTHZ).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, third.read_to_end(&mut answer))
        .await
        .expect("the refused connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    // The held ones still work.
    held[0].write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut held[0]).await.0, 200);
    // Once one closes, a new connection is served.
    drop(held.pop());
    assert_eq!(served(&s, HEALTHZ).await.0, 200);
    drop(held);
    // Refusals are counted (the process's recorder: other servers may add).
    let req = format!(
        "GET /metrics HTTP/1.1\r\nhost: maestro\r\nauthorization: Bearer {}\r\n\r\n",
        s.admin
    );
    let (status, metrics) = served(&s, req.as_bytes()).await;
    assert_eq!(status, 200, "{metrics}");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("maestro_http_connections_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_closes_connections_still_open() {
    let s = Server::start_with(|st| {
        st.server.header_read_timeout_ms = 600_000;
        st.server.keep_alive_idle_timeout_ms = 600_000;
        st.server.drain_timeout_ms = 300;
    })
    .await;
    // Idle kept-alive: closed by the drain at once.
    let mut idle = connect(&s).await;
    idle.write_all(HEALTHZ).await.unwrap();
    assert_eq!(response(&mut idle).await.0, 200);
    // Half a head: closed by the drain deadline at the latest.
    let mut partial = connect(&s).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: maestro\r\n")
        .await
        .unwrap();
    // A request whose body never ends: in flight past the deadline, then closed.
    let mut stuck = connect(&s).await;
    let req = format!(
        "POST /maestro/workflows HTTP/1.1\r\nhost: maestro\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"id\":",
        s.admin
    );
    stuck.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(PATIENCE, s.stop())
        .await
        .expect("the server stops by the drain deadline");
    for (name, c) in [
        ("idle", &mut idle),
        ("partial", &mut partial),
        ("stuck", &mut stuck),
    ] {
        assert!(
            closed_within(c, PATIENCE).await,
            "{name} connection left open"
        );
    }
}

#[test]
fn connection_settings_are_read_and_checked() {
    use maestro_server::settings::{Flags, load};
    let env = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
    let s = load(&Flags::default(), &[]).unwrap().server;
    assert_eq!(
        (
            s.header_read_timeout_ms,
            s.keep_alive_idle_timeout_ms,
            s.max_connections
        ),
        (10_000, 60_000, 10_000)
    );
    let s = load(&Flags::default(), &env("MAESTRO_MAX_CONNECTIONS", "5"))
        .unwrap()
        .server;
    assert_eq!(s.max_connections, 5);
    for key in [
        "MAESTRO_HEADER_READ_TIMEOUT_MS",
        "MAESTRO_KEEP_ALIVE_IDLE_TIMEOUT_MS",
        "MAESTRO_MAX_CONNECTIONS",
    ] {
        let e = load(&Flags::default(), &env(key, "0")).unwrap_err();
        assert!(e.to_string().contains("greater than 0"), "{key}: {e}");
    }
}
