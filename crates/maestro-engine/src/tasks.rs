//! The poll transport (API.md "Agent protocol", pull): a durable task queue
//! that `transport: poll` agents lease work from.
//!
//! - [`TaskQueue`] is the [`Invoker`] of poll agents: a call becomes a task row
//!   (its id is the call's idempotency key, so an attempt re-sent after a
//!   restart finds its task, finished or not) and waits for the agent's answer.
//! - Agents long-poll ([`TaskQueue::poll`]) and lease tasks; a lease lasts the
//!   attempt timeout and a heartbeat extends it. Time in the queue does not
//!   count against the attempt (it does against the workflow's timeout).
//! - A lease that runs out is a failed attempt, `LEASE_EXPIRED` (retryable):
//!   the retry policy re-delivers it as a new task.
//! - Deregistering an agent fails its open tasks with `AGENT_DEREGISTERED`.
//!
//! Answers reach the waiting call through an in-process map; the row is the
//! truth, so nothing is lost across a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::model::{RegisteredAgent, Timestamp};
use maestro_core::ports::{
    Invocation, InvokeError, Invoker, Store, TaskFinish, TaskRecord, TaskStatus,
};
use maestro_core::step_codes;
use maestro_core::{Error, Result};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// How often leases are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Finished tasks are kept this long (answers to repeated `complete` calls, audits).
const KEEP_FINISHED_MS: u64 = 24 * 3600 * 1000;
/// Cluster mode: how often calls waiting here look at their tasks' rows.
const RECHECK_EVERY_MS: u64 = 2_000;
/// Longest long poll.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most tasks one poll may lease.
pub const MAX_TASKS_PER_POLL: usize = 100;

type Answer = std::result::Result<Map<String, Value>, InvokeError>;

/// What a task's agent is told when it heartbeats a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseState {
    pub lease_expires_at: Timestamp,
    pub cancel_requested: bool,
}

/// Why a `complete`/`fail`/`heartbeat` of a task was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("task {0:?} not found")]
    NotFound(String),
    /// The task belongs to another agent (403).
    #[error("task {0:?} belongs to another agent")]
    NotYours(String),
    /// The lease ran out before the answer (409 `LEASE_EXPIRED`).
    #[error("the lease of task {0:?} expired; the answer was recorded and ignored")]
    LeaseExpired(String),
    /// Finished differently already, cancelled, or not leased (409 `INVALID_STATE`).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] Error),
}

#[derive(Default)]
struct Shared {
    waiters: HashMap<String, Vec<oneshot::Sender<Answer>>>,
    agents: HashMap<String, Arc<Notify>>,
    /// Answers that came after their lease ran out (the call was already failed).
    late: u64,
}

/// A row change for the writer, with where its answer goes.
enum Write {
    Enqueue(TaskRecord, oneshot::Sender<Result<bool>>),
    Finish(TaskFinish, oneshot::Sender<Result<bool>>),
}

/// Most row changes the writer puts in one transaction.
const MAX_BATCH: usize = 512;

/// The durable poll-task queue. Cheap to clone.
#[derive(Clone)]
pub struct TaskQueue {
    store: Arc<dyn Store>,
    shared: Arc<Mutex<Shared>>,
    writes: mpsc::UnboundedSender<Write>,
    hook: Arc<std::sync::OnceLock<TaskHook>>,
}

/// What other nodes must hear about (cluster mode): a task queued for an agent
/// (its pollers may wait on another node), a task finished (its call may wait
/// on another node).
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSignal {
    Queued(String),
    Done(String),
}

pub type TaskHook = Arc<dyn Fn(TaskSignal) + Send + Sync>;

/// Group commit of task rows: everything that arrived while the previous
/// transaction ran goes into the next one (one fsync for many tasks).
async fn writer(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut enqueues = Vec::new();
        let mut enqueue_replies = Vec::new();
        let mut finishes = Vec::new();
        let mut finish_replies = Vec::new();
        for w in batch {
            match w {
                Write::Enqueue(t, r) => {
                    enqueues.push(t);
                    enqueue_replies.push(r);
                }
                Write::Finish(f, r) => {
                    finishes.push(f);
                    finish_replies.push(r);
                }
            }
        }
        if !enqueues.is_empty() {
            reply_all(store.enqueue_tasks(&enqueues).await, enqueue_replies);
        }
        if !finishes.is_empty() {
            reply_all(
                store.finish_tasks(&finishes, now_ms()).await,
                finish_replies,
            );
        }
    }
}

fn reply_all(result: Result<Vec<bool>>, replies: Vec<oneshot::Sender<Result<bool>>>) {
    match result {
        Ok(v) => {
            for (r, ok) in replies.into_iter().zip(v) {
                let _ = r.send(Ok(ok));
            }
        }
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

impl std::fmt::Debug for TaskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueue").finish_non_exhaustive()
    }
}

fn error_answer(result: &Option<Value>) -> InvokeError {
    result
        .as_ref()
        .and_then(|r| r.get("error"))
        .and_then(|e| serde_json::from_value::<InvokeError>(e.clone()).ok())
        .unwrap_or_else(|| {
            InvokeError::new(step_codes::AGENT_ERROR, "the agent failed the task", true)
        })
}

/// The answer a finished task stands for.
fn answer_of(t: &TaskRecord) -> Option<Answer> {
    match t.status {
        TaskStatus::Queued | TaskStatus::Leased => None,
        TaskStatus::Completed => Some(Ok(t
            .result
            .as_ref()
            .and_then(|r| r.get("outputs"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default())),
        TaskStatus::Failed => Some(Err(error_answer(&t.result))),
        TaskStatus::Expired => Some(Err(lease_expired(&t.task_id))),
        TaskStatus::Cancelled => Some(Err(InvokeError::new(
            step_codes::CANCELLED,
            format!("task {} was cancelled", t.task_id),
            false,
        ))),
    }
}

fn lease_expired(task_id: &str) -> InvokeError {
    InvokeError::new(
        step_codes::LEASE_EXPIRED,
        format!("the lease of task {task_id} ran out before the agent answered"),
        true,
    )
}

impl TaskQueue {
    /// A queue over `store`; spawns its writer on the current runtime.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store.clone(), rx));
        TaskQueue {
            store,
            shared: Arc::default(),
            hook: Arc::default(),
            writes,
        }
    }

    async fn write(&self, w: impl FnOnce(oneshot::Sender<Result<bool>>) -> Write) -> Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(w(tx))
            .map_err(|_| Error::NotReady("the task queue stopped".into()))?;
        rx.await
            .map_err(|_| Error::NotReady("the task queue stopped".into()))?
    }

    fn notify(&self, agent_id: &str) -> Arc<Notify> {
        self.shared
            .lock()
            .expect("task queue")
            .agents
            .entry(agent_id.to_owned())
            .or_default()
            .clone()
    }

    fn resolve(&self, task_id: &str, answer: Answer) {
        let waiters = self
            .shared
            .lock()
            .expect("task queue")
            .waiters
            .remove(task_id)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }

    /// Answers that arrived after their lease had run out.
    /// Set the hook told about tasks queued and finished here (once).
    pub fn set_hook(&self, hook: TaskHook) {
        let _ = self.hook.set(hook);
    }

    fn signal(&self, s: TaskSignal) {
        if let Some(h) = self.hook.get() {
            h(s);
        }
    }

    /// Wake this node's pollers of `agent_id` (a task was queued elsewhere).
    pub fn wake_agent(&self, agent_id: &str) {
        let n = self
            .shared
            .lock()
            .expect("task queue")
            .agents
            .get(agent_id)
            .cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// A task finished on another node: answer its call if it waits here.
    pub async fn remote_done(&self, task_id: &str) {
        if !self
            .shared
            .lock()
            .expect("task queue")
            .waiters
            .contains_key(task_id)
        {
            return;
        }
        match self.store.get_task(task_id).await {
            Ok(Some(t)) => {
                if let Some(answer) = answer_of(&t) {
                    self.resolve(task_id, answer);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, task = %task_id, "reading a finished task failed"),
        }
    }

    /// Look at every task a call waits for here (signals may have been missed).
    pub async fn recheck_waiters(&self) {
        let ids: Vec<String> = self
            .shared
            .lock()
            .expect("task queue")
            .waiters
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.remote_done(&id).await;
        }
    }

    pub fn late_answers(&self) -> u64 {
        self.shared.lock().expect("task queue").late
    }

    /// Sweep expired leases (and old finished tasks) until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_purge = now_ms();
        let mut last_recheck = now_ms();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            let now = now_ms();
            match self.store.expire_leases(now).await {
                Ok(expired) => {
                    for t in expired {
                        tracing::debug!(task = %t.task_id, agent = %t.agent_id, "lease expired");
                        self.resolve(&t.task_id, Err(lease_expired(&t.task_id)));
                        self.signal(TaskSignal::Done(t.task_id));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "task queue: expiring leases failed"),
            }
            // Cluster mode: a lost signal never leaves a call waiting for long.
            if self.hook.get().is_some() && now.saturating_sub(last_recheck) > RECHECK_EVERY_MS {
                last_recheck = now;
                self.recheck_waiters().await;
            }
            if now.saturating_sub(last_purge) > 60_000 {
                last_purge = now;
                if let Err(e) = self
                    .store
                    .purge_tasks(now.saturating_sub(KEEP_FINISHED_MS))
                    .await
                {
                    tracing::warn!(error = %e, "task queue: purging old tasks failed");
                }
            }
        }
    }

    /// Lease up to `max` tasks of `agent_id`, waiting up to `wait_ms` for one.
    /// Each lease lasts its task's attempt timeout.
    pub async fn poll(
        &self,
        agent_id: &str,
        capabilities: &[String],
        max: usize,
        wait_ms: u64,
        cancel: &CancellationToken,
    ) -> Result<Vec<TaskRecord>> {
        let notify = self.notify(agent_id);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        loop {
            // Registered before looking, so an enqueue in between wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            // Each lease lasts its task's own attempt timeout (`lease_ms` 0).
            let leased = self
                .store
                .lease_tasks(
                    agent_id,
                    capabilities,
                    max.clamp(1, MAX_TASKS_PER_POLL),
                    now,
                    0,
                )
                .await?;
            if !leased.is_empty() {
                return Ok(leased);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = cancel.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    fn own(&self, t: &TaskRecord, agent: Option<&str>) -> std::result::Result<(), TaskError> {
        match agent {
            Some(a) if a != t.agent_id => Err(TaskError::NotYours(t.task_id.clone())),
            _ => Ok(()),
        }
    }

    async fn task(&self, task_id: &str) -> std::result::Result<TaskRecord, TaskError> {
        self.store
            .get_task(task_id)
            .await?
            .ok_or_else(|| TaskError::NotFound(task_id.to_owned()))
    }

    /// The agent's answer. `agent` is the caller's agent binding (None for
    /// admins and operators). Repeating the same answer is accepted.
    pub async fn finish(
        &self,
        task_id: &str,
        agent: Option<&str>,
        answer: Answer,
    ) -> std::result::Result<TaskRecord, TaskError> {
        let t = self.task(task_id).await?;
        self.own(&t, agent)?;
        let (status, result) = match &answer {
            Ok(outputs) => (TaskStatus::Completed, json!({"outputs": outputs})),
            Err(e) => (TaskStatus::Failed, json!({"error": e})),
        };
        let finish = TaskFinish {
            task_id: task_id.to_owned(),
            status,
            result: Some(result.clone()),
        };
        if self.write(|tx| Write::Finish(finish, tx)).await? {
            self.resolve(task_id, answer);
            self.signal(TaskSignal::Done(task_id.to_owned()));
            let mut t = t;
            t.status = status;
            t.result = Some(result);
            return Ok(t);
        }
        // Not leased any more: tell the agent why.
        let t = self.task(task_id).await?;
        match t.status {
            TaskStatus::Expired => {
                self.shared.lock().expect("task queue").late += 1;
                Err(TaskError::LeaseExpired(task_id.to_owned()))
            }
            s if s == status && t.result.as_ref() == Some(&result) => Ok(t),
            TaskStatus::Queued => Err(TaskError::Conflict(format!(
                "task {task_id} is not leased (poll it first)"
            ))),
            s => Err(TaskError::Conflict(format!(
                "task {task_id} is already {}",
                s.as_str()
            ))),
        }
    }

    /// Extend a lease by `extend_ms` (default: the attempt timeout again).
    pub async fn heartbeat(
        &self,
        task_id: &str,
        agent: Option<&str>,
        extend_ms: Option<u64>,
    ) -> std::result::Result<LeaseState, TaskError> {
        let t = self.task(task_id).await?;
        self.own(&t, agent)?;
        match t.status {
            TaskStatus::Leased => {}
            TaskStatus::Cancelled => {
                return Ok(LeaseState {
                    lease_expires_at: t.lease_expires_at.unwrap_or(0),
                    cancel_requested: true,
                });
            }
            TaskStatus::Expired => return Err(TaskError::LeaseExpired(task_id.to_owned())),
            s => {
                return Err(TaskError::Conflict(format!(
                    "task {task_id} is {}, not leased",
                    s.as_str()
                )));
            }
        }
        let timeout = t
            .body
            .get("timeoutMs")
            .and_then(Value::as_u64)
            .unwrap_or(10_000);
        let now = now_ms();
        let until = now + extend_ms.unwrap_or(timeout).clamp(1, 24 * 3600 * 1000);
        if self
            .store
            .extend_lease(task_id, &t.agent_id, until, now)
            .await?
        {
            return Ok(LeaseState {
                lease_expires_at: until,
                cancel_requested: false,
            });
        }
        // Lost a race with the sweep or a cancel.
        let t = self.task(task_id).await?;
        match t.status {
            TaskStatus::Cancelled => Ok(LeaseState {
                lease_expires_at: t.lease_expires_at.unwrap_or(0),
                cancel_requested: true,
            }),
            TaskStatus::Expired => Err(TaskError::LeaseExpired(task_id.to_owned())),
            s => Err(TaskError::Conflict(format!(
                "task {task_id} is {}, not leased",
                s.as_str()
            ))),
        }
    }

    /// Fail the open tasks of a deregistered agent.
    pub async fn agent_deregistered(&self, agent_id: &str) -> Result<usize> {
        let cancelled = self.store.cancel_agent_tasks(agent_id, now_ms()).await?;
        for t in &cancelled {
            self.resolve(
                &t.task_id,
                Err(InvokeError::new(
                    step_codes::AGENT_DEREGISTERED,
                    format!("agent {agent_id} was deregistered"),
                    false,
                )),
            );
            self.signal(TaskSignal::Done(t.task_id.clone()));
        }
        self.shared
            .lock()
            .expect("task queue")
            .agents
            .remove(agent_id);
        Ok(cancelled.len())
    }
}

#[async_trait]
impl Invoker for TaskQueue {
    async fn invoke(&self, agent: &RegisteredAgent, invocation: Invocation) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.shared
            .lock()
            .expect("task queue")
            .waiters
            .entry(invocation.task_id.clone())
            .or_default()
            .push(tx);
        let now = now_ms();
        let mut body = serde_json::to_value(&invocation).unwrap_or_else(|_| json!({}));
        body["traceparent"] = json!(maestro_core::ports::traceparent(
            &invocation.execution_id,
            &invocation.task_id
        ));
        let task = TaskRecord {
            task_id: invocation.task_id.clone(),
            agent_id: agent.id.clone(),
            capability: invocation.capability.clone(),
            execution_id: invocation.execution_id.clone(),
            step_id: invocation.step_id.clone(),
            attempt: invocation.attempt,
            compensation: invocation.compensation,
            body,
            status: TaskStatus::Queued,
            lease_expires_at: None,
            result: None,
            created_at: now,
            updated_at: now,
        };
        let store_error = |e: Error| {
            InvokeError::new(
                step_codes::AGENT_ERROR,
                format!("could not queue the task: {e}"),
                true,
            )
        };
        let task_id = task.task_id.clone();
        match self.write(|tx| Write::Enqueue(task, tx)).await {
            Ok(true) => {}
            // Re-sent after a restart: the task exists, maybe finished.
            Ok(false) => match self.store.get_task(&task_id).await {
                Ok(Some(existing)) => {
                    if let Some(answer) = answer_of(&existing) {
                        self.shared
                            .lock()
                            .expect("task queue")
                            .waiters
                            .remove(&task_id);
                        return answer;
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(store_error(e)),
            },
            Err(e) => return Err(store_error(e)),
        }
        // Every waiting poller wakes and races for the lease (measured faster
        // than waking one per task: the winners take up to `max` at once).
        self.notify(&agent.id).notify_waiters();
        self.signal(TaskSignal::Queued(agent.id.clone()));
        rx.await.unwrap_or_else(|_| {
            Err(InvokeError::new(
                step_codes::AGENT_ERROR,
                "the task queue stopped",
                true,
            ))
        })
    }

    /// The call is no longer wanted: the task is cancelled (a heartbeat answers
    /// `cancelRequested`, a late answer is refused) and the call ends now.
    async fn cancel(&self, _agent: &RegisteredAgent, invocation: &Invocation) {
        match self.store.cancel_task(&invocation.task_id, now_ms()).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, task = %invocation.task_id, "cancelling a task failed")
            }
        }
        self.resolve(
            &invocation.task_id,
            Err(InvokeError::new(
                step_codes::CANCELLED,
                "the execution no longer wants this call",
                false,
            )),
        );
    }
}
