//! [`MemoryStore`]: the whole `Store` port in process memory, for tests and
//! embedding. Same semantics as the SQLite backend (the conformance suite holds
//! both to them), nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use maestro_core::Result;
use maestro_core::model::{
    Attempt, ChoreographyEvent, EventFilter, ExecutionStatus, NewEvent, RegisteredAgent,
    StepExecution, StepMap, Timestamp, Workflow, WorkflowExecution,
};
use maestro_core::ports::{
    AgentStore, Batch, Claimed, Committed, ConfigStore, EventOrder, EventStore, ExecutionHeader,
    ExecutionQuery, ExecutionStats, ExecutionStore, HeldClaim, IdempotencyRecord, LeaseStore, Page,
    SubscriptionRecord, SubscriptionStore, TaskRecord, TaskStatus, TaskStore, TokenRecord,
    TokenStore, WorkflowStore,
};
use serde_json::Value;

/// An in-memory [`Store`](maestro_core::ports::Store).
///
/// One `std::sync::Mutex` guards the whole state: every method takes it, does its
/// work without awaiting, and releases it, so a batch is applied atomically and
/// event seqs are allocated in commit order. The event log grows without bound.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves no half-applied batch (batches
        // are validated before they are applied), so the state is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, RegisteredAgent>,
    workflows: BTreeMap<String, WorkflowEntry>,
    executions: HashMap<String, ExecutionEntry>,
    idempotency_keys: HashMap<(String, String), IdempotencyRecord>,
    /// In seq order (retention may have removed some).
    events: Vec<ChoreographyEvent>,
    /// The last seq handed out (never reused).
    last_seq: u64,
    tokens: BTreeMap<String, TokenRecord>,
    subscriptions: BTreeMap<String, SubscriptionRecord>,
    subscription_cursors: BTreeMap<String, u64>,
    config: Option<Value>,
    tasks: BTreeMap<String, TaskRecord>,
    /// execution id → (node id, expires at).
    leases: BTreeMap<String, (String, Timestamp)>,
}

struct WorkflowEntry {
    latest: u64,
    deleted: bool,
    revisions: BTreeMap<u64, Workflow>,
}

struct ExecutionEntry {
    header: Arc<ExecutionHeader>,
    /// step id → (position, step without attempts).
    steps: HashMap<String, (u32, StepExecution)>,
    /// (step id, attempt number) → attempt.
    attempts: BTreeMap<(String, u32), Attempt>,
}

impl ExecutionEntry {
    fn assemble(&self) -> WorkflowExecution {
        let mut steps: Vec<&(u32, StepExecution)> = self.steps.values().collect();
        steps.sort_by(|a, b| (a.0, &a.1.step_id).cmp(&(b.0, &b.1.step_id)));
        let steps = steps
            .into_iter()
            .map(|(_, step)| {
                let mut step = step.clone();
                step.attempts = self
                    .attempts
                    .range((step.step_id.clone(), 0)..=(step.step_id.clone(), u32::MAX))
                    .map(|(_, a)| a.clone())
                    .collect();
                step
            })
            .collect();
        let mut execution = self.header.execution.clone();
        execution.step_executions = StepMap(steps);
        execution.derive_step_outputs();
        execution
    }

    fn ran_on(&self, agent_id: &str) -> bool {
        self.steps
            .values()
            .any(|(_, s)| s.agent_id.as_deref() == Some(agent_id))
            || self
                .attempts
                .values()
                .any(|a| a.agent_id.as_deref() == Some(agent_id))
    }

    fn matches(&self, q: &ExecutionQuery) -> bool {
        let e = &self.header.execution;
        q.workflow_id.as_ref().is_none_or(|w| &e.workflow_id == w)
            && (q.statuses.is_empty() || q.statuses.contains(&e.status))
            && q.agent_id.as_deref().is_none_or(|a| self.ran_on(a))
            && q.tags.iter().all(|t| self.header.workflow_tags.contains(t))
            && q.correlation_id
                .as_ref()
                .is_none_or(|c| &e.context.correlation_id == c)
            && q.created_after.is_none_or(|t| e.created_at >= t)
            && q.created_before.is_none_or(|t| e.created_at <= t)
    }
}

fn is_unfinished(status: ExecutionStatus) -> bool {
    matches!(
        status,
        ExecutionStatus::Pending | ExecutionStatus::Running | ExecutionStatus::Paused
    )
}

impl State {
    fn append(&mut self, events: Vec<NewEvent>) -> Vec<ChoreographyEvent> {
        let first = self.last_seq + 1;
        let out: Vec<ChoreographyEvent> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.into_event(first + i as u64))
            .collect();
        self.last_seq += out.len() as u64;
        self.events.extend(out.iter().cloned());
        out
    }

    /// The same integrity rules as the SQL schema's foreign keys: a step row
    /// needs its execution, an attempt row its step (in the store or earlier in
    /// the same batch).
    fn check_references(&self, batch: &Batch) -> Result<()> {
        let new_executions: std::collections::HashSet<&str> = batch
            .executions
            .iter()
            .map(|h| h.execution.id.as_str())
            .collect();
        for row in &batch.steps {
            if !self.executions.contains_key(&row.execution_id)
                && !new_executions.contains(row.execution_id.as_str())
            {
                return Err(maestro_core::Error::store(format!(
                    "step {:?} references unknown execution {:?}",
                    row.step.step_id, row.execution_id
                )));
            }
        }
        let new_steps: std::collections::HashSet<(&str, &str)> = batch
            .steps
            .iter()
            .map(|r| (r.execution_id.as_str(), r.step.step_id.as_str()))
            .collect();
        for row in &batch.attempts {
            let known = self
                .executions
                .get(&row.execution_id)
                .is_some_and(|e| e.steps.contains_key(&row.step_id));
            if !known && !new_steps.contains(&(row.execution_id.as_str(), row.step_id.as_str())) {
                return Err(maestro_core::Error::store(format!(
                    "attempt {} references unknown step {:?} of execution {:?}",
                    row.attempt.attempt, row.step_id, row.execution_id
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AgentStore for MemoryStore {
    async fn put_agent(&self, agent: &RegisteredAgent) -> Result<()> {
        self.lock().agents.insert(agent.id.clone(), agent.clone());
        Ok(())
    }

    async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        Ok(self.lock().agents.remove(agent_id).is_some())
    }

    async fn get_agent(&self, agent_id: &str) -> Result<Option<RegisteredAgent>> {
        Ok(self.lock().agents.get(agent_id).cloned())
    }

    async fn list_agents(&self) -> Result<Vec<RegisteredAgent>> {
        Ok(self.lock().agents.values().cloned().collect())
    }
}

#[async_trait]
impl WorkflowStore for MemoryStore {
    async fn insert_workflow_revision(&self, workflow: &Workflow) -> Result<()> {
        let mut state = self.lock();
        let entry = state
            .workflows
            .entry(workflow.id.clone())
            .or_insert_with(|| WorkflowEntry {
                latest: workflow.revision,
                deleted: false,
                revisions: BTreeMap::new(),
            });
        if entry.revisions.contains_key(&workflow.revision) {
            return Err(maestro_core::Error::already_exists(
                "workflow",
                workflow.id.clone(),
            ));
        }
        entry.revisions.insert(workflow.revision, workflow.clone());
        if workflow.revision >= entry.latest {
            entry.latest = workflow.revision;
            entry.deleted = false;
        }
        Ok(())
    }

    async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>> {
        let state = self.lock();
        let Some(entry) = state.workflows.get(id) else {
            return Ok(None);
        };
        Ok(match revision {
            Some(r) => entry.revisions.get(&r).cloned(),
            None if entry.deleted => None,
            None => entry.revisions.get(&entry.latest).cloned(),
        })
    }

    async fn list_workflows(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>> {
        let state = self.lock();
        let matching: Vec<&Workflow> = state
            .workflows
            .values()
            .filter(|e| !e.deleted)
            .filter_map(|e| e.revisions.get(&e.latest))
            .filter(|w| tags.iter().all(|t| w.tags.contains(t)))
            .collect();
        Ok(Page {
            total: matching.len() as u64,
            items: matching
                .into_iter()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect(),
        })
    }

    async fn delete_workflow(&self, id: &str) -> Result<bool> {
        let mut state = self.lock();
        match state.workflows.get_mut(id) {
            Some(entry) if !entry.deleted => {
                entry.deleted = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl ExecutionStore for MemoryStore {
    async fn commit(&self, mut batch: Batch) -> Result<Committed> {
        crate::refuse_fence(&batch)?;
        let mut state = self.lock();
        // Claims first, decided in order against the stored claims and the
        // earlier claims of the batch; nothing is applied before the batch is
        // known to be valid.
        let mut won: HashMap<(String, String), IdempotencyRecord> = HashMap::new();
        let mut claims = Vec::with_capacity(batch.claims.len());
        for c in &batch.claims {
            let k = (c.workflow_id.clone(), c.key.clone());
            let held = won
                .get(&k)
                .or_else(|| state.idempotency_keys.get(&k))
                .map(|r| HeldClaim {
                    execution_id: r.execution_id.clone(),
                    request_hash: r.request_hash.clone(),
                    expires_at: r.expires_at,
                    unfinished: state
                        .executions
                        .get(&r.execution_id)
                        .is_some_and(|e| is_unfinished(e.header.execution.status)),
                });
            let answer = c.decide(held.as_ref());
            if answer == Claimed::Won
                && let Some(record) = c.record()
                && held.is_none_or(|h| h.execution_id != record.execution_id)
            {
                won.insert(k, record);
            }
            claims.push(answer);
        }
        batch.drop_executions(&batch.losers(&claims));
        state.check_references(&batch)?;
        let Batch {
            executions,
            steps,
            attempts,
            events,
            claims: _,
            fence: _,
        } = batch;
        for header in executions {
            let id = header.execution.id.clone();
            let header = if header.execution.step_executions.is_empty() {
                header
            } else {
                let mut h = (*header).clone();
                h.execution.step_executions = StepMap::default();
                Arc::new(h)
            };
            match state.executions.get_mut(&id) {
                Some(entry) => entry.header = header,
                None => {
                    state.executions.insert(
                        id,
                        ExecutionEntry {
                            header,
                            steps: HashMap::new(),
                            attempts: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        for row in steps {
            let mut step = row.step;
            step.attempts = Vec::new();
            if let Some(entry) = state.executions.get_mut(&row.execution_id) {
                entry
                    .steps
                    .insert(step.step_id.clone(), (row.position, step));
            }
        }
        for row in attempts {
            if let Some(entry) = state.executions.get_mut(&row.execution_id) {
                entry
                    .attempts
                    .insert((row.step_id, row.attempt.attempt), row.attempt);
            }
        }
        state.idempotency_keys.extend(won);
        Ok(Committed {
            events: state.append(events),
            claims,
        })
    }

    async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>> {
        Ok(self.lock().executions.get(id).map(ExecutionEntry::assemble))
    }

    async fn query_executions(&self, query: &ExecutionQuery) -> Result<Page<WorkflowExecution>> {
        let state = self.lock();
        let mut matching: Vec<&ExecutionEntry> = state
            .executions
            .values()
            .filter(|e| e.matches(query))
            .collect();
        matching.sort_by(|a, b| {
            let (a, b) = (&a.header.execution, &b.header.execution);
            (b.created_at, &b.id).cmp(&(a.created_at, &a.id))
        });
        Ok(Page {
            total: matching.len() as u64,
            items: matching
                .into_iter()
                .skip(query.offset)
                .take(query.limit)
                .map(ExecutionEntry::assemble)
                .collect(),
        })
    }

    async fn unfinished_executions(&self) -> Result<Vec<WorkflowExecution>> {
        let state = self.lock();
        let mut unfinished: Vec<&ExecutionEntry> = state
            .executions
            .values()
            .filter(|e| is_unfinished(e.header.execution.status))
            .collect();
        unfinished.sort_by(|a, b| {
            let (a, b) = (&a.header.execution, &b.header.execution);
            (a.created_at, &a.id).cmp(&(b.created_at, &b.id))
        });
        Ok(unfinished
            .into_iter()
            .map(ExecutionEntry::assemble)
            .collect())
    }

    async fn execution_stats(&self) -> Result<ExecutionStats> {
        let state = self.lock();
        let mut stats = ExecutionStats {
            by_status: ExecutionStatus::ALL.iter().map(|s| (*s, 0)).collect(),
            ..ExecutionStats::default()
        };
        for entry in state.executions.values() {
            let e = &entry.header.execution;
            if let Some(slot) = stats.by_status.iter_mut().find(|(s, _)| *s == e.status) {
                slot.1 += 1;
            }
            if let Some(d) = e.duration().filter(|_| e.status.is_terminal()) {
                stats.finished_time_sum_ms += d;
                stats.finished_count += 1;
            }
        }
        Ok(stats)
    }

    async fn get_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        Ok(self
            .lock()
            .idempotency_keys
            .get(&(workflow_id.to_owned(), key.to_owned()))
            .cloned())
    }

    async fn has_active_executions(&self, workflow_id: &str) -> Result<bool> {
        Ok(self.lock().executions.values().any(|e| {
            e.header.execution.workflow_id == workflow_id
                && is_unfinished(e.header.execution.status)
        }))
    }

    async fn purge_executions(
        &self,
        before: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<u64> {
        let mut state = self.lock();
        // An execution a live key claim points at stays until the claim expires.
        let claimed: std::collections::HashSet<&str> = state
            .idempotency_keys
            .values()
            .filter(|r| r.expires_at > now)
            .map(|r| r.execution_id.as_str())
            .collect();
        let mut old: Vec<(Timestamp, String)> = state
            .executions
            .iter()
            .filter_map(|(id, e)| {
                let x = &e.header.execution;
                let done = x.completed_at?;
                (!is_unfinished(x.status) && done < before && !claimed.contains(id.as_str()))
                    .then(|| (done, id.clone()))
            })
            .collect();
        old.sort();
        old.truncate(limit);
        let gone: std::collections::HashSet<String> = old.into_iter().map(|(_, id)| id).collect();
        for id in &gone {
            state.executions.remove(id);
        }
        state
            .idempotency_keys
            .retain(|_, r| !gone.contains(&r.execution_id));
        Ok(gone.len() as u64)
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>> {
        Ok(self.lock().append(events))
    }

    async fn query_events(
        &self,
        filter: &EventFilter,
        order: EventOrder,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>> {
        let state = self.lock();
        // In seq order: start right after `after`.
        let start = filter
            .after
            .map_or(0, |a| state.events.partition_point(|e| e.seq <= a));
        let candidates = state.events[start..].iter().filter(|e| filter.matches(e));
        Ok(match order {
            EventOrder::Ascending => candidates.take(limit).cloned().collect(),
            EventOrder::Newest => {
                let mut newest: Vec<ChoreographyEvent> =
                    candidates.rev().take(limit).cloned().collect();
                newest.reverse();
                newest
            }
        })
    }

    async fn last_seq(&self) -> Result<u64> {
        Ok(self.lock().last_seq)
    }

    async fn purge_events(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut state = self.lock();
        let mut left = limit;
        state.events.retain(|e| {
            if left > 0 && e.timestamp < before {
                left -= 1;
                false
            } else {
                true
            }
        });
        Ok((limit - left) as u64)
    }

    async fn count_events_since(&self, since: Timestamp) -> Result<u64> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| e.timestamp >= since)
            .count() as u64)
    }

    async fn count_events(&self, filter: &EventFilter) -> Result<u64> {
        Ok(self
            .lock()
            .events
            .iter()
            .filter(|e| filter.matches(e))
            .count() as u64)
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        let mut state = self.lock();
        if state.tokens.contains_key(&token.id) {
            return Err(maestro_core::Error::already_exists(
                "token",
                token.id.clone(),
            ));
        }
        state.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        Ok(self.lock().tokens.get(id).cloned())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut tokens: Vec<TokenRecord> = self.lock().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool> {
        let mut state = self.lock();
        match state.tokens.get_mut(id) {
            Some(t) if t.revoked_at.is_none() => {
                t.revoked_at = Some(at);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl SubscriptionStore for MemoryStore {
    async fn insert_subscription(&self, sub: &SubscriptionRecord) -> Result<()> {
        let mut state = self.lock();
        if state.subscriptions.contains_key(&sub.id) {
            return Err(maestro_core::Error::already_exists(
                "subscription",
                sub.id.clone(),
            ));
        }
        state.subscriptions.insert(sub.id.clone(), sub.clone());
        Ok(())
    }

    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>> {
        let mut subs: Vec<SubscriptionRecord> =
            self.lock().subscriptions.values().cloned().collect();
        subs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(subs)
    }

    async fn delete_subscription(&self, id: &str) -> Result<bool> {
        let mut state = self.lock();
        state.subscription_cursors.remove(id);
        Ok(state.subscriptions.remove(id).is_some())
    }

    async fn subscription_cursor(&self, id: &str) -> Result<Option<u64>> {
        let state = self.lock();
        Ok(state
            .subscriptions
            .contains_key(id)
            .then(|| state.subscription_cursors.get(id).copied().unwrap_or(0)))
    }

    async fn set_subscription_cursor(&self, id: &str, seq: u64) -> Result<bool> {
        let mut state = self.lock();
        if !state.subscriptions.contains_key(id) {
            return Ok(false);
        }
        let c = state.subscription_cursors.entry(id.to_owned()).or_default();
        *c = (*c).max(seq);
        Ok(true)
    }
}

#[async_trait]
impl ConfigStore for MemoryStore {
    async fn load_config(&self) -> Result<Option<Value>> {
        Ok(self.lock().config.clone())
    }

    async fn save_config(&self, config: &Value) -> Result<()> {
        self.lock().config = Some(config.clone());
        Ok(())
    }
}

/// Oldest first: `created_at`, then `task_id`.
fn sort_tasks(tasks: &mut [TaskRecord]) {
    tasks.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
}

impl State {
    /// Apply `change` to every task matching `pick`; the changed tasks, oldest first.
    fn update_tasks(
        &mut self,
        pick: impl Fn(&TaskRecord) -> bool,
        change: impl Fn(&mut TaskRecord),
    ) -> Vec<TaskRecord> {
        let mut changed: Vec<TaskRecord> = self
            .tasks
            .values_mut()
            .filter(|t| pick(t))
            .map(|t| {
                change(t);
                t.clone()
            })
            .collect();
        sort_tasks(&mut changed);
        changed
    }
}

use maestro_core::ports::DEFAULT_TASK_LEASE_MS;

#[async_trait]
impl TaskStore for MemoryStore {
    async fn enqueue_task(&self, task: &TaskRecord) -> Result<()> {
        let mut state = self.lock();
        if state.tasks.contains_key(&task.task_id) {
            return Err(maestro_core::Error::already_exists(
                "task",
                task.task_id.clone(),
            ));
        }
        state.tasks.insert(task.task_id.clone(), task.clone());
        Ok(())
    }

    async fn lease_tasks(
        &self,
        agent_id: &str,
        capabilities: &[String],
        max: usize,
        now: Timestamp,
        lease_ms: u64,
    ) -> Result<Vec<TaskRecord>> {
        let mut state = self.lock();
        let mut queued: Vec<&TaskRecord> = state
            .tasks
            .values()
            .filter(|t| {
                t.agent_id == agent_id
                    && t.status == TaskStatus::Queued
                    && (capabilities.is_empty() || capabilities.contains(&t.capability))
            })
            .collect();
        queued.sort_by(|a, b| (a.created_at, &a.task_id).cmp(&(b.created_at, &b.task_id)));
        let ids: Vec<String> = queued
            .into_iter()
            .take(max)
            .map(|t| t.task_id.clone())
            .collect();
        let mut leased = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(t) = state.tasks.get_mut(id) {
                let ms = if lease_ms == 0 {
                    t.body
                        .get("timeoutMs")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(DEFAULT_TASK_LEASE_MS)
                } else {
                    lease_ms
                };
                t.status = TaskStatus::Leased;
                t.lease_expires_at = Some(now.saturating_add(ms));
                t.updated_at = now;
                leased.push(t.clone());
            }
        }
        Ok(leased)
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        Ok(self.lock().tasks.get(task_id).cloned())
    }

    async fn extend_lease(
        &self,
        task_id: &str,
        agent_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        match self.lock().tasks.get_mut(task_id) {
            Some(t) if t.agent_id == agent_id && t.status == TaskStatus::Leased => {
                t.lease_expires_at = Some(until);
                t.updated_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn finish_task(
        &self,
        task_id: &str,
        status: TaskStatus,
        result: Option<Value>,
        now: Timestamp,
    ) -> Result<bool> {
        crate::check_finish_status(status)?;
        match self.lock().tasks.get_mut(task_id) {
            Some(t) if t.status == TaskStatus::Leased => {
                t.status = status;
                t.result = result;
                t.updated_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<TaskRecord>> {
        Ok(self.lock().update_tasks(
            |t| t.status == TaskStatus::Leased && t.lease_expires_at.is_some_and(|at| at < now),
            |t| {
                t.status = TaskStatus::Expired;
                t.updated_at = now;
            },
        ))
    }

    async fn cancel_task(&self, task_id: &str, now: Timestamp) -> Result<bool> {
        let changed = self.lock().update_tasks(
            |t| t.task_id == task_id && !t.status.is_finished(),
            |t| {
                t.status = TaskStatus::Cancelled;
                t.updated_at = now;
            },
        );
        Ok(!changed.is_empty())
    }

    async fn cancel_agent_tasks(&self, agent_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>> {
        Ok(self.lock().update_tasks(
            |t| t.agent_id == agent_id && !t.status.is_finished(),
            |t| {
                t.status = TaskStatus::Cancelled;
                t.updated_at = now;
            },
        ))
    }

    async fn purge_tasks(&self, before: Timestamp) -> Result<u64> {
        let mut state = self.lock();
        let n = state.tasks.len();
        state
            .tasks
            .retain(|_, t| !(t.status.is_finished() && t.updated_at < before));
        Ok((n - state.tasks.len()) as u64)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire_lease(
        &self,
        execution_id: &str,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<bool> {
        let mut state = self.lock();
        let until = now.saturating_add(ttl_ms);
        match state.leases.get_mut(execution_id) {
            Some((holder, expires_at)) if holder != node_id && *expires_at >= now => Ok(false),
            Some(lease) => {
                *lease = (node_id.to_owned(), until);
                Ok(true)
            }
            None => {
                state
                    .leases
                    .insert(execution_id.to_owned(), (node_id.to_owned(), until));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, execution_id: &str, node_id: &str) -> Result<bool> {
        let mut state = self.lock();
        if state
            .leases
            .get(execution_id)
            .is_some_and(|(holder, _)| holder == node_id)
        {
            state.leases.remove(execution_id);
            return Ok(true);
        }
        Ok(false)
    }
}
