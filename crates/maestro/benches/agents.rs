//! Steps/s and step latency through real agents: the server (in-process, on
//! SQLite in a temp dir, listening on loopback) runs N executions of a
//! 10-step chain with M in flight, calling
//! - `push`: an HTTP agent on loopback (`POST /invoke`), or
//! - `poll`: P concurrent pollers using the HTTP task routes.
//!
//! `cargo bench -p maestro --bench agents [-- push|poll] [-- quick]`
//!
//! Step latency is a step's `duration` as recorded by the engine: from the
//! dispatch of its attempt to its answer (for poll, including the time in the
//! queue until a poller leases it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use maestro_engine::ExecuteOptions;
use maestro_server::serve;
use maestro_server::settings::{ServerSettings, Settings};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const STEPS: usize = 10;

struct Run {
    executions: usize,
    in_flight: usize,
    pollers: usize,
}

fn chain(agent: &str) -> Value {
    let steps: Vec<Value> = (0..STEPS)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "agentId": agent, "capability": "work",
                "inputs": {"n": i}, "timeout": 30_000});
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"id": "chain", "name": "chain", "steps": steps})
}

async fn push_agent() -> String {
    let app = Router::new().route(
        "/invoke",
        post(|body: axum::Json<Value>| async move {
            axum::Json(json!({"outputs": {"n": body.0["inputs"]["n"]}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

async fn pollers(base: String, token: String, n: usize) {
    let client = reqwest::Client::new();
    for _ in 0..n {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let Ok(r) = client
                    .post(format!("{base}/maestro/agents/worker/tasks/poll"))
                    .bearer_auth(&token)
                    .json(&json!({"max": 10, "waitMs": 1000}))
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                // The leased tasks are answered concurrently, as an agent
                // with a worker per leased task would.
                let answers = v["tasks"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let id = t["taskId"].as_str().unwrap_or_default().to_owned();
                        client
                            .post(format!("{base}/maestro/tasks/{id}/complete"))
                            .bearer_auth(&token)
                            .json(&json!({"outputs": {"n": t["inputs"]["n"]}}))
                            .send()
                    });
                futures_util::future::join_all(answers).await;
            }
        });
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(mode: &str, r: &Run) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = maestro_core::model::MaestroConfig {
        max_concurrent_workflows: r.in_flight as u32,
        event_bus_buffer_size: 1000,
        ..Default::default()
    };
    let running = serve::start(Settings {
        server: ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..ServerSettings::default()
        },
        runtime,
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    let client = reqwest::Client::new();
    let agent = match mode {
        "push" => json!({"id": "worker", "type": "worker", "endpoint": push_agent().await,
                         "capabilities": [{"id": "work"}]}),
        _ => json!({"id": "worker", "type": "worker", "transport": "poll",
                    "capabilities": [{"id": "work"}]}),
    };
    let v: Value = client
        .post(format!("{base}/maestro/agents"))
        .bearer_auth(admin)
        .json(&agent)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if mode == "poll" {
        pollers(
            base.clone(),
            v["agentToken"].as_str().unwrap().to_owned(),
            r.pollers,
        )
        .await;
    }
    let wf = client
        .post(format!("{base}/maestro/workflows"))
        .bearer_auth(admin)
        .json(&chain("worker"))
        .send()
        .await
        .unwrap();
    assert!(wf.status().is_success());

    let maestro = running.maestro.clone();
    let gate = Arc::new(Semaphore::new(r.in_flight));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(r.executions);
    for _ in 0..r.executions {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let m = maestro.clone();
        handles.push(tokio::spawn(async move {
            let (e, _) = m
                .execute_workflow("chain", ExecuteOptions::default())
                .await
                .unwrap();
            let done = m
                .wait_for_execution(&e.id, Duration::from_secs(300))
                .await
                .unwrap()
                .unwrap();
            drop(permit);
            done
        }));
    }
    let mut durations = Vec::with_capacity(r.executions * STEPS);
    let mut completed = 0;
    for h in handles {
        let e = h.await.unwrap();
        if e.status.as_str() == "completed" {
            completed += 1;
        }
        durations.extend(e.step_executions.iter().filter_map(|s| s.duration));
    }
    let took = started.elapsed();
    durations.sort_unstable();
    let steps = r.executions * STEPS;
    println!(
        "| {mode} | {} × {STEPS} steps, {} in flight{} | {:.2} s | {:.0} | {} ms | {} ms | {} ms | {completed}/{} |",
        r.executions,
        r.in_flight,
        if mode == "poll" {
            format!(", {} pollers", r.pollers)
        } else {
            String::new()
        },
        took.as_secs_f64(),
        steps as f64 / took.as_secs_f64(),
        percentile(&durations, 0.5),
        percentile(&durations, 0.99),
        durations.last().copied().unwrap_or(0),
        r.executions,
    );
    running.stop().await.unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "quick");
    let modes: Vec<&str> = if args.iter().any(|a| a == "push") {
        vec!["push"]
    } else if args.iter().any(|a| a == "poll") {
        vec!["poll"]
    } else {
        vec!["push", "poll"]
    };
    let r = Run {
        executions: if quick { 100 } else { 1000 },
        in_flight: 100,
        pollers: 10,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| transport | run | wall | steps/s | p50 step | p99 step | max step | completed |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for mode in modes {
        rt.block_on(run(mode, &r));
    }
}
