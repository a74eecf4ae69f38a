//! The Workflow Executor: performs what the state machine decides.
//!
//! One task (the *loop*) owns every live [`ExecutionState`]. Each turn it takes
//! everything that arrived (agent answers, timers, and the mutating requests as
//! typed commands: execute, cancel/pause/resume, events to append), applies each
//! input to its execution, then commits all the resulting row changes and events
//! of all executions in **one store transaction** (group commit: one fsync for
//! the batch), and only then performs the actions: publish the committed events,
//! answer the callers, send the next calls, arm timers. "Step N completed" and
//! "step N+1 dispatched" are therefore one commit, and nothing is acknowledged
//! or published before it is durable.
//!
//! Nobody pre-checks a command: the state machine decides whether a control
//! request applies (a refusal is an [`Action::Refused`], answered after the
//! turn's commit), and the store decides an execute `Idempotency-Key` inside the
//! commit that creates the execution ([`KeyClaim`]). A new execution with a key
//! does not start before that commit says its claim won; one whose claim lost
//! was not written and is dropped, and its caller is answered with the
//! execution holding the key (or `IDEMPOTENCY_KEY_REUSED`).
//!
//! Calls run as their own tasks (routing, input check, per-attempt timeout,
//! late-answer recording) and report back to the loop through its channel.

mod calls;
mod cluster;
mod ownership;
mod timers;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use maestro_core::choreography::{CelBudget, ConditionError, WorkflowPlan};
use maestro_core::machine::ControlOp;
use maestro_core::machine::{Action, Env, ExecutionState, Input, Refusal, TimerKey};
use maestro_core::model::{
    ChoreographyEvent, ExecutionContext, ExecutionStatus, MaestroConfig, NewEvent, StepExecution,
    StepMap, Timestamp, Workflow, WorkflowExecution,
};
use maestro_core::ports::{
    AttemptRow, Batch, Claimed, ClusterStore, Committed, ExecutionHeader, IDEMPOTENCY_TTL_MS,
    InvokeError, Invoker, KeyClaim, Outbound, StepRow, Store,
};
use maestro_core::{Error, Result};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::config::ConfigHandle;
use crate::eventbus::EventBus;
use crate::registry::Registry;

pub use calls::CallEnv;
pub(crate) use cluster::Leased;
pub(crate) use ownership::{Alone, LeaseMsg, Ownership};
use timers::Timers;

/// What the executor needs.
pub struct ExecutorOptions {
    pub store: Arc<dyn Store>,
    pub invoker: Arc<dyn Invoker>,
    pub registry: Registry,
    pub bus: EventBus,
    pub config: ConfigHandle,
    pub catalog: Catalog,
    /// For the `callback` error handler; `None` refuses callbacks.
    pub outbound: Option<Arc<dyn Outbound>>,
    /// Bound of the FIFO queue of pending executions (`QUEUE_FULL` beyond).
    pub max_queued: usize,
    /// A step's outputs above this size fail it with `OUTPUT_TOO_LARGE`.
    pub max_output_bytes: usize,
    /// How long shutdown waits for calls in flight.
    pub drain_timeout_ms: u64,
    /// The work one CEL condition may do (`Limits::cel`).
    pub cel_budget: CelBudget,
}

/// What the executor needs to share a database with other nodes.
pub struct ExecutorCluster {
    pub store: Arc<dyn ClusterStore>,
    pub node_id: String,
    pub lease_ttl_ms: u64,
    /// Committed events go to the node's event tailer (which publishes the
    /// whole log in seq order) instead of straight to the bus.
    pub events: mpsc::UnboundedSender<Vec<ChoreographyEvent>>,
}

/// An execute request, after the workflow was resolved.
#[derive(Debug, Clone, Default)]
pub struct ExecuteRequest {
    pub inputs: Map<String, Value>,
    pub correlation_id: Option<String>,
    pub parent_execution_id: Option<String>,
    /// `Idempotency-Key` with the hash of the request it came with.
    pub idempotency: Option<(String, String)>,
}

/// The answer to an execute request.
#[derive(Debug, Clone)]
pub enum Executed {
    Created(WorkflowExecution),
    /// Same `Idempotency-Key` seen before: that execution's id.
    Existing(String),
}

#[derive(Debug, Clone)]
pub enum Control {
    Cancel(Option<String>),
    Pause,
    Resume,
}

impl Control {
    pub fn op(&self) -> ControlOp {
        match self {
            Control::Cancel(_) => ControlOp::Cancel,
            Control::Pause => ControlOp::Pause,
            Control::Resume => ControlOp::Resume,
        }
    }
}

pub(crate) enum Msg {
    Execute {
        id: String,
        workflow: Arc<Workflow>,
        plan: Arc<WorkflowPlan>,
        req: ExecuteRequest,
        reply: oneshot::Sender<Result<Executed>>,
    },
    Control {
        id: String,
        op: Control,
        reply: oneshot::Sender<Result<WorkflowExecution>>,
    },
    CallDone {
        exec_id: String,
        step_id: String,
        attempt: u32,
        compensation: bool,
        agent_id: Option<String>,
        outcome: std::result::Result<Map<String, Value>, InvokeError>,
    },
    CallbackDone {
        exec_id: String,
        step_id: String,
        delivered: bool,
    },
    Append {
        events: Vec<NewEvent>,
        reply: oneshot::Sender<Result<Vec<ChoreographyEvent>>>,
    },
    Wait {
        id: String,
        reply: oneshot::Sender<()>,
    },
    /// From the services of the executor's [`Ownership`] (a cluster's
    /// leases).
    Lease(LeaseMsg),
    /// The verdict on a step's CEL condition.
    ConditionDone {
        exec_id: String,
        step_id: String,
        verdict: std::result::Result<bool, ConditionError>,
    },
}

/// An execution claimed from the store, ready to run here.
pub(crate) struct Adopted {
    execution: WorkflowExecution,
    workflow: Arc<Workflow>,
    plan: Arc<WorkflowPlan>,
    active: bool,
}

/// Live counters of the executor.
#[derive(Debug, Default)]
pub struct ExecutorStats {
    pub active: AtomicU64,
    pub queued: AtomicU64,
    /// Timers armed (retries, workflow timeouts, compensation retries) of the
    /// executions live on this node.
    pub timers: AtomicU64,
    pub commits: AtomicU64,
    pub calls_started: AtomicU64,
    pub retries: AtomicU64,
    pub late_results: AtomicU64,
    pub ready: AtomicBool,
    pub failed: AtomicBool,
}

/// How the executor's start went; sent once by [`Executor::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Startup {
    Starting,
    Ready,
    Failed,
}

/// Cheap handle to the running executor.
#[derive(Clone)]
pub struct ExecutorHandle {
    tx: mpsc::UnboundedSender<Msg>,
    stats: Arc<ExecutorStats>,
    startup: tokio::sync::watch::Receiver<Startup>,
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle")
            .field("stats", &self.stats)
            .finish()
    }
}

fn stopped() -> Error {
    Error::NotReady("the executor is not running".into())
}

impl ExecutorHandle {
    pub fn stats(&self) -> &ExecutorStats {
        &self.stats
    }

    /// Resolves once recovery is done (`Ok`) or failed, or the executor
    /// stopped before it was done (`NotReady`).
    pub async fn started(&self) -> Result<()> {
        let mut rx = self.startup.clone();
        match rx.wait_for(|s| *s != Startup::Starting).await {
            Ok(s) if *s == Startup::Ready => Ok(()),
            _ => Err(Error::NotReady(
                "executor failed to start (see logs)".into(),
            )),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    pub async fn execute(
        &self,
        id: String,
        workflow: Arc<Workflow>,
        plan: Arc<WorkflowPlan>,
        req: ExecuteRequest,
    ) -> Result<Executed> {
        self.ask(|reply| Msg::Execute {
            id,
            workflow,
            plan,
            req,
            reply,
        })
        .await?
    }

    /// `Err(NotFound)` when the execution is not live in this executor;
    /// `Err(InvalidState)` when the state machine refused it (nothing changed).
    pub async fn control(&self, id: &str, op: Control) -> Result<WorkflowExecution> {
        self.ask(|reply| Msg::Control {
            id: id.to_owned(),
            op,
            reply,
        })
        .await?
    }

    /// Commit events (outside any execution) and publish them in seq order.
    pub async fn append_events(&self, events: Vec<NewEvent>) -> Result<Vec<ChoreographyEvent>> {
        self.ask(|reply| Msg::Append { events, reply }).await?
    }

    /// Resolves when the execution is no longer live (finished, or unknown).
    pub async fn wait_finished(&self, id: &str) -> Result<()> {
        self.ask(|reply| Msg::Wait {
            id: id.to_owned(),
            reply,
        })
        .await
    }
}

pub(crate) struct Live {
    state: ExecutionState,
    tags: Vec<String>,
    /// Cluster mode: the lease this node holds on it (committed).
    lease: Lease,
    /// Created with an `Idempotency-Key` whose claim is not committed yet: it
    /// does not start until the commit says the claim won.
    unclaimed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    None,
    Queued,
    Active,
}

/// Everything gathered in one turn of the loop, committed together.
#[derive(Default)]
pub(crate) struct Turn {
    touched: Vec<String>,
    touched_set: HashSet<String>,
    actions: Vec<(String, Action)>,
    appends: Vec<(usize, oneshot::Sender<Result<Vec<ChoreographyEvent>>>)>,
    append_events: Vec<NewEvent>,
    execute_replies: Vec<ExecuteAsk>,
    control_replies: Vec<ControlAsk>,
    finished: Vec<String>,
    new_leases: Vec<String>,
}

/// An execute command of the turn, answered after its commit.
struct ExecuteAsk {
    reply: oneshot::Sender<Result<Executed>>,
    /// The new execution; `None` when the request was refused (`refusal`) and
    /// only its key is looked at.
    execution: Option<String>,
    /// The request's `Idempotency-Key`: a claim (with `execution`), or a probe.
    claim: Option<KeyClaim>,
    /// A probe's answer when no live claim holds the key.
    refusal: Option<Error>,
}

/// A control command of the turn: the state it made (committed with the
/// turn), or the machine's refusal.
struct ControlAsk {
    id: String,
    reply: oneshot::Sender<Result<WorkflowExecution>>,
    outcome: std::result::Result<Option<WorkflowExecution>, Refusal>,
}

impl Turn {
    fn touch(&mut self, id: &str) {
        if self.touched_set.insert(id.to_owned()) {
            self.touched.push(id.to_owned());
        }
    }
    fn is_empty(&self) -> bool {
        self.touched.is_empty()
            && self.actions.is_empty()
            && self.appends.is_empty()
            && self.execute_replies.is_empty()
            && self.control_replies.is_empty()
    }
}

/// An execute answer waiting for its commit.
struct ExecuteReply {
    reply: oneshot::Sender<Result<Executed>>,
    /// The answer unless a claim says otherwise: the new execution as
    /// committed, or a probe's refusal.
    answer: Result<Executed>,
    /// The new execution (not for a probe).
    execution: Option<String>,
    /// The claim's index in the batch, its key and its request hash.
    claim: Option<(usize, String, String)>,
}

/// A turn whose batch is being committed: what to do once it is durable.
struct Pending {
    actions: Vec<(String, Action)>,
    appends: Vec<(usize, oneshot::Sender<Result<Vec<ChoreographyEvent>>>)>,
    execute_replies: Vec<ExecuteReply>,
    control_replies: Vec<(
        oneshot::Sender<Result<WorkflowExecution>>,
        Result<WorkflowExecution>,
    )>,
    finished: Vec<String>,
    n_exec_events: usize,
    new_leases: Vec<String>,
}

type CommitTask = tokio::task::JoinHandle<Result<Committed>>;

struct LoopEnv<'a> {
    now: Timestamp,
    config: &'a MaestroConfig,
    registry: &'a Registry,
}

impl Env for LoopEnv<'_> {
    fn now(&self) -> Timestamp {
        self.now
    }
    fn config(&self) -> &MaestroConfig {
        self.config
    }
    fn jitter(&mut self, max: u64) -> u64 {
        rand::random_range(0..=max)
    }
    fn compensation_for(&self, agent_id: &str, capability: &str) -> Option<String> {
        self.registry.read(|r| {
            r.get_agent(agent_id)
                .and_then(|a| a.compensation_for(capability))
        })
    }
}

/// The executor service: build with [`Executor::new`], then `run(cancel)`.
/// `O` is how it owns executions: alone on the store, or through leases.
pub(crate) struct Executor<O: Ownership> {
    opts: ExecutorOptions,
    rx: mpsc::UnboundedReceiver<Msg>,
    stats: Arc<ExecutorStats>,
    /// Tells [`ExecutorHandle::started`] how the start went.
    startup: tokio::sync::watch::Sender<Startup>,
    live: HashMap<String, Live>,
    queue: VecDeque<String>,
    active: usize,
    timers: Timers,
    waiters: HashMap<String, Vec<oneshot::Sender<()>>>,
    calls: calls::InFlight,
    call_env: Arc<CallEnv>,
    /// Shutting down: answers are still committed, but no new call is sent (the
    /// committed attempt is re-sent, same key, at the next start).
    draining: bool,
    /// Alone, or the lease state of a cluster node.
    own: O,
    /// CEL conditions evaluated at once, on blocking threads: one per core, so that
    /// slow conditions cannot take every thread (nor the loop's).
    cel_slots: Arc<tokio::sync::Semaphore>,
}

const MAX_INPUTS_PER_TURN: usize = 4096;

impl<O: Ownership> Executor<O> {
    pub(crate) fn new(opts: ExecutorOptions, own: O) -> (Executor<O>, ExecutorHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ExecutorStats::default());
        let call_env = Arc::new(CallEnv {
            tx: tx.clone(),
            registry: opts.registry.clone(),
            invoker: opts.invoker.clone(),
            outbound: opts.outbound.clone(),
            max_output_bytes: opts.max_output_bytes,
            stats: stats.clone(),
        });
        let (startup, startup_rx) = tokio::sync::watch::channel(Startup::Starting);
        let handle = ExecutorHandle {
            tx: tx.clone(),
            stats: stats.clone(),
            startup: startup_rx,
        };
        let ex = Executor {
            opts,
            own,
            startup,
            rx,
            stats,
            live: HashMap::new(),
            queue: VecDeque::new(),
            active: 0,
            timers: Timers::default(),
            waiters: HashMap::new(),
            calls: calls::InFlight::default(),
            call_env,
            draining: false,
            cel_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        };
        (ex, handle)
    }

    /// Resume unfinished executions, then serve until `cancel`; then stop taking
    /// new work, wait up to the drain timeout for calls in flight, and return.
    pub async fn run(mut self, cancel: CancellationToken) {
        let recovered = O::start(&mut self, &cancel).await;
        if let Err(e) = recovered {
            tracing::error!(error = %e, "executor recovery failed");
            self.stats.failed.store(true, Ordering::SeqCst);
            self.startup.send_replace(Startup::Failed);
            return;
        }
        self.stats.ready.store(true, Ordering::SeqCst);
        self.startup.send_replace(Startup::Ready);
        let mut draining_until: Option<tokio::time::Instant> = None;
        let mut buf = Vec::with_capacity(256);
        // Pipelining: while one batch is being committed, inputs keep being applied
        // into the next turn (engine CPU overlaps the store's); batches are still
        // committed, and acted on, strictly one after the other.
        let mut turn = Turn::default();
        let mut inflight: Option<(CommitTask, Pending)> = None;
        // A config change wakes the loop: a raised maxConcurrentWorkflows
        // starts queued executions at once (the config is read every turn).
        let mut config_changes = self.opts.config.watch();
        let mut config_open = true;
        loop {
            let wake_at = self.own.wake_at();
            let next_timer = match (self.timers.next_at(), wake_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(crate::clock::instant_at);
            let drain_tick = draining_until
                .map(|d| d.min(tokio::time::Instant::now() + std::time::Duration::from_millis(20)));
            let mut committed = None;
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if draining_until.is_none() => {
                    draining_until = Some(tokio::time::Instant::now()
                        + std::time::Duration::from_millis(self.opts.drain_timeout_ms));
                    self.stats.ready.store(false, Ordering::SeqCst);
                    self.draining = true;
                    tracing::info!(in_flight = self.calls.len(), "executor draining");
                }
                r = commit_done(&mut inflight) => committed = Some(r),
                n = self.rx.recv_many(&mut buf, MAX_INPUTS_PER_TURN) => {
                    if n == 0 { break; }
                }
                _ = sleep_opt(next_timer) => {}
                _ = sleep_opt(drain_tick) => {}
                changed = config_changes.changed(), if config_open => {
                    config_open = changed.is_ok();
                }
            }
            if let Some(r) = committed {
                let (_, pending) = inflight.take().expect("a commit was in flight");
                if let Err(e) = self.complete(pending, r)
                    && !O::commit_failed(&mut self, &e)
                {
                    tracing::error!(error = %e, "commit failed; the executor stops (state resumes from the store at restart)");
                    self.stats.failed.store(true, Ordering::SeqCst);
                    self.stats.ready.store(false, Ordering::SeqCst);
                    return;
                }
            }
            let now = now_ms();
            let config = self.opts.config.get();
            for msg in buf.drain(..) {
                self.handle(msg, &mut turn, now, &config, draining_until.is_some());
            }
            for (exec_id, key) in self.timers.pop_due(now) {
                self.apply(&exec_id, Input::Timer(key), &mut turn, now, &config);
            }
            if draining_until.is_none() {
                O::fill_slots(&mut self, &mut turn, now, &config);
            }
            if inflight.is_none() && !turn.is_empty() {
                let (batch, pending) = self.prepare(std::mem::take(&mut turn));
                if batch.is_empty() {
                    if let Err(e) = self.complete(pending, Ok(Committed::default())) {
                        tracing::error!(error = %e, "executor stops");
                        return;
                    }
                } else {
                    let store = self.opts.store.clone();
                    let task = tokio::spawn(async move { store.commit(batch).await });
                    inflight = Some((task, pending));
                }
            }
            if let Some(until) = draining_until
                && inflight.is_none()
                && turn.is_empty()
                && (self.calls.only_durable_left() || tokio::time::Instant::now() >= until)
            {
                tracing::info!(abandoned = self.calls.len(), "executor stopped");
                // Everything is committed: the other nodes may take over at once.
                self.own.stopped().await;
                return;
            }
        }
    }

    fn handle(
        &mut self,
        msg: Msg,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
        draining: bool,
    ) {
        match msg {
            Msg::Execute {
                id,
                workflow,
                plan,
                req,
                reply,
            } => {
                if draining {
                    let _ = reply.send(Err(Error::NotReady("shutting down".into())));
                    return;
                }
                let claim = req.idempotency.map(|(key, request_hash)| KeyClaim {
                    workflow_id: workflow.id.clone(),
                    key,
                    request_hash,
                    execution_id: Some(id.clone()),
                    now,
                    expires_at: now.saturating_add(IDEMPOTENCY_TTL_MS),
                });
                let has_slot =
                    self.active < config.max_concurrent_workflows as usize && self.queue.is_empty();
                if !has_slot && self.queue.len() >= self.opts.max_queued {
                    let refusal = Error::QueueFull(self.queue.len());
                    match claim {
                        // A refused request claims no key; but a live claim of
                        // its key answers it (a replay), so the key is probed.
                        Some(mut probe) => {
                            probe.execution_id = None;
                            turn.execute_replies.push(ExecuteAsk {
                                reply,
                                execution: None,
                                claim: Some(probe),
                                refusal: Some(refusal),
                            });
                        }
                        None => {
                            let _ = reply.send(Err(refusal));
                        }
                    }
                    return;
                }
                let tags = workflow.tags.clone();
                let state = ExecutionState::new(
                    id.clone(),
                    workflow,
                    plan,
                    req.inputs,
                    req.correlation_id,
                    req.parent_execution_id,
                    now,
                );
                self.live.insert(
                    id.clone(),
                    Live {
                        state,
                        tags,
                        lease: Lease::None,
                        unclaimed: claim.is_some(),
                    },
                );
                self.queue.push_back(id.clone());
                turn.touch(&id);
                // Owned through a queued lease, where the ownership has leases.
                turn.new_leases.push(id.clone());
                turn.execute_replies.push(ExecuteAsk {
                    reply,
                    execution: Some(id),
                    claim,
                    refusal: None,
                });
                // Slots are filled (FIFO) at the end of the turn.
            }
            Msg::Control { id, op, reply } => {
                if self.live.get(&id).is_none_or(|l| l.unclaimed) {
                    let _ = reply.send(Err(Error::not_found("execution", id)));
                    return;
                }
                let input = match op {
                    Control::Cancel(reason) => Input::Cancel { reason },
                    Control::Pause => Input::Pause,
                    Control::Resume => Input::Resume,
                };
                // The machine decides: the transition, or a refusal that
                // changed nothing. Either is answered after this turn's commit.
                let from = turn.actions.len();
                self.apply(&id, input, turn, now, config);
                let refused = turn.actions[from..].iter().find_map(|(x, a)| match a {
                    Action::Refused(r) if *x == id => Some(r.clone()),
                    _ => None,
                });
                // The state this command made, whatever the rest of the turn
                // does next (all of it is committed together).
                let outcome = match refused {
                    Some(r) => Err(r),
                    None => Ok(self.live.get(&id).map(|l| l.state.execution().clone())),
                };
                turn.control_replies.push(ControlAsk { id, reply, outcome });
            }
            Msg::CallDone {
                exec_id,
                step_id,
                attempt,
                compensation,
                agent_id,
                outcome,
            } => {
                self.calls.finish(&exec_id, &step_id, attempt, compensation);
                let input = if compensation {
                    Input::CompensationFinished {
                        step_id,
                        attempt,
                        agent_id,
                        outcome,
                    }
                } else {
                    Input::AttemptFinished {
                        step_id,
                        attempt,
                        agent_id,
                        outcome,
                    }
                };
                self.apply(&exec_id, input, turn, now, config);
            }
            Msg::CallbackDone {
                exec_id,
                step_id,
                delivered,
            } => {
                self.apply(
                    &exec_id,
                    Input::CallbackFinished { step_id, delivered },
                    turn,
                    now,
                    config,
                );
            }
            Msg::Append { events, reply } => {
                turn.appends.push((events.len(), reply));
                turn.append_events.extend(events);
            }
            Msg::Wait { id, reply } => {
                if self.live.contains_key(&id) {
                    self.waiters.entry(id).or_default().push(reply);
                } else {
                    let _ = reply.send(());
                }
            }
            Msg::Lease(m) => O::lease_msg(self, m, turn, now, config),
            Msg::ConditionDone {
                exec_id,
                step_id,
                verdict,
            } => self.apply(
                &exec_id,
                Input::ConditionEvaluated { step_id, verdict },
                turn,
                now,
                config,
            ),
        }
    }

    /// Apply an input to a live execution and keep its actions for after the commit.
    fn apply(
        &mut self,
        id: &str,
        input: Input,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        let Some(live) = self.live.get_mut(id) else {
            return; // finished meanwhile: a late answer for a closed execution
        };
        let was_pending = live.state.status() == ExecutionStatus::Pending;
        let mut env = LoopEnv {
            now,
            config,
            registry: &self.opts.registry,
        };
        let actions = live.state.apply(input, &mut env);
        let is_pending = live.state.status() == ExecutionStatus::Pending;
        if was_pending && !is_pending {
            // Left the queue (started, or cancelled while queued).
            if let Some(pos) = self.queue.iter().position(|q| q == id) {
                self.queue.remove(pos);
            }
            // It holds a slot now; a cancel straight from the queue releases it
            // again through its `Finished` action below.
            self.active += 1;
        }
        turn.touch(id);
        for a in actions {
            if matches!(a, Action::Finished) {
                self.active = self.active.saturating_sub(1);
                turn.finished.push(id.to_owned());
            }
            turn.actions.push((id.to_owned(), a));
        }
    }

    /// Start queued executions while slots are free on this node (FIFO).
    fn fill_local_slots(&mut self, turn: &mut Turn, now: Timestamp, config: &MaestroConfig) {
        while self.active < config.max_concurrent_workflows as usize {
            let Some(id) = self.queue.front().cloned() else {
                break;
            };
            if self.live.get(&id).is_some_and(|l| l.unclaimed) {
                // Its key claim is being committed: it (and, FIFO, those
                // behind it) start once the commit says it won.
                break;
            }
            self.apply(&id, Input::Start, turn, now, config);
            if self.queue.front() == Some(&id) {
                // Could not start (should not happen): drop it from the queue to avoid spinning.
                self.queue.pop_front();
            }
        }
        self.stats
            .active
            .store(self.active as u64, Ordering::Relaxed);
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    /// Take the rows of everything the turn touched and the events it published:
    /// the batch to commit, and what to do once it is committed. Answers are
    /// snapshotted now, so they show exactly what this batch makes durable.
    fn prepare(&mut self, mut turn: Turn) -> (Batch, Pending) {
        let mut batch = Batch::default();
        for id in &turn.touched {
            if let Some(live) = self.live.get_mut(id) {
                rows(&mut live.state, &live.tags, &mut batch);
            }
        }
        for (_, a) in &turn.actions {
            if let Action::Publish(e) = a {
                batch.events.push(e.clone());
            }
        }
        // A new execution with a key does not start before its claim is
        // committed, so the events here never belong to one that loses its
        // claim (the store drops nothing of them).
        let n_exec_events = batch.events.len();
        batch.events.extend(std::mem::take(&mut turn.append_events));
        let live = &self.live;
        turn.new_leases.retain(|id| live.contains_key(id));
        batch.fence = self.own.fence(&self.live, &mut turn);
        let snapshot = |live: &HashMap<String, Live>, id: &str| {
            live.get(id)
                .map(|l| l.state.execution().clone())
                .ok_or_else(|| Error::not_found("execution", id))
        };
        let mut execute_replies = Vec::with_capacity(turn.execute_replies.len());
        for ask in turn.execute_replies {
            let answer = match (&ask.execution, ask.refusal) {
                // Gone before its first commit: this node fenced itself. Its
                // key is not claimed (it would name an execution that does
                // not exist).
                (Some(id), _) if !self.live.contains_key(id) => {
                    let _ = ask.reply.send(Err(Error::NotReady(
                        "this node lost its database connection before the execution was stored; try again"
                            .into(),
                    )));
                    continue;
                }
                (Some(id), _) => snapshot(&self.live, id).map(Executed::Created),
                (None, Some(refusal)) => Err(refusal),
                (None, None) => Err(Error::store("an execute request without an execution")),
            };
            let claim = ask.claim.map(|c| {
                let at = batch.claims.len();
                let (key, hash) = (c.key.clone(), c.request_hash.clone());
                batch.claims.push(c);
                (at, key, hash)
            });
            execute_replies.push(ExecuteReply {
                reply: ask.reply,
                answer,
                execution: ask.execution,
                claim,
            });
        }
        let control_replies = turn
            .control_replies
            .into_iter()
            .map(|c| {
                let answer = match c.outcome {
                    Err(r) => Err(Error::InvalidState(r.message(&c.id))),
                    // Dropped before the commit (a fence): nothing is known here.
                    Ok(Some(x)) if self.live.contains_key(&c.id) => Ok(x),
                    Ok(_) => Err(Error::not_found("execution", &c.id)),
                };
                (c.reply, answer)
            })
            .collect();
        let pending = Pending {
            actions: turn.actions,
            appends: turn.appends,
            execute_replies,
            control_replies,
            finished: turn.finished,
            n_exec_events,
            new_leases: turn.new_leases,
        };
        (batch, pending)
    }

    /// The batch of `pending` was committed (or not): publish in seq order,
    /// answer, then act.
    fn complete(&mut self, pending: Pending, committed: Result<Committed>) -> Result<()> {
        let Committed {
            events: committed,
            claims,
        } = match committed {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                for (_, r) in pending.appends {
                    let _ = r.send(Err(Error::store(msg.clone())));
                }
                for x in pending.execute_replies {
                    let _ = x.reply.send(Err(Error::store(msg.clone())));
                }
                for (r, _) in pending.control_replies {
                    let _ = r.send(Err(Error::store(msg.clone())));
                }
                return Err(e);
            }
        };
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        // Key claims first: a new execution whose claim lost was not written;
        // it is dropped before anything else sees it.
        let mut execute_answers = Vec::with_capacity(pending.execute_replies.len());
        for x in pending.execute_replies {
            let answer = match (
                &x.claim,
                x.claim.as_ref().and_then(|(i, ..)| claims.get(*i)),
            ) {
                (None, _) => x.answer,
                (Some(_), Some(Claimed::Won)) => {
                    if let Some(l) = x.execution.as_ref().and_then(|id| self.live.get_mut(id)) {
                        l.unclaimed = false;
                    }
                    x.answer
                }
                (
                    Some((_, key, hash)),
                    Some(Claimed::Taken {
                        execution_id,
                        request_hash,
                    }),
                ) => {
                    if let Some(id) = &x.execution {
                        self.drop_unclaimed(id);
                    }
                    if request_hash == hash {
                        Ok(Executed::Existing(execution_id.clone()))
                    } else {
                        Err(Error::IdempotencyKeyReused(key.clone()))
                    }
                }
                (Some(_), Some(Claimed::Free) | None) => {
                    if let Some(l) = x.execution.as_ref().and_then(|id| self.live.get_mut(id)) {
                        l.unclaimed = false;
                    }
                    x.answer
                }
            };
            execute_answers.push((x.reply, answer));
        }
        self.own
            .committed(&mut self.live, &committed, &pending.new_leases);
        let mut rest = committed.into_iter().skip(pending.n_exec_events);
        for (n, reply) in pending.appends {
            let evs: Vec<_> = rest.by_ref().take(n).collect();
            let _ = reply.send(Ok(evs));
        }
        for (reply, r) in execute_answers {
            let _ = reply.send(r);
        }
        for (reply, r) in pending.control_replies {
            let _ = reply.send(r);
        }
        for (exec_id, action) in pending.actions {
            self.perform(&exec_id, action);
        }
        for id in pending.finished {
            self.live.remove(&id);
            self.timers.cancel(&id);
            if let Some(ws) = self.waiters.remove(&id) {
                for w in ws {
                    let _ = w.send(());
                }
            }
        }
        self.stats
            .active
            .store(self.active as u64, Ordering::Relaxed);
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
        self.stats
            .timers
            .store(self.timers.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forget a new execution whose key claim was lost: it was never written
    /// and never started (it held no slot, armed no timer, sent no call).
    fn drop_unclaimed(&mut self, id: &str) {
        if self.live.remove(id).is_some()
            && let Some(pos) = self.queue.iter().position(|q| q == id)
        {
            self.queue.remove(pos);
        }
    }

    /// Commit a turn and act on it before returning (used at start).
    async fn commit_now(&mut self, turn: Turn) -> Result<()> {
        let (batch, pending) = self.prepare(turn);
        let committed = if batch.is_empty() {
            Ok(Committed::default())
        } else {
            self.opts.store.commit(batch).await
        };
        self.complete(pending, committed)
    }

    fn perform(&mut self, exec_id: &str, action: Action) {
        match action {
            // Draining: nothing new goes out. The next start sends the committed attempt
            // again, or begins the step (and evaluates its condition) again.
            Action::Invoke(_) | Action::Callback { .. } | Action::EvaluateCondition(_)
                if self.draining => {}
            Action::Invoke(call) => {
                let Some(live) = self.live.get(exec_id) else {
                    return;
                };
                let e = live.state.execution();
                let token = self.calls.start(exec_id, &call);
                self.stats.calls_started.fetch_add(1, Ordering::Relaxed);
                calls::spawn_call(
                    self.call_env.clone(),
                    exec_id.to_owned(),
                    e.workflow_id.clone(),
                    e.context.correlation_id.clone(),
                    call,
                    token,
                );
            }
            Action::CancelCall {
                step_id,
                attempt,
                compensation,
            } => self.calls.cancel(exec_id, &step_id, attempt, compensation),
            Action::SetTimer { key, at } => {
                if matches!(key, TimerKey::Retry { .. }) {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("maestro_step_retries_total").increment(1);
                }
                self.timers.push(at, exec_id.to_owned(), key);
            }
            Action::Callback { step_id, url, body } => {
                calls::spawn_callback(
                    self.call_env.clone(),
                    exec_id.to_owned(),
                    step_id,
                    url,
                    body,
                );
            }
            Action::EvaluateCondition(check) => {
                // CEL may take up to its budget of CPU: never on this loop, so that a
                // slow condition delays only its own execution.
                let tx = self.call_env.tx.clone();
                let slots = self.cel_slots.clone();
                let budget = self.opts.cel_budget;
                let exec_id = exec_id.to_owned();
                tokio::spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let step_id = check.step_id.clone();
                    let verdict = tokio::task::spawn_blocking(move || check.evaluate(&budget))
                        .await
                        .unwrap_or_else(|e| {
                            Err(ConditionError {
                                message: format!("condition evaluation failed: {e}"),
                            })
                        });
                    let _ = tx.send(Msg::ConditionDone {
                        exec_id,
                        step_id,
                        verdict,
                    });
                });
            }
            Action::Publish(_) | Action::Finished | Action::Refused(_) => {}
        }
    }

    /// Make a stored, unfinished execution live here: a running or paused one
    /// resumes at once (its interrupted attempt is re-sent), a pending one
    /// queues, at the front when it already holds a slot (an active lease).
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &mut self,
        execution: WorkflowExecution,
        workflow: Arc<Workflow>,
        plan: Arc<WorkflowPlan>,
        lease: Lease,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        let id = execution.id.clone();
        let status = execution.status;
        let tags = workflow.tags.clone();
        let state = ExecutionState::restore(execution, workflow, plan);
        self.live.insert(
            id.clone(),
            Live {
                state,
                tags,
                lease,
                unclaimed: false,
            },
        );
        if status == ExecutionStatus::Pending {
            if lease == Lease::Active {
                self.queue.push_front(id);
            } else {
                self.queue.push_back(id);
            }
        } else {
            self.active += 1;
            self.apply(&id, Input::Recover, turn, now, config);
        }
    }

    /// Load unfinished executions and continue them.
    async fn recover(&mut self) -> Result<()> {
        let unfinished = self.opts.store.unfinished_executions().await?;
        if unfinished.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let config = self.opts.config.get();
        let mut turn = Turn::default();
        let n = unfinished.len();
        for exec in unfinished {
            let (workflow, plan) = match self
                .opts
                .catalog
                .revision(&exec.workflow_id, exec.revision)
                .await
            {
                Ok(Some(wp)) => wp,
                Ok(None) | Err(_) => {
                    tracing::error!(execution = %exec.id, workflow = %exec.workflow_id,
                        revision = exec.revision, "cannot resume: workflow revision missing");
                    continue;
                }
            };
            self.resume(exec, workflow, plan, Lease::None, &mut turn, now, &config);
        }
        tracing::info!(
            executions = n,
            active = self.active,
            queued = self.queue.len(),
            "resumed unfinished executions"
        );
        self.fill_local_slots(&mut turn, now, &config);
        self.commit_now(turn).await
    }
}

/// Resolves when the commit in flight (if any) is done.
async fn commit_done(inflight: &mut Option<(CommitTask, Pending)>) -> Result<Committed> {
    match inflight {
        Some((task, _)) => match task.await {
            Ok(r) => r,
            Err(e) => Err(Error::store(format!("commit task failed: {e}"))),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The rows of what changed in an execution since its last commit.
fn rows(state: &mut ExecutionState, tags: &[String], batch: &mut Batch) {
    let changes = state.take_changes();
    if changes.is_empty() {
        return;
    }
    let e = state.execution();
    if changes.header {
        batch.executions.push(Arc::new(ExecutionHeader {
            execution: header_of(e),
            workflow_tags: tags.to_vec(),
        }));
    }
    for &i in &changes.steps {
        batch.steps.push(StepRow {
            execution_id: e.id.clone(),
            position: i as u32,
            step: step_row_of(state.step(i)),
        });
    }
    for &(i, attempt) in &changes.attempts {
        if let Some(a) = state.step(i).attempts.iter().find(|a| a.attempt == attempt) {
            batch.attempts.push(AttemptRow {
                execution_id: e.id.clone(),
                step_id: state.step(i).step_id.clone(),
                attempt: a.clone(),
            });
        }
    }
}

/// The execution row: no step executions, no per-step outputs (those are step rows).
fn header_of(e: &WorkflowExecution) -> WorkflowExecution {
    WorkflowExecution {
        id: e.id.clone(),
        workflow_id: e.workflow_id.clone(),
        revision: e.revision,
        status: e.status,
        step_executions: StepMap::default(),
        context: ExecutionContext {
            execution_id: e.context.execution_id.clone(),
            workflow_id: e.context.workflow_id.clone(),
            variables: e.context.variables.clone(),
            step_outputs: Default::default(),
            correlation_id: e.context.correlation_id.clone(),
            parent_execution_id: e.context.parent_execution_id.clone(),
        },
        outputs: e.outputs.clone(),
        result: e.result.clone(),
        created_at: e.created_at,
        started_at: e.started_at,
        completed_at: e.completed_at,
        error: e.error.clone(),
        rollback_log: e.rollback_log.clone(),
        deadline: e.deadline,
        cancel_reason: e.cancel_reason.clone(),
    }
}

fn step_row_of(s: &StepExecution) -> StepExecution {
    StepExecution {
        step_id: s.step_id.clone(),
        status: s.status,
        agent_id: s.agent_id.clone(),
        inputs: s.inputs.clone(),
        outputs: s.outputs.clone(),
        error: s.error.clone(),
        started_at: s.started_at,
        completed_at: s.completed_at,
        duration: s.duration,
        retry_count: s.retry_count,
        attempts: Vec::new(),
        next_retry_at: s.next_retry_at,
        fallback_step: s.fallback_step.clone(),
        retry_round_start: s.retry_round_start,
        awaiting_callback: s.awaiting_callback,
    }
}
