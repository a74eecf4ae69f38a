//! The `maestro` binary as a process: the ready line, SIGTERM exits 0 after a
//! drain, SIGKILL mid-workflow and a restart on the same data dir finishes
//! every execution.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::Agent;

pub(crate) struct Proc {
    pub child: Child,
    pub base: String,
    pub admin: String,
    pub client: reqwest::Client,
}

/// `maestro serve` on 127.0.0.1:0 with `dir` as its data dir, logging
/// warnings to nowhere; add environment and redirect stderr as needed.
pub(crate) fn serve_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_maestro"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("MAESTRO_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Start `cmd` (from [`serve_command`]) and wait for its ready line: the
/// process and its base URL.
pub(crate) fn start_serve(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.spawn().expect("maestro binary runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("maestro listening on ")
        .unwrap_or_else(|| panic!("ready line, got {line:?}"))
        .to_owned();
    (child, base)
}

pub(crate) fn spawn(dir: &Path) -> Proc {
    let (child, base) = start_serve(serve_command(dir).env(
        "MAESTRO_DEFAULT_RETRY_POLICY",
        "{\"maxAttempts\": 3, \"delayMs\": 10}",
    ));
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    Proc {
        child,
        base,
        admin,
        client: reqwest::Client::new(),
    }
}

impl Proc {
    /// Register push agent `id` at `endpoint` with the one capability `work`.
    pub(crate) async fn register_worker(&self, id: &str, endpoint: &str) {
        let (st, v) = self
            .post(
                "/maestro/agents",
                json!({"id": id, "type": "worker", "endpoint": endpoint,
                       "capabilities": [{"id": "work"}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }

    /// A server in `dir` with a fresh admin token, `env` added, and its stderr
    /// written to `log`.
    pub(crate) fn start_logging_to(dir: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
        let admin = format!("admin-{}", uuid_like());
        let mut cmd = serve_command(dir);
        cmd.env("MAESTRO_ADMIN_TOKEN", &admin)
            .envs(env.iter().copied())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        let (child, base) = start_serve(&mut cmd);
        Proc {
            child,
            base,
            admin,
            client: reqwest::Client::new(),
        }
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }
    pub(crate) async fn get(&self, path: &str) -> serde_json::Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

async fn setup_chain(p: &Proc, agent: &Agent, steps: usize) {
    p.register_worker("worker", &agent.endpoint()).await;
    let chain: Vec<_> = (0..steps)
        .map(|i| {
            let mut s = json!({"id": format!("s{i}"), "agentId": "worker", "capability": "work",
                               "inputs": {"n": i}});
            if i > 0 {
                s["dependencies"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let (st, v) = p
        .post(
            "/maestro/workflows",
            json!({"id": "chain", "name": "Chain", "steps": chain}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_workflow_then_restart_finishes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(|b| (200, json!({"outputs": {"done": b["stepId"]}}))).await;
    agent.delay_ms.store(50, Ordering::SeqCst);
    let mut p = spawn(dir.path());
    setup_chain(&p, &agent, 6).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (st, v) = p.post("/maestro/workflows/chain/execute", json!({})).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        ids.push(v["execution"]["id"].as_str().unwrap().to_owned());
    }
    // Let some steps complete, then kill -9 mid-run.
    while agent.calls.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let mut p = spawn(dir.path());
    for id in &ids {
        let mut e = serde_json::Value::Null;
        for _ in 0..500 {
            e = p.get(&format!("/maestro/executions/{id}")).await["execution"].clone();
            if e["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(e["status"], "completed", "{e}");
        for i in 0..6 {
            assert_eq!(e["stepExecutions"][format!("s{i}")]["status"], "completed");
        }
    }
    // Exactly one terminal event per execution, across the crash.
    let events = p
        .get("/maestro/events?eventTypes=workflow:completed,workflow:failed&limit=100")
        .await;
    assert_eq!(events["count"], 4, "{events}");
    p.signal("-TERM");
    assert!(p.child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero_and_work_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(|_| (200, json!({"outputs": {}}))).await;
    agent.delay_ms.store(300, Ordering::SeqCst);
    let mut p = spawn(dir.path());
    setup_chain(&p, &agent, 3).await;
    let (_, v) = p.post("/maestro/workflows/chain/execute", json!({})).await;
    let id = v["execution"]["id"].as_str().unwrap().to_owned();
    while agent.calls.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal("-TERM");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    // The call in flight finished during the drain and was persisted.
    let p = spawn(dir.path());
    let mut e = serde_json::Value::Null;
    for _ in 0..500 {
        e = p.get(&format!("/maestro/executions/{id}")).await["execution"].clone();
        if e["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(
        e["stepExecutions"]["s0"]["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the drained call was not repeated: {e}"
    );
    p.signal("-TERM");
    let mut child = p.child;
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(dir.path());
    // Another data dir (another node id), the same database file.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_maestro"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(other.path())
        .arg("--database-url")
        .arg(format!(
            "sqlite://{}",
            dir.path().join("maestro.db").display()
        ))
        .env("MAESTRO_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another Maestro server"), "{err}");
    p.signal("-TERM");
    let mut child = p.child;
    assert!(child.wait().unwrap().success());
}

/// At `debug` level, with every kind of secret in use (the admin token, a
/// created token, an agent token, a webhook secret, a guessed token), none of
/// them reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let p = Proc::start_logging_to(dir.path(), &log_path, &[("MAESTRO_LOG", "debug")]);
    let admin = p.admin.clone();
    let (st, v) = p.post("/maestro/tokens", json!({"role": "operator"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let operator = v["secret"].as_str().unwrap().to_owned();
    let agent = Agent::start(|_| (200, json!({"outputs": {}}))).await;
    let inbound = format!("inbound-{}", uuid_like());
    let (st, v) = p
        .post(
            "/maestro/agents",
            json!({"id": "w", "type": "worker", "endpoint": agent.endpoint(),
                   "inboundSecret": inbound, "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = p
        .post("/maestro/tokens", json!({"role": "agent", "agentId": "w"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let agent_token = v["secret"].as_str().unwrap().to_owned();
    let (st, v) = p
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": format!("{}/hook", agent.endpoint())}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let hook_secret = v["secret"].as_str().unwrap().to_owned();
    let guess = format!("mst_abcdef012345_{}", uuid_like());
    for (token, path) in [
        (&operator, "/maestro/agents"),
        (&agent_token, "/maestro/agents/w"),
        (&guess, "/maestro/agents"),
    ] {
        p.client
            .get(format!("{}{path}", p.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
    }
    p.client
        .post(format!("{}/maestro/agents/w/heartbeat", p.base))
        .bearer_auth(&agent_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    p.post(
        "/maestro/events",
        json!({"type": "agent:event", "payload": {"x": 1}}),
    )
    .await;
    let (st, v) = p
        .post(
            "/maestro/workflows",
            json!({"id": "one", "name": "one", "steps": [{"id": "a", "agentId": "w", "capability": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = p
        .post("/maestro/workflows/one/execute?wait=5000", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "completed", "{v}");
    let (_, headers) = agent.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        headers["authorization"].to_str().unwrap(),
        format!("Bearer {inbound}"),
        "the push call carried the inbound secret"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("-TERM");
    let mut child = p.child;
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("DEBUG"), "debug logging was on: {log}");
    let secret_of = |t: &str| t.rsplit('_').next().unwrap().to_owned();
    for (what, secret) in [
        ("admin token", admin.clone()),
        ("operator token", secret_of(&operator)),
        ("agent token", secret_of(&agent_token)),
        ("webhook secret", hook_secret),
        ("agent inbound secret", inbound),
        ("guessed token", secret_of(&guess)),
    ] {
        assert!(!log.contains(&secret), "the {what} is in the log");
    }
}

/// A panic that the server catches (cel-interpreter's `todo!` on a comprehension over an
/// integer, turned into `CONDITION_ERROR`) is logged as one JSON line at error level, with
/// its location, and nothing else reaches stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_panic_is_one_json_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let p = Proc::start_logging_to(
        dir.path(),
        &log_path,
        &[("MAESTRO_LOG_FORMAT", "json"), ("RUST_BACKTRACE", "0")],
    );
    let agent = Agent::start(|_| (200, json!({"outputs": {}}))).await;
    p.register_worker("w", &agent.endpoint()).await;
    let (st, v) = p
        .post(
            "/maestro/workflows",
            json!({"id": "cel", "name": "cel", "steps": [{"id": "a", "agentId": "w",
                   "capability": "work",
                   "condition": {"type": "expression", "expression": "n.all(x, x > 0)"}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = p
        .post(
            "/maestro/workflows/cel/execute?wait=5000",
            json!({"inputs": {"n": 5}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "failed", "{v}");
    assert_eq!(
        v["execution"]["stepExecutions"]["a"]["error"]["code"], "CONDITION_ERROR",
        "{v}"
    );
    p.signal("-TERM");
    let mut child = p.child;
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let panics: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "panicked")
        .collect();
    assert_eq!(panics.len(), 1, "one panic line: {log}");
    assert_eq!(panics[0]["level"], "ERROR", "{log}");
    assert!(
        panics[0]["fields"]["location"]
            .as_str()
            .is_some_and(|l| l.contains("cel")),
        "the panic's location names the library: {log}"
    );
}

/// 32 hex characters, different each call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_level_change_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut p = Proc::start_logging_to(dir.path(), &log, &[]);
    let r = p
        .client
        .patch(format!("{}/maestro/config", p.base))
        .bearer_auth(&p.admin)
        .json(&json!({"logLevel": "info"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Info lines appear from the change on (the server started at warn).
    let mut seen = String::new();
    for _ in 0..100 {
        seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains("log level changed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen.contains("log level changed"), "{seen}");
    let _ = p.child.kill();
    let _ = p.child.wait();
}

pub(crate) fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:032x}", t ^ ((std::process::id() as u128) << 64))
}
