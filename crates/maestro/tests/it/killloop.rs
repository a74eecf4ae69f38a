//! The kill loop (docs/RELIABILITY.md): executions of mixed workflows (chains,
//! fan-outs, retries, rollbacks) against an HTTP agent that records every
//! call, while the `maestro serve` process is SIGKILLed at random moments and
//! restarted each time. Then:
//!
//! - every execution reached its terminal state (the expected one);
//! - no attempt was invoked again after its result was committed;
//! - every call belongs to an attempt of the final state: a re-sent attempt
//!   kept its attempt number and `Idempotency-Key`;
//! - each execution's events are complete: one `workflow:started`, one
//!   `workflow:step_completed` per completed step, exactly one terminal event,
//!   in increasing seq.
//!
//! CI runs 100 executions and 5 kills. `scripts/kill-loop.sh` runs 1000 and 50
//! (`KILL_LOOP_EXECUTIONS`, `KILL_LOOP_KILLS`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::process::{Proc, spawn};
use crate::support::{Agent, now_ms};

const AGENT_DELAY_MS: u64 = 15;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (the seed is printed, so a failing run can
/// be repeated with `KILL_LOOP_SEED`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

/// Calls the agent saw: idempotency key → arrival times.
type Calls = Arc<Mutex<HashMap<String, Vec<u64>>>>;

async fn recording_agent() -> (Agent, Calls) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let agent = Agent::start(move |b| {
        let key = b["taskId"].as_str().unwrap_or_default().to_owned();
        c.lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(now_ms().saturating_sub(AGENT_DELAY_MS));
        let attempt = b["attempt"].as_u64().unwrap_or(1);
        match b["capability"].as_str().unwrap_or_default() {
            "flaky" if attempt == 1 => (
                503,
                json!({"error": {"code": "FLAKY", "message": "first attempts fail"}}),
            ),
            "broken" => (
                422,
                json!({"error": {"code": "BROKEN", "message": "always fails"}}),
            ),
            _ => (200, json!({"outputs": {"ok": true}})),
        }
    })
    .await;
    agent
        .delay_ms
        .store(AGENT_DELAY_MS, std::sync::atomic::Ordering::SeqCst);
    (agent, calls)
}

fn step(id: &str, capability: &str, deps: &[&str]) -> Value {
    let mut s = json!({"id": id, "agentId": "rec", "capability": capability});
    if !deps.is_empty() {
        s["dependencies"] = json!(deps);
    }
    s
}

/// The four workflows and the terminal status each must end in.
fn workflows() -> Vec<(Value, &'static str)> {
    let mut retry = step("a", "flaky", &[]);
    retry["retryPolicy"] = json!({"maxAttempts": 3, "delayMs": 10});
    vec![
        (
            json!({"id": "chain", "name": "chain", "steps": [
                step("s0", "work", &[]), step("s1", "work", &["s0"]), step("s2", "work", &["s1"])]}),
            "completed",
        ),
        (
            json!({"id": "fan", "name": "fan", "steps": [
                step("p0", "work", &[]), step("p1", "work", &[]), step("p2", "work", &[]),
                step("join", "work", &["p0", "p1", "p2"])]}),
            "completed",
        ),
        (
            json!({"id": "retry", "name": "retry", "steps": [retry, step("b", "work", &["a"])]}),
            "completed",
        ),
        (
            json!({"id": "undo", "name": "undo", "onError": "rollback", "steps": [
                step("a", "work", &[]), step("b", "broken", &["a"])]}),
            "rolled_back",
        ),
    ]
}

async fn setup(p: &Proc, agent: &Agent) {
    let (st, v) = p
        .post(
            "/maestro/agents",
            json!({"id": "rec", "type": "recorder", "endpoint": agent.endpoint(),
                   "capabilities": [{"id": "work", "compensation": "undo"}, {"id": "flaky"},
                                    {"id": "broken"}, {"id": "undo"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    for (wf, _) in workflows() {
        let (st, v) = p.post("/maestro/workflows", wf).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}

/// Start execution `n` (idempotent: a retry after a kill finds the same one).
async fn submit(p: &Proc, n: usize) -> Option<String> {
    let wf = ["chain", "fan", "retry", "undo"][n % 4];
    let r = p
        .client
        .post(format!("{}/maestro/workflows/{wf}/execute", p.base))
        .bearer_auth(&p.admin)
        .header("Idempotency-Key", format!("kill-loop-{n}"))
        .json(&json!({}))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["execution"]["id"].as_str().map(str::to_owned)
}

async fn wait_terminal(p: &Proc, id: &str) -> Value {
    for _ in 0..3000 {
        let e = p.get(&format!("/maestro/executions/{id}")).await["execution"].clone();
        if ["completed", "failed", "rolled_back", "cancelled"]
            .contains(&e["status"].as_str().unwrap_or_default())
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("execution {id} never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_survive_repeated_sigkills() {
    let total = env_or("KILL_LOOP_EXECUTIONS", 100);
    let kills = env_or("KILL_LOOP_KILLS", 5);
    let seed = env_or("KILL_LOOP_SEED", (now_ms() % 1_000_000) as usize) as u64;
    eprintln!("kill loop: {total} executions, {kills} kills, KILL_LOOP_SEED={seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let (agent, calls) = recording_agent().await;
    let mut p = spawn(dir.path());
    setup(&p, &agent).await;

    // Submissions run beside the kills: each is retried until acknowledged.
    let mut ids: Vec<Option<String>> = vec![None; total];
    let mut next = 0;
    for round in 0..=kills {
        let until = if round == kills {
            total
        } else {
            (total * (round + 1)) / (kills + 1)
        };
        while next < until {
            if let Some(id) = submit(&p, next).await {
                ids[next] = Some(id);
                next += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if round < kills {
            // Let the work get going, then kill at a random moment.
            tokio::time::sleep(Duration::from_millis(5 + rng.next(120))).await;
            p.child.kill().unwrap();
            p.child.wait().unwrap();
            p = spawn(dir.path());
        }
    }
    let ids: Vec<String> = ids.into_iter().map(|i| i.expect("acknowledged")).collect();
    let kinds = workflows();
    let mut finals = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let e = wait_terminal(&p, id).await;
        assert_eq!(e["status"], kinds[n % 4].1, "execution {n}: {e}");
        finals.push(e);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = calls.lock().unwrap().clone();

    // Every call belongs to an attempt of the final state; no attempt was
    // called after its result was committed.
    let mut attempts: BTreeMap<String, u64> = BTreeMap::new();
    for e in &finals {
        let id = e["id"].as_str().unwrap();
        for (step, s) in e["stepExecutions"].as_object().unwrap() {
            for a in s["attempts"].as_array().unwrap() {
                let key = format!("{id}:{step}:{}", a["attempt"]);
                let done = a["completedAt"].as_u64().unwrap_or(u64::MAX);
                attempts.insert(key, done);
            }
        }
    }
    let resent = calls.values().filter(|at| at.len() > 1).count();
    eprintln!(
        "kill loop: {} calls, {resent} attempts re-sent after a kill with the same key",
        calls.values().map(Vec::len).sum::<usize>()
    );
    for (key, at) in &calls {
        if key.contains(":compensate:") {
            continue;
        }
        let done = attempts
            .get(key)
            .unwrap_or_else(|| panic!("call {key} is no attempt of the final state"));
        assert!(
            at.iter().all(|t| t <= done),
            "{key} was invoked after its result was committed at {done}: {at:?}"
        );
    }
    // Rollbacks really compensated.
    for e in finals.iter().filter(|e| e["status"] == "rolled_back") {
        let log = e["rollbackLog"].as_array().unwrap();
        assert!(
            log.iter()
                .any(|r| r["stepId"] == "a" && r["status"] == "executed"),
            "{e}"
        );
    }
    // Complete event histories.
    for e in &finals {
        let id = e["id"].as_str().unwrap();
        let v = p
            .get(&format!(
                "/maestro/events?executionId={id}&after=0&limit=1000"
            ))
            .await;
        let events = v["events"].as_array().unwrap();
        let seqs: Vec<u64> = events.iter().map(|x| x["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{id}: {seqs:?}");
        let count = |t: &str| events.iter().filter(|x| x["type"] == t).count();
        assert_eq!(count("workflow:started"), 1, "{id}: {v}");
        let terminal = count("workflow:completed")
            + count("workflow:failed")
            + count("workflow:rolled_back")
            + count("workflow:cancelled");
        assert_eq!(terminal, 1, "{id}: {v}");
        assert!(
            events.last().is_some_and(|x| x["type"]
                .as_str()
                .unwrap_or_default()
                .starts_with("workflow:")
                && [
                    "workflow:completed",
                    "workflow:failed",
                    "workflow:rolled_back",
                    "workflow:cancelled"
                ]
                .contains(&x["type"].as_str().unwrap_or_default())),
            "the terminal event comes last: {id}"
        );
        for (step, s) in e["stepExecutions"].as_object().unwrap() {
            if s["status"] == "completed" || s["status"] == "compensated" {
                let n = events
                    .iter()
                    .filter(|x| {
                        x["type"] == "workflow:step_completed"
                            && x["payload"]["stepId"] == step.as_str()
                    })
                    .count();
                assert_eq!(n, 1, "{id}: one step_completed for {step}: {v}");
            }
        }
    }
    p.signal("-TERM");
    assert!(p.child.wait().unwrap().success());
}
