//! Two small HTTP agents for the README quick start, speaking the push
//! protocol of API.md ("Agent protocol"): a Sentinel offering
//! `verify-identity` on 127.0.0.1:9101 and a Bridge offering `issue-jwt` on
//! 127.0.0.1:9102.
//!
//! ```sh
//! cargo run --example quickstart_agents
//! ```
//!
//! The Sentinel knows a fixed set of users; the Bridge issues an opaque
//! session token. (The demo agents with Ed25519 signatures and real JWTs are
//! built on the agent SDK.)

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

const KNOWN_USERS: &[&str] = &["alice", "bob"];

async fn sentinel(Json(task): Json<Value>) -> (StatusCode, Json<Value>) {
    match task["capability"].as_str() {
        Some("verify-identity") => {
            let user = task["inputs"]["userId"].as_str().unwrap_or("");
            let verified = KNOWN_USERS.contains(&user);
            (
                StatusCode::OK,
                Json(json!({"outputs": {"verified": verified, "userId": user}})),
            )
        }
        other => unknown(other),
    }
}

async fn bridge(Json(task): Json<Value>) -> (StatusCode, Json<Value>) {
    match task["capability"].as_str() {
        Some("issue-jwt") => {
            let user = task["inputs"]["userId"].as_str().unwrap_or("");
            // Derived from the idempotency-relevant fields, so a retried call
            // answers the same token.
            let token = format!(
                "session.{user}.{}",
                task["executionId"].as_str().unwrap_or("")
            );
            (StatusCode::OK, Json(json!({"outputs": {"token": token}})))
        }
        other => unknown(other),
    }
}

fn unknown(capability: Option<&str>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {"code": "UNKNOWN_CAPABILITY",
            "message": format!("no capability {capability:?}"), "retryable": false}})),
    )
}

async fn serve(addr: &str, app: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("agent listening on http://{addr}");
    axum::serve(listener, app).await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let health = || get(|| async { "ok" });
    let s = Router::new()
        .route("/invoke", post(sentinel))
        .route("/health", health());
    let b = Router::new()
        .route("/invoke", post(bridge))
        .route("/health", health());
    tokio::try_join!(serve("127.0.0.1:9101", s), serve("127.0.0.1:9102", b))?;
    Ok(())
}
