//! Resume after `kill -9`: a child process runs workflows on a SQLite file with
//! slow agents, is killed with SIGKILL mid-run, and is started again on the same
//! file. The agents append every call they receive to a log file outside the
//! child, so the test can check that every execution finishes, that no step whose
//! success was committed was invoked again, and that every re-sent call carried
//! the same idempotency key.
//!
//! The child is this same test binary, re-run with `MAESTRO_CRASH_CHILD` set:
//! only then does `crash_child_process_entry` do anything.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use maestro_core::model::{ExecutionStatus, StepStatus};
use maestro_core::ports::{ExecutionQuery, ExecutionStore};
use maestro_engine::ExecuteOptions;
use serde_json::json;

use crate::support::*;

const CHILD_ENV: &str = "MAESTRO_CRASH_CHILD";
const EXECUTIONS: usize = 40;

/// The child's entry point; a no-op unless started by `kill_9_mid_run_loses_nothing`.
#[test]
fn crash_child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (db, log, generation) = (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(child(db, log, generation));
}

async fn child(db: String, log: String, generation: String) {
    let store = maestro_store::SqliteStore::open(std::path::Path::new(&db))
        .await
        .unwrap();
    let mut config = test_config();
    config.default_retry_policy.max_attempts = 3;
    let inproc = maestro_engine::invoker::InProcessInvoker::new();
    let log_file = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap(),
    ));
    let g = generation.clone();
    inproc.register("worker", "work", move |inv| {
        let line = format!("{g} {}\n", inv.idempotency_key);
        // One write(2) per line: it survives SIGKILL of this process.
        log_file.lock().unwrap().write_all(line.as_bytes()).unwrap();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(obj(json!({"done": inv.step_id})))
        }
    });
    // Handlers first: executions resumed at start are re-sent at once.
    let m = maestro_engine::Maestro::initialize({
        let mut o = maestro_engine::MaestroOptions::new(Arc::new(store));
        o.config = config;
        o.in_process = inproc;
        o.health_checker = false;
        o
    })
    .await
    .unwrap();
    let _ = m
        .upsert_agent(agent_json("worker", &["work"]))
        .await
        .unwrap();
    if generation == "1" {
        m.define_workflow(
            workflow(json!({"id": "chain", "name": "chain", "steps": [
            {"id": "s1", "capability": "work"},
            {"id": "s2", "capability": "work", "dependencies": ["s1"]},
            {"id": "s3", "capability": "work", "dependencies": ["s2"]},
            {"id": "s4", "capability": "work", "dependencies": ["s3"]}]})),
            "t",
        )
        .await
        .unwrap();
        m.define_workflow(workflow(json!({"id": "fan", "name": "fan", "steps": [
            {"id": "a", "capability": "work"}, {"id": "b", "capability": "work"}, {"id": "c", "capability": "work"},
            {"id": "join", "capability": "work", "dependencies": ["a", "b", "c"]}]})), "t").await.unwrap();
        for i in 0..EXECUTIONS {
            let wf = if i % 2 == 0 { "chain" } else { "fan" };
            m.execute_workflow(wf, ExecuteOptions::default())
                .await
                .unwrap();
        }
        println!("CHILD-READY");
        std::future::pending::<()>().await;
    } else {
        println!("CHILD-READY");
        loop {
            let q = ExecutionQuery {
                statuses: vec![
                    ExecutionStatus::Pending,
                    ExecutionStatus::Running,
                    ExecutionStatus::Paused,
                ],
                limit: 1,
                ..Default::default()
            };
            if m.query_executions(&q).await.unwrap().total == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m.shutdown().await;
        println!("CHILD-DONE");
    }
}

fn spawn_child(db: &str, log: &str, generation: u32) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{db}|{log}|{generation}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child")
}

fn wait_for_line(child: &mut std::process::Child, marker: &str) {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before printing {marker}");
        // The harness prints "test <name> ... " before the child's own output.
        if line.trim_end().ends_with(marker) {
            return;
        }
    }
}

fn read_log(path: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(g, k)| (g.to_owned(), k.to_owned())))
        .collect()
}

#[tokio::test]
async fn kill_9_mid_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("maestro.db");
    let log = dir.path().join("calls.log");
    let (db_s, log_s) = (
        db.to_str().unwrap().to_owned(),
        log.to_str().unwrap().to_owned(),
    );

    let mut first = spawn_child(&db_s, &log_s, 1);
    wait_for_line(&mut first, "CHILD-READY");
    // Let some steps complete and others be in flight, then SIGKILL.
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();

    // What the first generation had committed when it died.
    // Read the file directly: a Maestro here would resume the executions itself.
    let m = maestro_store::SqliteStore::open(&db).await.unwrap();
    let all = m
        .query_executions(&ExecutionQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.total as usize, EXECUTIONS,
        "every accepted execution was committed"
    );
    let mut committed_done = HashSet::new();
    let mut unfinished = 0;
    for e in &all.items {
        let full = m.get_execution(&e.id).await.unwrap().unwrap();
        if !full.status.is_terminal() {
            unfinished += 1;
        }
        for s in full.step_executions.iter() {
            if s.status == StepStatus::Completed {
                committed_done.insert(format!("{}:{}:", e.id, s.step_id));
            }
        }
    }
    drop(m);
    assert!(unfinished > 0, "the kill came too late to test anything");
    let gen1 = read_log(&log);
    assert!(!gen1.is_empty());

    let mut second = spawn_child(&db_s, &log_s, 2);
    wait_for_line(&mut second, "CHILD-READY");
    let waited = tokio::task::spawn_blocking(move || {
        wait_for_line(&mut second, "CHILD-DONE");
        second.wait().unwrap()
    });
    let status = tokio::time::timeout(Duration::from_secs(120), waited)
        .await
        .expect("restart finished in time")
        .unwrap();
    assert!(status.success());

    let m = maestro_store::SqliteStore::open(&db).await.unwrap();
    let calls = read_log(&log);
    let gen2: Vec<&String> = calls
        .iter()
        .filter(|(g, _)| g == "2")
        .map(|(_, k)| k)
        .collect();
    // 1. Every execution finished, every step completed.
    let all = m
        .query_executions(&ExecutionQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    for e in &all.items {
        let full = m.get_execution(&e.id).await.unwrap().unwrap();
        assert_eq!(
            full.status,
            ExecutionStatus::Completed,
            "{}: {:?}",
            e.id,
            full.error
        );
        assert!(
            full.step_executions
                .iter()
                .all(|s| s.status == StepStatus::Completed)
        );
    }
    // 2. No step whose success was committed before the kill was invoked again.
    for k in &gen2 {
        let prefix = k
            .rsplit_once(':')
            .map(|x| x.0)
            .map(|p| format!("{p}:"))
            .unwrap();
        assert!(
            !committed_done.contains(&prefix),
            "completed step re-invoked: {k}"
        );
    }
    // 3. A step in flight at the kill is re-sent with the same idempotency key:
    //    its first call after restart repeats its last call before the kill.
    let mut last_gen1: HashMap<String, String> = HashMap::new();
    for (g, k) in &calls {
        if g == "1" {
            let step = k.rsplit_once(':').unwrap().0.to_owned();
            last_gen1.insert(step, k.clone());
        }
    }
    let mut first_gen2: HashMap<String, String> = HashMap::new();
    for k in &gen2 {
        let step = k.rsplit_once(':').unwrap().0.to_owned();
        first_gen2.entry(step).or_insert_with(|| (*k).clone());
    }
    let mut resent = 0;
    for (step, k2) in &first_gen2 {
        if let Some(k1) = last_gen1.get(step) {
            assert_eq!(k1, k2, "re-sent call of {step} changed its key");
            resent += 1;
        }
    }
    assert!(resent > 0, "no call was in flight at the kill");
}
