//! The request bodies of every write route, through the real router (guard,
//! extractors, handlers, engine) on an in-memory store: the first byte picks
//! the route and content type, the rest is the body. Any 5xx other than 503
//! is a bug (bad input must get a 4xx), as is a panic.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin";

/// (method, path, content type)
const ROUTES: &[(&str, &str, &str)] = &[
    ("POST", "/maestro/agents", "application/json"),
    ("PUT", "/maestro/agents/a1", "application/json"),
    ("PATCH", "/maestro/agents/a1/status", "application/json"),
    ("POST", "/maestro/agents/a1/heartbeat", "application/json"),
    ("PUT", "/maestro/agents/a1/health", "application/json"),
    ("POST", "/maestro/agents/p1/tasks/poll", "application/json"),
    ("POST", "/maestro/workflows", "application/json"),
    ("POST", "/maestro/workflows", "application/yaml"),
    ("PATCH", "/maestro/workflows/w1", "application/json"),
    ("POST", "/maestro/workflows/w1/execute", "application/json"),
    (
        "POST",
        "/maestro/executions/exec_0/cancel",
        "application/json",
    ),
    ("POST", "/maestro/events", "application/json"),
    ("PATCH", "/maestro/config", "application/json"),
    ("POST", "/maestro/tokens", "application/json"),
    ("POST", "/maestro/subscriptions", "application/json"),
    ("POST", "/maestro/tasks/t1/complete", "application/json"),
    ("POST", "/maestro/tasks/t1/fail", "application/json"),
    ("POST", "/maestro/tasks/t1/heartbeat", "application/json"),
];

struct Env {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let router = rt.block_on(async {
            let store: std::sync::Arc<dyn maestro_core::ports::Store> =
                std::sync::Arc::new(maestro_store::MemoryStore::new());
            let mut opts = maestro_engine::MaestroOptions::new(store.clone());
            opts.health_checker = false;
            let maestro = maestro_engine::Maestro::initialize(opts)
                .await
                .expect("engine");
            let auth = maestro_api::auth::Auth::new(store, Some(ADMIN));
            let state =
                maestro_api::AppState::new(maestro, auth, maestro_api::ApiOptions::default());
            let router = maestro_api::routes::router(state);
            // Something for the routes with ids to find.
            for (path, body) in [
                (
                    "/maestro/agents",
                    r#"{"id": "a1", "type": "t", "endpoint": "http://127.0.0.1:9", "capabilities": [{"id": "c"}]}"#,
                ),
                (
                    "/maestro/agents",
                    r#"{"id": "p1", "type": "t", "transport": "poll", "capabilities": [{"id": "c"}]}"#,
                ),
                (
                    "/maestro/workflows",
                    r#"{"id": "w1", "name": "w", "steps": [{"id": "s", "capability": "c"}]}"#,
                ),
            ] {
                let _ = send(&router, "POST", path, "application/json", body.as_bytes().to_vec()).await;
            }
            router
        });
        Env { rt, router }
    })
}

async fn send(
    router: &axum::Router,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Option<u16> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .ok()?;
    // A long poll or an execute with ?wait may take its time: that is no bug.
    let resp = tokio::time::timeout(Duration::from_millis(200), router.clone().oneshot(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path, content_type) = ROUTES[pick as usize % ROUTES.len()];
    let env = env();
    if let Some(status) =
        env.rt
            .block_on(send(&env.router, method, path, content_type, body.to_vec()))
    {
        assert!(
            status < 500 || status == 503,
            "{method} {path} answered {status} to {:?}",
            String::from_utf8_lossy(body)
        );
    }
});
