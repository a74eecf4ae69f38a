//! The `Maestro` facade: the original's methods (in Rust naming) over the
//! registry, the catalog, the executor, the event bus and the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::choreography::Limits;
use maestro_core::machine::Refusal;
use maestro_core::model::{
    AgentHealth, AgentStatus, ChoreographyEvent, ChoreographyMetrics, EventFilter, EventType,
    ExecutionStatus, MaestroConfig, NewEvent, RegisteredAgent, Workflow, WorkflowExecution,
};
use maestro_core::ports::{
    EventOrder, ExecutionQuery, Invoker, Outbound, Page, Store, SubscriptionRecord,
};
use maestro_core::registry::{AgentQuery, HealthWindowConfig};
use maestro_core::{Error, Result};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::cluster::{Cluster, ClusterOptions, Signal};
use crate::config::ConfigHandle;
use crate::eventbus::{EventBus, EventStream, SubscriptionId};
use crate::executor::{
    Control, ExecuteRequest, Executed, Executor, ExecutorCluster, ExecutorHandle, ExecutorOptions,
};
use crate::health::{HealthChecker, HealthProbe};
use crate::invoker::{InProcessInvoker, TransportInvoker};
use crate::registry::Registry;
use crate::tasks::{TaskQueue, TaskSignal};
use crate::webhooks::{DeliveryStats, Webhooks};

/// How to build a [`Maestro`].
pub struct MaestroOptions {
    pub store: Arc<dyn Store>,
    /// Runtime config from file/environment; keys PATCHed earlier (stored) win.
    pub config: MaestroConfig,
    /// Invoker of `transport: http` agents.
    pub http_invoker: Option<Arc<dyn Invoker>>,
    /// Invoker of `transport: poll` agents.
    pub poll_invoker: Option<Arc<dyn Invoker>>,
    /// Handlers of `transport: inprocess` agents. Register them before
    /// `initialize` when executions may be resumed at start (they are re-sent
    /// at once); more can be added later through [`Maestro::in_process`].
    pub in_process: InProcessInvoker,
    /// Outbound POSTs (callbacks); enforces the allow-list.
    pub outbound: Option<Arc<dyn Outbound>>,
    /// Liveness probe of HTTP agents for the health checker.
    pub health_probe: Option<Arc<dyn HealthProbe>>,
    pub limits: Limits,
    pub max_queued_executions: usize,
    pub max_output_bytes: usize,
    pub drain_timeout_ms: u64,
    pub health_window: HealthWindowConfig,
    /// Run the health checker (on by default; in a cluster, on the leader).
    pub health_checker: bool,
    /// Share the store with other nodes (PostgreSQL): `None` runs alone.
    pub cluster: Option<ClusterOptions>,
    /// How long finished executions and events are kept (default: forever).
    pub retention: crate::retention::Retention,
}

impl MaestroOptions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        MaestroOptions {
            store,
            config: MaestroConfig::default(),
            http_invoker: None,
            poll_invoker: None,
            in_process: InProcessInvoker::new(),
            outbound: None,
            health_probe: None,
            limits: Limits::default(),
            max_queued_executions: 10_000,
            max_output_bytes: 1 << 20,
            drain_timeout_ms: 10_000,
            health_window: HealthWindowConfig::default(),
            health_checker: true,
            cluster: None,
            retention: crate::retention::Retention::default(),
        }
    }
}

/// Options of `executeWorkflow`.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    pub inputs: Map<String, Value>,
    pub correlation_id: Option<String>,
    pub parent_execution_id: Option<String>,
    /// `Idempotency-Key`, scoped to the workflow: claimed by the commit that
    /// creates the execution, for 24 h and until that execution finished.
    pub idempotency_key: Option<String>,
}

/// How long `PATCH .../status online` waits for the check of the released agent
/// before answering.
const RELEASE_CHECK_WAIT_MS: u64 = 1_000;

struct Inner {
    store: Arc<dyn Store>,
    registry: Registry,
    bus: EventBus,
    catalog: Catalog,
    executor: ExecutorHandle,
    config: ConfigHandle,
    inprocess: InProcessInvoker,
    tasks: TaskQueue,
    webhooks: Webhooks,
    cancel: CancellationToken,
    services: Mutex<Vec<JoinHandle<()>>>,
    /// The config from files and environment, under the stored patch.
    base_config: MaestroConfig,
    cluster: Option<Cluster>,
    /// Checks an agent at once when an operator releases its hold.
    health: Option<HealthChecker>,
    /// Wakes the event tailer (cluster mode).
    tail_wake: Arc<tokio::sync::Notify>,
}

/// The orchestrator. Cheap to clone.
#[derive(Clone)]
pub struct Maestro {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Maestro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maestro").finish_non_exhaustive()
    }
}

impl Maestro {
    /// `initialize`: load config, agents and unfinished executions from the
    /// store, start the executor (which resumes them) and the health checker.
    pub async fn initialize(opts: MaestroOptions) -> Result<Maestro> {
        let store = opts.store.clone();
        let mut config = opts.config.clone();
        if let Some(stored) = store.load_config().await? {
            config = config.patched(&stored).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring invalid stored config");
                opts.config.clone()
            });
        }
        config.validate()?;
        let config = ConfigHandle::new(config);
        // Live delivery continues after the log: what it holds is read from the store.
        let bus = EventBus::new();
        bus.resume_after(store.last_seq().await?);
        let registry = Registry::load(store.clone(), opts.health_window).await?;
        let catalog = Catalog::new(store.clone(), opts.limits);
        let inprocess = opts.in_process.clone();
        let tasks = TaskQueue::new(store.clone());
        let cluster = opts.cluster.as_ref().map(Cluster::new);
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(c) = &cluster {
            let c1 = c.clone();
            registry.set_change_hook(Arc::new(move |id: &str, record: bool| {
                c1.agent_changed(id, record)
            }));
            let c2 = c.clone();
            tasks.set_hook(Arc::new(move |s| {
                c2.send(match s {
                    TaskSignal::Queued(agent) => Signal::TaskQueued { agent },
                    TaskSignal::Done(id) => Signal::TaskDone { id },
                })
            }));
        }
        let invoker = TransportInvoker {
            inprocess: Some(Arc::new(inprocess.clone())),
            http: opts.http_invoker.clone(),
            poll: Some(
                opts.poll_invoker
                    .clone()
                    .unwrap_or_else(|| Arc::new(tasks.clone())),
            ),
        };
        let (executor, handle) = Executor::new(ExecutorOptions {
            store: store.clone(),
            invoker: Arc::new(invoker),
            registry: registry.clone(),
            bus: bus.clone(),
            config: config.clone(),
            catalog: catalog.clone(),
            outbound: opts.outbound.clone(),
            max_queued: opts.max_queued_executions,
            max_output_bytes: opts.max_output_bytes,
            drain_timeout_ms: opts.drain_timeout_ms,
            cel_budget: opts.limits.cel,
            cluster: opts.cluster.as_ref().map(|c| ExecutorCluster {
                store: c.store.clone(),
                node_id: c.node_id.clone(),
                lease_ttl_ms: c.lease_ttl_ms,
                events: events_tx,
            }),
        });
        let cancel = CancellationToken::new();
        let webhooks = Webhooks::new(
            store.clone(),
            bus.clone(),
            registry.clone(),
            opts.outbound.clone(),
            cancel.clone(),
        );
        if cluster.is_none() {
            webhooks.sync().await?;
        }
        let tail_wake = Arc::new(tokio::sync::Notify::new());
        let mut services = vec![
            tokio::spawn(executor.run(cancel.clone())),
            tokio::spawn(tasks.clone().run(cancel.clone())),
        ];
        let health_checker = opts.health_checker.then(|| HealthChecker {
            registry: registry.clone(),
            config: config.clone(),
            executor: handle.clone(),
            probe: opts.health_probe.clone(),
        });
        let health = health_checker.clone();
        match &cluster {
            None => {
                if let Some(hc) = health_checker {
                    services.push(tokio::spawn(hc.run(cancel.clone())));
                }
                services.push(tokio::spawn(crate::retention::run(
                    store.clone(),
                    opts.retention,
                    cancel.clone(),
                )));
            }
            Some(c) => {
                services.push(tokio::spawn(crate::cluster::tailer(
                    store.clone(),
                    bus.clone(),
                    c.clone(),
                    events_rx,
                    tail_wake.clone(),
                    cancel.clone(),
                )));
                services.push(tokio::spawn(crate::cluster::events_signaller(
                    c.clone(),
                    cancel.clone(),
                )));
                let on_change = leadership(
                    webhooks.clone(),
                    health_checker,
                    (store.clone(), opts.retention),
                    cancel.clone(),
                );
                services.push(tokio::spawn(crate::cluster::leader_loop(
                    c.clone(),
                    on_change,
                    cancel.clone(),
                )));
            }
        }
        // Wait until recovery is done (or failed).
        while !handle
            .stats()
            .ready
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if handle
                .stats()
                .failed
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Error::NotReady(
                    "executor failed to start (see logs)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let m = Maestro {
            inner: Arc::new(Inner {
                store,
                registry,
                bus,
                catalog,
                executor: handle,
                config,
                inprocess,
                tasks,
                webhooks,
                cancel,
                services: Mutex::new(services),
                base_config: opts.config.clone(),
                cluster,
                health,
                tail_wake,
            }),
        };
        if let Some(c) = &m.inner.cluster {
            let _ = c;
            let pump = tokio::spawn(m.clone().pump(m.inner.cancel.clone()));
            m.inner.services.lock().expect("services lock").push(pump);
        }
        Ok(m)
    }

    /// This node's cluster handle (cluster mode).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// Receive the other nodes' signals and act on them; after a lost
    /// connection (signals may have been missed) re-read what they stand for.
    async fn pump(self, cancel: CancellationToken) {
        let Some(cluster) = self.inner.cluster.clone() else {
            return;
        };
        let mut first = true;
        'connect: loop {
            let mut listener = match cluster.store().listen().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster signals: cannot listen; trying again");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'connect,
                    }
                }
            };
            if !first {
                self.on_signal(Signal::Resync).await;
            }
            first = false;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = listener.recv() => n,
                };
                match next {
                    Ok(Some(payload)) => {
                        if let Some(s) = cluster.decode(&payload) {
                            self.on_signal(s).await;
                        }
                    }
                    Ok(None) => self.on_signal(Signal::Resync).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster signals: connection lost; listening again");
                        continue 'connect;
                    }
                }
            }
        }
    }

    async fn on_signal(&self, s: Signal) {
        let inner = &self.inner;
        let Some(cluster) = inner.cluster.as_ref() else {
            return;
        };
        match s {
            Signal::Events { .. } => inner.tail_wake.notify_one(),
            Signal::Agent { id } => {
                if let Err(e) = inner.registry.refresh(&id).await {
                    tracing::warn!(error = %e, agent = %id, "refreshing an agent failed");
                }
            }
            Signal::Config => self.reload_config().await,
            Signal::Token { .. } => cluster.tell_local(s),
            Signal::Subscriptions => {
                if cluster.is_leader()
                    && let Err(e) = inner.webhooks.sync().await
                {
                    tracing::warn!(error = %e, "webhook subscriptions: sync failed");
                }
            }
            Signal::TaskQueued { agent } => inner.tasks.wake_agent(&agent),
            Signal::TaskDone { id } => inner.tasks.remote_done(&id).await,
            Signal::Control {
                rid,
                execution,
                op,
                reason,
            } => {
                let control = match op.as_str() {
                    "cancel" => Control::Cancel(reason),
                    "pause" => Control::Pause,
                    "resume" => Control::Resume,
                    _ => return,
                };
                let executor = inner.executor.clone();
                let cluster = cluster.clone();
                let store = inner.store.clone();
                tokio::spawn(async move {
                    match executor.control(&execution, control.clone()).await {
                        // Not running here: another node answers; but once it
                        // finished (its owner drops it after committing that),
                        // any node may say so.
                        Err(Error::NotFound { .. }) => {
                            if let Ok(Some(e)) = store.get_execution(&execution).await
                                && e.status.is_terminal()
                            {
                                let refusal = finished_refusal(&execution, &control, &e);
                                cluster.send(Signal::ControlDone {
                                    rid,
                                    error: Some(refusal.to_string()),
                                });
                            }
                        }
                        Ok(_) => cluster.send(Signal::ControlDone { rid, error: None }),
                        Err(e) => cluster.send(Signal::ControlDone {
                            rid,
                            error: Some(e.to_string()),
                        }),
                    }
                });
            }
            Signal::ControlDone { rid, error } => cluster.control_done(&rid, error),
            Signal::Resync => {
                inner.tail_wake.notify_one();
                if let Err(e) = inner.registry.refresh_all().await {
                    tracing::warn!(error = %e, "re-reading agents failed");
                }
                self.reload_config().await;
                inner.tasks.recheck_waiters().await;
                if cluster.is_leader()
                    && let Err(e) = inner.webhooks.sync().await
                {
                    tracing::warn!(error = %e, "webhook subscriptions: sync failed");
                }
                cluster.tell_local(Signal::Resync);
            }
        }
    }

    /// Apply the stored runtime config (changed through another node).
    async fn reload_config(&self) {
        let inner = &self.inner;
        let stored = match inner.store.load_config().await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the config failed");
                return;
            }
        };
        match inner.base_config.patched(&stored) {
            Ok(next) => inner.config.set(next),
            Err(e) => tracing::warn!(error = %e, "ignoring an invalid stored config"),
        }
    }

    /// `shutdown`: stop taking work, let calls in flight finish (up to the drain
    /// timeout), persist, stop. Unfinished executions resume at the next start.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let services: Vec<_> =
            std::mem::take(&mut *self.inner.services.lock().expect("services lock"));
        for t in services {
            let _ = t.await;
        }
        self.inner.bus.close();
    }

    /// Ready to serve: store reachable at start, executor running.
    pub fn is_ready(&self) -> bool {
        let s = self.inner.executor.stats();
        s.ready.load(std::sync::atomic::Ordering::SeqCst)
            && !s.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    pub fn executor(&self) -> &ExecutorHandle {
        &self.inner.executor
    }
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }
    /// Handlers of `transport: inprocess` agents.
    pub fn in_process(&self) -> &InProcessInvoker {
        &self.inner.inprocess
    }
    /// Webhook delivery.
    pub fn webhooks(&self) -> &Webhooks {
        &self.inner.webhooks
    }
    /// The poll-task queue of `transport: poll` agents.
    pub fn tasks(&self) -> &TaskQueue {
        &self.inner.tasks
    }

    async fn emit(&self, e: NewEvent) -> Result<ChoreographyEvent> {
        let mut v = self.inner.executor.append_events(vec![e]).await?;
        v.pop().ok_or_else(|| Error::store("event not committed"))
    }

    fn agent_event(t: EventType, agent: &RegisteredAgent, payload: Value) -> NewEvent {
        let mut e = NewEvent::engine(t, payload, now_ms());
        e.target_agent = Some(agent.id.clone());
        e.correlation_id = format!("agent:{}", agent.id);
        e
    }

    // -- Agent Registry ----------------------------------------------------

    /// `registerAgent`: a duplicate id is `AlreadyExists`.
    pub async fn register_agent(&self, agent: RegisteredAgent) -> Result<RegisteredAgent> {
        let a = self.inner.registry.register(agent, now_ms()).await?;
        let payload = json!({"agentId": a.id, "type": a.agent_type,
            "capabilities": a.capabilities.iter().map(|c| &c.id).collect::<Vec<_>>()});
        self.emit(Self::agent_event(EventType::AgentRegistered, &a, payload))
            .await?;
        Ok(a)
    }

    /// Create or update (a restarted agent re-registering); `true` when created.
    pub async fn upsert_agent(&self, agent: RegisteredAgent) -> Result<(bool, RegisteredAgent)> {
        let (created, a) = self.inner.registry.upsert(agent, now_ms()).await?;
        let payload = json!({"agentId": a.id, "type": a.agent_type, "updated": !created,
            "capabilities": a.capabilities.iter().map(|c| &c.id).collect::<Vec<_>>()});
        self.emit(Self::agent_event(EventType::AgentRegistered, &a, payload))
            .await?;
        Ok((created, a))
    }

    /// `deregisterAgent`.
    pub async fn deregister_agent(&self, id: &str) -> Result<RegisteredAgent> {
        let a = self.inner.registry.deregister(id).await?;
        self.inner.inprocess.unregister_agent(id);
        self.inner.tasks.agent_deregistered(id).await?;
        self.emit(Self::agent_event(
            EventType::AgentDeregistered,
            &a,
            json!({"agentId": a.id}),
        ))
        .await?;
        Ok(a)
    }

    /// `getAgent`.
    pub fn get_agent(&self, id: &str) -> Option<RegisteredAgent> {
        self.inner.registry.get(id)
    }

    /// `queryAgents`: the page and the number of all matches.
    pub fn query_agents(&self, q: &AgentQuery) -> (Vec<RegisteredAgent>, usize) {
        self.inner.registry.read(|r| {
            let (v, total) = r.query_agents(q);
            (v.into_iter().cloned().collect(), total)
        })
    }

    /// `findAgentsByCapability`.
    pub fn find_agents_by_capability(&self, capability: &str) -> Vec<RegisteredAgent> {
        self.inner.registry.read(|r| {
            r.find_agents_by_capability(capability)
                .into_iter()
                .cloned()
                .collect()
        })
    }

    /// `updateAgentStatus` (an operator hold unless back to `online`).
    pub async fn update_agent_status(
        &self,
        id: &str,
        status: AgentStatus,
    ) -> Result<RegisteredAgent> {
        let before = self.get_agent(id).map(|a| a.status);
        let a = self.inner.registry.update_status(id, status).await?;
        if before != Some(a.status) {
            let payload = json!({"agentId": a.id, "previousStatus": before, "status": a.status, "hold": a.status_hold});
            self.emit(Self::agent_event(EventType::AgentHealth, &a, payload))
                .await?;
        }
        if !a.status_hold
            && let Some(hc) = &self.inner.health
        {
            // Released: the agent is checked now, not at the checker's next
            // tick. The answer shows the outcome when the check (a probe, for
            // HTTP agents) ends within RELEASE_CHECK_WAIT_MS; a slower one
            // still lands, with its `agent:health` event.
            let (hc, agent) = (hc.clone(), id.to_owned());
            let check = tokio::spawn(async move { hc.check_id(&agent).await });
            let _ = tokio::time::timeout(Duration::from_millis(RELEASE_CHECK_WAIT_MS), check).await;
            return self
                .get_agent(id)
                .ok_or_else(|| Error::not_found("agent", id));
        }
        Ok(a)
    }

    /// A heartbeat, optionally with agent-reported health.
    pub async fn heartbeat(
        &self,
        id: &str,
        health: Option<AgentHealth>,
    ) -> Result<RegisteredAgent> {
        let before = self.get_agent(id).map(|a| a.status);
        let a = self.inner.registry.heartbeat(id, now_ms(), health).await?;
        if before.is_some() && before != Some(a.status) {
            let payload = json!({"agentId": a.id, "previousStatus": before, "status": a.status});
            self.emit(Self::agent_event(EventType::AgentHealth, &a, payload))
                .await?;
        }
        Ok(a)
    }

    /// `recordAgentHealth`: what the agent reports about itself.
    pub async fn record_agent_health(&self, id: &str, health: AgentHealth) -> Result<AgentHealth> {
        let now = now_ms();
        self.inner
            .registry
            .write(|r| r.record_reported_health(id, health, now))?;
        self.get_agent_health(id)
            .ok_or_else(|| Error::not_found("agent", id))
    }

    /// `getAgentHealth`: computed from real calls and checks, merged with reports.
    pub fn get_agent_health(&self, id: &str) -> Option<AgentHealth> {
        let t = self.inner.config.get().agent_timeout_ms;
        self.inner
            .registry
            .read(|r| r.agent_health(id, now_ms(), t))
    }

    /// `getAllAgentHealth`.
    pub fn get_all_agent_health(&self) -> Vec<AgentHealth> {
        let t = self.inner.config.get().agent_timeout_ms;
        self.inner
            .registry
            .read(|r| r.all_agent_health(now_ms(), t))
    }

    // -- Choreography Engine ---------------------------------------------

    /// `defineWorkflow`.
    pub async fn define_workflow(&self, wf: Workflow, created_by: &str) -> Result<Workflow> {
        let wf = self.inner.catalog.define(wf, created_by, now_ms()).await?;
        let mut e = NewEvent::engine(
            EventType::WorkflowCreated,
            json!({"workflowId": wf.id, "revision": wf.revision, "name": wf.name, "steps": wf.steps.len()}),
            now_ms(),
        );
        e.workflow_id = Some(wf.id.clone());
        e.correlation_id = format!("workflow:{}", wf.id);
        self.emit(e).await?;
        Ok(wf)
    }

    /// `getWorkflow` (latest, or a given revision).
    pub async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>> {
        self.inner.catalog.get(id, revision).await
    }

    /// `updateWorkflow`: merge patch, a new revision.
    pub async fn update_workflow(&self, id: &str, patch: &Value) -> Result<Workflow> {
        let wf = self.inner.catalog.update(id, patch, now_ms()).await?;
        let mut e = NewEvent::engine(
            EventType::WorkflowUpdated,
            json!({"workflowId": wf.id, "revision": wf.revision}),
            now_ms(),
        );
        e.workflow_id = Some(wf.id.clone());
        e.correlation_id = format!("workflow:{}", wf.id);
        self.emit(e).await?;
        Ok(wf)
    }

    pub async fn list_workflows(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>> {
        self.inner.catalog.list(tags, limit, offset).await
    }

    /// Refused (`InvalidState`) while executions of it are pending, running or paused.
    pub async fn delete_workflow(&self, id: &str) -> Result<()> {
        if self.inner.store.get_workflow(id, None).await?.is_none() {
            return Err(Error::not_found("workflow", id));
        }
        if self.inner.store.has_active_executions(id).await? {
            return Err(Error::InvalidState(format!(
                "workflow {id:?} has active executions; cancel them first"
            )));
        }
        self.inner.catalog.delete(id).await?;
        Ok(())
    }

    // -- Workflow Executor -------------------------------------------------

    /// `executeWorkflow`: the new execution (`pending` or `running`), or — with an
    /// `Idempotency-Key` whose claim is live — the execution holding it (`true`;
    /// `IdempotencyKeyReused` when it came with another request). Refused
    /// requests (400, 404, 429, 503) claim no key.
    pub async fn execute_workflow(
        &self,
        workflow_id: &str,
        opts: ExecuteOptions,
    ) -> Result<(WorkflowExecution, bool)> {
        let (workflow, plan) = self
            .inner
            .catalog
            .latest(workflow_id)
            .await?
            .ok_or_else(|| Error::not_found("workflow", workflow_id))?;
        let idempotency = match opts.idempotency_key {
            Some(key) => {
                if key.is_empty() || key.len() > 255 {
                    return Err(
                        Error::validation("Idempotency-Key must be 1-255 characters")
                            .field("Idempotency-Key"),
                    );
                }
                // Decided by the executor's commit (the key's claim), never here.
                let hash = request_hash(
                    &opts.inputs,
                    &opts.correlation_id,
                    &opts.parent_execution_id,
                );
                Some((key, hash))
            }
            None => None,
        };
        if let Some(c) = &opts.correlation_id
            && (c.is_empty() || c.len() > 256)
        {
            return Err(
                Error::validation("correlationId must be 1-256 characters").field("correlationId")
            );
        }
        let id = format!("exec_{}", uuid::Uuid::now_v7().simple());
        let req = ExecuteRequest {
            inputs: opts.inputs,
            correlation_id: opts.correlation_id,
            parent_execution_id: opts.parent_execution_id,
            idempotency,
        };
        match self.inner.executor.execute(id, workflow, plan, req).await? {
            Executed::Created(e) => Ok((e, false)),
            Executed::Existing(id) => {
                let e = self
                    .get_execution(&id)
                    .await?
                    .ok_or_else(|| Error::not_found("execution", id))?;
                Ok((e, true))
            }
        }
    }

    /// Wait until the execution finished (or `timeout`); `None` if unknown.
    pub async fn wait_for_execution(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<WorkflowExecution>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let _ = tokio::time::timeout(timeout, self.inner.executor.wait_finished(id)).await;
        if self.inner.cluster.is_none() {
            return self.get_execution(id).await;
        }
        // Cluster mode: it may run on another node; its terminal event comes
        // through the bus.
        let mut events = self.inner.bus.subscribe(
            EventFilter {
                execution_id: Some(id.to_owned()),
                ..Default::default()
            },
            64,
        );
        loop {
            let e = self.get_execution(id).await?;
            match &e {
                Some(x) if !x.status.is_terminal() => {}
                _ => return Ok(e),
            }
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep_until(deadline) => return self.get_execution(id).await,
            }
        }
    }

    /// `getExecution`: the committed state.
    pub async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        self.inner.store.get_execution(id).await
    }

    /// `queryExecutions`: newest first.
    pub async fn query_executions(&self, q: &ExecutionQuery) -> Result<Page<WorkflowExecution>> {
        self.inner.store.query_executions(q).await
    }

    /// Cancel, pause or resume: the executor running the execution decides
    /// (its state machine applies the command or refuses it); 200 with the
    /// state it committed, or `InvalidState` with the current status.
    async fn control(&self, id: &str, op: Control) -> Result<WorkflowExecution> {
        match self.inner.executor.control(id, op.clone()).await {
            // Not live here: finished (nothing applies any more), on another
            // node, or unknown.
            Err(Error::NotFound { .. }) => match self.get_execution(id).await? {
                Some(e) if e.status.is_terminal() => Err(finished_refusal(id, &op, &e)),
                Some(_) if self.inner.cluster.is_some() => self.forward_control(id, op).await,
                Some(e) => Err(Error::InvalidState(format!(
                    "cannot {} execution {id}: it is not running on this node (status {})",
                    op.op().as_str(),
                    e.status.as_str()
                ))),
                None => Err(Error::not_found("execution", id)),
            },
            r => r,
        }
    }

    /// Cluster mode: the execution runs on another node; ask it.
    async fn forward_control(&self, id: &str, op: Control) -> Result<WorkflowExecution> {
        let cluster = self.inner.cluster.as_ref().expect("cluster mode");
        let name = op.op().as_str();
        let reason = match &op {
            Control::Cancel(r) => r.clone(),
            Control::Pause | Control::Resume => None,
        };
        match cluster
            .control(id, name, reason, Duration::from_millis(CONTROL_WAIT_MS))
            .await
        {
            Ok(None) => self
                .get_execution(id)
                .await?
                .ok_or_else(|| Error::not_found("execution", id)),
            Ok(Some(refused)) => Err(Error::InvalidState(refused)),
            Err(()) => match self.get_execution(id).await? {
                // It finished meanwhile: nothing applies any more.
                Some(e) if e.status.is_terminal() => Err(finished_refusal(id, &op, &e)),
                _ => Err(Error::NotReady(format!(
                    "the node running execution {id} did not answer (it may be failing over); try again"
                ))),
            },
        }
    }

    pub async fn cancel_execution(
        &self,
        id: &str,
        reason: Option<String>,
    ) -> Result<WorkflowExecution> {
        self.control(id, Control::Cancel(reason)).await
    }
    pub async fn pause_execution(&self, id: &str) -> Result<WorkflowExecution> {
        self.control(id, Control::Pause).await
    }
    pub async fn resume_execution(&self, id: &str) -> Result<WorkflowExecution> {
        self.control(id, Control::Resume).await
    }

    // -- Event Bus ---------------------------------------------------------

    /// `subscribeToEvents`: `handler` runs for each matching event, in order.
    /// Up to `eventBusBufferSize` events (as configured when subscribing) wait
    /// for a slow handler; beyond that the subscription loses events.
    pub fn subscribe_to_events<F, Fut>(&self, filter: EventFilter, handler: F) -> SubscriptionId
    where
        F: Fn(ChoreographyEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let queue = self.inner.config.get().event_bus_buffer_size as usize;
        self.inner.bus.subscribe_fn(filter, queue, handler)
    }

    /// A live stream of matching events.
    pub fn subscribe(&self, filter: EventFilter, queue_capacity: usize) -> EventStream {
        self.inner.bus.subscribe(filter, queue_capacity)
    }

    /// `unsubscribeFromEvents`.
    pub fn unsubscribe_from_events(&self, id: &str) -> bool {
        self.inner.bus.unsubscribe(id)
    }

    /// `getEventHistory` from the persisted log: with `filter.after`, the first
    /// `limit` events after it; otherwise the newest `limit`. Seq order.
    pub async fn get_event_history(
        &self,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>> {
        let order = if filter.after.is_some() {
            EventOrder::Ascending
        } else {
            EventOrder::Newest
        };
        self.inner.store.query_events(filter, order, limit).await
    }

    /// `getEventsByCorrelation`.
    pub async fn get_events_by_correlation(
        &self,
        correlation_id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>> {
        let f = EventFilter {
            correlation_id: Some(correlation_id.to_owned()),
            after,
            ..Default::default()
        };
        self.inner
            .store
            .query_events(&f, EventOrder::Ascending, limit)
            .await
    }

    /// Publish an event (`agent:event` / `agent:alert` from agents, audit events).
    pub async fn publish_event(&self, mut e: NewEvent) -> Result<ChoreographyEvent> {
        if e.correlation_id.is_empty() {
            e.correlation_id = format!("evt:{}", uuid::Uuid::now_v7().simple());
        }
        if e.timestamp == 0 {
            e.timestamp = now_ms();
        }
        self.emit(e).await
    }

    // -- Webhook subscriptions ---------------------------------------------

    /// Store a subscription and start delivering to it.
    pub async fn create_subscription(&self, sub: SubscriptionRecord) -> Result<SubscriptionRecord> {
        self.inner.store.insert_subscription(&sub).await?;
        // Events from now on (the log may hold older matching ones).
        let now = self.inner.store.last_seq().await?;
        self.inner
            .store
            .set_subscription_cursor(&sub.id, now)
            .await?;
        match &self.inner.cluster {
            // The leader delivers; it may be another node.
            Some(c) => {
                if c.is_leader() {
                    self.inner.webhooks.start(sub.clone(), now);
                }
                c.send(Signal::Subscriptions);
            }
            None => self.inner.webhooks.start(sub.clone(), now),
        }
        Ok(sub)
    }

    /// Stop delivering and forget the subscription.
    pub async fn delete_subscription(&self, id: &str) -> Result<()> {
        if !self.inner.store.delete_subscription(id).await? {
            return Err(Error::not_found("subscription", id));
        }
        self.inner.webhooks.stop(id);
        if let Some(c) = &self.inner.cluster {
            c.send(Signal::Subscriptions);
        }
        Ok(())
    }

    /// Subscriptions with their delivery counters (since this process started).
    pub async fn list_subscriptions(&self) -> Result<Vec<(SubscriptionRecord, DeliveryStats)>> {
        let subs = self.inner.store.list_subscriptions().await?;
        Ok(subs
            .into_iter()
            .map(|s| {
                let stats = self.inner.webhooks.stats(&s.id).unwrap_or_default();
                (s, stats)
            })
            .collect())
    }

    // -- Monitoring & config ----------------------------------------------

    /// `getMetrics`, from the store (so it is right across restarts and nodes).
    pub async fn get_metrics(&self) -> Result<ChoreographyMetrics> {
        let store = &self.inner.store;
        let stats = store.execution_stats().await?;
        let count = |s: ExecutionStatus| {
            stats
                .by_status
                .iter()
                .filter(|(st, _)| *st == s)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
        let completed = count(ExecutionStatus::Completed);
        let failed = count(ExecutionStatus::Failed);
        let rolled_back = count(ExecutionStatus::RolledBack);
        let cancelled = count(ExecutionStatus::Cancelled);
        let finished = completed + failed + rolled_back + cancelled;
        let total: u64 = stats.by_status.iter().map(|(_, n)| *n).sum();
        let now = now_ms();
        let recent = store.count_events_since(now.saturating_sub(60_000)).await?;
        let total_workflows = store.list_workflows(&[], 0, 0).await?.total;
        Ok(ChoreographyMetrics {
            total_workflows,
            total_executions: total,
            completed_workflows: completed,
            failed_workflows: failed,
            rolled_back_workflows: rolled_back,
            cancelled_workflows: cancelled,
            average_execution_time: if stats.finished_count > 0 {
                stats.finished_time_sum_ms as f64 / stats.finished_count as f64
            } else {
                0.0
            },
            success_rate: if finished > 0 {
                completed as f64 * 100.0 / finished as f64
            } else {
                0.0
            },
            active_executions: count(ExecutionStatus::Running) + count(ExecutionStatus::Paused),
            queued_executions: count(ExecutionStatus::Pending),
            agent_health_scores: self
                .get_all_agent_health()
                .into_iter()
                .map(|h| (h.agent_id, h.score))
                .collect(),
            event_throughput: recent as f64 / 60.0,
        })
    }

    /// Follows every change of the runtime config, whether made here or
    /// through another node of a cluster.
    pub fn watch_config(&self) -> tokio::sync::watch::Receiver<Arc<MaestroConfig>> {
        self.inner.config.watch()
    }

    /// `getConfig`.
    pub fn get_config(&self) -> MaestroConfig {
        (*self.inner.config.get()).clone()
    }

    /// `updateConfig`: a JSON merge patch of the runtime keys; validated, stored,
    /// applied at once.
    pub async fn update_config(&self, patch: &Value) -> Result<MaestroConfig> {
        let next = self.get_config().patched(patch)?;
        let doc = serde_json::to_value(&next).map_err(|e| Error::store(e.to_string()))?;
        self.inner.store.save_config(&doc).await?;
        self.inner.config.set(next.clone());
        if let Some(c) = &self.inner.cluster {
            c.send(Signal::Config);
        }
        Ok(next)
    }
}

/// How long a control request forwarded to another node waits for its answer.
const CONTROL_WAIT_MS: u64 = 5_000;

/// The refusal of a control request on a finished execution (the state
/// machine's rule for one, judged from its stored status by a node where it is
/// not live).
fn finished_refusal(id: &str, op: &Control, e: &WorkflowExecution) -> Error {
    Error::InvalidState(Refusal::finished(op.op(), e.status).message(id))
}

/// Cluster mode: what becoming (or ceasing to be) the leader starts (stops):
/// webhook delivery, the health checker and retention.
fn leadership(
    webhooks: Webhooks,
    health_checker: Option<HealthChecker>,
    (store, retention): (Arc<dyn Store>, crate::retention::Retention),
    cancel: CancellationToken,
) -> impl Fn(bool) + Send + 'static {
    let running: Mutex<Option<CancellationToken>> = Mutex::new(None);
    let health_checker = health_checker.map(Arc::new);
    move |leader| {
        let mut running = running.lock().expect("leadership");
        if let Some(token) = running.take() {
            token.cancel();
        }
        if !leader {
            webhooks.stop_all();
            return;
        }
        let token = cancel.child_token();
        if let Some(hc) = &health_checker {
            tokio::spawn(hc.as_ref().clone().run(token.clone()));
        }
        tokio::spawn(crate::retention::run(
            store.clone(),
            retention,
            token.clone(),
        ));
        let w = webhooks.clone();
        tokio::spawn(async move {
            if let Err(e) = w.sync().await {
                tracing::warn!(error = %e, "webhook subscriptions: sync failed");
            }
        });
        *running = Some(token);
    }
}

/// A stable digest of an execute request (FNV-1a 64 over its canonical JSON),
/// to tell a replay of an `Idempotency-Key` from a reuse.
fn request_hash(
    inputs: &Map<String, Value>,
    correlation: &Option<String>,
    parent: &Option<String>,
) -> String {
    let doc = json!({"inputs": canonical(&Value::Object(inputs.clone())),
        "correlationId": correlation, "parentExecutionId": parent});
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Objects with sorted keys, so that key order does not change the digest.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}
