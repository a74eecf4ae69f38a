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
//! - `--churn N` (0, off, by default; `scripts/soak.sh` runs 3000, CI 300):
//!   after the load, a connection-churn phase. N connections are opened and
//!   held: a third silent, a third sending half a request head, a third kept
//!   alive after one request. The server (started with a 2 s
//!   `headerReadTimeoutMs`) must close every silent and half-head one itself;
//!   then the client closes the rest, and the server's fds must return to
//!   their level before the phase. With N ≥ 1000 the server's RSS is sampled
//!   for 30 s more and must have given back at least three quarters of what
//!   the connections took (a smaller churn is within the noise). Otherwise it
//!   exits 1.

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
/// The server's `headerReadTimeoutMs` in the soak (short: the churn phase waits for it).
const HEADER_TIMEOUT_MS: u64 = 2_000;
/// How long after the churn's connections are closed its memory is sampled.
const SETTLE_S: u64 = 30;

struct Args {
    seconds: u64,
    rate: u64,
    churn: u64,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        rate: 200,
        churn: 0,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).and_then(|x| x.parse::<u64>().ok());
        match (v[i].as_str(), next) {
            ("--minutes", Some(n)) => a.seconds = n * 60,
            ("--seconds", Some(n)) => a.seconds = n,
            ("--rate", Some(n)) => a.rate = n.max(1),
            ("--churn", Some(n)) => a.churn = n,
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
        // The churn phase waits for the server to close silent connections.
        .env(
            "MAESTRO_HEADER_READ_TIMEOUT_MS",
            HEADER_TIMEOUT_MS.to_string(),
        )
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
    let churned = if a.churn > 0 {
        churn(&base, pid, a.churn).await
    } else {
        true
    };
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
        if refused > 0 || !status.success() || !churned {
            std::process::exit(1);
        }
        return;
    }
    // Open files follow the connections of the requests in flight (at most
    // MAX_IN_FLIGHT, plus idle ones the client keeps): a leak is more than that.
    let fd_room = MAX_IN_FLIGHT as u64 + 16;
    let flat = rss_growth <= 25.0 && max_fd <= base_fd + fd_room && status.success();
    println!("{}", if flat { "FLAT: ok" } else { "NOT FLAT" });
    if !flat || !churned {
        std::process::exit(1);
    }
}

/// The kinds of connection the churn phase holds.
const SILENT: usize = 0;
const HALF_HEAD: usize = 1;
const KEPT_ALIVE: usize = 2;

/// The connection-churn phase (see the top of this file): answers whether it
/// passed.
async fn churn(base: &str, pid: u32, n: u64) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    // Let the load's last requests and executions finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss0, fd0) = (rss_kib(pid), fds(pid));
    println!();
    println!(
        "churn: {n} connections (silent, half a head, kept alive after one request); \
         headerReadTimeoutMs {HEADER_TIMEOUT_MS}"
    );
    println!("| phase | t (s) | RSS (MiB) | fds |");
    println!("|---|---:|---:|---:|");
    let row = |phase: &str, t: Instant| {
        println!(
            "| {phase} | {:.0} | {:.1} | {} |",
            t.elapsed().as_secs_f64(),
            rss_kib(pid) as f64 / 1024.0,
            fds(pid)
        )
    };
    let t0 = Instant::now();
    row("before", t0);
    let release = tokio_util::sync::CancellationToken::new();
    // [opened, closed by the server] per kind.
    let counts = Arc::new([(); 6].map(|_| AtomicU64::new(0)));
    // Opened 200 at a time: the listen backlog is not the subject here.
    let opening = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n as usize {
        let (addr, release, counts) = (addr.clone(), release.clone(), counts.clone());
        let permit = opening.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let kind = i % 3;
            let Ok(mut c) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let mut buf = vec![0u8; 1024];
            match kind {
                HALF_HEAD => {
                    let _ = c
                        .write_all(b"GET /healthz HTTP/1.1\r\nhost: soak\r\n")
                        .await;
                }
                KEPT_ALIVE => {
                    let _ = c
                        .write_all(b"GET /healthz HTTP/1.1\r\nhost: soak\r\n\r\n")
                        .await;
                    // The answer is small: one read holds it.
                    if !matches!(c.read(&mut buf).await, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ => {}
            }
            counts[kind].fetch_add(1, Ordering::Relaxed);
            drop(permit);
            let closed = tokio::select! {
                _ = release.cancelled() => false,
                _ = until_closed(&mut c) => true,
            };
            if closed {
                counts[3 + kind].fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Wait for the last ones to be open.
    let _ = opening.acquire_many(200).await;
    row("all open", t0);
    let peak = rss_kib(pid);
    let get = |i: usize| counts[i].load(Ordering::Relaxed);
    // The server must close the silent and half-head ones by itself; a
    // connection the kernel completed before the server accepted it starts
    // its clock late, hence the room.
    let deadline = Instant::now() + Duration::from_millis(2 * HEADER_TIMEOUT_MS + 10_000);
    while (get(3 + SILENT) < get(SILENT) || get(3 + HALF_HEAD) < get(HALF_HEAD))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    row("silent and half-head closed", t0);
    println!(
        "opened: {} silent, {} half-head, {} kept alive; closed by the server: {}, {}, {}",
        get(SILENT),
        get(HALF_HEAD),
        get(KEPT_ALIVE),
        get(3 + SILENT),
        get(3 + HALF_HEAD),
        get(3 + KEPT_ALIVE)
    );
    let timed_out = get(3 + SILENT) == get(SILENT) && get(3 + HALF_HEAD) == get(HALF_HEAD);
    let opened = get(SILENT) + get(HALF_HEAD) + get(KEPT_ALIVE);
    release.cancel();
    while tasks.join_next().await.is_some() {}
    row("all closed", t0);
    let settle = if n >= 1000 { SETTLE_S } else { 3 };
    let mut last = (0, 0);
    for i in 1..=settle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = (rss_kib(pid), fds(pid));
        if i % 5 == 0 {
            row(&format!("{i} s later"), t0);
        }
    }
    let (rss1, fd1) = last;
    let took = peak.saturating_sub(rss0);
    let kept = rss1.saturating_sub(rss0);
    println!(
        "churn: RSS {:.1} → {:.1} (all open) → {:.1} MiB ({settle} s after closing): kept {:.0} % of what the connections took; fds {fd0} → {fd1}",
        rss0 as f64 / 1024.0,
        peak as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        kept as f64 * 100.0 / took.max(1) as f64
    );
    let mut ok = true;
    if opened < n * 9 / 10 {
        println!("CHURN: only {opened} of {n} connections could be opened");
        ok = false;
    }
    if !timed_out {
        println!(
            "CHURN: the server left silent or half-head connections open past its header timeout"
        );
        ok = false;
    }
    // Loopback sockets in TIME_WAIT are the client's; the server's fds return.
    if fd1 > fd0 + 16 {
        println!("CHURN: the server's fds did not come back ({fd0} → {fd1})");
        ok = false;
    }
    if n >= 1000 && kept * 4 > took {
        println!("CHURN: the server kept more than a quarter of the memory the connections took");
        ok = false;
    }
    if ok {
        println!("CHURN: ok");
    }
    ok
}

/// Resolves when the server closes (or resets) the connection.
async fn until_closed(c: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    while let Ok(n) = c.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
