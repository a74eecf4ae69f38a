//! The ports Maestro's engine needs from the outside world: persistence
//! ([`Store`], split into one small trait per aggregate) and agent calls
//! ([`Invoker`]). Adapters implement them (`maestro-store`, `maestro-api`);
//! the engine depends only on these traits.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Result;
use crate::model::{
    Attempt, ChoreographyEvent, EventFilter, EventType, ExecutionStatus, NewEvent, RegisteredAgent,
    StepExecution, Timestamp, Workflow, WorkflowExecution,
};

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// Everything that changes in one group commit: many executions' header rows,
/// step rows and attempt rows, the events they publish, and the execute
/// idempotency keys claimed by the new executions. Committed in one transaction;
/// events get their `seq` in commit order.
///
/// Claims are decided first, in order, inside the transaction (see
/// [`KeyClaim`]): a new execution whose claim is lost is not written at all (its
/// rows, events and lease are dropped, see [`Batch::drop_executions`]), and the
/// rest of the batch commits as usual.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// Execution header rows to upsert (their `stepExecutions` are ignored: steps
    /// are written through `steps`).
    pub executions: Vec<Arc<ExecutionHeader>>,
    /// Step rows to upsert (their `attempts` are ignored: see `attempts`).
    pub steps: Vec<StepRow>,
    /// Attempt rows to upsert.
    pub attempts: Vec<AttemptRow>,
    pub events: Vec<NewEvent>,
    /// Execute idempotency keys to claim (or probe), decided in order; the
    /// answers come back in [`Committed::claims`], in the same order.
    pub claims: Vec<KeyClaim>,
    /// Cluster mode only ([`ClusterStore`]): the execution leases this commit
    /// relies on, checks and changes, in the same transaction.
    pub fence: Option<LeaseFence>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
            && self.steps.is_empty()
            && self.attempts.is_empty()
            && self.events.is_empty()
            && self.claims.is_empty()
            && self.fence.as_ref().is_none_or(LeaseFence::is_empty)
    }

    /// Remove everything of the executions `ids` from the batch: their header,
    /// step and attempt rows, the events they publish and their leases. What a
    /// store does with the new executions whose key claim was lost.
    pub fn drop_executions(&mut self, ids: &HashSet<String>) {
        if ids.is_empty() {
            return;
        }
        self.executions
            .retain(|h| !ids.contains(h.execution.id.as_str()));
        self.steps
            .retain(|r| !ids.contains(r.execution_id.as_str()));
        self.attempts
            .retain(|r| !ids.contains(r.execution_id.as_str()));
        self.events
            .retain(|e| e.execution_id.as_deref().is_none_or(|id| !ids.contains(id)));
        if let Some(f) = &mut self.fence {
            for list in [&mut f.held, &mut f.release, &mut f.queued] {
                list.retain(|id| !ids.contains(id.as_str()));
            }
        }
    }

    /// The new executions of this batch that lost their key claim, given the
    /// store's answers to [`claims`](Self::claims) (in order).
    pub fn losers(&self, answers: &[Claimed]) -> HashSet<String> {
        self.claims
            .iter()
            .zip(answers)
            .filter_map(|(c, a)| match (&c.execution_id, a) {
                (Some(id), Claimed::Taken { .. }) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }
}

/// What a commit made durable: the batch's events with their `seq` (without
/// those of executions dropped for a lost claim), and the answer to each of the
/// batch's [`KeyClaim`]s, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Committed {
    pub events: Vec<ChoreographyEvent>,
    pub claims: Vec<Claimed>,
}

/// How long an execute `Idempotency-Key` claim lasts at least (24 h).
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// A new execution's claim of an execute `Idempotency-Key` (scoped to the
/// workflow), decided inside the commit that creates the execution, the same
/// way on every store and across nodes sharing one:
///
/// - no claim of the key exists: it is inserted, pointing at `execution_id`
///   ([`Claimed::Won`]);
/// - a claim exists and has **expired** — its `expires_at` is at or before
///   `now` **and** its execution finished (or no longer exists) — it is
///   re-pointed at `execution_id`, with this claim's hash and times (`Won`);
/// - otherwise the claim is live and holds the key: [`Claimed::Taken`] with
///   its execution and request hash, and the new execution is not written.
///
/// A *probe* (`execution_id: None`) writes nothing: `Taken` when a live claim
/// holds the key, else [`Claimed::Free`]. Claims of one batch are decided in
/// order, so a second claim of a key in the same batch finds the first.
/// `now` comes from the engine's clock (never the database's), which is what
/// lets tests move time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub workflow_id: String,
    pub key: String,
    /// Hash of the execute request, to tell a replay from a reuse.
    pub request_hash: String,
    /// The new execution the batch creates for this request; `None` for a probe.
    pub execution_id: Option<String>,
    /// The claim's `created_at`, and the time expiry is judged at.
    pub now: Timestamp,
    /// When the claim may expire (once its execution finished too):
    /// `now` + [`IDEMPOTENCY_TTL_MS`].
    pub expires_at: Timestamp,
}

/// The stored claim a [`KeyClaim`] meets, as the store reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldClaim {
    pub execution_id: String,
    pub request_hash: String,
    pub expires_at: Timestamp,
    /// Whether its execution is `pending`, `running` or `paused`.
    pub unfinished: bool,
}

impl KeyClaim {
    /// The rule of [`KeyClaim`], for stores that decide in code: what this
    /// claim gets against `held` (the key's stored claim, if any).
    pub fn decide(&self, held: Option<&HeldClaim>) -> Claimed {
        match held {
            Some(h) if self.execution_id.as_deref() == Some(h.execution_id.as_str()) => {
                Claimed::Won
            }
            Some(h) if h.expires_at > self.now || h.unfinished => Claimed::Taken {
                execution_id: h.execution_id.clone(),
                request_hash: h.request_hash.clone(),
            },
            _ if self.execution_id.is_some() => Claimed::Won,
            _ => Claimed::Free,
        }
    }

    /// The record stored for a claim that won.
    pub fn record(&self) -> Option<IdempotencyRecord> {
        Some(IdempotencyRecord {
            workflow_id: self.workflow_id.clone(),
            key: self.key.clone(),
            request_hash: self.request_hash.clone(),
            execution_id: self.execution_id.clone()?,
            created_at: self.now,
            expires_at: self.expires_at,
        })
    }
}

/// A store's answer to a [`KeyClaim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key now points at this claim's execution.
    Won,
    /// A live claim holds the key: its execution and the hash of its request.
    Taken {
        execution_id: String,
        request_hash: String,
    },
    /// A probe found no live claim.
    Free,
}

/// The lease side of a cluster node's commit (docs/ARCHITECTURE.md "Cluster mode").
///
/// Within the committing transaction, before anything else: every lease of
/// `held` must belong to `node_id` (each is renewed to `expires_at`), or the
/// whole commit fails and nothing is written: a node that lost an execution to
/// another node can never overwrite it. Then the leases of `release` are
/// dropped (finished executions free their slot in the same commit that
/// finishes them) and `queued` leases are created for new executions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseFence {
    pub node_id: String,
    pub expires_at: Timestamp,
    pub held: Vec<String>,
    pub release: Vec<String>,
    pub queued: Vec<String>,
}

impl LeaseFence {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.release.is_empty() && self.queued.is_empty()
    }
}

/// The message of the error a commit fails with when its fence does not hold.
pub const LEASE_LOST: &str = "an execution lease of this node is held by another node";

/// The execution row: a [`WorkflowExecution`] without its step executions, plus
/// what queries need (the workflow's tags, the queue position).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionHeader {
    /// `step_executions` is left empty here.
    pub execution: WorkflowExecution,
    pub workflow_tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub execution_id: String,
    /// Position of the step in the workflow (keeps `stepExecutions` in order).
    pub position: u32,
    /// `attempts` is ignored: attempts are rows of their own.
    pub step: StepExecution,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub execution_id: String,
    pub step_id: String,
    pub attempt: Attempt,
}

/// A stored claim of an execute `Idempotency-Key`, scoped to the workflow
/// (see [`KeyClaim`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub workflow_id: String,
    pub key: String,
    /// Hash of the request body, to tell a replay from a reuse.
    pub request_hash: String,
    pub execution_id: String,
    pub created_at: Timestamp,
    /// The claim lasts until then, and after that until its execution finished.
    pub expires_at: Timestamp,
}

/// Filters of `GET /maestro/executions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionQuery {
    pub workflow_id: Option<String>,
    /// Empty: any status.
    pub statuses: Vec<ExecutionStatus>,
    /// Executions with a step that ran on this agent.
    pub agent_id: Option<String>,
    /// Executions of workflows carrying every one of these tags.
    pub tags: Vec<String>,
    pub correlation_id: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub limit: usize,
    pub offset: usize,
}

/// A page of results and the number of all that match.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// How to pick a page of the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOrder {
    /// The first `limit` matching events with `seq > filter.after` (ascending).
    Ascending,
    /// The newest `limit` matching events, returned in ascending seq order.
    Newest,
}

/// Counts of executions by status, for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionStats {
    pub by_status: Vec<(ExecutionStatus, u64)>,
    /// Sum and count of wall times (ms) of finished executions.
    pub finished_time_sum_ms: u64,
    pub finished_count: u64,
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Insert or replace an agent (its `inboundSecret` included).
    async fn put_agent(&self, agent: &RegisteredAgent) -> Result<()>;
    /// `true` if it existed.
    async fn delete_agent(&self, agent_id: &str) -> Result<bool>;
    async fn get_agent(&self, agent_id: &str) -> Result<Option<RegisteredAgent>>;
    /// All agents (the registry caches them in memory).
    async fn list_agents(&self) -> Result<Vec<RegisteredAgent>>;
}

#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Store a new revision. `Error::AlreadyExists` if that (id, revision) exists,
    /// which is how two concurrent updates are told apart.
    async fn insert_workflow_revision(&self, workflow: &Workflow) -> Result<()>;
    /// The latest revision, or the given one. Deleted workflows are not found.
    async fn get_workflow(&self, id: &str, revision: Option<u64>) -> Result<Option<Workflow>>;
    /// Latest revisions, ordered by id; `tags`: workflows carrying all of them.
    async fn list_workflows(
        &self,
        tags: &[String],
        limit: usize,
        offset: usize,
    ) -> Result<Page<Workflow>>;
    /// Hide a workflow (its revisions stay for executions that pinned them).
    /// `true` if it existed.
    async fn delete_workflow(&self, id: &str) -> Result<bool>;
}

#[async_trait]
pub trait ExecutionStore: Send + Sync {
    /// Commit a batch in one transaction (one fsync): first its key claims
    /// (dropping the new executions that lost theirs), then the rows and
    /// events. Returns the events with their `seq` assigned, in order, and the
    /// answer to each claim.
    async fn commit(&self, batch: Batch) -> Result<Committed>;
    /// One execution with its steps and their attempts.
    async fn get_execution(&self, id: &str) -> Result<Option<WorkflowExecution>>;
    /// Newest first.
    async fn query_executions(&self, query: &ExecutionQuery) -> Result<Page<WorkflowExecution>>;
    /// Every execution that is `pending`, `running` or `paused` (to resume after a
    /// restart), oldest first, with steps and attempts.
    async fn unfinished_executions(&self) -> Result<Vec<WorkflowExecution>>;
    async fn execution_stats(&self) -> Result<ExecutionStats>;
    /// The stored claim of a key, live or expired (for inspection: claims are
    /// decided by [`commit`](Self::commit)).
    async fn get_idempotency_key(
        &self,
        workflow_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>>;
    /// Whether any execution of the workflow is pending, running or paused.
    async fn has_active_executions(&self, workflow_id: &str) -> Result<bool>;
    /// Retention: delete up to `limit` finished executions (completed, failed,
    /// rolled back, cancelled) that finished before `before`, oldest first,
    /// with their steps, attempts and idempotency keys; the number deleted.
    /// Unfinished executions are never deleted, nor those a live key claim
    /// points at (`expires_at` after `now`): a replay of the key answers them.
    async fn purge_executions(
        &self,
        before: Timestamp,
        now: Timestamp,
        limit: usize,
    ) -> Result<u64>;
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Append events outside an execution batch (registry, API). Same seq rules.
    async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>>;
    async fn query_events(
        &self,
        filter: &EventFilter,
        order: EventOrder,
        limit: usize,
    ) -> Result<Vec<ChoreographyEvent>>;
    /// The highest committed seq (0 when empty).
    async fn last_seq(&self) -> Result<u64>;
    /// Events with timestamp >= `since` (for throughput).
    async fn count_events_since(&self, since: Timestamp) -> Result<u64>;
    /// How many events match `filter` (all of them, for a list's `total`).
    async fn count_events(&self, filter: &EventFilter) -> Result<u64>;
    /// Retention: delete up to `limit` events whose `timestamp` is before
    /// `before`, lowest seq first; the number deleted. Seqs are never reused:
    /// `last_seq` and the next appended seq are unchanged.
    async fn purge_events(&self, before: Timestamp, limit: usize) -> Result<u64>;
}

/// A stored API token: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub name: String,
    /// SHA-256 of the secret. Never serialized.
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// `Error::AlreadyExists` on a duplicate id.
    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Mark revoked; `true` if it existed and was not revoked yet.
    async fn revoke_token(&self, id: &str, at: Timestamp) -> Result<bool>;
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRecord {
    pub id: String,
    pub event_types: Vec<EventType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
    pub url: String,
    /// The subscription's secret. Never serialized.
    #[serde(skip)]
    pub secret: String,
    pub created_at: Timestamp,
}

#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    async fn insert_subscription(&self, sub: &SubscriptionRecord) -> Result<()>;
    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>>;
    async fn delete_subscription(&self, id: &str) -> Result<bool>;
    /// The seq of the last event delivered (or given up on) for the
    /// subscription; `None` if it does not exist.
    async fn subscription_cursor(&self, id: &str) -> Result<Option<u64>>;
    /// Move the cursor forward to `seq` (never back); `false` if the
    /// subscription does not exist.
    async fn set_subscription_cursor(&self, id: &str, seq: u64) -> Result<bool>;
}

#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// The runtime config keys that were PATCHed, as a JSON object.
    async fn load_config(&self) -> Result<Option<Value>>;
    async fn save_config(&self, config: &Value) -> Result<()>;
}

/// Where a poll task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Leased,
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Leased,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Expired,
        TaskStatus::Cancelled,
    ];

    /// The serialized name (`queued`, `leased`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Leased => "leased",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Expired => "expired",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    /// Parse [`as_str`](Self::as_str)'s names.
    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Completed, Failed, Expired or Cancelled: the task changes no more.
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Leased)
    }
}

/// A poll task: one call waiting for (or held by) a `transport: poll` agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub task_id: String,
    pub agent_id: String,
    pub capability: String,
    pub execution_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub compensation: bool,
    /// The push body of API.md "Agent protocol" (what `tasks/poll` hands out).
    pub body: Value,
    pub status: TaskStatus,
    pub lease_expires_at: Option<Timestamp>,
    /// Outputs or error of a finished task.
    pub result: Option<Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One task's answer, for [`TaskStore::finish_tasks`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFinish {
    pub task_id: String,
    /// Completed or Failed.
    pub status: TaskStatus,
    pub result: Option<Value>,
}

/// Lease length of a task without `timeoutMs` in its body.
pub const DEFAULT_TASK_LEASE_MS: u64 = 10_000;

/// The durable queue of poll tasks (API.md "Agent protocol", pull transport).
///
/// Life of a task: Queued → Leased → Completed | Failed | Expired, and Queued or
/// Leased → Cancelled. Every transition sets `updated_at` to the given `now`.
/// Lists of tasks are answered oldest first (`created_at`, then `task_id`).
/// Only the status decides: a lease past its deadline that `expire_leases` has
/// not swept yet can still be extended or finished (the sweep and the finish
/// race on the row; exactly one wins).
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// `Error::AlreadyExists` on a duplicate task id.
    async fn enqueue_task(&self, task: &TaskRecord) -> Result<()>;
    /// Enqueue several tasks at once (one transaction where the backend has
    /// them); per task `true` if it was inserted, `false` if a task with its
    /// id existed already.
    async fn enqueue_tasks(&self, tasks: &[TaskRecord]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(match self.enqueue_task(t).await {
                Ok(()) => true,
                Err(crate::Error::AlreadyExists { .. }) => false,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
    /// Atomically lease up to `max` queued tasks of `agent_id` (oldest first; only the
    /// given capabilities when not empty): status Leased, lease_expires_at = now + lease_ms,
    /// or with `lease_ms == 0` now + each task's own `body.timeoutMs` (the attempt
    /// timeout; [`DEFAULT_TASK_LEASE_MS`] when absent).
    /// Two concurrent callers never get the same task.
    async fn lease_tasks(
        &self,
        agent_id: &str,
        capabilities: &[String],
        max: usize,
        now: Timestamp,
        lease_ms: u64,
    ) -> Result<Vec<TaskRecord>>;
    async fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>>;
    /// Extend a leased task's lease (only while Leased by that agent); `false` otherwise.
    async fn extend_lease(
        &self,
        task_id: &str,
        agent_id: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool>;
    /// Leased → Completed/Failed with its result; `false` if it was not Leased (finished, expired...).
    /// `Error::InvalidState` when `status` is neither Completed nor Failed.
    async fn finish_task(
        &self,
        task_id: &str,
        status: TaskStatus,
        result: Option<Value>,
        now: Timestamp,
    ) -> Result<bool>;
    /// [`finish_task`](Self::finish_task) for several tasks at once (one
    /// transaction where the backend has them); the answers in order.
    async fn finish_tasks(&self, finishes: &[TaskFinish], now: Timestamp) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(finishes.len());
        for f in finishes {
            out.push(
                self.finish_task(&f.task_id, f.status, f.result.clone(), now)
                    .await?,
            );
        }
        Ok(out)
    }
    /// Every Leased task whose lease ended before `now` becomes Expired; returned.
    async fn expire_leases(&self, now: Timestamp) -> Result<Vec<TaskRecord>>;
    /// A Queued or Leased task becomes Cancelled (its call is no longer wanted);
    /// `false` if it was finished already or unknown.
    async fn cancel_task(&self, task_id: &str, now: Timestamp) -> Result<bool>;
    /// Queued or Leased tasks of the agent become Cancelled (agent deregistered); returned.
    async fn cancel_agent_tasks(&self, agent_id: &str, now: Timestamp) -> Result<Vec<TaskRecord>>;
    /// Finished tasks (Completed/Failed/Expired/Cancelled) updated before `before` are deleted; the count.
    async fn purge_tasks(&self, before: Timestamp) -> Result<u64>;
}

/// Named leases, one row each: `maestro serve` on SQLite holds `maestro:server`
/// so that a second server on the same database is refused (docs/ARCHITECTURE.md
/// "Cluster mode" for the execution leases of a cluster, which are
/// [`ClusterStore`]'s). A lease whose `expires_at` is before `now` has lapsed and
/// may be taken over; `expires_at = now + ttl_ms`.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Take (or renew) the lease `execution_id` for `node_id` when it is free, expired,
    /// or already held by `node_id`; `true` when `node_id` holds it afterwards.
    async fn acquire_lease(
        &self,
        execution_id: &str,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<bool>;
    /// `true` if `node_id` held it.
    async fn release_lease(&self, execution_id: &str, node_id: &str) -> Result<bool>;
}

/// What several nodes on one database coordinate through (docs/ARCHITECTURE.md
/// "Cluster mode"); implemented by the PostgreSQL store only. Execution leases
/// are either *queued* (a pending execution waiting for a slot on its node)
/// or *active* (a running or paused execution: one of the cluster's
/// `maxConcurrentWorkflows` slots). Lease names under `maestro:` (leader
/// election, the single-server guard) are never execution leases.
#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// Drop every execution lease of `node_id` (a restarted or fenced node),
    /// so that its executions can be claimed again at once; the number dropped.
    async fn release_node_leases(&self, node_id: &str) -> Result<u64>;
    /// Drop the leases of `ids` that `node_id` holds; the number dropped.
    async fn release_leases(&self, node_id: &str, ids: &[String]) -> Result<u64>;
    /// Renew every execution lease of `node_id`; the number renewed.
    async fn renew_node_leases(&self, node_id: &str, now: Timestamp, ttl_ms: u64) -> Result<u64>;
    /// The execution leases `node_id` holds.
    async fn node_leases(&self, node_id: &str) -> Result<Vec<String>>;
    /// Turn queued leases of `node_id` among `ids` into active ones, in the
    /// order given, while the whole cluster holds fewer than `max_active`
    /// active leases (serialized cluster-wide); the ids activated.
    async fn activate_leases(
        &self,
        node_id: &str,
        ids: &[String],
        max_active: u64,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<Vec<String>>;
    /// Claim, oldest first, up to `limit` unfinished executions that have no
    /// lease or whose lease lapsed before `now` (`FOR UPDATE SKIP LOCKED`: two
    /// nodes never claim the same one). An active lease stays active; a new one
    /// is active unless the execution is still pending. `(id, active)`.
    async fn claim_orphans(
        &self,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, bool)>>;
    /// Take (or renew) a `maestro:` lease such as the leader's: see
    /// [`LeaseStore::acquire_lease`].
    async fn acquire_named_lease(
        &self,
        name: &str,
        node_id: &str,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Result<bool>;
    /// Give a `maestro:` lease up; `true` if `node_id` held it.
    async fn release_named_lease(&self, name: &str, node_id: &str) -> Result<bool>;
    /// Send a signal to every node (this one included).
    async fn signal(&self, payload: &str) -> Result<()>;
    /// Start receiving signals.
    async fn listen(&self) -> Result<Box<dyn SignalListener>>;
}

/// Signals sent by [`ClusterStore::signal`]. Signals are wake-ups, never the
/// truth: one can be lost, and a receiver re-reads the store after a gap.
#[async_trait]
pub trait SignalListener: Send {
    /// The next signal's payload; `Ok(None)` when the connection was lost and
    /// re-established (signals may have been missed meanwhile).
    async fn recv(&mut self) -> Result<Option<String>>;
}

/// The whole persistence port.
pub trait Store:
    AgentStore
    + WorkflowStore
    + ExecutionStore
    + EventStore
    + TokenStore
    + SubscriptionStore
    + ConfigStore
    + TaskStore
    + LeaseStore
{
}

impl<T> Store for T where
    T: AgentStore
        + WorkflowStore
        + ExecutionStore
        + EventStore
        + TokenStore
        + SubscriptionStore
        + ConfigStore
        + TaskStore
        + LeaseStore
{
}

// ---------------------------------------------------------------------------
// Invoker
// ---------------------------------------------------------------------------

/// One call of a capability on an agent (API.md "Agent protocol" push body).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub task_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub capability: String,
    pub inputs: Map<String, Value>,
    pub correlation_id: String,
    /// Wall-clock deadline of this attempt (ms since epoch).
    pub deadline: Timestamp,
    pub timeout_ms: u64,
    /// `<executionId>:<stepId>:<attempt>`, or `<executionId>:<stepId>:compensate:<attempt>`.
    #[serde(skip)]
    pub idempotency_key: String,
    #[serde(skip)]
    pub compensation: bool,
}

impl Invocation {
    pub fn idempotency_key_for(
        execution_id: &str,
        step_id: &str,
        attempt: u32,
        compensation: bool,
    ) -> String {
        if compensation {
            format!("{execution_id}:{step_id}:compensate:{attempt}")
        } else {
            format!("{execution_id}:{step_id}:{attempt}")
        }
    }
}

/// The W3C `traceparent` of a call: `00-<trace id>-<span id>-01`.
///
/// The trace id comes from the execution id (its 32 hex digits when it is
/// `exec_<32 hex>`, else a hash of it), so every step and retry of one
/// execution is one trace, also across restarts; the span id is a hash of the
/// task id, one per attempt.
pub fn traceparent(execution_id: &str, task_id: &str) -> String {
    format!(
        "00-{}-{:016x}-01",
        trace_id(execution_id),
        nonzero64(fnv1a_64(task_id.as_bytes()))
    )
}

fn trace_id(execution_id: &str) -> String {
    let raw = execution_id.strip_prefix("exec_").unwrap_or(execution_id);
    let hex = raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit());
    // All zeros is the "invalid" trace id of the W3C spec.
    if hex && raw.bytes().any(|b| b != b'0') {
        return raw.to_ascii_lowercase();
    }
    let h = fnv1a_128(execution_id.as_bytes());
    format!("{:032x}", if h == 0 { 1 } else { h })
}

/// FNV-1a: stable across builds and platforms (unlike `std`'s hasher), which
/// is what keeps a trace id the same after a restart.
fn fnv1a_64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn fnv1a_128(data: &[u8]) -> u128 {
    data.iter()
        .fold(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d, |h, &b| {
            (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b)
        })
}

/// All zeros is the "invalid" span id of the W3C spec.
fn nonzero64(h: u64) -> u64 {
    if h == 0 { 1 } else { h }
}

/// Why a call failed. `retryable` decides whether the retry policy applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[error("{code}: {message}")]
pub struct InvokeError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl InvokeError {
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        InvokeError {
            code: code.into(),
            message: message.into(),
            retryable,
            details: None,
        }
    }
}

/// Calls an agent's capability and returns its outputs.
#[async_trait]
pub trait Invoker: Send + Sync {
    async fn invoke(
        &self,
        agent: &RegisteredAgent,
        invocation: Invocation,
    ) -> std::result::Result<Map<String, Value>, InvokeError>;

    /// Best-effort notice that a call in flight is no longer wanted.
    async fn cancel(&self, _agent: &RegisteredAgent, _invocation: &Invocation) {}
}

// ---------------------------------------------------------------------------
// Outbound HTTP
// ---------------------------------------------------------------------------

/// Why an outbound POST did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutboundError {
    /// The URL's host is not allowed by `outboundAllowList` (never retried).
    #[error("destination refused by the outbound allow-list: {0}")]
    Refused(String),
    /// Bad URL (never retried).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Connection error, timeout or a non-2xx answer (may be retried).
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// POSTs JSON to URLs outside the process (callbacks, webhooks), enforcing the
/// outbound allow-list.
#[async_trait]
pub trait Outbound: Send + Sync {
    /// One attempt; `Ok(status)` for a 2xx answer.
    async fn post_json(
        &self,
        url: &str,
        body: &Value,
        headers: &[(String, String)],
        timeout_ms: u64,
    ) -> std::result::Result<u16, OutboundError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_status_names_match_serde() {
        for status in TaskStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().to_owned())
            );
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TaskStatus::parse("nope"), None);
        assert!(!TaskStatus::Leased.is_finished());
        assert!(TaskStatus::Expired.is_finished());
    }
}
