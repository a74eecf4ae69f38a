//! The library API of [`Maestro`]: the original's methods (in Rust naming)
//! over the registry, the catalog, the executor, the event bus and the store,
//! and the narrow interfaces the HTTP API uses (event counts and feeds, poll
//! tasks, masking, runtime counters, token signals) instead of the parts.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::model::{
    AgentHealth, AgentStatus, ChoreographyEvent, ChoreographyMetrics, EventFilter, EventType,
    ExecutionStatus, MaestroConfig, NewEvent, RegisteredAgent, Workflow, WorkflowExecution,
};
use maestro_core::ports::{
    EventOrder, ExecutionQuery, InvokeError, Page, SubscriptionRecord, TaskRecord,
};
use maestro_core::registry::AgentQuery;
use maestro_core::{Error, Result};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::idempotency::request_hash;
use super::{Maestro, finished_refusal};
use crate::clock::now_ms;
use crate::cluster::Signal;
use crate::coordination::Forwarded;
use crate::eventbus::{EventStream, SubscriptionId};
use crate::executor::{Control, ExecuteRequest, Executed};
use crate::feed::{Feed, Overflow};
use crate::redact::{EventMasker, SensitiveIndex};
use crate::tasks::{LeaseState, TaskError};
use crate::webhooks::DeliveryStats;

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

impl Maestro {
    fn agent_event(t: EventType, agent: &RegisteredAgent, payload: Value) -> NewEvent {
        let mut e = NewEvent::engine(t, payload, now_ms());
        e.target_agent = Some(agent.id.clone());
        e.correlation_id = format!("agent:{}", agent.id);
        e
    }

    // -- Agent Registry ----------------------------------------------------

    /// `registerAgent`: a duplicate id is `AlreadyExists`.
    pub async fn register_agent(&self, agent: RegisteredAgent) -> Result<RegisteredAgent> {
        let a = self.parts().registry.register(agent, now_ms()).await?;
        let payload = json!({"agentId": a.id, "type": a.agent_type,
            "capabilities": a.capabilities.iter().map(|c| &c.id).collect::<Vec<_>>()});
        self.emit(Self::agent_event(EventType::AgentRegistered, &a, payload))
            .await?;
        Ok(a)
    }

    /// Create or update (a restarted agent re-registering); `true` when created.
    pub async fn upsert_agent(&self, agent: RegisteredAgent) -> Result<(bool, RegisteredAgent)> {
        let (created, a) = self.parts().registry.upsert(agent, now_ms()).await?;
        let payload = json!({"agentId": a.id, "type": a.agent_type, "updated": !created,
            "capabilities": a.capabilities.iter().map(|c| &c.id).collect::<Vec<_>>()});
        self.emit(Self::agent_event(EventType::AgentRegistered, &a, payload))
            .await?;
        Ok((created, a))
    }

    /// `deregisterAgent`.
    pub async fn deregister_agent(&self, id: &str) -> Result<RegisteredAgent> {
        let a = self.parts().registry.deregister(id).await?;
        self.parts().inprocess.unregister_agent(id);
        self.parts().tasks.agent_deregistered(id).await?;
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
        self.parts().registry.get(id)
    }

    /// `queryAgents`: the page and the number of all matches.
    pub fn query_agents(&self, q: &AgentQuery) -> (Vec<RegisteredAgent>, usize) {
        self.parts().registry.read(|r| {
            let (v, total) = r.query_agents(q);
            (v.into_iter().cloned().collect(), total)
        })
    }

    /// `findAgentsByCapability`.
    pub fn find_agents_by_capability(&self, capability: &str) -> Vec<RegisteredAgent> {
        self.parts().registry.read(|r| {
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
        let a = self.parts().registry.update_status(id, status).await?;
        if before != Some(a.status) {
            let payload = json!({"agentId": a.id, "previousStatus": before, "status": a.status, "hold": a.status_hold});
            self.emit(Self::agent_event(EventType::AgentHealth, &a, payload))
                .await?;
        }
        if !a.status_hold
            && let Some(hc) = &self.parts().health
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
        let a = self
            .parts()
            .registry
            .heartbeat(id, now_ms(), health)
            .await?;
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
        self.parts()
            .registry
            .write(|r| r.record_reported_health(id, health, now))?;
        self.get_agent_health(id)
            .ok_or_else(|| Error::not_found("agent", id))
    }

    /// `getAgentHealth`: computed from real calls and checks, merged with reports.
    pub fn get_agent_health(&self, id: &str) -> Option<AgentHealth> {
        let t = self.parts().config.get().agent_timeout_ms;
        self.parts()
            .registry
            .read(|r| r.agent_health(id, now_ms(), t))
    }

    /// `getAllAgentHealth`.
    pub fn get_all_agent_health(&self) -> Vec<AgentHealth> {
        let t = self.parts().config.get().agent_timeout_ms;
        self.parts()
            .registry
            .read(|r| r.all_agent_health(now_ms(), t))
    }

    // -- Choreography Engine ---------------------------------------------

    /// `defineWorkflow`.
    pub async fn define_workflow(&self, wf: Workflow, created_by: &str) -> Result<Workflow> {
        let wf = self
            .parts()
            .catalog
            .define(wf, created_by, now_ms())
            .await?;
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
        self.parts().catalog.get(id, revision).await
    }

    /// `updateWorkflow`: merge patch, a new revision.
    pub async fn update_workflow(&self, id: &str, patch: &Value) -> Result<Workflow> {
        let wf = self.parts().catalog.update(id, patch, now_ms()).await?;
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
        self.parts().catalog.list(tags, limit, offset).await
    }

    /// Refused (`InvalidState`) while executions of it are pending, running or paused.
    pub async fn delete_workflow(&self, id: &str) -> Result<()> {
        if self.parts().store.get_workflow(id, None).await?.is_none() {
            return Err(Error::not_found("workflow", id));
        }
        if self.parts().store.has_active_executions(id).await? {
            return Err(Error::InvalidState(format!(
                "workflow {id:?} has active executions; cancel them first"
            )));
        }
        self.parts().catalog.delete(id).await?;
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
            .parts()
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
        match self
            .parts()
            .executor
            .execute(id, workflow, plan, req)
            .await?
        {
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
        let _ = tokio::time::timeout(timeout, self.parts().executor.wait_finished(id)).await;
        // Not live here (or not yet finished): it may run on another node of
        // a cluster; its terminal event comes through the bus.
        let mut events = self.parts().bus.subscribe(
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
        self.parts().store.get_execution(id).await
    }

    /// `queryExecutions`: newest first.
    pub async fn query_executions(&self, q: &ExecutionQuery) -> Result<Page<WorkflowExecution>> {
        self.parts().store.query_executions(q).await
    }

    /// Cancel, pause or resume: the executor running the execution decides
    /// (its state machine applies the command or refuses it); 200 with the
    /// state it committed, or `InvalidState` with the current status.
    async fn control(&self, id: &str, op: Control) -> Result<WorkflowExecution> {
        match self.parts().executor.control(id, op.clone()).await {
            // Not live here: finished (nothing applies any more), on another
            // node, or unknown.
            Err(Error::NotFound { .. }) => match self.get_execution(id).await? {
                Some(e) if e.status.is_terminal() => Err(finished_refusal(id, &op, &e)),
                Some(e) => self.forward_control(id, op, e).await,
                None => Err(Error::not_found("execution", id)),
            },
            r => r,
        }
    }

    /// Not live on this node: ask the node running it, if there is another.
    async fn forward_control(
        &self,
        id: &str,
        op: Control,
        stored: WorkflowExecution,
    ) -> Result<WorkflowExecution> {
        let wait = Duration::from_millis(CONTROL_WAIT_MS);
        match self.inner.coordination.forward_control(id, &op, wait).await {
            Forwarded::Done => self
                .get_execution(id)
                .await?
                .ok_or_else(|| Error::not_found("execution", id)),
            Forwarded::Refused(refused) => Err(Error::InvalidState(refused)),
            Forwarded::NoAnswer => match self.get_execution(id).await? {
                // It finished meanwhile: nothing applies any more.
                Some(e) if e.status.is_terminal() => Err(finished_refusal(id, &op, &e)),
                _ => Err(Error::NotReady(format!(
                    "the node running execution {id} did not answer (it may be failing over); try again"
                ))),
            },
            Forwarded::NoOtherNode => Err(Error::InvalidState(format!(
                "cannot {} execution {id}: it is not running on this node (status {})",
                op.op().as_str(),
                stored.status.as_str()
            ))),
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
        let queue = self.parts().config.get().event_bus_buffer_size as usize;
        self.parts().bus.subscribe_fn(filter, queue, handler)
    }

    /// A live stream of matching events.
    pub fn subscribe(&self, filter: EventFilter, queue_capacity: usize) -> EventStream {
        self.parts().bus.subscribe(filter, queue_capacity)
    }

    /// `unsubscribeFromEvents`.
    pub fn unsubscribe_from_events(&self, id: &str) -> bool {
        self.parts().bus.unsubscribe(id)
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
        self.parts().store.query_events(filter, order, limit).await
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
        self.parts()
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
        self.parts().store.insert_subscription(&sub).await?;
        // Events from now on (the log may hold older matching ones).
        let now = self.parts().store.last_seq().await?;
        self.parts()
            .store
            .set_subscription_cursor(&sub.id, now)
            .await?;
        // The leader delivers; in a cluster it may be another node.
        let coordination = &self.inner.coordination;
        if coordination.is_leader() {
            self.parts().webhooks.start(sub.clone(), now);
        }
        coordination.send(Signal::Subscriptions);
        Ok(sub)
    }

    /// Stop delivering and forget the subscription.
    pub async fn delete_subscription(&self, id: &str) -> Result<()> {
        if !self.parts().store.delete_subscription(id).await? {
            return Err(Error::not_found("subscription", id));
        }
        self.parts().webhooks.stop(id);
        self.inner.coordination.send(Signal::Subscriptions);
        Ok(())
    }

    /// Subscriptions with their delivery counters (since this process started).
    pub async fn list_subscriptions(&self) -> Result<Vec<(SubscriptionRecord, DeliveryStats)>> {
        let subs = self.parts().store.list_subscriptions().await?;
        Ok(subs
            .into_iter()
            .map(|s| {
                let stats = self.parts().webhooks.stats(&s.id).unwrap_or_default();
                (s, stats)
            })
            .collect())
    }

    // -- Monitoring & config ----------------------------------------------

    /// `getMetrics`, from the store (so it is right across restarts and nodes).
    pub async fn get_metrics(&self) -> Result<ChoreographyMetrics> {
        let store = &self.parts().store;
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
        self.parts().config.watch()
    }

    /// `getConfig`.
    pub fn get_config(&self) -> MaestroConfig {
        (*self.parts().config.get()).clone()
    }

    /// `updateConfig`: a JSON merge patch of the runtime keys; validated, stored,
    /// applied at once.
    pub async fn update_config(&self, patch: &Value) -> Result<MaestroConfig> {
        let next = self.get_config().patched(patch)?;
        let doc = serde_json::to_value(&next).map_err(|e| Error::store(e.to_string()))?;
        self.parts().store.save_config(&doc).await?;
        self.parts().config.set(next.clone());
        self.inner.coordination.send(Signal::Config);
        Ok(next)
    }
}

/// How long a control request forwarded to another node waits for its answer.
const CONTROL_WAIT_MS: u64 = 5_000;

/// Live counters of this node, for monitoring (`/metrics`).
#[derive(Debug, Clone, Default)]
pub struct RuntimeStats {
    /// Executions by status, from the store (all nodes).
    pub executions_by_status: Vec<(ExecutionStatus, u64)>,
    /// This node's executor: running and queued executions, armed timers,
    /// commits made.
    pub active: u64,
    pub queued: u64,
    pub timers: u64,
    pub commits: u64,
    /// Answers that came after their attempt was over (calls and poll tasks).
    pub late_results: u64,
    /// This node's event bus.
    pub events_published: u64,
    pub events_dropped: u64,
    pub event_subscribers: usize,
    /// The last seq the bus published.
    pub last_published_seq: u64,
    /// Agents by status: online, offline, degraded.
    pub agents_by_status: [u64; 3],
}

/// The narrow interfaces of the HTTP API: what its routes need of the parts
/// behind the facade.
impl Maestro {
    /// How many events match `filter` (a listing's `total`).
    pub async fn count_events(&self, filter: &EventFilter) -> Result<u64> {
        self.parts().store.count_events(filter).await
    }

    /// A feed of matching events: those after `after` from the log, then live
    /// ones (only live ones with `None`); see [`Feed`].
    pub fn event_feed(
        &self,
        filter: EventFilter,
        after: Option<u64>,
        queue: usize,
        overflow: Overflow,
    ) -> Feed {
        let p = self.parts();
        Feed::new(p.store.clone(), &p.bus, filter, after, queue, overflow)
    }

    /// Whether the store answers now (readiness).
    pub async fn ping_store(&self) -> Result<()> {
        self.parts().store.last_seq().await.map(|_| ())
    }

    /// A token was created or revoked here: the other nodes of a cluster
    /// forget what they cached of it.
    pub fn token_changed(&self, id: &str) {
        self.inner
            .coordination
            .send(Signal::Token { id: id.to_owned() });
    }

    /// Signals from the other nodes of a cluster (and `Resync`) for caches
    /// outside the engine; a node alone on its store never receives any.
    pub fn signals(&self) -> broadcast::Receiver<Signal> {
        self.inner.coordination.subscribe()
    }

    /// Poll tasks of `agent_id` (see [`TaskQueue::poll`](crate::tasks::TaskQueue::poll)).
    pub async fn poll_tasks(
        &self,
        agent_id: &str,
        capabilities: &[String],
        max: usize,
        wait_ms: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<TaskRecord>> {
        self.parts()
            .tasks
            .poll(agent_id, capabilities, max, wait_ms, cancel)
            .await
    }

    /// A poll task's answer: its outputs or its error.
    pub async fn finish_task(
        &self,
        task_id: &str,
        agent: Option<&str>,
        answer: std::result::Result<Map<String, Value>, InvokeError>,
    ) -> std::result::Result<TaskRecord, TaskError> {
        self.parts().tasks.finish(task_id, agent, answer).await
    }

    /// Extend a poll task's lease.
    pub async fn heartbeat_task(
        &self,
        task_id: &str,
        agent: Option<&str>,
        extend_ms: Option<u64>,
    ) -> std::result::Result<LeaseState, TaskError> {
        self.parts()
            .tasks
            .heartbeat(task_id, agent, extend_ms)
            .await
    }

    /// An execution with its `sensitive` values masked (for callers who are
    /// not admins).
    pub async fn mask_execution(&self, e: WorkflowExecution) -> WorkflowExecution {
        let p = self.parts();
        match SensitiveIndex::from_registry(&p.registry) {
            Some(idx) => crate::redact::execution(&*p.store, &idx, e).await,
            None => e,
        }
    }

    /// What masks the `sensitive` values of events (for callers who are not
    /// admins).
    pub fn event_masker(&self) -> EventMasker {
        let p = self.parts();
        EventMasker::new(p.store.clone(), p.registry.clone())
    }

    /// Counters of this node and of the store, for monitoring.
    pub async fn runtime_stats(&self) -> Result<RuntimeStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.parts();
        let stats = p.store.execution_stats().await?;
        let ex = p.executor.stats();
        let agents_by_status = p.registry.read(|r| {
            let mut by = [0u64; 3];
            for a in r.agents() {
                by[a.status as usize] += 1;
            }
            by
        });
        Ok(RuntimeStats {
            executions_by_status: stats.by_status,
            active: ex.active.load(Relaxed),
            queued: ex.queued.load(Relaxed),
            timers: ex.timers.load(Relaxed),
            commits: ex.commits.load(Relaxed),
            late_results: ex.late_results.load(Relaxed) + p.tasks.late_answers(),
            events_published: p.bus.published_total(),
            events_dropped: p.bus.dropped_total(),
            event_subscribers: p.bus.subscription_count(),
            last_published_seq: p.bus.last_seq(),
            agents_by_status,
        })
    }
}
