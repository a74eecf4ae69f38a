//! Invokers of the engine: in-process handlers, and the transport switch that
//! picks the invoker of an agent's transport.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use maestro_core::model::{RegisteredAgent, Transport};
use maestro_core::ports::{Invocation, InvokeError, Invoker};
use serde_json::{Map, Value};

type BoxFut = Pin<Box<dyn Future<Output = Result<Map<String, Value>, InvokeError>> + Send>>;
type Handler = Arc<dyn Fn(Invocation) -> BoxFut + Send + Sync>;

/// Capabilities implemented as async functions in this process (`transport:
/// inprocess`), for library users and tests.
#[derive(Clone, Default)]
pub struct InProcessInvoker {
    handlers: Arc<RwLock<HashMap<(String, String), Handler>>>,
}

impl InProcessInvoker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register the handler of `capability` on `agent_id`.
    pub fn register<F, Fut>(&self, agent_id: &str, capability: &str, handler: F)
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Map<String, Value>, InvokeError>> + Send + 'static,
    {
        let h: Handler = Arc::new(move |inv| Box::pin(handler(inv)));
        self.handlers
            .write()
            .expect("handlers lock")
            .insert((agent_id.to_owned(), capability.to_owned()), h);
    }

    pub fn unregister_agent(&self, agent_id: &str) {
        self.handlers
            .write()
            .expect("handlers lock")
            .retain(|(a, _), _| a != agent_id);
    }
}

impl std::fmt::Debug for InProcessInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.handlers.read().map(|h| h.len()).unwrap_or(0);
        f.debug_struct("InProcessInvoker")
            .field("handlers", &n)
            .finish()
    }
}

#[async_trait]
impl Invoker for InProcessInvoker {
    async fn invoke(
        &self,
        agent: &RegisteredAgent,
        invocation: Invocation,
    ) -> Result<Map<String, Value>, InvokeError> {
        let h = self
            .handlers
            .read()
            .expect("handlers lock")
            .get(&(agent.id.clone(), invocation.capability.clone()))
            .cloned();
        match h {
            Some(h) => h(invocation).await,
            None => Err(InvokeError::new(
                maestro_core::step_codes::CAPABILITY_NOT_FOUND,
                format!(
                    "agent {:?} has no in-process handler for {:?}",
                    agent.id, invocation.capability
                ),
                false,
            )),
        }
    }
}

/// Sends each call through the invoker of the agent's transport.
#[derive(Clone, Default)]
pub struct TransportInvoker {
    pub inprocess: Option<Arc<dyn Invoker>>,
    pub http: Option<Arc<dyn Invoker>>,
    pub poll: Option<Arc<dyn Invoker>>,
}

impl std::fmt::Debug for TransportInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportInvoker")
            .field("inprocess", &self.inprocess.is_some())
            .field("http", &self.http.is_some())
            .field("poll", &self.poll.is_some())
            .finish()
    }
}

impl TransportInvoker {
    fn pick(&self, agent: &RegisteredAgent) -> Result<&Arc<dyn Invoker>, InvokeError> {
        let t = agent.effective_transport();
        let inv = match t {
            Transport::Inprocess => self.inprocess.as_ref(),
            Transport::Http => self.http.as_ref(),
            Transport::Poll => self.poll.as_ref(),
        };
        inv.ok_or_else(|| {
            InvokeError::new(
                "TRANSPORT_UNAVAILABLE",
                format!("no invoker for transport {t:?} of agent {:?}", agent.id),
                false,
            )
        })
    }
}

#[async_trait]
impl Invoker for TransportInvoker {
    async fn invoke(
        &self,
        agent: &RegisteredAgent,
        invocation: Invocation,
    ) -> Result<Map<String, Value>, InvokeError> {
        self.pick(agent)?.invoke(agent, invocation).await
    }

    async fn cancel(&self, agent: &RegisteredAgent, invocation: &Invocation) {
        if let Ok(i) = self.pick(agent) {
            i.cancel(agent, invocation).await;
        }
    }
}
