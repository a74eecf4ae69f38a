//! How a node coordinates with the others sharing its store
//! (docs/ARCHITECTURE.md "Cluster mode"): one trait, [`Coordination`], with
//! two implementations chosen once by the composition root
//! (`MaestroOptions::cluster`):
//!
//! - [`SingleNode`]: alone on the store. It is always the leader, has nobody
//!   to signal or forward to, and its executor ([`Alone`]) publishes its
//!   commits straight to the bus and writes no lease rows.
//! - [`Cluster`]: several nodes on one PostgreSQL database
//!   ([`crate::cluster`]): signals, a leader lease, the event tailer, and an
//!   executor that owns executions through leases ([`Leased`]).
//!
//! Nothing else asks which one it runs with.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::Result;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, Signal};
use crate::executor::{Alone, Control, Executor, ExecutorHandle, ExecutorOptions, Leased};
use crate::maestro::Parts;
use tokio_util::sync::CancellationToken;

/// The answer of [`Coordination::forward_control`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// The node running it applied the request.
    Done,
    /// That node's state machine refused it (the message).
    Refused(String),
    /// Nobody answered in time.
    NoAnswer,
    /// There is no other node to run it.
    NoOtherNode,
}

/// What differs between a node alone on its store and a node of a cluster.
#[async_trait]
pub(crate) trait Coordination: Send + Sync + 'static {
    /// Build the executor with this mode's [`Ownership`](crate::executor::Ownership)
    /// (alone: every execution, no lease rows; in a cluster: through leases)
    /// and start it.
    fn start_executor(
        &self,
        opts: ExecutorOptions,
        cancel: CancellationToken,
    ) -> (JoinHandle<()>, ExecutorHandle);

    /// Start the services of this mode once the executor is ready: event
    /// delivery, the leader's services (health checker, webhooks,
    /// retention), receiving the other nodes' signals.
    async fn start(&self, parts: &Parts) -> Result<Vec<JoinHandle<()>>>;

    /// Whether this node runs the leader's services now.
    fn is_leader(&self) -> bool;

    /// Tell the other nodes (best effort).
    fn send(&self, s: Signal);

    /// An agent's record changed (`record`) or it heartbeated.
    fn agent_changed(&self, id: &str, record: bool);

    /// Signals received from other nodes (and `Resync`), for caches outside
    /// the engine (the API's token cache).
    fn subscribe(&self) -> broadcast::Receiver<Signal>;

    /// Ask the node running `execution` (not live here) to apply `op`.
    async fn forward_control(&self, execution: &str, op: &Control, wait: Duration) -> Forwarded;
}

/// Alone on the store.
pub(crate) struct SingleNode {
    /// Nothing is ever sent on it; kept so that subscribers stay open.
    signals: broadcast::Sender<Signal>,
}

impl SingleNode {
    pub(crate) fn new() -> Self {
        SingleNode {
            signals: broadcast::channel(1).0,
        }
    }
}

#[async_trait]
impl Coordination for SingleNode {
    fn start_executor(
        &self,
        opts: ExecutorOptions,
        cancel: CancellationToken,
    ) -> (JoinHandle<()>, ExecutorHandle) {
        let own = Alone::new(opts.bus.clone());
        let (executor, handle) = Executor::new(opts, own);
        (tokio::spawn(executor.run(cancel)), handle)
    }

    async fn start(&self, parts: &Parts) -> Result<Vec<JoinHandle<()>>> {
        // Always the leader.
        parts.webhooks.sync().await?;
        let mut services = Vec::new();
        if let Some(hc) = parts.health.clone() {
            services.push(tokio::spawn(hc.run(parts.cancel.clone())));
        }
        services.push(tokio::spawn(crate::retention::run(
            parts.store.clone(),
            parts.retention,
            parts.cancel.clone(),
        )));
        Ok(services)
    }

    fn is_leader(&self) -> bool {
        true
    }

    fn send(&self, _: Signal) {}

    fn agent_changed(&self, _: &str, _: bool) {}

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn forward_control(&self, _: &str, _: &Control, _: Duration) -> Forwarded {
        Forwarded::NoOtherNode
    }
}

/// The shared handle the facade keeps.
pub(crate) type Coordinator = Arc<dyn Coordination>;

#[async_trait]
impl Coordination for Cluster {
    fn start_executor(
        &self,
        opts: ExecutorOptions,
        cancel: CancellationToken,
    ) -> (JoinHandle<()>, ExecutorHandle) {
        let own = Leased::new(crate::cluster::executor_leases(self));
        let (executor, handle) = Executor::new(opts, own);
        (tokio::spawn(executor.run(cancel)), handle)
    }

    async fn start(&self, parts: &Parts) -> Result<Vec<JoinHandle<()>>> {
        Ok(crate::cluster::start(self, parts))
    }

    fn is_leader(&self) -> bool {
        Cluster::is_leader(self)
    }

    fn send(&self, s: Signal) {
        Cluster::send(self, s)
    }

    fn agent_changed(&self, id: &str, record: bool) {
        Cluster::agent_changed(self, id, record)
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        Cluster::subscribe(self)
    }

    async fn forward_control(&self, execution: &str, op: &Control, wait: Duration) -> Forwarded {
        let reason = match op {
            Control::Cancel(r) => r.clone(),
            Control::Pause | Control::Resume => None,
        };
        match self
            .control(execution, op.op().as_str(), reason, wait)
            .await
        {
            Ok(None) => Forwarded::Done,
            Ok(Some(refused)) => Forwarded::Refused(refused),
            Err(()) => Forwarded::NoAnswer,
        }
    }
}
