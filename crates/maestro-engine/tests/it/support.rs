//! Test helpers: a Maestro on a real store with in-process agents that record
//! their calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::model::{MaestroConfig, RegisteredAgent, Workflow, WorkflowExecution};
use maestro_core::ports::{Invocation, InvokeError, Store};
use maestro_engine::invoker::InProcessInvoker;
use maestro_engine::{ExecuteOptions, Maestro, MaestroOptions};
use serde_json::{Map, Value, json};

pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Config for tests: fast retries by default.
pub fn test_config() -> MaestroConfig {
    let mut c = MaestroConfig::default();
    c.default_retry_policy.max_attempts = 1;
    c.default_retry_policy.delay_ms = 10;
    c
}

pub async fn maestro_with(store: Arc<dyn Store>, config: MaestroConfig) -> Maestro {
    maestro_with_handlers(store, config, InProcessInvoker::new()).await
}

/// With in-process handlers registered before start (executions resumed at
/// start are re-sent at once).
pub async fn maestro_with_handlers(
    store: Arc<dyn Store>,
    config: MaestroConfig,
    handlers: InProcessInvoker,
) -> Maestro {
    let mut o = MaestroOptions::new(store);
    o.in_process = handlers;
    o.config = config;
    o.health_checker = false;
    o.drain_timeout_ms = 2_000;
    Maestro::initialize(o).await.expect("initialize")
}

pub async fn maestro() -> Maestro {
    maestro_with(Arc::new(maestro_store::MemoryStore::new()), test_config()).await
}

/// One recorded call: agent, capability, idempotency key, tokio time.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub agent: String,
    pub capability: String,
    pub key: String,
    pub inputs: Map<String, Value>,
    pub at: tokio::time::Instant,
}

#[derive(Clone, Default)]
pub struct Calls(pub Arc<Mutex<Vec<Recorded>>>);

impl Calls {
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().clone()
    }
    pub fn of(&self, capability: &str) -> Vec<Recorded> {
        self.all()
            .into_iter()
            .filter(|c| c.capability == capability)
            .collect()
    }
    fn push(&self, agent: &str, inv: &Invocation) {
        self.0.lock().unwrap().push(Recorded {
            agent: agent.to_owned(),
            capability: inv.capability.clone(),
            key: inv.idempotency_key.clone(),
            inputs: inv.inputs.clone(),
            at: tokio::time::Instant::now(),
        });
    }
}

pub fn agent_json(id: &str, caps: &[&str]) -> RegisteredAgent {
    serde_json::from_value(json!({
        "id": id, "type": "test", "name": id, "transport": "inprocess",
        "capabilities": caps.iter().map(|c| json!({"id": c})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// Register an in-process agent whose capabilities all run `behave`.
pub async fn agent<F, Fut>(m: &Maestro, id: &str, caps: &[&str], calls: &Calls, behave: F)
where
    F: Fn(Invocation) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<Map<String, Value>, InvokeError>> + Send + 'static,
{
    let _ = m
        .upsert_agent(agent_json(id, caps))
        .await
        .expect("register agent");
    handlers(m.in_process(), id, caps, calls, behave);
}

/// Register recording handlers for `caps` of agent `id`.
pub fn handlers<F, Fut>(
    inproc: &InProcessInvoker,
    id: &str,
    caps: &[&str],
    calls: &Calls,
    behave: F,
) where
    F: Fn(Invocation) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<Map<String, Value>, InvokeError>> + Send + 'static,
{
    for cap in caps {
        let calls = calls.clone();
        let behave = behave.clone();
        let agent_id = id.to_owned();
        inproc.register(id, cap, move |inv| {
            calls.push(&agent_id, &inv);
            behave(inv)
        });
    }
}

/// An agent that answers `{"echo": <inputs>, "ok": true}` at once.
pub async fn echo_agent(m: &Maestro, id: &str, caps: &[&str], calls: &Calls) {
    agent(m, id, caps, calls, |inv| async move {
        Ok(obj(json!({"echo": inv.inputs, "ok": true})))
    })
    .await;
}

pub fn workflow(v: Value) -> Workflow {
    serde_json::from_value(v).expect("workflow json")
}

pub async fn run(m: &Maestro, wf_id: &str, inputs: Value) -> WorkflowExecution {
    let (e, _) = m
        .execute_workflow(
            wf_id,
            ExecuteOptions {
                inputs: obj(inputs),
                ..Default::default()
            },
        )
        .await
        .expect("execute");
    m.wait_for_execution(&e.id, Duration::from_secs(30))
        .await
        .expect("wait")
        .expect("execution exists")
}
