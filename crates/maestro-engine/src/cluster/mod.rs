//! Several nodes on one database (docs/ARCHITECTURE.md "Cluster mode",
//! docs/OPERATIONS.md "Running a cluster"). PostgreSQL is the only
//! coordination point:
//!
//! - **Executions** are owned through leases ([`crate::executor`] in cluster
//!   mode): claimed, renewed, fenced at every commit, taken over when they lapse.
//! - **Events**: the log's `seq` is allocated in commit order without gaps, so
//!   each node's tailer publishes the log to its own bus in seq order: its
//!   own commits at once, other nodes' as soon as a signal says there are new
//!   ones (and every [`TAIL_EVERY`] anyway, so a lost signal delays an event,
//!   never loses it).
//! - **Signals** (`LISTEN`/`NOTIFY`) are wake-ups and cache invalidations:
//!   agents, config, tokens, subscriptions, poll tasks, control requests. The
//!   store stays the truth; after a lost connection every cache is re-read.
//! - **Leader**: one node (the holder of the `maestro:leader` lease) runs the
//!   health checker and delivers webhooks; another takes over within the lease
//!   time when it goes away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::model::{ChoreographyEvent, EventFilter, Timestamp};
use maestro_core::ports::{ClusterStore, EventOrder, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::eventbus::EventBus;

mod node;

pub(crate) use node::{executor_leases, start};

/// How often a node reads the log for other nodes' events without a signal.
pub const TAIL_EVERY: Duration = Duration::from_millis(250);
/// Events read per query while catching up.
const TAIL_PAGE: usize = 1000;
/// Name of the leader lease.
pub const LEADER_LEASE: &str = "maestro:leader";
/// A heartbeat is told to the other nodes at most this often per agent.
const HEARTBEAT_SIGNAL_MS: u64 = 1000;
/// Longest text of a cancel reason carried by a control signal.
const MAX_REASON: usize = 1000;

/// How a node joins a cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    pub store: Arc<dyn ClusterStore>,
    /// Unique per node and stable across its restarts.
    pub node_id: String,
    /// Execution and leader lease time: a dead node's executions are taken
    /// over within about this long.
    pub lease_ttl_ms: u64,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("node_id", &self.node_id)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .finish()
    }
}

/// What nodes tell each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "camelCase")]
pub enum Signal {
    /// Events were committed up to `seq`.
    Events { seq: u64 },
    /// An agent's stored record changed.
    Agent { id: String },
    /// The runtime config changed.
    Config,
    /// A token was created or revoked.
    Token { id: String },
    /// Webhook subscriptions changed.
    Subscriptions,
    /// A poll task was queued for `agent`.
    TaskQueued { agent: String },
    /// A poll task finished.
    TaskDone { id: String },
    /// Cancel, pause or resume an execution, for the node that runs it.
    Control {
        rid: String,
        execution: String,
        op: String,
        reason: Option<String>,
    },
    /// The answer to a [`Signal::Control`]: `error` when refused.
    ControlDone { rid: String, error: Option<String> },
    /// Local only: signals may have been missed; caches re-read the store.
    Resync,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending node.
    n: String,
    #[serde(flatten)]
    s: Signal,
}

/// This node's handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ClusterStore>,
    node_id: String,
    lease_ttl_ms: u64,
    leader: AtomicBool,
    local: broadcast::Sender<Signal>,
    /// Highest committed seq this node has told the others about / wants to.
    events_told: AtomicU64,
    events_wanted: AtomicU64,
    events_wake: Notify,
    controls: Mutex<HashMap<String, oneshot::Sender<Option<String>>>>,
    heartbeats: Mutex<HashMap<String, Timestamp>>,
    /// Wakes the event tailer (a signal said other nodes committed events).
    tail_wake: Arc<Notify>,
    /// The executor's committed events, for the tailer (taken at start).
    tail_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<ChoreographyEvent>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.node_id)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Cluster {
    pub fn new(opts: &ClusterOptions) -> Self {
        Cluster {
            inner: Arc::new(Inner {
                store: opts.store.clone(),
                node_id: opts.node_id.clone(),
                lease_ttl_ms: opts.lease_ttl_ms,
                leader: AtomicBool::new(false),
                local: broadcast::channel(1024).0,
                events_told: AtomicU64::new(0),
                events_wanted: AtomicU64::new(0),
                events_wake: Notify::new(),
                controls: Mutex::default(),
                heartbeats: Mutex::default(),
                tail_wake: Arc::new(Notify::new()),
                tail_rx: Mutex::default(),
            }),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn lease_ttl_ms(&self) -> u64 {
        self.inner.lease_ttl_ms
    }

    pub fn store(&self) -> &Arc<dyn ClusterStore> {
        &self.inner.store
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.inner.leader.load(Ordering::SeqCst)
    }

    /// Signals received from other nodes (and `Resync`), for caches outside
    /// the engine (the API's token cache).
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.local.subscribe()
    }

    /// Tell every other node (best effort, in the background).
    pub fn send(&self, s: Signal) {
        let env = Envelope {
            n: self.inner.node_id.clone(),
            s,
        };
        let Ok(payload) = serde_json::to_string(&env) else {
            return;
        };
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.signal(&payload).await {
                tracing::debug!(error = %e, "sending a cluster signal failed");
            }
        });
    }

    /// An agent's record changed (`record`) or it heartbeated.
    pub fn agent_changed(&self, id: &str, record: bool) {
        if !record {
            let now = now_ms();
            let mut hb = self.inner.heartbeats.lock().expect("heartbeats");
            if hb
                .get(id)
                .is_some_and(|at| now.saturating_sub(*at) < HEARTBEAT_SIGNAL_MS)
            {
                return;
            }
            if hb.len() > 100_000 {
                hb.clear();
            }
            hb.insert(id.to_owned(), now);
        }
        self.send(Signal::Agent { id: id.to_owned() });
    }

    /// Ask the node running `execution` to apply `op`; `Ok(None)` when done,
    /// `Ok(Some(reason))` when it refused, `Err(())` when nobody answered.
    pub async fn control(
        &self,
        execution: &str,
        op: &str,
        reason: Option<String>,
        wait: Duration,
    ) -> Result<Option<String>, ()> {
        let rid = uuid::Uuid::now_v7().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.inner
            .controls
            .lock()
            .expect("controls")
            .insert(rid.clone(), tx);
        self.send(Signal::Control {
            rid: rid.clone(),
            execution: execution.to_owned(),
            op: op.to_owned(),
            reason: reason.map(|r| r.chars().take(MAX_REASON).collect()),
        });
        let r = tokio::time::timeout(wait, rx).await;
        self.inner.controls.lock().expect("controls").remove(&rid);
        match r {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(()),
        }
    }

    pub(crate) fn control_done(&self, rid: &str, error: Option<String>) {
        if let Some(tx) = self.inner.controls.lock().expect("controls").remove(rid) {
            let _ = tx.send(error);
        }
    }

    /// Events up to `seq` were committed here: tell the others (coalesced: at
    /// most one signal in flight).
    pub(crate) fn events_committed(&self, seq: u64) {
        self.inner.events_wanted.fetch_max(seq, Ordering::SeqCst);
        self.inner.events_wake.notify_one();
    }

    pub(crate) fn set_leader(&self, leader: bool) -> bool {
        self.inner.leader.swap(leader, Ordering::SeqCst)
    }

    pub(crate) fn tell_local(&self, s: Signal) {
        let _ = self.inner.local.send(s);
    }

    /// Decode a received payload; `None` for this node's own signals and for
    /// payloads that are not ours.
    pub(crate) fn decode(&self, payload: &str) -> Option<Signal> {
        let env: Envelope = serde_json::from_str(payload).ok()?;
        (env.n != self.inner.node_id).then_some(env.s)
    }
}

/// Send the coalesced "events committed" signals.
pub(crate) async fn events_signaller(cluster: Cluster, cancel: CancellationToken) {
    let inner = &cluster.inner;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = inner.events_wake.notified() => {}
        }
        let wanted = inner.events_wanted.load(Ordering::SeqCst);
        if wanted <= inner.events_told.load(Ordering::SeqCst) {
            continue;
        }
        let env = Envelope {
            n: inner.node_id.clone(),
            s: Signal::Events { seq: wanted },
        };
        let Ok(payload) = serde_json::to_string(&env) else {
            continue;
        };
        match inner.store.signal(&payload).await {
            Ok(()) => {
                inner.events_told.fetch_max(wanted, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::debug!(error = %e, "signalling events failed (the others read the log anyway)");
                tokio::time::sleep(Duration::from_millis(50)).await;
                inner.events_wake.notify_one();
            }
        }
    }
}

/// Publish the event log to this node's bus in seq order: this node's commits
/// as they come (`local`), the others' when woken or every [`TAIL_EVERY`].
pub(crate) async fn tailer(
    store: Arc<dyn Store>,
    bus: EventBus,
    cluster: Cluster,
    mut local: mpsc::UnboundedReceiver<Vec<ChoreographyEvent>>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            batch = local.recv() => {
                let Some(batch) = batch else { return };
                let Some(last) = batch.last().map(|e| e.seq) else { continue };
                if batch.first().is_some_and(|e| e.seq == bus.last_seq() + 1) {
                    for e in batch {
                        bus.publish(e);
                    }
                } else if last > bus.last_seq() {
                    catch_up(&*store, &bus).await;
                }
                cluster.events_committed(last);
            }
            _ = wake.notified() => catch_up(&*store, &bus).await,
            _ = tokio::time::sleep(TAIL_EVERY) => catch_up(&*store, &bus).await,
        }
    }
}

async fn catch_up(store: &dyn Store, bus: &EventBus) {
    loop {
        let filter = EventFilter {
            after: Some(bus.last_seq()),
            ..Default::default()
        };
        match store
            .query_events(&filter, EventOrder::Ascending, TAIL_PAGE)
            .await
        {
            Ok(events) => {
                let n = events.len();
                for e in events {
                    bus.publish(e);
                }
                if n < TAIL_PAGE {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the event log failed");
                return;
            }
        }
    }
}

/// Hold (or try to take) the leader lease every third of the lease time;
/// `on_change(true)` when this node became leader, `on_change(false)` when it
/// stopped being one.
pub(crate) async fn leader_loop<F>(cluster: Cluster, on_change: F, cancel: CancellationToken)
where
    F: Fn(bool) + Send + 'static,
{
    let ttl = cluster.lease_ttl_ms();
    let every = Duration::from_millis((ttl / 3).max(1));
    let mut last_ok = now_ms();
    loop {
        let now = now_ms();
        let held = match cluster
            .store()
            .acquire_named_lease(LEADER_LEASE, cluster.node_id(), now, ttl)
            .await
        {
            Ok(h) => {
                last_ok = now;
                h
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader lease: database unreachable");
                // Keep leading until the lease may have lapsed.
                cluster.is_leader() && now.saturating_sub(last_ok) < ttl * 2 / 3
            }
        };
        let was = cluster.set_leader(held);
        if was != held {
            tracing::info!(leader = held, node = %cluster.node_id(), "cluster leadership changed");
            on_change(held);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if cluster.set_leader(false) {
        on_change(false);
        let _ = cluster
            .store()
            .release_named_lease(LEADER_LEASE, cluster.node_id())
            .await;
    }
}
