//! The typed client (`maestro_client::client::Client`) against a real
//! in-process server, and the `maestro` CLI run as a process against one.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use maestro_client::Error;
use maestro_client::client::{
    AgentQuery, Client, EventQuery, ExecuteOptions, ExecutionQuery, NewSubscription, NewToken,
    Paging, PublishEvent, WorkflowFormat, WorkflowQuery,
};
use maestro_core::model::{
    AgentHealth, AgentStatus, EventType, ExecutionStatus, RegisteredAgent, Workflow,
};
use serde_json::{Value, json};

use crate::support::{Agent, Server, auth_flow};

fn client(s: &Server) -> Client {
    Client::new(s.base.clone(), s.admin.clone())
}

fn agent_doc(id: &str, endpoint: &str, caps: &[&str]) -> RegisteredAgent {
    let caps: Vec<Value> = caps
        .iter()
        .map(|c| json!({"id": c, "tags": ["t1"]}))
        .collect();
    serde_json::from_value(json!({
        "id": id, "type": "test", "name": format!("Agent {id}"),
        "endpoint": endpoint, "capabilities": caps, "inboundSecret": "s3cret"
    }))
    .unwrap()
}

/// A sentinel that verifies everyone but eve, and a bridge that issues a
/// token to anyone but mallory.
async fn auth_agents(s: &Server) -> (Agent, Agent) {
    let sentinel = Agent::start(|b| {
        let ok = b["inputs"]["userId"] != "eve";
        (200, json!({"outputs": {"verified": ok}}))
    })
    .await;
    let bridge = Agent::start(|b| {
        let user = b["inputs"]["userId"].as_str().unwrap_or("?").to_owned();
        if user == "mallory" {
            return (
                400,
                json!({"error": {"code": "TOKEN_DENIED", "message": "not for mallory", "retryable": false}}),
            );
        }
        (200, json!({"outputs": {"token": format!("jwt-for-{user}")}}))
    })
    .await;
    s.register_http_agent("sentinel-1", &sentinel.endpoint(), &["verify-identity"])
        .await;
    s.register_http_agent("bridge-1", &bridge.endpoint(), &["issue-jwt"])
        .await;
    (sentinel, bridge)
}

// ------------------------------------------------------------------ client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_agents_and_errors() {
    let s = Server::start().await;
    let c = client(&s);
    let agent = Agent::echo().await;

    let reg = c
        .register_agent(&agent_doc("echo-1", &agent.endpoint(), &["echo"]))
        .await
        .unwrap();
    assert!(reg.created);
    assert_eq!(reg.agent.id, "echo-1");
    let agent_token = reg.agent_token.expect("a token on registration");
    assert!(agent_token.starts_with("mst_"));

    // A duplicate id: 409 ALREADY_EXISTS.
    let err = c
        .register_agent(&agent_doc("echo-1", &agent.endpoint(), &["echo"]))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err:?}");
    assert!(err.is_code("ALREADY_EXISTS"), "{err:?}");

    // Upsert: 200 without a token for an existing agent, 201 with one for a new one.
    let up = c
        .upsert_agent(&agent_doc("echo-1", &agent.endpoint(), &["echo", "shout"]))
        .await
        .unwrap();
    assert!(!up.created);
    assert!(up.agent_token.is_none());
    assert_eq!(up.agent.capabilities.len(), 2);
    let up = c
        .upsert_agent(&agent_doc("echo-2", &agent.endpoint(), &["shout"]))
        .await
        .unwrap();
    assert!(up.created && up.agent_token.is_some());

    let page = c
        .list_agents(&AgentQuery {
            capabilities: vec!["echo".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.count, page.total), (1, 1));
    assert_eq!(page.items[0].id, "echo-1");
    let page = c
        .list_agents(&AgentQuery {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((page.count, page.total), (1, 2));

    assert_eq!(c.get_agent("echo-2").await.unwrap().agent_type, "test");
    let held = c
        .set_agent_status("echo-2", AgentStatus::Degraded)
        .await
        .unwrap();
    assert_eq!(held.status, AgentStatus::Degraded);
    assert!(held.status_hold);

    // The agent's own token may heartbeat itself, and only itself.
    let as_agent = c.with_token(agent_token);
    let hb = as_agent.heartbeat("echo-1", None).await.unwrap();
    assert_eq!(hb.status, AgentStatus::Online);
    let err = as_agent.heartbeat("echo-2", None).await.unwrap_err();
    assert!(err.is_code("FORBIDDEN"), "{err:?}");
    let reported = as_agent
        .put_agent_health(
            "echo-1",
            &AgentHealth {
                agent_id: "echo-1".into(),
                uptime: 100.0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reported.agent_id, "echo-1");
    assert_eq!(
        c.get_agent_health("echo-1").await.unwrap().agent_id,
        "echo-1"
    );
    assert!(!c.all_agent_health().await.unwrap().is_empty());

    let by_cap = c.agents_by_capability("shout").await.unwrap();
    assert_eq!(by_cap.count, 2);

    // Unknown agent: 404 NOT_FOUND; a bad id: 400 naming the field.
    let err = c.get_agent("nope").await.unwrap_err();
    assert!(err.is_not_found() && err.is_code("NOT_FOUND"), "{err:?}");
    let err = c.get_agent("has space").await.unwrap_err();
    assert!(err.is_code("VALIDATION_FAILED"), "{err:?}");
    assert_eq!(err.field(), Some("agentId"));

    assert!(c.delete_agent("echo-2").await.unwrap().contains("echo-2"));
    assert!(c.get_agent("echo-2").await.unwrap_err().is_not_found());

    // A bad token: 401; no server: Unreachable naming the URL.
    let err = c.with_token("mst_nope_nope").metrics().await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(err.is_code("UNAUTHORIZED"));
    let err = Client::new("http://127.0.0.1:1", "x")
        .get_agent("a")
        .await
        .unwrap_err();
    match &err {
        Error::Unreachable(m) => assert!(m.contains("http://127.0.0.1:1/"), "{m}"),
        other => panic!("{other:?}"),
    }
    let err = Client::new("not a url", "x").healthz().await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_workflows_and_executions() {
    let s = Server::start().await;
    let c = client(&s);
    let (_sentinel, bridge) = auth_agents(&s).await;

    let wf: Workflow = serde_json::from_value(auth_flow("sentinel-1", "bridge-1")).unwrap();
    let defined = c.define_workflow(&wf).await.unwrap();
    assert_eq!(defined.revision, 1);
    let err = c.define_workflow(&wf).await.unwrap_err();
    assert!(err.is_code("ALREADY_EXISTS"), "{err:?}");

    // YAML text; validation errors carry the code and the step.
    let yaml =
        "id: yaml-flow\nname: From YAML\nsteps:\n  - id: a\n    capability: verify-identity\n";
    let y = c
        .define_workflow_text(yaml, WorkflowFormat::Yaml)
        .await
        .unwrap();
    assert_eq!(y.name, "From YAML");
    let cyclic = json!({"id": "cyc", "name": "c", "steps": [
        {"id": "a", "capability": "x", "dependencies": ["b"]},
        {"id": "b", "capability": "x", "dependencies": ["a"]}]});
    let err = c.define_workflow_json(&cyclic).await.unwrap_err();
    match &err {
        Error::Api {
            status: 400,
            code,
            details: Some(d),
            ..
        } => {
            assert_eq!(code, "CYCLE_DETECTED");
            assert!(d["cycle"].is_array(), "{d}");
        }
        other => panic!("{other:?}"),
    }

    let updated = c
        .update_workflow("yaml-flow", &json!({"name": "Renamed"}))
        .await
        .unwrap();
    assert_eq!((updated.revision, updated.name.as_str()), (2, "Renamed"));
    assert_eq!(
        c.get_workflow("yaml-flow", Some(1)).await.unwrap().name,
        "From YAML"
    );
    let page = c.list_workflows(&WorkflowQuery::default()).await.unwrap();
    assert_eq!(page.total, 2);
    assert!(c.delete_workflow("yaml-flow").await.is_ok());
    assert!(
        c.get_workflow("yaml-flow", None)
            .await
            .unwrap_err()
            .is_not_found()
    );

    // Execute and wait; the same Idempotency-Key answers the same execution.
    let opts = ExecuteOptions::default()
        .input("userId", "alice")
        .idempotency_key("k-1")
        .correlation_id("corr-1")
        .wait(Duration::from_secs(5));
    let run = c.execute_workflow("auth-flow", &opts).await.unwrap();
    assert_eq!(run.status, 200);
    assert_eq!(run.execution.status, ExecutionStatus::Completed);
    assert_eq!(
        run.execution.result.as_ref().unwrap()["token"],
        "jwt-for-alice"
    );
    let again = c.execute_workflow("auth-flow", &opts).await.unwrap();
    assert_eq!(again.execution.id, run.execution.id);
    let got = c.get_execution(&run.execution.id).await.unwrap();
    assert_eq!(got.context.correlation_id, "corr-1");

    // Cancel a finished execution: 409 INVALID_STATE.
    let err = c
        .cancel_execution(&run.execution.id, Some("late"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err:?}");
    assert!(err.is_code("INVALID_STATE"), "{err:?}");

    // Pause, resume and cancel a slow one.
    bridge
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let slow = c
        .execute_workflow(
            "auth-flow",
            &ExecuteOptions::default().input("userId", "alice"),
        )
        .await
        .unwrap();
    assert_eq!(slow.status, 202);
    let id = slow.execution.id;
    let paused = c.pause_execution(&id).await.unwrap();
    assert_eq!(paused.status, ExecutionStatus::Paused);
    let resumed = c.resume_execution(&id).await.unwrap();
    assert_ne!(resumed.status, ExecutionStatus::Paused);
    let cancelled = c.cancel_execution(&id, Some("test")).await.unwrap();
    assert!(cancelled.status.is_terminal(), "{:?}", cancelled.status);

    let page = c
        .list_executions(&ExecutionQuery {
            workflow_id: Some("auth-flow".into()),
            status: vec![ExecutionStatus::Completed],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.items[0].id, run.execution.id);
    let err = c.get_execution("exec-nope").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_stream_and_history() {
    let s = Server::start().await;
    let c = client(&s);

    // Live only: opened before anything is published, receives what follows.
    let mut live = c
        .stream_events(
            &EventQuery {
                event_types: vec![EventType::AgentEvent, EventType::AgentAlert],
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let mut published = Vec::new();
    for i in 0..3 {
        let mut ev = PublishEvent::new(json!({"n": i, "text": "line\nbreak"}));
        ev.correlation_id = Some("corr-ev".into());
        if i == 2 {
            ev.event_type = EventType::AgentAlert;
        }
        published.push(c.publish_event(&ev).await.unwrap());
    }
    for p in &published {
        let got = tokio::time::timeout(Duration::from_secs(2), live.next())
            .await
            .expect("an event within 2 s")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!(got.seq, p.seq);
        assert_eq!(got.payload, p.payload);
    }
    assert_eq!(live.last_event_id(), Some(published[2].seq));
    drop(live);

    // Resume after the first: the log replays the other two.
    let mut resumed = c
        .stream_events(
            &EventQuery {
                correlation_id: Some("corr-ev".into()),
                ..Default::default()
            },
            Some(published[0].seq),
        )
        .await
        .unwrap();
    for p in &published[1..] {
        let got = tokio::time::timeout(Duration::from_secs(2), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.seq, p.seq);
    }

    let history = c
        .event_history(&EventQuery {
            event_types: vec![EventType::AgentAlert],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(history.count, 1);
    assert_eq!(history.items[0].seq, published[2].seq);
    let by_corr = c
        .events_by_correlation("corr-ev", Some(published[0].seq), Some(10))
        .await
        .unwrap();
    assert_eq!(by_corr.count, 2);

    // An event type that cannot be published: 400.
    let mut bad = PublishEvent::new(json!({}));
    bad.event_type = EventType::WorkflowCompleted;
    let err = c.publish_event(&bad).await.unwrap_err();
    assert!(err.is_code("VALIDATION_FAILED"), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_admin_routes() {
    let s = Server::start().await;
    let c = client(&s);

    assert_eq!(c.healthz().await.unwrap()["status"], "ok");
    assert_eq!(c.readyz().await.unwrap()["status"], "ready");
    assert_eq!(c.metrics().await.unwrap().total_executions, 0);
    assert!(c.prometheus().await.unwrap().contains("# TYPE"));
    assert_eq!(
        c.openapi().await.unwrap()["openapi"]
            .as_str()
            .map(|v| &v[..2]),
        Some("3.")
    );

    let cfg = c.get_config().await.unwrap();
    let patched = c
        .update_config(&json!({"agentTimeoutMs": cfg.agent_timeout_ms + 1}))
        .await
        .unwrap();
    assert_eq!(patched.agent_timeout_ms, cfg.agent_timeout_ms + 1);
    let err = c
        .update_config(&json!({"listen": "0.0.0.0:1"}))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("listen"), "{err:?}");

    // Tokens: create, use, list, revoke.
    let reader = c
        .create_token(&NewToken {
            role: "reader".into(),
            name: Some("ci-reader".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reader.token.role, "reader");
    let as_reader = c.with_token(reader.secret.clone());
    assert!(as_reader.get_config().await.is_ok());
    let err = as_reader
        .create_token(&NewToken {
            role: "admin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.is_code("FORBIDDEN"), "{err:?}");
    let tokens = c.list_tokens(Paging::default()).await.unwrap();
    assert!(tokens.items.iter().any(|t| t.name == "ci-reader"));
    assert!(c.revoke_token(&reader.token.id).await.is_ok());
    assert_eq!(as_reader.metrics().await.unwrap_err().status(), Some(401));

    // Subscriptions.
    let sub = c
        .create_subscription(&NewSubscription {
            event_types: vec![EventType::WorkflowCompleted],
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!sub.secret.is_empty());
    let subs = c.list_subscriptions(Paging::default()).await.unwrap();
    assert_eq!(subs.items[0].subscription.id, sub.subscription.id);
    assert!(c.delete_subscription(&sub.subscription.id).await.is_ok());
    let err = c
        .delete_subscription(&sub.subscription.id)
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    s.stop().await;
}

// --------------------------------------------------------------------- CLI

/// What a CLI run gave.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Run the binary with `args` and no MAESTRO_* from this environment.
async fn maestro(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_maestro"))
        .args(args)
        .env_remove("MAESTRO_SERVER")
        .env_remove("MAESTRO_TOKEN")
        .env_remove("MAESTRO_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the maestro binary runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run the binary against `s` with its admin token.
async fn cli(s: &Server, args: &[&str]) -> Out {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", &s.base, "--token", &s.admin]);
    maestro(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_workflows_apply_json_and_yaml() {
    let s = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json_file = dir.path().join("auth.json");
    std::fs::write(&json_file, auth_flow("sentinel-1", "bridge-1").to_string()).unwrap();
    let f = json_file.to_str().unwrap();

    let o = cli(&s, &["workflows", "apply", "-f", f]).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), "workflow auth-flow created (revision 1)");
    let o = cli(&s, &["workflows", "apply", "-f", f]).await;
    assert_eq!(
        o.stdout.trim(),
        "workflow auth-flow unchanged (revision 1)",
        "{o:?}"
    );

    // The same workflow as YAML, with a new name and without expectedOutputs:
    // an update that replaces.
    let yaml_file = dir.path().join("auth.yaml");
    std::fs::write(
        &yaml_file,
        "id: auth-flow\nname: Auth v2\nsteps:\n  - id: verify-user\n    agentId: sentinel-1\n    capability: verify-identity\n    inputs:\n      userId: ${userId}\n",
    )
    .unwrap();
    let o = cli(
        &s,
        &["workflows", "apply", "-f", yaml_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.trim(), "workflow auth-flow updated (revision 2)");
    let o = cli(&s, &["workflows", "get", "auth-flow", "--json"]).await;
    let wf = &o.json()["workflow"];
    assert_eq!(wf["name"], "Auth v2");
    assert_eq!(wf["steps"].as_array().unwrap().len(), 1);
    assert_eq!(wf["expectedOutputs"], json!({}), "removed by apply: {wf}");

    // A new YAML workflow: created.
    let new_yaml = dir.path().join("other.yml");
    std::fs::write(
        &new_yaml,
        "id: other\nname: Other\nsteps:\n  - id: a\n    capability: x\n",
    )
    .unwrap();
    let o = cli(
        &s,
        &["workflows", "apply", "-f", new_yaml.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        o.stdout.trim(),
        "workflow other created (revision 1)",
        "{o:?}"
    );

    let o = cli(&s, &["workflows", "ls"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", o.stdout);
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    assert!(o.stdout.contains("Auth v2"));
    let o = cli(&s, &["workflows", "get", "auth-flow"]).await;
    assert!(o.stdout.contains("revision:"), "{}", o.stdout);
    assert!(o.stdout.contains("verify-user"), "{}", o.stdout);

    // An invalid file: the API's code and the step, exit 2.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"id": "bad", "name": "b", "steps": [
            {"id": "a", "capability": "x", "dependencies": ["ghost"]}]})
        .to_string(),
    )
    .unwrap();
    let o = cli(&s, &["workflows", "apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("UNKNOWN_DEPENDENCY"), "{}", o.stderr);
    assert!(o.stderr.contains("step: a"), "{}", o.stderr);
    // A file that is not JSON: a usage error before any request.
    std::fs::write(&bad, "{not json").unwrap();
    let o = cli(&s, &["workflows", "apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("not valid JSON"), "{}", o.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_agents_table_json_get_rm() {
    let s = Server::start().await;
    let agent = Agent::echo().await;
    s.register_http_agent("echo-1", &agent.endpoint(), &["echo", "shout"])
        .await;
    s.register_http_agent("a-much-longer-agent-id", &agent.endpoint(), &["echo"])
        .await;

    let o = cli(&s, &["agents", "ls"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.stdout);
    // Aligned: every row's TYPE cell starts where the header's does.
    let col = lines[0].find("TYPE").unwrap();
    assert!(lines[0].starts_with("ID "));
    for l in &lines[1..] {
        assert_eq!(&l[col..col + 4], "test", "{}", o.stdout);
    }
    assert!(o.stdout.contains("echo,shout"), "{}", o.stdout);
    assert!(o.stdout.contains("online"), "{}", o.stdout);

    let o = cli(&s, &["agents", "ls", "--json"]).await;
    let v = o.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["count"], 2);
    assert_eq!(v["total"], 2);
    assert!(
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "echo-1")
    );

    let o = cli(&s, &["agents", "ls", "--capability", "shout", "--json"]).await;
    assert_eq!(o.json()["count"], 1, "{o:?}");

    let o = cli(&s, &["agents", "get", "echo-1"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("id:"), "{}", o.stdout);
    assert!(o.stdout.contains(&agent.endpoint()), "{}", o.stdout);
    assert!(o.stdout.contains("CAPABILITY"), "{}", o.stdout);

    let o = cli(&s, &["agents", "rm", "echo-1"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let o = cli(&s, &["agents", "get", "echo-1"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("NOT_FOUND"), "{}", o.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_wait_completes_and_fails() {
    let s = Server::start().await;
    let (_sentinel, _bridge) = auth_agents(&s).await;
    let (st, v) = s
        .post("/maestro/workflows", auth_flow("sentinel-1", "bridge-1"))
        .await;
    assert_eq!(st.as_u16(), 201, "{v}");

    let o = cli(
        &s,
        &["run", "auth-flow", "--input", "userId=alice", "--wait"],
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("✓ verify-user ("), "{}", o.stdout);
    assert!(o.stdout.contains("✓ issue-token ("), "{}", o.stdout);
    assert!(o.stdout.contains("completed in"), "{}", o.stdout);
    assert!(o.stdout.contains("jwt-for-alice"), "{}", o.stdout);

    // --json: one document, the finished execution.
    let o = cli(
        &s,
        &[
            "run",
            "auth-flow",
            "--input-json",
            r#"{"userId": "alice"}"#,
            "--wait",
            "--timeout",
            "10s",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    assert_eq!(v["execution"]["status"], "completed");
    assert_eq!(v["execution"]["result"]["token"], "jwt-for-alice");

    // The bridge refuses mallory: the step fails, exit 1.
    let o = cli(&s, &["run", "auth-flow", "-i", "userId=mallory", "--wait"]).await;
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stdout
            .contains("✗ issue-token: TOKEN_DENIED not for mallory"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("failed"), "{}", o.stdout);

    // Without --wait: the execution id, exit 0.
    let o = cli(&s, &["run", "auth-flow", "-i", "userId=bob", "--json"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let id = o.json()["execution"]["id"].as_str().unwrap().to_owned();
    s.wait_terminal(&id).await;

    // executions ls / get.
    let o = cli(&s, &["executions", "ls"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.lines().count(), 5, "{}", o.stdout);
    assert!(o.stdout.lines().next().unwrap().starts_with("ID"));
    let o = cli(&s, &["executions", "ls", "--status", "failed", "--json"]).await;
    let v = o.json();
    assert_eq!(v["count"], 1, "{v}");
    let failed_id = v["executions"][0]["id"].as_str().unwrap().to_owned();
    let o = cli(&s, &["executions", "get", &failed_id]).await;
    assert!(o.stdout.contains("TOKEN_DENIED"), "{}", o.stdout);
    assert!(o.stdout.contains("status:"), "{}", o.stdout);
    let o = cli(&s, &["executions", "cancel", &failed_id]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("INVALID_STATE"), "{}", o.stderr);

    // A workflow that does not exist.
    let o = cli(&s, &["run", "ghost", "--wait"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("NOT_FOUND"), "{}", o.stderr);
    // A malformed input.
    let o = cli(&s, &["run", "auth-flow", "--input", "novalue"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("KEY=VALUE"), "{}", o.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_and_events() {
    let s = Server::start().await;
    let o = cli(
        &s,
        &[
            "tokens",
            "create",
            "--role",
            "reader",
            "--name",
            "dash",
            "--expires-in",
            "24h",
            "--json",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    let v = o.json();
    let secret = v["secret"].as_str().unwrap().to_owned();
    let id = v["token"]["id"].as_str().unwrap().to_owned();
    let expires = v["token"]["expiresAt"].as_u64().unwrap();
    let in_a_day = crate::support::now_ms() + 86_400_000;
    assert!(expires.abs_diff(in_a_day) < 60_000, "{v}");

    let o = cli(&s, &["tokens", "ls"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let row = o.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains("reader") && row.contains("dash") && row.contains("active"));

    // The reader may read but not create tokens: a 403 naming the role.
    let o = maestro(&[
        "tokens", "create", "--role", "admin", "--server", &s.base, "--token", &secret,
    ])
    .await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("FORBIDDEN") && o.stderr.contains("reader"),
        "{}",
        o.stderr
    );

    let o = cli(&s, &["tokens", "revoke", &id]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let o = cli(&s, &["tokens", "ls", "--json"]).await;
    let revoked = o.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert!(revoked["revokedAt"].is_u64(), "{revoked}");

    // Events: publish two, read the history filtered by type.
    for t in ["agent:event", "agent:alert"] {
        let (st, v) = s
            .post(
                "/maestro/events",
                json!({"type": t, "payload": {"k": t}, "correlationId": "c-1"}),
            )
            .await;
        assert_eq!(st.as_u16(), 201, "{v}");
    }
    let o = cli(&s, &["events", "--type", "agent:alert"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", o.stdout);
    assert!(lines[0].starts_with("SEQ"));
    assert!(lines[1].contains("agent:alert"));
    let o = cli(&s, &["events", "--correlation", "c-1", "--json"]).await;
    assert_eq!(o.json()["count"], 2, "{o:?}");
    let o = cli(&s, &["events", "--type", "agent:nonsense"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("unknown event type"), "{}", o.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_events_follow_prints_live_events() {
    let s = Server::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_maestro"))
        .args([
            "events",
            "--follow",
            "--json",
            "--type",
            "agent:event",
            "--server",
            &s.base,
            "--token",
            &s.admin,
        ])
        .env_remove("MAESTRO_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (st, _) = s
        .post(
            "/maestro/events",
            json!({"type": "agent:event", "payload": {"n": 1}}),
        )
        .await;
    assert_eq!(st.as_u16(), 201);
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
        .await
        .expect("a line within 3 s")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["type"], "agent:event");
    assert_eq!(v["payload"]["n"], 1);
    // Published after the CLI connected: arrives live.
    let (st, _) = s
        .post(
            "/maestro/events",
            json!({"type": "agent:event", "payload": {"n": 2}}),
        )
        .await;
    assert_eq!(st.as_u16(), 201);
    let second = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
        .await
        .expect("a second line within 3 s")
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(v["payload"]["n"], 2);
    child.kill().await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_connection_and_token_errors() {
    let s = Server::start().await;
    // Nothing listens on port 1.
    let o = maestro(&[
        "agents",
        "ls",
        "--server",
        "http://127.0.0.1:1",
        "--token",
        "x",
    ])
    .await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains("cannot reach Maestro at http://127.0.0.1:1: "),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("is 'maestro serve' running?"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("MAESTRO_SERVER"), "{}", o.stderr);

    // A wrong token: the 401 hint names the token file and MAESTRO_TOKEN.
    let o = maestro(&[
        "agents",
        "ls",
        "--server",
        &s.base,
        "--token",
        "mst_bad_bad",
    ])
    .await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("UNAUTHORIZED"), "{}", o.stderr);
    assert!(o.stderr.contains("admin.token"), "{}", o.stderr);
    assert!(o.stderr.contains("MAESTRO_TOKEN"), "{}", o.stderr);

    // No --token: the admin token is read from <dataDir>/admin.token.
    let dir = s.dir.path().to_str().unwrap().to_owned();
    let o = maestro(&[
        "agents",
        "ls",
        "--json",
        "--server",
        &s.base,
        "--data-dir",
        &dir,
    ])
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.json()["count"], 0);
    // ... and when that file is missing, say so.
    let empty = tempfile::tempdir().unwrap();
    let o = maestro(&[
        "agents",
        "ls",
        "--server",
        &s.base,
        "--data-dir",
        empty.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("admin.token"), "{}", o.stderr);
    assert!(o.stderr.contains("--token"), "{}", o.stderr);

    // A usage error from clap: exit 2.
    let o = maestro(&["agents", "frobnicate"]).await;
    assert_eq!(o.code, 2, "{o:?}");
    s.stop().await;
}
