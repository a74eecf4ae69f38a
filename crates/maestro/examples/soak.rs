//! The soak run (docs/RELIABILITY.md): keep a steady load of executions going
//! against a real `maestro serve` process for a long time, and check that its
//! memory and open files stay flat and the database stays bounded.
//!
//! ```sh
//! cargo build --release -p maestro
//! cargo run --release -p maestro --example soak -- --minutes 30 --rate 200
//! ```
//!
//! - Starts `target/<profile>/maestro serve` on 127.0.0.1 with a fresh data dir
//!   and retention of 60 s for finished executions and events.
//! - An HTTP agent on loopback (in this process) answers `ok` after 2 ms and
//!   fails `fail` (422, not retried).
//! - `--rate` executions per second are started (80 % a 2-step chain that
//!   completes, 20 % one that fails).
//! - At most 64 execute requests are in flight; a tick that finds them all
//!   busy is skipped and counted (the server fell behind).
//! - Every 10 s it prints a row: executions started and ticks skipped so far,
//!   the completed and failed executions the store keeps (retention deletes
//!   those finished over 60 s ago), the server's RSS, its open file descriptors,
//!   the SQLite files' size, and the p99 latency of the execute requests of
//!   those 10 s.
//! - At the end, RSS and fds after warm-up (the first 20 % of the run) must
//!   stay within 25 % (RSS) and within the in-flight cap plus 16 (fds: those
//!   are mostly the connections of requests in flight) of their post-warm-up
//!   level, or it exits 1.
//!   Runs shorter than 5 minutes (the CI smoke run) only require every execute
//!   request to be accepted and the server to exit cleanly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};

const ADMIN: &str = "soak-admin-token";
const MAX_IN_FLIGHT: usize = 64;

struct Args {
    seconds: u64,
    rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        rate: 200,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|x| x.parse::<u64>().ok());
        match (v[i].as_str(), next) {
            ("--minutes", Some(n)) => a.seconds = n * 60,
            ("--seconds", Some(n)) => a.seconds = n,
            ("--rate", Some(n)) => a.rate = n.max(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// The `maestro` binary next to this example's profile directory.
fn maestro_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/examples/soak → target/<profile>/maestro
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("maestro"))
        .expect("profile dir");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build [--release] -p maestro)",
        bin.display()
    );
    bin
}

async fn agent() -> String {
    let app = Router::new()
        .route(
            "/invoke",
            post(|body: axum::Json<Value>| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if body["capability"] == "fail" {
                    return (
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(json!({"error": {"code": "SOAK_FAIL", "message": "failing on purpose"}})),
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"outputs": {"ok": true}})),
                )
            }),
        )
        .route("/health", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn db_bytes(dir: &Path) -> u64 {
    ["maestro.db", "maestro.db-wal", "maestro.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn p99(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(maestro_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("MAESTRO_ADMIN_TOKEN", ADMIN)
        .env("MAESTRO_LOG", "warn")
        .env("MAESTRO_RETENTION_EXECUTIONS_MS", "60000")
        .env("MAESTRO_RETENTION_EVENTS_MS", "60000")
        .env("MAESTRO_MAX_CONCURRENT_WORKFLOWS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("maestro runs");
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("maestro listening on ")
        .expect("ready line")
        .to_owned();
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN)
    };
    let endpoint = agent().await;
    let r = call(reqwest::Method::POST, "/maestro/agents")
        .json(&json!({"id": "soak", "type": "soak", "endpoint": endpoint,
            "capabilities": [{"id": "ok"}, {"id": "fail"}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "register: {}", r.status());
    for (id, second) in [("soak-ok", "ok"), ("soak-fail", "fail")] {
        let wf = json!({"id": id, "name": id, "steps": [
            {"id": "a", "agentId": "soak", "capability": "ok"},
            {"id": "b", "agentId": "soak", "capability": second, "dependencies": ["a"],
             "retryPolicy": {"maxAttempts": 1, "delayMs": 10}}]});
        let r = call(reqwest::Method::POST, "/maestro/workflows")
            .json(&wf)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "define: {}", r.status());
    }

    let started = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // At most this many execute requests in flight: when the server falls behind
    // the generator skips ticks (counted) instead of opening ever more connections.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let skipped = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let run_for = Duration::from_secs(a.seconds);
    let t0 = Instant::now();
    {
        let (started, refused, latencies) = (started.clone(), refused.clone(), latencies.clone());
        let (in_flight, skipped) = (in_flight.clone(), skipped.clone());
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / a.rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n: u64 = 0;
            while t0.elapsed() < run_for {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                n += 1;
                let wf = if n.is_multiple_of(5) {
                    "soak-fail"
                } else {
                    "soak-ok"
                };
                let req = client
                    .post(format!("{base}/maestro/workflows/{wf}/execute"))
                    .bearer_auth(ADMIN)
                    .json(&json!({"inputs": {"n": n}}));
                let (started, refused, latencies) =
                    (started.clone(), refused.clone(), latencies.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let t = Instant::now();
                    match req.send().await {
                        Ok(r) if r.status().is_success() => {
                            started.fetch_add(1, Ordering::Relaxed);
                            latencies
                                .lock()
                                .unwrap()
                                .push(t.elapsed().as_micros() as u64);
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
    }

    println!(
        "soak: {} s at {} executions/s against {base} (pid {pid})",
        a.seconds, a.rate
    );
    println!(
        "| t (s) | started | skipped | kept completed | kept failed | refused | RSS (MiB) | fds | SQLite (MiB) | execute p99 (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut samples: Vec<(u64, u64, u64)> = Vec::new(); // (t, rss KiB, fds)
    while t0.elapsed() < run_for + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let m: Value = match call(reqwest::Method::GET, "/maestro/metrics").send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        let m = &m["metrics"];
        let mut window = std::mem::take(&mut *latencies.lock().unwrap());
        let (rss, fd) = (rss_kib(pid), fds(pid));
        let t = t0.elapsed().as_secs();
        samples.push((t, rss, fd));
        println!(
            "| {t} | {} | {} | {} | {} | {} | {:.1} | {fd} | {:.1} | {:.1} |",
            started.load(Ordering::Relaxed),
            skipped.load(Ordering::Relaxed),
            m["completedWorkflows"],
            m["failedWorkflows"],
            refused.load(Ordering::Relaxed),
            rss as f64 / 1024.0,
            db_bytes(dir.path()) as f64 / (1 << 20) as f64,
            p99(&mut window) as f64 / 1000.0
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();

    // Flat after warm-up: compare the end with the level right after it.
    let warm = samples
        .iter()
        .position(|(t, _, _)| *t >= a.seconds / 5)
        .unwrap_or(0);
    let after: Vec<_> = samples[warm..].to_vec();
    let base_rss = after.first().map(|s| s.1).unwrap_or(0).max(1);
    let base_fd = after.first().map(|s| s.2).unwrap_or(0);
    let max_rss = after.iter().map(|s| s.1).max().unwrap_or(0);
    let max_fd = after.iter().map(|s| s.2).max().unwrap_or(0);
    let rss_growth = (max_rss as f64 / base_rss as f64 - 1.0) * 100.0;
    println!(
        "after warm-up: RSS {:.1} → max {:.1} MiB ({rss_growth:+.1} %), fds {base_fd} → max {max_fd}; server exit {status}",
        base_rss as f64 / 1024.0,
        max_rss as f64 / 1024.0
    );
    let refused = refused.load(Ordering::Relaxed);
    if a.seconds < 300 {
        // Too short to tell growth from warm-up: a smoke run (CI) only needs
        // every request accepted and a clean exit.
        println!("short run: no flatness verdict; refused {refused}");
        if refused > 0 || !status.success() {
            std::process::exit(1);
        }
        return;
    }
    // Open files follow the connections of the requests in flight (at most
    // MAX_IN_FLIGHT, plus idle ones the client keeps): a leak is more than that.
    let fd_room = MAX_IN_FLIGHT as u64 + 16;
    let flat = rss_growth <= 25.0 && max_fd <= base_fd + fd_room && status.success();
    println!("{}", if flat { "FLAT: ok" } else { "NOT FLAT" });
    if !flat {
        std::process::exit(1);
    }
}
