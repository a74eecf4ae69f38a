//! The auth matrix: every route of the table × every principal (API.md
//! "Roles and tokens"), and what a missing, malformed, revoked or expired
//! token gets.
//!
//! The routes come from `maestro_api::routes::table()`, and the expected
//! access and a request body are looked up per (method, path) in matches that
//! panic on a route they do not know: a new route cannot be forgotten here.

use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Agent, Server, now_ms, raw_http};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Operator,
    Reader,
    /// An agent token bound to `sentinel-1`, the agent the paths name.
    Agent,
    /// An agent token bound to `other-1`.
    OtherAgent,
}

const EVERYONE: [Who; 5] = [
    Who::Admin,
    Who::Operator,
    Who::Reader,
    Who::Agent,
    Who::OtherAgent,
];

/// The agent every `{agentId}` path names.
const AGENT: &str = "sentinel-1";
const OTHER: &str = "other-1";
/// The workflow every `{workflowId}` path names.
const WORKFLOW: &str = "wf-auth";

/// Whether `who` may call `method path`, as API.md says. Panics on a route
/// that is not here yet: add it with the access API.md gives it.
fn allowed(method: &Method, path: &str, who: Who) -> bool {
    use Who::*;
    let operator = matches!(who, Admin | Operator);
    let reader = matches!(who, Admin | Operator | Reader);
    let itself = operator || who == Agent;
    match (method.as_str(), path) {
        ("GET", "/healthz" | "/readyz") => true,
        // Every GET for admin, operator and reader; monitoring, config and
        // subscriptions are not for agent tokens.
        (
            "GET",
            "/metrics"
            | "/maestro/metrics"
            | "/maestro/health"
            | "/maestro/config"
            | "/maestro/subscriptions",
        ) => reader,
        // What agents read too.
        (
            "GET",
            "/maestro/openapi.json"
            | "/maestro/agents"
            | "/maestro/agents/{agentId}"
            | "/maestro/agents/{agentId}/health"
            | "/maestro/capabilities/{capabilityId}/agents"
            | "/maestro/workflows"
            | "/maestro/workflows/{workflowId}"
            | "/maestro/executions"
            | "/maestro/executions/{executionId}"
            | "/maestro/events"
            | "/maestro/events/stream"
            | "/maestro/events/{correlationId}",
        ) => true,
        // Tokens and config PATCH: admin only.
        ("GET" | "POST", "/maestro/tokens")
        | ("DELETE", "/maestro/tokens/{tokenId}")
        | ("PATCH", "/maestro/config") => who == Admin,
        ("POST", "/maestro/agents") | ("DELETE", "/maestro/agents/{agentId}") => operator,
        // An agent registers/upserts itself, heartbeats, sets its own status
        // and reports its own health.
        ("PUT", "/maestro/agents/{agentId}")
        | ("POST", "/maestro/agents/{agentId}/tasks/poll")
        | ("PATCH", "/maestro/agents/{agentId}/status")
        | ("POST", "/maestro/agents/{agentId}/heartbeat")
        | ("PUT", "/maestro/agents/{agentId}/health") => itself,
        ("POST", "/maestro/workflows")
        | ("PATCH" | "DELETE", "/maestro/workflows/{workflowId}")
        | ("POST", "/maestro/workflows/{workflowId}/execute") => operator,
        (
            "POST",
            "/maestro/executions/{executionId}/cancel"
            | "/maestro/executions/{executionId}/pause"
            | "/maestro/executions/{executionId}/resume",
        ) => operator,
        // Agents answer their own tasks (ownership is checked per task, see
        // poll.rs; the task here does not exist, so allowed callers get 404).
        (
            "POST",
            "/maestro/tasks/{taskId}/complete"
            | "/maestro/tasks/{taskId}/fail"
            | "/maestro/tasks/{taskId}/heartbeat",
        ) => who != Reader,
        // Agents publish as themselves (the body below leaves sourceAgent out).
        ("POST", "/maestro/events") => who != Reader,
        ("POST", "/maestro/subscriptions")
        | ("DELETE", "/maestro/subscriptions/{subscriptionId}") => operator,
        _ => panic!(
            "{method} {path} is not in the auth matrix: add the access API.md gives it to `allowed` \
             and a request body to `body`"
        ),
    }
}

/// Routes whose resource may be gone or in the wrong state after an earlier
/// allowed call (or that conflict by nature): 404/409 count as allowed.
fn may_conflict(method: &Method, path: &str) -> bool {
    *method == Method::DELETE
        || path.starts_with("/maestro/tasks/")
        || path.ends_with("/cancel")
        || path.ends_with("/pause")
        || path.ends_with("/resume")
}

/// A valid request body for `method path` (`None`: the route takes none).
/// `n` makes created ids unique. Panics on a write route that is not here.
fn body(method: &Method, path: &str, n: usize) -> Option<Value> {
    let b = match (method.as_str(), path) {
        ("GET" | "DELETE", _) => return None,
        ("POST", "/maestro/agents") => json!({"id": format!("reg-{n}"), "type": "test",
            "capabilities": [{"id": "sign"}]}),
        ("PUT", "/maestro/agents/{agentId}") => json!({"id": AGENT, "type": "sentinel",
            "capabilities": [{"id": "sign", "tags": ["crypto"]}]}),
        ("PATCH", "/maestro/agents/{agentId}/status") => json!({"status": "online"}),
        ("POST", "/maestro/agents/{agentId}/heartbeat") => json!({}),
        ("POST", "/maestro/agents/{agentId}/tasks/poll") => json!({"waitMs": 0}),
        ("POST", "/maestro/tasks/{taskId}/complete") => json!({"outputs": {}}),
        ("POST", "/maestro/tasks/{taskId}/fail") => {
            json!({"error": {"code": "X", "message": "m", "retryable": false}})
        }
        ("POST", "/maestro/tasks/{taskId}/heartbeat") => json!({}),
        ("PUT", "/maestro/agents/{agentId}/health") => json!({"status": "healthy", "uptime": 99.0}),
        ("POST", "/maestro/workflows") => workflow(&format!("wf-new-{n}")),
        ("PATCH", "/maestro/workflows/{workflowId}") => json!({"description": format!("edit {n}")}),
        ("POST", "/maestro/workflows/{workflowId}/execute") => json!({"inputs": {"x": n}}),
        ("POST", "/maestro/executions/{executionId}/cancel") => json!({"reason": "auth matrix"}),
        (
            "POST",
            "/maestro/executions/{executionId}/pause" | "/maestro/executions/{executionId}/resume",
        ) => {
            return None;
        }
        ("POST", "/maestro/events") => json!({"type": "agent:event", "payload": {"n": n}}),
        ("POST", "/maestro/tokens") => json!({"role": "reader"}),
        ("PATCH", "/maestro/config") => json!({"agentTimeoutMs": 10000}),
        ("POST", "/maestro/subscriptions") => subscription(),
        _ => panic!("{method} {path} has no request body in the auth matrix: add one to `body`"),
    };
    Some(b)
}

fn workflow(id: &str) -> Value {
    json!({"id": id, "name": "Auth matrix",
        "steps": [{"id": "a", "agentId": "echo-1", "capability": "say", "inputs": {"x": "${x}"}}]})
}

fn subscription() -> Value {
    // An event type nothing publishes here: no deliveries in the background.
    json!({"eventTypes": ["workflow:paused"], "url": "http://127.0.0.1:9/hook"})
}

/// The resources the paths name; the destructive routes remove them, so
/// [`Fixtures::restore`] puts them back before each call.
struct Fixtures {
    execution: String,
    subscription: String,
    token: String,
}

impl Fixtures {
    async fn create(s: &Server) -> Fixtures {
        let (st, v) = s.post("/maestro/workflows", workflow(WORKFLOW)).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let (st, v) = s
            .post(
                &format!("/maestro/workflows/{WORKFLOW}/execute?wait=5000"),
                json!({"inputs": {"x": 0}}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let execution = v["execution"]["id"].as_str().unwrap().to_owned();
        let mut fx = Fixtures {
            execution,
            subscription: String::new(),
            token: String::new(),
        };
        fx.restore(s).await;
        fx
    }

    async fn restore(&mut self, s: &Server) {
        let (st, _) = s.get(&format!("/maestro/agents/{AGENT}")).await;
        if st == StatusCode::NOT_FOUND {
            let (st, v) = s
                .put(
                    &format!("/maestro/agents/{AGENT}"),
                    body(&Method::PUT, "/maestro/agents/{agentId}", 0).unwrap(),
                )
                .await;
            assert!(st.is_success(), "{v}");
        }
        let (st, _) = s.get(&format!("/maestro/workflows/{WORKFLOW}")).await;
        if st == StatusCode::NOT_FOUND {
            let (st, v) = s.post("/maestro/workflows", workflow(WORKFLOW)).await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
        }
        let (_, v) = s.get("/maestro/subscriptions").await;
        if !v["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == self.subscription.as_str())
        {
            let (st, v) = s.post("/maestro/subscriptions", subscription()).await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
            self.subscription = v["subscription"]["id"].as_str().unwrap().to_owned();
        }
        let (_, v) = s.get("/maestro/tokens").await;
        let live = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == self.token.as_str() && t.get("revokedAt").is_none());
        if !live {
            let (st, v) = s
                .post(
                    "/maestro/tokens",
                    json!({"role": "reader", "name": "throwaway"}),
                )
                .await;
            assert_eq!(st, StatusCode::CREATED, "{v}");
            self.token = v["token"]["id"].as_str().unwrap().to_owned();
        }
    }

    /// `path` with its parameters replaced by the fixtures' ids.
    fn path(&self, path: &str) -> String {
        let p = path
            .replace("{agentId}", AGENT)
            .replace("{workflowId}", WORKFLOW)
            .replace("{executionId}", &self.execution)
            .replace("{correlationId}", "corr-auth")
            .replace("{capabilityId}", "sign")
            .replace("{tokenId}", &self.token)
            .replace("{taskId}", "task-auth")
            .replace("{subscriptionId}", &self.subscription);
        assert!(
            !p.contains('{'),
            "{path}: a path parameter the auth matrix does not know; add it to Fixtures::path"
        );
        p
    }
}

/// One request with `authorization` as the header's value (None: no header).
/// For the SSE stream only the status line is read when it is 200.
async fn send(
    s: &Server,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut req = s.client.request(method.clone(), s.url(path));
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in 5 s"))
        .expect("request sent");
    let status = resp.status();
    if path == "/maestro/events/stream" && status == StatusCode::OK {
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            ct.starts_with("text/event-stream"),
            "stream content type {ct:?}"
        );
        return (status, Value::Null); // dropping the response ends the stream
    }
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// The tokens of each principal, created through the API.
async fn principals(s: &Server) -> Vec<(Who, String)> {
    let mut v = vec![(Who::Admin, s.admin.clone())];
    v.push((Who::Operator, s.token("operator", None).await));
    v.push((Who::Reader, s.token("reader", None).await));
    v.push((Who::Agent, s.token("agent", Some(AGENT)).await));
    v.push((Who::OtherAgent, s.token("agent", Some(OTHER)).await));
    assert_eq!(v.len(), EVERYONE.len());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_every_principal() {
    let s = Server::start().await;
    let echo = Agent::echo().await;
    s.register_http_agent("echo-1", &echo.endpoint(), &["say"])
        .await;
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": AGENT, "type": "sentinel", "capabilities": [{"id": "sign"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": OTHER, "type": "sentinel", "capabilities": [{"id": "sign"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let mut fx = Fixtures::create(&s).await;
    let tokens = principals(&s).await;

    let table = maestro_api::routes::table();
    assert!(
        table.len() >= 30,
        "the route table has {} routes",
        table.len()
    );
    let mut failures = Vec::new();
    let mut n = 0;
    for route in &table {
        let (method, template) = (&route.method, route.path);
        for (who, secret) in &tokens {
            n += 1;
            fx.restore(&s).await;
            let path = fx.path(template);
            let b = body(method, template, n);
            let expect = allowed(method, template, *who);
            let (st, v) = send(&s, method, &path, Some(&bearer(secret)), b.as_ref()).await;
            let ok = if expect {
                st.is_success()
                    || (may_conflict(method, template)
                        && matches!(st, StatusCode::NOT_FOUND | StatusCode::CONFLICT))
            } else {
                st == StatusCode::FORBIDDEN && v["code"] == "FORBIDDEN"
            };
            if !ok {
                failures.push(format!(
                    "{who:?} {method} {path}: expected {}, got {st} {v}",
                    if expect { "allowed" } else { "403 FORBIDDEN" }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_revoked_and_expired_tokens_get_401() {
    let s = Server::start().await;
    s.post(
        "/maestro/agents",
        json!({"id": AGENT, "type": "sentinel", "capabilities": [{"id": "sign"}]}),
    )
    .await;
    let echo = Agent::echo().await;
    s.register_http_agent("echo-1", &echo.endpoint(), &["say"])
        .await;
    let fx = Fixtures::create(&s).await;

    // A revoked reader token and an agent token of sentinel-1.
    let revoked = s.token("reader", None).await;
    let (st, _) = send(
        &s,
        &Method::GET,
        "/maestro/agents",
        Some(&bearer(&revoked)),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    let (st, v) = s.delete(&format!("/maestro/tokens/{revoked_id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let revoked_agent = s.token("agent", Some(AGENT)).await;
    let (st, _) = s
        .delete(&format!(
            "/maestro/tokens/{}",
            revoked_agent.split('_').nth(1).unwrap()
        ))
        .await;
    assert_eq!(st, StatusCode::OK);

    // An admin token that expires in 300 ms: valid until then, 401 after.
    let expires_at = now_ms() + 300;
    let (st, v) = s
        .post(
            "/maestro/tokens",
            json!({"role": "admin", "expiresAt": expires_at}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["token"]["expiresAt"], expires_at);
    let expiring = v["secret"].as_str().unwrap().to_owned();
    let (st, _) = send(
        &s,
        &Method::GET,
        "/maestro/tokens",
        Some(&bearer(&expiring)),
        None,
    )
    .await;
    if now_ms() + 50 < expires_at {
        assert_eq!(st, StatusCode::OK, "valid before it expires");
    }
    while now_ms() <= expires_at + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The admin token with a wrong secret.
    let (prefix, secret) = s.admin.rsplit_once('_').unwrap();
    let wrong_secret = format!("{prefix}_{}", "0".repeat(secret.len()));
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("Bearer nope", Some("Bearer nope".into())),
        ("Bearer mst_abc_def", Some("Bearer mst_abc_def".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("other scheme", Some(format!("Basic {}", s.admin))),
        ("token without scheme", Some(s.admin.clone())),
        ("wrong secret", Some(bearer(&wrong_secret))),
        ("revoked", Some(bearer(&revoked))),
        ("revoked agent token", Some(bearer(&revoked_agent))),
        ("expired", Some(bearer(&expiring))),
    ];
    let mut failures = Vec::new();
    let mut n = 0;
    for route in maestro_api::routes::table() {
        let (method, template) = (&route.method, route.path);
        let public = template == "/healthz" || template == "/readyz";
        for (what, header) in &bad {
            n += 1;
            let path = fx.path(template);
            let b = body(method, template, n);
            let (st, v) = send(&s, method, &path, header.as_deref(), b.as_ref()).await;
            let ok = if public {
                st == StatusCode::OK
            } else {
                st == StatusCode::UNAUTHORIZED
                    && v["code"] == "UNAUTHORIZED"
                    && v["success"] == false
            };
            if !ok {
                failures.push(format!(
                    "{what}: {method} {path}: expected {}, got {st} {v}",
                    if public {
                        "200 (no token needed)"
                    } else {
                        "401 UNAUTHORIZED"
                    }
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // None of the refused writes happened: nothing registered or defined.
    let (_, v) = s.get("/maestro/agents").await;
    assert_eq!(v["total"], 2, "{v}");
    let (_, v) = s.get("/maestro/workflows").await;
    assert_eq!(v["total"], 1, "{v}");
    let (_, v) = s
        .get("/maestro/events?eventTypes=agent:event,agent:alert")
        .await;
    assert_eq!(v["count"], 0, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_publish_only_as_themselves() {
    let s = Server::start().await;
    let tokens = principals(&s).await;
    let secret = |who: Who| bearer(&tokens.iter().find(|(w, _)| *w == who).unwrap().1);
    let publish = |who: Who, source: Option<&str>| {
        let mut b = json!({"type": "agent:alert", "payload": {"level": "high"}});
        if let Some(src) = source {
            b["sourceAgent"] = json!(src);
        }
        let auth = secret(who);
        let s = &s;
        async move { send(s, &Method::POST, "/maestro/events", Some(&auth), Some(&b)).await }
    };
    let cases: &[(Who, Option<&str>, StatusCode, Option<&str>)] = &[
        // (who, sourceAgent, status, sourceAgent of the stored event)
        (Who::Agent, None, StatusCode::CREATED, Some(AGENT)),
        (Who::Agent, Some(AGENT), StatusCode::CREATED, Some(AGENT)),
        (Who::Agent, Some(OTHER), StatusCode::FORBIDDEN, None),
        (Who::Agent, Some("maestro"), StatusCode::FORBIDDEN, None),
        (
            Who::OtherAgent,
            Some(OTHER),
            StatusCode::CREATED,
            Some(OTHER),
        ),
        (Who::OtherAgent, Some(AGENT), StatusCode::FORBIDDEN, None),
        (
            Who::Operator,
            Some("anyone"),
            StatusCode::CREATED,
            Some("anyone"),
        ),
        (Who::Admin, Some(AGENT), StatusCode::CREATED, Some(AGENT)),
        (Who::Reader, None, StatusCode::FORBIDDEN, None),
        (Who::Reader, Some("reader"), StatusCode::FORBIDDEN, None),
    ];
    let mut published = 0;
    for (who, source, status, stored) in cases {
        let (st, v) = publish(*who, *source).await;
        assert_eq!(st, *status, "{who:?} publishing as {source:?}: {v}");
        match stored {
            Some(src) => {
                published += 1;
                assert_eq!(v["event"]["sourceAgent"], *src, "{v}");
            }
            None => assert_eq!(v["code"], "FORBIDDEN", "{v}"),
        }
    }
    // Only the allowed ones were stored.
    let (_, v) = s.get("/maestro/events?eventTypes=agent:alert").await;
    assert_eq!(v["count"], published, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_secrets_are_shown_once_and_revocation_is_immediate() {
    let s = Server::start().await;
    let (st, created) = s
        .post(
            "/maestro/tokens",
            json!({"role": "operator", "name": "ops"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        secret.split('_').nth(1),
        Some(id.as_str()),
        "mst_<id>_<secret>"
    );
    let allowed_keys = [
        "id",
        "role",
        "agentId",
        "name",
        "createdAt",
        "expiresAt",
        "revokedAt",
    ];
    let check_record = |t: &Value| {
        for k in t.as_object().unwrap().keys() {
            assert!(
                allowed_keys.contains(&k.as_str()),
                "token field {k:?} in {t}"
            );
        }
    };
    check_record(&created["token"]);
    assert_eq!(created["token"]["role"], "operator");

    // Works at once.
    let (st, v) = send(
        &s,
        &Method::POST,
        "/maestro/workflows",
        Some(&bearer(&secret)),
        Some(&json!({"id": "w", "name": "W", "steps": [{"id": "a", "capability": "c"}]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // The agent token answered at registration works at once, for itself.
    let (st, v) = s
        .post("/maestro/agents", json!({"id": AGENT, "type": "sentinel"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let agent_token = v["agentToken"].as_str().unwrap().to_owned();
    let (st, v) = send(
        &s,
        &Method::POST,
        &format!("/maestro/agents/{AGENT}/heartbeat"),
        Some(&bearer(&agent_token)),
        Some(&json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // The list never carries a secret or its hash.
    let agent_secret = agent_token.rsplit('_').next().unwrap().to_owned();
    let admin_secret = s.admin.rsplit('_').next().unwrap().to_owned();
    let resp = s
        .client
        .get(s.url("/maestro/tokens"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for sec in [
        secret.rsplit('_').next().unwrap(),
        &agent_secret,
        &admin_secret,
    ] {
        assert!(
            !text.contains(sec),
            "a secret in GET /maestro/tokens: {text}"
        );
    }
    let list: Value = serde_json::from_str(&text).unwrap();
    let all = list["tokens"].as_array().unwrap();
    assert_eq!(list["count"].as_u64(), Some(all.len() as u64));
    assert!(all.len() >= 3, "{list}");
    for t in all {
        check_record(t);
        for k in t.as_object().unwrap().keys() {
            let k = k.to_ascii_lowercase();
            assert!(!k.contains("secret") && !k.contains("hash"), "{t}");
        }
    }

    // Revoked: 401 at once, and gone for good.
    let (st, v) = s.delete(&format!("/maestro/tokens/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = send(
        &s,
        &Method::GET,
        "/maestro/workflows",
        Some(&bearer(&secret)),
        None,
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")),
        "{v}"
    );
    let (st, _) = s.delete(&format!("/maestro/tokens/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, v) = s.get("/maestro/tokens").await;
    let rec = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .cloned();
    if let Some(rec) = rec {
        assert!(
            rec["revokedAt"].is_u64(),
            "a listed revoked token says so: {rec}"
        );
    }
    // Only an admin sees or makes tokens.
    let (st, _) = send(
        &s,
        &Method::GET,
        "/maestro/tokens",
        Some(&bearer(&agent_token)),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_but_valid_tokens_never_are() {
    let s = Server::start_with(|c| c.server.auth_failures_per_minute = 5).await;
    let tokens = principals(&s).await;
    // 200 bad tokens from 127.0.0.1: well-formed guesses (known shape, unknown
    // id), garbage, and a wrong secret for a real id.
    let real_id = tokens[1].1.split('_').nth(1).unwrap().to_owned();
    for i in 0..200 {
        let bad = match i % 3 {
            0 => format!("mst_{i:012x}_{}", "0".repeat(64)),
            1 => format!("garbage-{i}"),
            _ => format!("mst_{real_id}_{}", "f".repeat(64)),
        };
        let r = s
            .client
            .get(s.url("/maestro/agents"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap();
        let status = r.status();
        if i < 5 {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "UNAUTHORIZED", "{v}");
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "attempt {i}");
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "Retry-After {wait}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "RATE_LIMITED", "{v}");
        }
    }
    // Every role's valid token is served at once from the same address.
    for (who, token) in &tokens {
        let path = if *who == Who::OtherAgent {
            format!("/maestro/agents/{OTHER}")
        } else {
            format!("/maestro/agents/{AGENT}")
        };
        let (st, v) = s.call(Method::GET, &path, Some(token), None).await;
        assert!(
            st == StatusCode::OK || st == StatusCode::NOT_FOUND,
            "{who:?}: {st} {v}"
        );
        assert_ne!(v["code"], "RATE_LIMITED", "{who:?}: {v}");
    }
    let (st, v) = s.get("/maestro/agents").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // A missing token is a failure too.
    let (st, v) = s.call(Method::GET, "/maestro/agents", None, None).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{v}");
    // Probes need no token and are never limited.
    let (st, _) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_credentials_are_unambiguous() {
    let s = Server::start().await;
    let reader = s.token("reader", None).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = s
            .client
            .get(s.url("/maestro/agents"))
            .header("Authorization", format!("{scheme} {}", s.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "scheme {scheme}");
    }
    let r = s
        .client
        .get(s.url("/maestro/agents"))
        .header("Authorization", format!("Basic {}", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Two Authorization headers, in either order: 400, whichever comes first.
    for (first, second) in [(&reader, &s.admin), (&s.admin, &reader)] {
        let answer = raw_http(
            &s,
            format!(
                "POST /maestro/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {first}\r\n\
                 Authorization: Bearer {second}\r\nContent-Type: application/json\r\n\
                 Content-Length: 17\r\nConnection: close\r\n\r\n{{\"role\":\"reader\"}}"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 400, "{:?}", answer.body);
        assert_eq!(
            answer.body["code"], "VALIDATION_FAILED",
            "{:?}",
            answer.body
        );
        assert_eq!(answer.body["details"]["field"], "Authorization");
    }
    let (st, v) = s.get("/maestro/tokens").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["total"], 2, "no token was created: {v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_leave_audit_events() {
    let s = Server::start().await;
    let (st, v) = s.post("/maestro/tokens", json!({"role": "reader"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let token_secret = v["secret"].as_str().unwrap().to_owned();
    let token_id = v["token"]["id"].as_str().unwrap().to_owned();
    let (st, v) = s.delete(&format!("/maestro/tokens/{token_id}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .patch("/maestro/config", json!({"maxConcurrentWorkflows": 7}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let sub_secret = v["secret"].as_str().unwrap().to_owned();
    let sub = v["subscription"]["id"].as_str().unwrap().to_owned();
    let (st, v) = s.delete(&format!("/maestro/subscriptions/{sub}")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let agent = Agent::echo().await;
    s.register_http_agent("audited", &agent.endpoint(), &["x"])
        .await;
    let (st, v) = s.delete("/maestro/agents/audited").await;
    assert_eq!(st, StatusCode::OK, "{v}");

    let (st, v) = s
        .get("/maestro/events?eventTypes=maestro:audit&after=0&limit=100")
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let events = v["events"].as_array().unwrap();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["payload"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.created",
            "token.revoked",
            "config.changed",
            "subscription.created",
            "subscription.deleted",
            "agent.deregistered"
        ]
    );
    for e in events {
        assert_eq!(e["type"], "maestro:audit");
        assert!(e["payload"]["actor"]["tokenId"].is_string(), "{e}");
        assert_eq!(e["payload"]["actor"]["role"], "admin", "{e}");
    }
    assert_eq!(events[0]["payload"]["tokenId"], token_id.as_str());
    assert_eq!(events[2]["payload"]["patch"]["maxConcurrentWorkflows"], 7);
    let text = serde_json::to_string(&v).unwrap();
    let token_secret_part = token_secret.rsplit('_').next().unwrap();
    assert!(
        !text.contains(token_secret_part),
        "no token secret in audit events"
    );
    assert!(
        !text.contains(&sub_secret),
        "no subscription secret in audit events"
    );
    s.stop().await;
}
