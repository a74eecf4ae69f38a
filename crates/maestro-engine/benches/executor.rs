//! Executor benchmarks on the durable SQLite store (WAL, synchronous=FULL), with
//! no-op in-process agents unless stated. Prints a table.
//!
//! `cargo bench -p maestro-engine --bench executor` (add `-- quick` for a smaller run;
//! `-- postgres` runs (b) on PostgreSQL instead, in a scratch schema of
//! `MAESTRO_BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! `-- postgres cluster` runs (b) on 1, 2 and 3 nodes in cluster mode sharing one
//! scratch schema, with the 100 executions in flight spread over the nodes)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maestro_core::model::{MaestroConfig, RegisteredAgent, Workflow};
use maestro_engine::{ExecuteOptions, Maestro, MaestroOptions};
use serde_json::{Map, Value, json};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// When each execution's last step returned, and the measured gaps
/// "previous step returned → next step called" (dispatch latency).
#[derive(Default)]
struct Dispatch {
    last_return: HashMap<String, Instant>,
    gaps_us: Vec<u64>,
}

/// `-- postgres`: the PostgreSQL server to bench against.
fn postgres_url() -> Option<String> {
    std::env::args().any(|a| a == "postgres").then(|| {
        std::env::var("MAESTRO_BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    })
}

/// The no-op capability, timing dispatch gaps into `dispatch`.
fn register_noop(m: &Maestro, agent_delay_ms: u64, dispatch: Arc<Mutex<Dispatch>>) {
    m.in_process().register("noop", "op", move |inv| {
        let d = dispatch.clone();
        async move {
            let now = Instant::now();
            {
                let mut g = d.lock().unwrap();
                if let Some(prev) = g.last_return.get(&inv.execution_id).copied() {
                    g.gaps_us.push(now.duration_since(prev).as_micros() as u64);
                }
            }
            if agent_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(agent_delay_ms)).await;
            }
            d.lock()
                .unwrap()
                .last_return
                .insert(inv.execution_id.clone(), Instant::now());
            Ok(Map::new())
        }
    });
}

fn bench_config() -> MaestroConfig {
    let mut config = MaestroConfig {
        max_concurrent_workflows: 100_000,
        ..Default::default()
    };
    config.default_retry_policy.max_attempts = 1;
    config
}

fn noop_agent() -> RegisteredAgent {
    serde_json::from_value(json!({"id": "noop", "type": "bench",
        "transport": "inprocess", "capabilities": [{"id": "op"}]}))
    .unwrap()
}

/// `nodes` cluster nodes on one fresh PostgreSQL schema, the no-op agent on each.
async fn setup_cluster(url: &str, nodes: usize, dispatch: Arc<Mutex<Dispatch>>) -> Vec<Maestro> {
    let scratch = maestro_store::ScratchSchema::create(url).await.unwrap();
    let mut out: Vec<Maestro> = Vec::new();
    for i in 0..nodes {
        let store = Arc::new(
            maestro_store::PostgresStore::connect(scratch.url(), 16)
                .await
                .unwrap(),
        );
        let mut o = MaestroOptions::new(store.clone());
        o.config = bench_config();
        o.health_checker = false;
        o.max_queued_executions = 100_000;
        o.cluster = Some(maestro_engine::cluster::ClusterOptions {
            store,
            node_id: format!("bench-node-{i}"),
            lease_ttl_ms: 10_000,
        });
        let m = Maestro::initialize(o).await.unwrap();
        register_noop(&m, 0, dispatch.clone());
        if i == 0 {
            m.register_agent(noop_agent()).await.unwrap();
            m.define_workflow(chain("chain10", 10), "bench")
                .await
                .unwrap();
        }
        out.push(m);
    }
    // The schema outlives the run; it is named uniquely and holds only bench data.
    std::mem::forget(scratch);
    out
}

async fn setup(
    dir: &tempfile::TempDir,
    agent_delay_ms: u64,
    dispatch: Arc<Mutex<Dispatch>>,
) -> Maestro {
    let store: Arc<dyn maestro_core::ports::Store> = match postgres_url() {
        Some(url) => {
            let scratch = maestro_store::ScratchSchema::create(&url).await.unwrap();
            let store = maestro_store::PostgresStore::connect(scratch.url(), 16)
                .await
                .unwrap();
            // The schema outlives the run; it is named uniquely and holds only bench data.
            std::mem::forget(scratch);
            Arc::new(store)
        }
        None => Arc::new(
            maestro_store::SqliteStore::open(&dir.path().join("bench.db"))
                .await
                .unwrap(),
        ),
    };
    let mut o = MaestroOptions::new(store);
    o.config = bench_config();
    o.health_checker = false;
    o.max_queued_executions = 100_000;
    let m = Maestro::initialize(o).await.unwrap();
    m.register_agent(noop_agent()).await.unwrap();
    register_noop(&m, agent_delay_ms, dispatch);
    m
}

fn chain(id: &str, n: usize) -> Workflow {
    let steps: Vec<_> = (0..n)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "capability": "op"});
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    serde_json::from_value(json!({"id": id, "name": id, "steps": steps})).unwrap()
}

fn fan(id: &str, n: usize) -> Workflow {
    let mut steps: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("p{i}"), "capability": "op"}))
        .collect();
    steps.push(json!({"id": "join", "capability": "op",
        "dependencies": (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>()}));
    serde_json::from_value(json!({"id": id, "name": id, "steps": steps})).unwrap()
}

async fn run_one(m: &Maestro, wf: &str) {
    let (e, _) = m
        .execute_workflow(
            wf,
            ExecuteOptions {
                inputs: obj(json!({"x": 1})),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = m
        .wait_for_execution(&e.id, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status.as_str(), "completed", "{:?}", done.error);
}

/// Run `total` executions with `in_flight` of them at a time.
async fn run_many(m: &Maestro, wf: &str, total: usize, in_flight: usize) -> Duration {
    run_spread(std::slice::from_ref(m), wf, total, in_flight).await
}

/// [`run_many`] with the workers spread over `nodes`.
async fn run_spread(nodes: &[Maestro], wf: &str, total: usize, in_flight: usize) -> Duration {
    let start = Instant::now();
    let per = total / in_flight;
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let m = nodes[w % nodes.len()].clone();
        let wf = wf.to_owned();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                run_one(&m, &wf).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

struct Row {
    name: String,
    steps: usize,
    wall: Duration,
    p50_us: u64,
    p99_us: u64,
    extra: String,
}

fn print(rows: &[Row]) {
    println!();
    println!(
        "| workload | steps | wall | steps/s | per step | dispatch p50 | dispatch p99 | notes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let secs = r.wall.as_secs_f64();
        println!(
            "| {} | {} | {:.1} ms | {:.0} | {:.0} µs | {} µs | {} µs | {} |",
            r.name,
            r.steps,
            secs * 1000.0,
            r.steps as f64 / secs,
            secs * 1e6 / r.steps as f64,
            r.p50_us,
            r.p99_us,
            r.extra
        );
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let scale = if quick { 10 } else { 1 };
    let pg = postgres_url().is_some();
    let mut rows = Vec::new();
    if let Some(url) = postgres_url().filter(|_| std::env::args().any(|a| a == "cluster")) {
        for nodes in 1..=3 {
            let d = Arc::new(Mutex::new(Dispatch::default()));
            let ms = setup_cluster(&url, nodes, d.clone()).await;
            let n = 1000 / scale;
            let wall = run_spread(&ms, "chain10", n, 100.min(n)).await;
            let mut gaps = std::mem::take(&mut d.lock().unwrap().gaps_us);
            rows.push(Row {
                name: format!("(b) chain10 × 1000, 100 in flight, {nodes} node(s)"),
                steps: n * 10,
                wall,
                p50_us: percentile(&mut gaps, 0.5),
                p99_us: percentile(&mut gaps, 0.99),
                extra: "cluster mode".into(),
            });
            for m in ms {
                m.shutdown().await;
            }
        }
        println!("store: PostgreSQL cluster ({url})");
        print(&rows);
        return;
    }

    // (a) latency: 1000 executions of a 10-step chain, one after another.
    for (name, in_flight, target) in [
        ("(a) chain10 × 1000, sequential", 1, "target ≤ 200 µs/step"),
        // (b) throughput: the same 10,000 steps with 100 executions in flight.
        (
            "(b) chain10 × 1000, 100 in flight",
            100,
            "target ≥ 50,000 steps/s, p99 < 5 ms",
        ),
    ] {
        if pg && in_flight == 1 {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(Mutex::new(Dispatch::default()));
        let m = setup(&dir, 0, d.clone()).await;
        m.define_workflow(chain("chain10", 10), "bench")
            .await
            .unwrap();
        let n = 1000 / scale;
        let wall = run_many(&m, "chain10", n, in_flight.min(n)).await;
        let mut gaps = std::mem::take(&mut d.lock().unwrap().gaps_us);
        rows.push(Row {
            name: name.into(),
            steps: n * 10,
            wall,
            p50_us: percentile(&mut gaps, 0.5),
            p99_us: percentile(&mut gaps, 0.99),
            extra: target.into(),
        });
        m.shutdown().await;
    }
    if pg {
        println!("store: PostgreSQL ({})", postgres_url().unwrap_or_default());
        print(&rows);
        return;
    }
    // (c) fan-out: 100 parallel steps + a join, 50 executions at once.
    {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(Mutex::new(Dispatch::default()));
        let m = setup(&dir, 0, d.clone()).await;
        m.define_workflow(fan("fan100", 100), "bench")
            .await
            .unwrap();
        let n = 50 / scale.min(5);
        let wall = run_many(&m, "fan100", n, n).await;
        rows.push(Row {
            name: format!("(c) fan-out 100 + join × {n}"),
            steps: n * 101,
            wall,
            p50_us: 0,
            p99_us: 0,
            extra: "target ≥ 50,000 steps/s".into(),
        });
        m.shutdown().await;
    }
    // (d) 1000 (then 10,000) executions at once, 3 sequential steps of 10 ms agents.
    for n in [1000 / scale, 10_000 / scale] {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(Mutex::new(Dispatch::default()));
        let m = setup(&dir, 10, d.clone()).await;
        m.define_workflow(chain("chain3", 3), "bench")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle = rss_kib();
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, s2) = (peak.clone(), stop.clone());
        let sampler = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                p2.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let wall = run_many(&m, "chain3", n, n).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().unwrap();
        let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        let per_exec = (peak.saturating_sub(idle)) as f64 * 1024.0 / n as f64;
        let mut gaps = std::mem::take(&mut d.lock().unwrap().gaps_us);
        rows.push(Row {
            name: format!("(d) {n} × chain3 of 10 ms agents, all at once"),
            steps: n * 3,
            wall,
            p50_us: percentile(&mut gaps, 0.5),
            p99_us: percentile(&mut gaps, 0.99),
            extra: format!(
                "ideal 30 ms; peak RSS {} MiB (idle {} MiB), {:.0} B per execution",
                peak / 1024,
                idle / 1024,
                per_exec
            ),
        });
        m.shutdown().await;
    }
    print(&rows);
}
