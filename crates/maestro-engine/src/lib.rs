//! # maestro-engine
//!
//! The running parts of Maestro: the [`executor`] (performs the state machine's
//! actions with group commit), the [`eventbus`], the Agent [`registry`] service,
//! the workflow [`catalog`], the [`health`] checker, and the [`Maestro`] facade
//! with the original's method names. Storage and transports are ports
//! (`maestro_core::ports`): bring a `Store` (`maestro-store` has SQLite and an
//! in-memory one) and, for remote agents, invokers.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use maestro_engine::{Maestro, MaestroOptions, ExecuteOptions};
//! use maestro_core::model::{RegisteredAgent, Workflow};
//! use serde_json::json;
//!
//! let store = Arc::new(maestro_store::MemoryStore::new());
//! let maestro = Maestro::initialize(MaestroOptions::new(store)).await.unwrap();
//!
//! // An in-process Sentinel that verifies identities, and a Bridge that issues tokens.
//! let agent = |id: &str, ty: &str, cap: &str| -> RegisteredAgent {
//!     serde_json::from_value(json!({"id": id, "type": ty, "transport": "inprocess",
//!         "capabilities": [{"id": cap}]})).unwrap()
//! };
//! maestro.register_agent(agent("sentinel-1", "sentinel", "verify-identity")).await.unwrap();
//! maestro.register_agent(agent("bridge-1", "bridge", "issue-jwt")).await.unwrap();
//! maestro.in_process().register("sentinel-1", "verify-identity", |inv| async move {
//!     let ok = inv.inputs["userId"] == "alice";
//!     Ok(json!({"verified": ok}).as_object().unwrap().clone())
//! });
//! maestro.in_process().register("bridge-1", "issue-jwt", |inv| async move {
//!     Ok(json!({"token": format!("jwt-for-{}", inv.inputs["userId"].as_str().unwrap())})
//!         .as_object().unwrap().clone())
//! });
//!
//! // The original's auth-flow.
//! let wf: Workflow = serde_json::from_value(json!({
//!     "id": "auth-flow", "name": "Authentication Flow", "version": "1.0",
//!     "steps": [
//!         {"id": "verify-user", "agentId": "sentinel-1", "capability": "verify-identity",
//!          "inputs": {"userId": "${userId}"}},
//!         {"id": "issue-token", "agentId": "bridge-1", "capability": "issue-jwt",
//!          "inputs": {"userId": "${userId}"}, "dependencies": ["verify-user"],
//!          "condition": {"type": "comparison", "operator": "eq", "variable": "verified", "value": true}}
//!     ],
//!     "expectedOutputs": {"token": "string"}
//! })).unwrap();
//! maestro.define_workflow(wf, "admin").await.unwrap();
//!
//! let inputs = json!({"userId": "alice"}).as_object().unwrap().clone();
//! let (exec, _) = maestro.execute_workflow("auth-flow", ExecuteOptions { inputs, ..Default::default() })
//!     .await.unwrap();
//! let done = maestro.wait_for_execution(&exec.id, std::time::Duration::from_secs(5)).await.unwrap().unwrap();
//! assert_eq!(done.status.as_str(), "completed");
//! assert_eq!(done.result.unwrap()["token"], "jwt-for-alice");
//! maestro.shutdown().await;
//! # });
//! ```

pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod config;
mod coordination;
pub mod eventbus;
pub mod executor;
pub mod feed;
pub mod health;
pub mod invoker;
mod maestro;
pub mod metrics;
pub mod redact;
pub mod registry;
pub mod retention;
pub mod tasks;
pub mod webhooks;

pub use maestro::{ExecuteOptions, Maestro, MaestroOptions, RuntimeStats};
