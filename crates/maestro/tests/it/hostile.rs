//! Hostile input on the write routes: bodies over the limit (with and without
//! a Content-Length), wrong content types, malformed JSON, wrong types and
//! unknown names, bad ids, deep nesting and huge arrays, bad query parameters,
//! invalid UTF-8, and a deterministic randomized sweep of mutated bodies.
//!
//! Every refusal is a 4xx in the error envelope and changes nothing: the
//! lists the write routes touch read the same before and after.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Server, chunked, is_error_envelope, raw_http};

/// A write route, a valid body for it, and whether the body is optional.
struct Write {
    method: Method,
    path: &'static str,
    valid: Value,
    optional_body: bool,
}

/// The agent and workflow the write routes' paths name (see [`fixtures`]).
const AGENT: &str = "a-1";
const WORKFLOW: &str = "wf-1";

fn writes() -> Vec<Write> {
    let w = |method: Method, path: &'static str, valid: Value| Write {
        method,
        path,
        valid,
        optional_body: false,
    };
    vec![
        w(
            Method::POST,
            "/maestro/agents",
            json!({"id": "new-agent", "type": "sentinel", "status": "online", "transport": "poll",
                "maxConcurrency": 4, "metadata": {"k": "v"},
                "capabilities": [{"id": "sign", "tags": ["crypto"], "inputs": {"data": "string"}}]}),
        ),
        w(
            Method::POST,
            "/maestro/workflows",
            json!({"id": "new-wf", "name": "New", "onError": "stop", "tags": ["t"],
                "steps": [{"id": "a", "capability": "c", "inputs": {"k": "v"},
                    "retryPolicy": {"maxAttempts": 3, "delayMs": 10}},
                    {"id": "b", "capability": "c", "dependencies": ["a"]}]}),
        ),
        w(
            Method::PATCH,
            "/maestro/workflows/wf-1",
            json!({"description": "edited", "onError": "continue",
                "steps": [{"id": "a", "capability": "c", "inputs": {"k": 1}}]}),
        ),
        Write {
            method: Method::POST,
            path: "/maestro/workflows/wf-1/execute",
            valid: json!({"inputs": {"k": 1, "list": [1, 2]}, "correlationId": "corr-1"}),
            optional_body: true,
        },
        w(
            Method::POST,
            "/maestro/events",
            json!({"type": "agent:event", "payload": {"k": [1, 2]}, "sourceAgent": "a-1",
                "targetAgent": "b-1", "correlationId": "corr-1"}),
        ),
        w(
            Method::POST,
            "/maestro/tokens",
            json!({"role": "reader", "name": "dash"}),
        ),
        w(
            Method::PATCH,
            "/maestro/config",
            json!({"agentTimeoutMs": 9000, "defaultRetryPolicy": {"maxAttempts": 2, "delayMs": 5}}),
        ),
        w(
            Method::PUT,
            "/maestro/agents/a-1",
            json!({"id": "a-1", "type": "sentinel", "endpoint": "http://127.0.0.1:9",
                "capabilities": [{"id": "sign"}]}),
        ),
        w(
            Method::POST,
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:paused"], "url": "http://127.0.0.1:9/hook"}),
        ),
    ]
}

/// An agent and a workflow for the paths; the workflow's step names an agent
/// that does not exist, so its executions fail at once.
async fn fixtures(s: &Server) {
    let (st, v) = s
        .post(
            "/maestro/agents",
            json!({"id": AGENT, "type": "sentinel", "capabilities": [{"id": "sign"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": WORKFLOW, "name": "W",
            "steps": [{"id": "a", "agentId": "nobody", "capability": "c"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:paused"], "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

/// What the write routes could change, read through the API.
async fn snapshot(s: &Server) -> Value {
    let mut out = serde_json::Map::new();
    for path in [
        "/maestro/agents?limit=1000",
        "/maestro/workflows?limit=1000",
        "/maestro/tokens",
        "/maestro/config",
        "/maestro/subscriptions",
    ] {
        let (st, v) = s.get(path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {v}");
        out.insert(path.to_owned(), v);
    }
    let (_, v) = s.get("/maestro/executions?limit=1").await;
    out.insert("executions".into(), v["total"].clone());
    let (_, v) = s
        .get("/maestro/events?eventTypes=agent:event,agent:alert&limit=10000")
        .await;
    out.insert("published events".into(), v["count"].clone());
    Value::Object(out)
}

/// A request as the admin with `content_type` (None: no header) and `body`.
async fn send(
    s: &Server,
    method: &Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = s
        .client
        .request(method.clone(), s.url(path))
        .bearer_auth(&s.admin);
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let resp = req.body(body).send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn send_json(
    s: &Server,
    method: &Method,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    send(s, method, path, Some("application/json"), body).await
}

/// A request over a raw connection, as the admin, with a chunked body.
async fn send_chunked(s: &Server, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.admin
    )
    .into_bytes();
    req.extend_from_slice(&chunked(body, 1000));
    let a = raw_http(s, &req).await;
    (a.status, a.body)
}

/// Collects what went wrong, to report every case at once.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    /// `got` must be `status` with `code` in the error envelope.
    fn refused(&mut self, what: &str, got: (u16, &Value), status: u16, code: &str) {
        let (st, v) = got;
        if st != status || v["code"] != code || !is_error_envelope(v) {
            self.0
                .push(format!("{what}: expected {status} {code}, got {st} {v}"));
        }
    }

    /// A 4xx in the error envelope.
    fn client_error(&mut self, what: &str, got: (u16, &Value)) {
        let (st, v) = got;
        if !(400..500).contains(&st) || !is_error_envelope(v) {
            self.0.push(format!(
                "{what}: expected a 4xx in the error envelope, got {st} {v}"
            ));
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} failures:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

fn ser(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_with_and_without_content_length() {
    const LIMIT: usize = 4096;
    let s = Server::start_with(|c| c.server.max_body_bytes = LIMIT).await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let mut f = Failures::default();
    for w in writes() {
        // A valid body padded with whitespace: accepted but for its size.
        let mut big = ser(&w.valid);
        big.resize(LIMIT + 500, b' ');
        let what = format!("{} {} with {} bytes", w.method, w.path, big.len());
        let (st, v) = send_json(&s, &w.method, w.path, big.clone()).await;
        f.refused(
            &format!("{what} and a Content-Length"),
            (st.as_u16(), &v),
            413,
            "PAYLOAD_TOO_LARGE",
        );
        f.check(v["details"]["limit"] == LIMIT, || {
            format!("{what}: details.limit: {v}")
        });
        let (st, v) = send_chunked(&s, &w.method, w.path, &big).await;
        f.refused(
            &format!("{what}, chunked"),
            (st, &v),
            413,
            "PAYLOAD_TOO_LARGE",
        );
        // Far over the limit, chunked: the server stops reading at the limit.
        let mut huge = ser(&w.valid);
        huge.resize(LIMIT * 16, b' ');
        let (st, v) = send_chunked(&s, &w.method, w.path, &huge).await;
        f.refused(
            &format!("{} {} with {} bytes, chunked", w.method, w.path, huge.len()),
            (st, &v),
            413,
            "PAYLOAD_TOO_LARGE",
        );
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );

    // The same bodies within the limit are accepted, chunked or not; a body of
    // exactly the limit is within it.
    let body = br#"{"role": "reader", "name": "chunked"}"#;
    let (st, v) = send_chunked(&s, &Method::POST, "/maestro/tokens", body).await;
    assert_eq!(st, 201, "{v}");
    let mut exact = ser(&json!({"role": "reader", "name": "exact"}));
    exact.resize(LIMIT, b' ');
    let (st, v) = send_json(&s, &Method::POST, "/maestro/tokens", exact.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = send_chunked(&s, &Method::POST, "/maestro/tokens", &exact).await;
    assert_eq!(st, 201, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_types_are_415() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let mut f = Failures::default();
    for w in writes() {
        for ct in [
            Some("text/plain"),
            None,
            Some("application/x-www-form-urlencoded"),
            Some("application/xml"),
            Some(""),
        ] {
            let (st, v) = send(&s, &w.method, w.path, ct, ser(&w.valid)).await;
            f.refused(
                &format!("{} {} with Content-Type {ct:?}", w.method, w.path),
                (st.as_u16(), &v),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            );
        }
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_invalid_json() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let mut f = Failures::default();
    for w in writes() {
        // Each broken where a parser meets it before any field it could
        // refuse: in or right after the valid body's first key.
        let valid = ser(&w.valid);
        let quote = valid.iter().position(|&b| b == b'"').unwrap();
        let colon = valid.iter().position(|&b| b == b':').unwrap();
        let in_key = |bad: &[u8]| [&valid[..=quote], bad, &valid[quote + 1..]].concat();
        let text = String::from_utf8(valid.clone()).unwrap();
        let mut bodies: Vec<(&str, Vec<u8>)> = vec![
            ("an open brace", b"{".to_vec()),
            ("truncated", valid[..valid.len() / 2].to_vec()),
            ("without its last byte", valid[..valid.len() - 1].to_vec()),
            ("cut inside the first key", valid[..quote + 2].to_vec()),
            ("trailing garbage", [valid.as_slice(), b" garbage"].concat()),
            (
                "a second document",
                [valid.as_slice(), valid.as_slice()].concat(),
            ),
            ("an extra brace", [valid.as_slice(), b"}"].concat()),
            (
                "a trailing comma",
                [&valid[..valid.len() - 1], b",}"].concat(),
            ),
            ("single quotes", text.replace('"', "'").into_bytes()),
            (
                "a missing colon",
                [&valid[..colon], &valid[colon + 1..]].concat(),
            ),
            (
                "NaN",
                [&valid[..=colon], b"NaN", &valid[colon + 1..]].concat(),
            ),
            ("a bare word", b"nul".to_vec()),
            ("a control character in a string", in_key(b"\x01")),
            ("a bad escape", in_key(b"\\q")),
            ("a lone surrogate escape", in_key(b"\\ud800")),
            ("an unescaped newline in a string", in_key(b"\n")),
        ];
        if !w.optional_body {
            bodies.push(("an empty body", Vec::new()));
            bodies.push(("only whitespace", b"  \n ".to_vec()));
        }
        for (what, b) in bodies {
            let (st, v) = send_json(&s, &w.method, w.path, b).await;
            f.refused(
                &format!("{} {} with {what}", w.method, w.path),
                (st.as_u16(), &v),
                400,
                "INVALID_JSON",
            );
        }
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_unknown_values_and_unknown_fields_name_the_field() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let step = json!({"id": "a", "capability": "c"});
    let wf = |extra: Value| {
        let mut w = json!({"id": "new-wf", "name": "N", "steps": [step.clone()]});
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        w
    };
    let with_step = |extra: Value| {
        let mut st = step.clone();
        for (k, v) in extra.as_object().unwrap() {
            st[k] = v.clone();
        }
        st
    };
    let agent = |extra: Value| {
        let mut a = json!({"id": "new-agent", "type": "sentinel"});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let put_agent = |extra: Value| {
        let mut a = agent(extra);
        if a["id"] == "new-agent" {
            a["id"] = json!(AGENT);
        }
        a
    };
    let wf_path = "/maestro/workflows/wf-1";
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        // Workflows.
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"steps": "x"})),
            "steps",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"name": 7})),
            "name",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"onError": "explode"})),
            "onError",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"tags": "t"})),
            "tags",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"maxDuration": -5})),
            "maxDuration",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"stepz": []})),
            "stepz",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"steps": [with_step(json!({"retryPolicy": {"maxAttempts": "three"}}))]})),
            "steps[0].retryPolicy.maxAttempts",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(
                json!({"steps": [step.clone(), with_step(json!({"id": "b", "dependancies": ["a"]}))]}),
            ),
            "steps[1].dependancies",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"steps": [with_step(json!({"dependencies": "a"}))]})),
            "steps[0].dependencies",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"steps": [with_step(json!({"inputs": [1, 2]}))]})),
            "steps[0].inputs",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(json!({"steps": [with_step(json!({"timeout": "soon"}))]})),
            "steps[0].timeout",
        ),
        (
            Method::POST,
            "/maestro/workflows",
            wf(
                json!({"steps": [with_step(json!({"errorHandler": {"type": "pray", "action": "x"}}))]}),
            ),
            "steps[0].errorHandler.type",
        ),
        (Method::PATCH, wf_path, json!({"steps": "x"}), "steps"),
        (
            Method::PATCH,
            wf_path,
            json!({"onError": "explode"}),
            "onError",
        ),
        (Method::PATCH, wf_path, json!({"stepz": []}), "stepz"),
        (
            Method::PATCH,
            wf_path,
            json!({"steps": [with_step(json!({"dependancies": []}))]}),
            "steps[0].dependancies",
        ),
        (
            Method::PATCH,
            wf_path,
            json!({"steps": [with_step(json!({"retryPolicy": {"maxAttempts": "three"}}))]}),
            "steps[0].retryPolicy.maxAttempts",
        ),
        // Execute.
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            json!({"inputs": "x"}),
            "inputs",
        ),
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            json!({"inptus": {}}),
            "inptus",
        ),
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            json!({"correlationId": 5}),
            "correlationId",
        ),
        // Agents.
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"status": "sleepy"})),
            "status",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"transport": "carrier-pigeon"})),
            "transport",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"maxConcurrency": "many"})),
            "maxConcurrency",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"maxConcurrency": -1})),
            "maxConcurrency",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"capabilites": []})),
            "capabilites",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"capabilities": {"id": "sign"}})),
            "capabilities",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"capabilities": [{"id": "sign"}, {"id": "x", "tagz": []}]})),
            "capabilities[1].tagz",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"metadata": []})),
            "metadata",
        ),
        (
            Method::POST,
            "/maestro/agents",
            agent(json!({"type": null})),
            "type",
        ),
        (
            Method::PUT,
            "/maestro/agents/a-1",
            put_agent(json!({"status": "sleepy"})),
            "status",
        ),
        (
            Method::PUT,
            "/maestro/agents/a-1",
            put_agent(json!({"transport": "carrier-pigeon"})),
            "transport",
        ),
        (
            Method::PUT,
            "/maestro/agents/a-1",
            put_agent(json!({"endpoints": []})),
            "endpoints",
        ),
        // Events.
        (
            Method::POST,
            "/maestro/events",
            json!({"type": "agent:party", "payload": {}}),
            "type",
        ),
        (
            Method::POST,
            "/maestro/events",
            json!({"type": "agent:event", "sourceAgnet": "x"}),
            "sourceAgnet",
        ),
        (
            Method::POST,
            "/maestro/events",
            json!({"type": "agent:event", "targetAgent": 3}),
            "targetAgent",
        ),
        // Tokens.
        (Method::POST, "/maestro/tokens", json!({"role": 5}), "role"),
        (
            Method::POST,
            "/maestro/tokens",
            json!({"role": "reader", "expiresAt": "soon"}),
            "expiresAt",
        ),
        (
            Method::POST,
            "/maestro/tokens",
            json!({"role": "reader", "roles": ["admin"]}),
            "roles",
        ),
        // Config.
        (
            Method::PATCH,
            "/maestro/config",
            json!({"agentTimeoutMs": "ten"}),
            "agentTimeoutMs",
        ),
        (
            Method::PATCH,
            "/maestro/config",
            json!({"agentTimeoutMS": 1000}),
            "agentTimeoutMS",
        ),
        (
            Method::PATCH,
            "/maestro/config",
            json!({"enableRollback": "yes"}),
            "enableRollback",
        ),
        (
            Method::PATCH,
            "/maestro/config",
            json!({"defaultRetryPolicy": {"maxAttempts": "three"}}),
            "defaultRetryPolicy.maxAttempts",
        ),
        // Subscriptions.
        (
            Method::POST,
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:paused", "nope:event"], "url": "http://127.0.0.1:9/h"}),
            "eventTypes[1]",
        ),
        (
            Method::POST,
            "/maestro/subscriptions",
            json!({"eventTypes": "workflow:paused", "url": "http://127.0.0.1:9/h"}),
            "eventTypes",
        ),
        (
            Method::POST,
            "/maestro/subscriptions",
            json!({"eventTypes": ["workflow:paused"], "urls": ["http://127.0.0.1:9/h"]}),
            "urls",
        ),
    ];
    let mut f = Failures::default();
    for (method, path, body, field) in cases {
        let (st, v) = send_json(&s, &method, path, ser(&body)).await;
        let what = format!("{method} {path} {body}");
        f.refused(&what, (st.as_u16(), &v), 400, "VALIDATION_FAILED");
        f.check(v["details"]["field"] == field, || {
            format!("{what}: expected details.field {field:?}, got {v}")
        });
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_are_400() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let long = "a".repeat(200);
    let agent = |id: &str| json!({"id": id, "type": "sentinel"});
    let wf = |id: &str, step: &str| json!({"id": id, "name": "N", "steps": [{"id": step, "capability": "c"}]});
    let mut cases: Vec<(Method, String, Value)> = Vec::new();
    for bad in [
        "bad id",
        long.as_str(),
        "",
        "a/b",
        "ä",
        "a\nb",
        "a%20b",
        "<script>",
    ] {
        cases.push((Method::POST, "/maestro/agents".into(), agent(bad)));
        cases.push((Method::POST, "/maestro/workflows".into(), wf(bad, "a")));
        cases.push((
            Method::POST,
            "/maestro/tokens".into(),
            json!({"role": "agent", "agentId": bad}),
        ));
        cases.push((
            Method::POST,
            "/maestro/subscriptions".into(),
            json!({"eventTypes": ["workflow:paused"], "agentId": bad, "url": "http://127.0.0.1:9/h"}),
        ));
    }
    for bad in ["a.b", "a:b", "a b", "", &"s".repeat(65), "a/b"] {
        cases.push((Method::POST, "/maestro/workflows".into(), wf("new-wf", bad)));
        cases.push((
            Method::PATCH,
            "/maestro/workflows/wf-1".into(),
            json!({"steps": [{"id": bad, "capability": "c"}]}),
        ));
    }
    // Ids in the path (percent-encoded).
    for bad in ["bad%20id", long.as_str(), "a%2Fb", "%3Cx%3E"] {
        cases.push((Method::PUT, format!("/maestro/agents/{bad}"), agent(bad)));
        cases.push((
            Method::PATCH,
            format!("/maestro/agents/{bad}/status"),
            json!({"status": "online"}),
        ));
        cases.push((
            Method::PATCH,
            format!("/maestro/workflows/{bad}"),
            json!({"description": "x"}),
        ));
        cases.push((
            Method::POST,
            format!("/maestro/workflows/{bad}/execute"),
            json!({}),
        ));
    }
    let mut f = Failures::default();
    for (method, path, body) in cases {
        let (st, v) = send_json(&s, &method, &path, ser(&body)).await;
        let what = format!("{method} {path} {body}");
        f.check(
            st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
            || format!("{what}: expected 400, got {st} {v}"),
        );
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

/// `levels` nested arrays around `0`.
fn nested(levels: usize) -> String {
    format!("{}0{}", "[".repeat(levels), "]".repeat(levels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_400_and_huge_arrays_are_not_500() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let deep = nested(100);
    let cases: Vec<(Method, &str, String)> = vec![
        (
            Method::POST,
            "/maestro/workflows",
            format!(
                r#"{{"id": "deep", "name": "D", "steps": [{{"id": "a", "capability": "c", "inputs": {{"x": {deep}}}}}]}}"#
            ),
        ),
        (
            Method::PATCH,
            "/maestro/workflows/wf-1",
            format!(r#"{{"initialInputs": {{"x": {deep}}}}}"#),
        ),
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            format!(r#"{{"inputs": {{"x": {deep}}}}}"#),
        ),
        (
            Method::POST,
            "/maestro/events",
            format!(r#"{{"type": "agent:event", "payload": {deep}}}"#),
        ),
        (
            Method::POST,
            "/maestro/agents",
            format!(r#"{{"id": "deep", "type": "t", "metadata": {{"x": {deep}}}}}"#),
        ),
        (
            Method::PUT,
            "/maestro/agents/a-1",
            format!(r#"{{"id": "a-1", "type": "t", "metadata": {{"x": {deep}}}}}"#),
        ),
        (
            Method::PATCH,
            "/maestro/config",
            format!(r#"{{"agentTimeoutMs": {deep}}}"#),
        ),
        (
            Method::POST,
            "/maestro/tokens",
            format!(r#"{{"role": "reader", "name": {deep}}}"#),
        ),
        (
            Method::POST,
            "/maestro/subscriptions",
            format!(r#"{{"eventTypes": {deep}, "url": "http://127.0.0.1:9/h"}}"#),
        ),
        // Very deep: 100k levels, well under the default body limit.
        (
            Method::POST,
            "/maestro/events",
            format!(
                r#"{{"type": "agent:event", "payload": {}}}"#,
                nested(100_000)
            ),
        ),
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            format!(
                r#"{{"inputs": {{"x": {}}}}}"#,
                "{\"a\":".repeat(50_000) + "0" + &"}".repeat(50_000)
            ),
        ),
    ];
    let mut f = Failures::default();
    for (method, path, body) in cases {
        let (st, v) = send_json(&s, &method, path, body.clone()).await;
        let what = format!("{method} {path} with {}", &body[..body.len().min(60)]);
        f.check(
            st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
            || format!("{what}: expected 400, got {st} {v}"),
        );
    }
    // YAML workflow definitions go through the same depth limit.
    let yaml = format!(
        "id: deep\nname: D\nsteps:\n  - id: a\n    capability: c\n    inputs:\n      x: {deep}\n"
    );
    let (st, v) = send(
        &s,
        &Method::POST,
        "/maestro/workflows",
        Some("application/yaml"),
        yaml,
    )
    .await;
    f.check(
        st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
        || format!("deep YAML workflow: expected 400, got {st} {v}"),
    );
    // 20k steps (over maxStepsPerWorkflow), under the body limit.
    let steps: Vec<Value> = (0..20_000)
        .map(|i| json!({"id": format!("s{i}"), "capability": "c"}))
        .collect();
    let (st, v) = send_json(
        &s,
        &Method::POST,
        "/maestro/workflows",
        ser(&json!({"id": "many", "name": "M", "steps": steps})),
    )
    .await;
    f.check(
        st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
        || format!("20k steps: expected 400, got {st} {v}"),
    );
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );

    // A 50k-element array (about 100 KB) is fine where any JSON is.
    let big: Vec<u8> = vec![0; 50_000];
    let cases: Vec<(Method, &str, Value)> = vec![
        (
            Method::POST,
            "/maestro/workflows/wf-1/execute",
            json!({"inputs": {"big": big}}),
        ),
        (
            Method::POST,
            "/maestro/events",
            json!({"type": "agent:event", "payload": {"big": big}}),
        ),
        (
            Method::POST,
            "/maestro/workflows",
            json!({"id": "big", "name": "B", "initialInputs": {"big": big},
            "steps": [{"id": "a", "capability": "c", "inputs": {"big": big}}]}),
        ),
        (
            Method::POST,
            "/maestro/agents",
            json!({"id": "big", "type": "t", "metadata": {"big": big}}),
        ),
        (
            Method::PATCH,
            "/maestro/config",
            json!({"agentTimeoutMs": big}),
        ),
        (
            Method::POST,
            "/maestro/subscriptions",
            json!({"eventTypes": vec!["workflow:paused"; 50_000], "url": "http://127.0.0.1:9/h"}),
        ),
        (
            Method::POST,
            "/maestro/tokens",
            json!({"role": "reader", "name": big}),
        ),
    ];
    for (method, path, body) in cases {
        let (st, v) = send_json(&s, &method, path, ser(&body)).await;
        assert!(
            !st.is_server_error(),
            "{method} {path} with a 50k array: {st} {v}"
        );
        assert!(
            st.is_success() || is_error_envelope(&v),
            "{method} {path}: {st} {v}"
        );
    }
    let (st, v) = s.get("/maestro/workflows/big").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Nesting within the limit (64) is fine.
    let body = format!(r#"{{"inputs": {{"x": {}}}}}"#, nested(50));
    let (st, v) = send_json(&s, &Method::POST, "/maestro/workflows/wf-1/execute", body).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_400() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let mut f = Failures::default();
    // Every list of the table.
    let lists = [
        ("/maestro/agents", 1000),
        ("/maestro/workflows", 1000),
        ("/maestro/executions", 1000),
        ("/maestro/events", 10_000),
        ("/maestro/events/corr-1", 10_000),
        ("/maestro/capabilities/sign/agents", 1000),
        ("/maestro/health", 1000),
        ("/maestro/tokens", 1000),
        ("/maestro/subscriptions", 1000),
    ];
    for (path, max) in lists {
        let over = format!("limit={}", max + 1);
        for q in [
            "limit=-1",
            "limit=abc",
            "limit=0",
            "limit=",
            "limit=1.5",
            "limit=1e3",
            "limit=99999999999999999999999",
            over.as_str(),
            "limit=1&limit=2",
            "bogus=1",
            "offset=1e9",
            "offset=-1",
        ] {
            let (st, v) = s.get(&format!("{path}?{q}")).await;
            f.check(
                st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
                || format!("GET {path}?{q}: expected 400, got {st} {v}"),
            );
        }
    }
    // Unknown parameters on every other GET of the table but the probes.
    for route in maestro_api::routes::table() {
        if route.method != Method::GET || ["/healthz", "/readyz", "/metrics"].contains(&route.path)
        {
            continue;
        }
        let path = route
            .path
            .replace("{agentId}", AGENT)
            .replace("{workflowId}", WORKFLOW)
            .replace("{executionId}", "exec_nope")
            .replace("{correlationId}", "corr-1")
            .replace("{capabilityId}", "sign");
        let (st, v) = s.get(&format!("{path}?bogus=1")).await;
        f.check(
            st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
            || format!("GET {path}?bogus=1: expected 400, got {st} {v}"),
        );
    }
    // Typed filters.
    for q in [
        "/maestro/agents?status=sleepy",
        "/maestro/agents?types=",
        "/maestro/agents?types=a,,b",
        "/maestro/executions?status=done",
        "/maestro/executions?createdAfter=yesterday",
        "/maestro/executions?createdBefore=-1",
        "/maestro/events?eventTypes=nope",
        "/maestro/events?after=abc",
        "/maestro/events?since=-5",
        "/maestro/events/stream?after=abc",
        "/maestro/events/stream?bogus=1",
        "/maestro/workflows/wf-1?revision=0",
        "/maestro/workflows/wf-1?revision=x",
    ] {
        let (st, v) = s.get(q).await;
        f.check(
            st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
            || format!("GET {q}: expected 400, got {st} {v}"),
        );
    }
    // On a write route: refused before anything runs.
    for q in [
        "wait=abc",
        "wait=-1",
        "wait=",
        "wait=1e3",
        "bogus=1",
        "wait=1&wait=2",
    ] {
        let path = format!("/maestro/workflows/wf-1/execute?{q}");
        let (st, v) = send_json(&s, &Method::POST, &path, ser(&json!({}))).await;
        f.check(
            st == StatusCode::BAD_REQUEST && is_error_envelope(&v),
            || format!("POST {path}: expected 400, got {st} {v}"),
        );
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_4xx_never_500() {
    let s = Server::start().await;
    fixtures(&s).await;
    let before = snapshot(&s).await;
    let mut f = Failures::default();
    // In the body: inside a string, as a key, outside any string, and as an
    // overlong encoding of '"'.
    for w in writes() {
        let valid = ser(&w.valid);
        let mut first_key = valid.clone();
        let quote = first_key.iter().position(|&b| b == b'"').unwrap();
        first_key[quote + 1] = 0xff;
        let bodies: Vec<(&str, Vec<u8>)> = vec![
            ("in the first key", first_key),
            (
                "a value",
                [&valid[..valid.len() - 1], b", \"x\": \"\xff\xfe\"}"].concat(),
            ),
            (
                "a new key",
                [b"{\"\xc3\x28\": 1, ".as_slice(), &valid[1..]].concat(),
            ),
            (
                "outside a string",
                [b"{\xff".as_slice(), &valid[1..]].concat(),
            ),
            ("an overlong encoding", b"{\"id\": \"x\xc0\xa2\"}".to_vec()),
            ("the whole body", vec![0xff; 64]),
        ];
        for (what, b) in bodies {
            let (st, v) = send_json(&s, &w.method, w.path, b).await;
            f.client_error(
                &format!("{} {} with invalid UTF-8 {what}", w.method, w.path),
                (st.as_u16(), &v),
            );
        }
    }
    // In the path: percent-encoded invalid UTF-8 where an id goes.
    for (method, path) in [
        ("GET", "/maestro/agents/%FF%FE"),
        ("PUT", "/maestro/agents/%C3%28"),
        ("DELETE", "/maestro/agents/%FF"),
        ("PATCH", "/maestro/agents/%ED%A0%80/status"),
        ("GET", "/maestro/workflows/%C0%AF"),
        ("PATCH", "/maestro/workflows/%FF"),
        ("POST", "/maestro/workflows/%FF/execute"),
        ("GET", "/maestro/executions/%FF"),
        ("POST", "/maestro/executions/%FF/cancel"),
        ("GET", "/maestro/events/%FF"),
        ("DELETE", "/maestro/tokens/%FF"),
        ("DELETE", "/maestro/subscriptions/%FF"),
        ("GET", "/maestro/capabilities/%FF/agents"),
    ] {
        let body = br#"{"id": "x", "type": "t", "status": "online"}"#;
        let req = [
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                s.admin,
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat();
        let a = raw_http(&s, &req).await;
        f.client_error(&format!("{method} {path}"), (a.status, &a.body));
    }
    // Raw (not percent-encoded) bytes in the request target: whatever layer
    // refuses them, it is a 4xx.
    for target in [
        &b"/maestro/agents/\xff\xfe"[..],
        b"/maestro/workflows/a\xc3\x28b",
        b"/maestro/agents?types=\xff",
    ] {
        let req = [
            b"GET ".as_slice(),
            target,
            format!(" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", s.admin)
                .as_bytes(),
        ]
        .concat();
        let a = raw_http(&s, &req).await;
        f.check((400..500).contains(&a.status), || {
            format!(
                "GET {}: expected a 4xx, got {} {}",
                String::from_utf8_lossy(target),
                a.status,
                a.body
            )
        });
    }
    // In a query value (percent-encoded): never a 5xx.
    for q in [
        "/maestro/agents?types=%FF",
        "/maestro/events?sourceAgent=%C3%28",
        "/maestro/executions?workflowId=%FF",
    ] {
        let (st, v) = s.get(q).await;
        f.check(
            !st.is_server_error() && (st.is_success() || is_error_envelope(&v)),
            || format!("GET {q}: {st} {v}"),
        );
    }
    f.assert_none();
    assert_eq!(
        snapshot(&s).await,
        before,
        "refused requests changed nothing"
    );
    s.stop().await;
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every value of `v` by its JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Apply one random mutation to `body`.
fn mutate(rng: &mut Rng, body: &mut Vec<u8>) {
    let pos = rng.below(body.len() + 1);
    match rng.below(6) {
        0 if !body.is_empty() => {
            body.remove(pos.min(body.len() - 1));
        }
        1 if !body.is_empty() => {
            let i = pos.min(body.len() - 1);
            body[i] ^= (rng.below(255) + 1) as u8;
        }
        2 => {
            let c = [b'{', b'[', b'"', b'}', b']', b',', b':', b'\\'][rng.below(8)];
            body.insert(pos, c);
        }
        3 if !body.is_empty() => {
            let start = pos.min(body.len() - 1);
            let end = (start + 1 + rng.below(16)).min(body.len());
            let slice = body[start..end].to_vec();
            body.splice(end..end, slice);
        }
        _ => {
            // Swap the type of one value (when the body still parses).
            let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
                body.insert(pos, b'[');
                return;
            };
            let mut ptrs = Vec::new();
            pointers(&doc, String::new(), &mut ptrs);
            let p = ptrs[rng.below(ptrs.len())].clone();
            let replacements = [
                Value::Null,
                json!(true),
                json!(0),
                json!(-1),
                json!(1e308),
                json!(u64::MAX),
                json!(""),
                json!("x"),
                json!([]),
                json!({}),
                json!([1, "a", null]),
                json!({"unknownField": 1}),
            ];
            let current = doc.pointer(&p).cloned().unwrap_or(Value::Null);
            let mut r = replacements[rng.below(replacements.len())].clone();
            if std::mem::discriminant(&r) == std::mem::discriminant(&current) {
                r = if current.is_string() {
                    json!(42)
                } else {
                    json!("swapped")
                };
            }
            if p.is_empty() {
                doc = r;
            } else if let Some(slot) = doc.pointer_mut(&p) {
                *slot = r;
            }
            *body = ser(&doc);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_mutations_never_500() {
    let s = Server::start().await;
    fixtures(&s).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut f = Failures::default();
    let mut counts = (0, 0);
    for w in writes() {
        let valid = ser(&w.valid);
        for _ in 0..200 {
            let mut body = valid.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut body);
            }
            let (st, v) = send_json(&s, &w.method, w.path, body.clone()).await;
            let what = || {
                format!(
                    "{} {} {:?}",
                    w.method,
                    w.path,
                    String::from_utf8_lossy(&body)
                )
            };
            if st.is_success() {
                counts.0 += 1;
                f.check(v["success"] == true, || format!("{}: {st} {v}", what()));
            } else {
                counts.1 += 1;
                f.check(!st.is_server_error() && is_error_envelope(&v), || {
                    format!("{}: {st} {v}", what())
                });
            }
        }
    }
    f.assert_none();
    assert!(
        counts.1 > counts.0,
        "most mutations are refused: {counts:?}"
    );
    // The server is still well.
    let (st, v) = s.get("/maestro/agents").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    s.stop().await;
}
