//! The OpenAPI document is honest: its operations are exactly the router's
//! routes, and every one of them is served.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};

use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_paths_equal_the_routers_routes() {
    let s = Server::start().await;
    let reader = s.token("reader", None).await;
    let (st, doc) = s
        .call(Method::GET, "/maestro/openapi.json", Some(&reader), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
            assert!(op["operationId"].is_string());
        }
    }
    let table = maestro_api::routes::table();
    let routed: BTreeSet<_> = table
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, routed);

    // Every component a document points at exists.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "missing schema {name}");
    }

    // Every route is served: with a bad token, each answers 401 from its
    // guard (an unrouted path would be 404, a wrong method 405).
    for r in &table {
        let path = r.path.replace(['{', '}'], "");
        let (st, v) = s
            .call(r.method.clone(), &path, Some("mst_000000000000_bad"), None)
            .await;
        let public = matches!(r.access, maestro_api::routes::Access::Public);
        if public {
            assert!(st.is_success(), "{} {} -> {st} {v}", r.method, r.path);
        } else {
            assert_eq!(
                st,
                StatusCode::UNAUTHORIZED,
                "{} {} -> {v}",
                r.method,
                r.path
            );
        }
    }
    s.stop().await;
}

/// Every documented link leads somewhere real: its target operation takes the
/// parameter in its path, and the parameter's runtime expression finds that
/// value in a real answer of the source operation (followed here to a 2xx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_links_follow_real_answers() {
    let s = Server::start().await;
    let (_, doc) = s.get("/maestro/openapi.json").await;
    let mut ops = std::collections::BTreeMap::new();
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            ops.insert(
                op["operationId"].as_str().unwrap().to_owned(),
                (method.to_uppercase(), path.clone(), op.clone()),
            );
        }
    }

    let agent = crate::support::Agent::echo().await;
    let mut answers = std::collections::BTreeMap::new();
    answers.insert(
        ("registerAgent", 201),
        s.register_http_agent("linked", &agent.endpoint(), &["echo"])
            .await,
    );
    let (st, v) = s
        .post(
            "/maestro/workflows",
            serde_json::json!({"id": "linked", "name": "linked",
                "steps": [{"id": "a", "agentId": "linked", "capability": "echo"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    answers.insert(("defineWorkflow", 201), v);
    for (query, status) in [("", 202), ("?wait=5000", 200)] {
        let (st, v) = s
            .post(
                &format!("/maestro/workflows/linked/execute{query}"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(st.as_u16(), status, "{v}");
        answers.insert(("executeWorkflow", status), v);
    }
    let (st, v) = s
        .post("/maestro/tokens", serde_json::json!({"role": "reader"}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    answers.insert(("createToken", 201), v);
    let (st, v) = s
        .post(
            "/maestro/subscriptions",
            serde_json::json!({"eventTypes": ["agent:event"],
                "url": format!("{}/hook", agent.endpoint())}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    answers.insert(("createSubscription", 201), v);

    let mut followed = 0;
    for (from, (_, _, op)) in &ops {
        for (status, response) in op["responses"].as_object().unwrap() {
            let Some(links) = response["links"].as_object() else {
                continue;
            };
            let status: u16 = status.parse().unwrap();
            let answer = answers
                .get(&(from.as_str(), status))
                .unwrap_or_else(|| panic!("no answer for {from} {status}"));
            for (name, link) in links {
                let target = link["operationId"].as_str().unwrap();
                let (method, path, _) = ops
                    .get(target)
                    .unwrap_or_else(|| panic!("{name}: no operation {target}"));
                let mut url = path.clone();
                for (param, expr) in link["parameters"].as_object().unwrap() {
                    let pointer = expr
                        .as_str()
                        .unwrap()
                        .strip_prefix("$response.body#")
                        .unwrap();
                    let value = answer
                        .pointer(pointer)
                        .and_then(|v| v.as_str())
                        .unwrap_or_else(|| panic!("{name}: {pointer} not in {answer}"));
                    let slot = format!("{{{param}}}");
                    assert!(url.contains(&slot), "{name}: {path} takes no {param}");
                    url = url.replace(&slot, value);
                }
                // Read-only targets are followed; the others must at least be routed.
                if method == "GET" {
                    let (st, v) = s.get(&url).await;
                    assert!(st.is_success(), "{name}: GET {url} -> {st} {v}");
                }
                followed += 1;
            }
        }
    }
    assert!(followed >= 20, "every link was checked ({followed} links)");
    s.stop().await;
}
