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
