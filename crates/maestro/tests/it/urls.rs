//! URLs Maestro calls (agent endpoints, `callback` handlers, webhook
//! subscriptions), docs/SECURITY.md "Outbound requests": refused at creation
//! when they carry credentials or name a literal address the outbound rules
//! refuse; shown without their query string to those who may not see secrets,
//! and never logged with their userinfo or query.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::process::{Proc, uuid_like};
use crate::support::{Agent, Server};

/// Literal destinations refused whatever the listen address: link-local and
/// metadata, also carried in IPv6 (IPv4-compatible, 6to4, NAT64), and
/// 192.0.0.0/24.
const REFUSED: &[&str] = &[
    "169.254.169.254",
    "[fe80::1]",
    "[::169.254.169.254]",
    "[2002:a9fe:a9fe::1]",
    "[64:ff9b::a9fe:a9fe]",
    "192.0.0.8",
];

/// URLs with credentials in them.
const WITH_CREDENTIALS: &[&str] = &[
    "http://user:pw@127.0.0.1:9/hook",
    "http://user@127.0.0.1:9/hook",
    "http://127.0.0.1:9/hook?token=s3cret",
    "http://127.0.0.1:9/hook?team=a&api_key=s3cret",
];

fn workflow_with_callback(id: &str, url: &str) -> Value {
    json!({"id": id, "name": id, "steps": [
        {"id": "a", "agentId": "w", "capability": "work",
         "errorHandler": {"type": "callback", "action": url}}]})
}

/// 400 with `code`, naming `field` (and no secret of the URL in the answer).
fn refused(st: StatusCode, v: &Value, code: &str, field: &str, url: &str) {
    assert_eq!(st, StatusCode::BAD_REQUEST, "{url}: {v}");
    assert_eq!(v["code"], code, "{url}: {v}");
    assert_eq!(v["details"]["field"], field, "{url}: {v}");
    assert!(!v.to_string().contains("s3cret"), "{url}: {v}");
}

/// Each way a URL enters: subscription, agent registration (POST and PUT),
/// workflow definition and update (a callback). `code` and the field
/// expected of a refusal, or `None` when it must be accepted.
async fn give_everywhere(s: &Server, url: &str, expect: Option<&str>) {
    let check = |st: StatusCode, v: &Value, field: &str| match expect {
        Some(code) => refused(st, v, code, field, url),
        None => assert!(st.is_success(), "{url}: {st} {v}"),
    };
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": url}),
        )
        .await;
    check(st, &v, "url");
    let agent = |id: &str| json!({"id": id, "type": "t", "endpoint": url, "capabilities": [{"id": "work"}]});
    let (st, v) = s.post("/maestro/agents", agent(&format!("p{n}"))).await;
    check(st, &v, "endpoint");
    let id = format!("u{n}");
    let (st, v) = s.put(&format!("/maestro/agents/{id}"), agent(&id)).await;
    check(st, &v, "endpoint");
    let wf = format!("cb{n}");
    let (st, v) = s
        .post("/maestro/workflows", workflow_with_callback(&wf, url))
        .await;
    check(st, &v, "steps[0].errorHandler.action");
    if expect.is_some() {
        assert_eq!(v["details"]["stepId"], "a", "{v}");
    }
    // An update bringing the callback.
    let plain = format!("pl{n}");
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": plain, "name": "p", "steps": [{"id": "a", "capability": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let patch = workflow_with_callback(&plain, url);
    let (st, v) = s
        .patch(
            &format!("/maestro/workflows/{plain}"),
            json!({"steps": patch["steps"]}),
        )
        .await;
    check(st, &v, "steps[0].errorHandler.action");
}

#[tokio::test]
async fn credentials_in_urls_are_refused_at_creation() {
    let s = Server::start().await;
    for url in WITH_CREDENTIALS {
        give_everywhere(&s, url, Some("VALIDATION_FAILED")).await;
    }
    // Nothing was stored.
    let (_, v) = s.get("/maestro/subscriptions").await;
    assert_eq!(v["total"], 0, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn refused_literal_addresses_are_refused_at_creation() {
    let s = Server::start().await;
    for host in REFUSED {
        give_everywhere(&s, &format!("http://{host}/hook"), Some("OUTBOUND_REFUSED")).await;
    }
    // Loopback is allowed on a loopback listener (the tests' own), and a host
    // name is not resolved at creation.
    give_everywhere(&s, "http://127.0.0.1:9/hook?team=a", None).await;
    give_everywhere(&s, "http://metadata.invalid/hook", None).await;
    s.stop().await;
}

/// The rules at creation are the server's outbound rules: here an
/// `outboundAllowList` that allows only 10.0.0.0/8.
#[tokio::test]
async fn creation_follows_the_configured_allow_list() {
    let s = Server::start_with(|s| {
        s.server.outbound_allow_list = Some(vec!["10.0.0.0/8".to_owned()]);
    })
    .await;
    give_everywhere(&s, "http://127.0.0.1:9/hook", Some("OUTBOUND_REFUSED")).await;
    give_everywhere(&s, "http://10.1.2.3:9/hook", None).await;
    s.stop().await;
}

#[tokio::test]
async fn urls_are_shown_without_their_query_to_those_who_may_not_see_secrets() {
    let s = Server::start().await;
    let reader = s.token("reader", None).await;
    let operator = s.token("operator", None).await;
    let hook = "http://127.0.0.1:9/hook?team=payments";
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["agent:event"], "url": hook}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let endpoint = "http://127.0.0.1:9/agent?region=eu";
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": "w", "type": "t", "endpoint": endpoint, "capabilities": [{"id": "work"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let agent_token = v["agentToken"].as_str().unwrap().to_owned();
    let callback = "http://127.0.0.1:9/cb?team=payments";
    let (st, v) = s
        .post("/maestro/workflows", workflow_with_callback("wf", callback))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let get = |token: String, path: &'static str| {
        let s = &s;
        async move { s.call(Method::GET, path, Some(&token), None).await.1 }
    };
    // Subscriptions: the admin only sees the query.
    let sub_url = |v: Value| v["subscriptions"][0]["url"].clone();
    assert_eq!(
        sub_url(get(s.admin.clone(), "/maestro/subscriptions").await),
        hook
    );
    for t in [&operator, &reader] {
        let url = sub_url(get(t.clone(), "/maestro/subscriptions").await);
        assert_eq!(url, "http://127.0.0.1:9/hook", "{url}");
    }
    // The audit event: without the query, for everyone.
    for t in [&s.admin, &reader, &agent_token] {
        let v = get(
            t.clone(),
            "/maestro/events?eventTypes=maestro:audit&after=0&limit=100",
        )
        .await;
        let created: Vec<&Value> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["payload"]["action"] == "subscription.created")
            .collect();
        assert_eq!(created.len(), 1, "{v}");
        assert_eq!(
            created[0]["payload"]["url"], "http://127.0.0.1:9/hook",
            "{v}"
        );
    }
    // Agent endpoints and callbacks: admins and operators (who write them and
    // may write them back) see them whole, readers and agents without query.
    for (t, whole) in [
        (&s.admin, true),
        (&operator, true),
        (&reader, false),
        (&agent_token, false),
    ] {
        let shown = |url: &str| {
            if whole {
                url.to_owned()
            } else {
                url.split('?').next().unwrap().to_owned()
            }
        };
        let v = get(t.clone(), "/maestro/agents/w").await;
        assert_eq!(v["agent"]["endpoint"], shown(endpoint), "{v}");
        let v = get(t.clone(), "/maestro/agents").await;
        assert_eq!(v["agents"][0]["endpoint"], shown(endpoint), "{v}");
        let v = get(t.clone(), "/maestro/capabilities/work/agents").await;
        assert_eq!(v["agents"][0]["endpoint"], shown(endpoint), "{v}");
        let v = get(t.clone(), "/maestro/workflows/wf").await;
        let action = &v["workflow"]["steps"][0]["errorHandler"]["action"];
        assert_eq!(action, &json!(shown(callback)), "{v}");
        let v = get(t.clone(), "/maestro/workflows").await;
        let action = &v["workflows"][0]["steps"][0]["errorHandler"]["action"];
        assert_eq!(action, &json!(shown(callback)), "{v}");
    }
    s.stop().await;
}

/// At `debug` level, a callback that fails (logged with its URL at every
/// attempt) and a webhook that fails: neither URL's query reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_url_query_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let p = Proc::start_logging_to(dir.path(), &log_path, &[("MAESTRO_LOG", "debug")]);
    let marker = format!("m{}", uuid_like());
    let agent = Agent::start(|_| {
        (
            422,
            json!({"error": {"code": "NOPE", "message": "no", "retryable": false}}),
        )
    })
    .await;
    p.register_worker("w", &agent.endpoint()).await;
    let (st, v) = p
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:failed"],
                   "url": format!("http://127.0.0.1:9/hook?team={marker}")}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let callback = format!("http://127.0.0.1:9/cb?team={marker}");
    let (st, v) = p
        .post(
            "/maestro/workflows",
            workflow_with_callback("cb", &callback),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = p
        .post("/maestro/workflows/cb/execute?wait=10000", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "failed", "{v}");
    // The webhook's first attempts fail too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.signal("-TERM");
    let mut child = p.child;
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("callback failed"),
        "the callback was logged: {log}"
    );
    assert!(
        log.contains("http://127.0.0.1:9/cb"),
        "the callback's URL was logged: {log}"
    );
    assert!(!log.contains(&marker), "a URL's query is in the log: {log}");
}
