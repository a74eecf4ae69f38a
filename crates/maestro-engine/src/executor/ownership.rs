//! How the executor owns its executions (docs/ARCHITECTURE.md "The executor
//! loop", "Cluster mode"): [`Alone`] on its store, or through leases shared
//! with other nodes ([`Leased`](super::Leased), `executor/cluster.rs`). The
//! loop asks its [`Ownership`] what to do at start, when filling slots, when
//! committing and when a commit fails; it never asks which one it has.

use std::collections::HashMap;

use maestro_core::model::{ChoreographyEvent, MaestroConfig, Timestamp};
use maestro_core::ports::LeaseFence;
use maestro_core::{Error, Result};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Adopted, Executor, Live, Turn};
use crate::eventbus::EventBus;

/// What the services of a leased ownership tell the loop.
pub(crate) enum LeaseMsg {
    /// The answer of a slot activation.
    Activated(Result<Vec<String>>),
    /// Executions claimed by this node.
    Adopt(Vec<Adopted>),
    /// The leased executions the lease keeper should verify.
    Snapshot(oneshot::Sender<Vec<String>>),
    /// Leases found held by another node.
    Lost(Vec<String>),
    /// Stop acting on every execution (lease renewal failing).
    Fence(String),
}

/// How the executor owns executions; see the module docs.
pub(crate) trait Ownership: Send + Sized + 'static {
    /// Take up what this node owns at start, before the loop runs.
    fn start(
        ex: &mut Executor<Self>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send;

    /// When the loop must wake up for the ownership's own sake.
    fn wake_at(&self) -> Option<Timestamp>;

    /// A commit failed (its callers were answered): `true` when the executor
    /// goes on, `false` when it stops (fail-stop).
    fn commit_failed(ex: &mut Executor<Self>, e: &Error) -> bool;

    /// Start queued executions while `maxConcurrentWorkflows` allows.
    fn fill_slots(ex: &mut Executor<Self>, turn: &mut Turn, now: Timestamp, config: &MaestroConfig);

    /// What the commit of `turn` must check first (`None`: nothing).
    fn fence(&self, live: &HashMap<String, Live>, turn: &mut Turn) -> Option<LeaseFence>;

    /// A batch was committed: deliver its events (in seq order) and take up
    /// the executions it created (`new`).
    fn committed(
        &mut self,
        live: &mut HashMap<String, Live>,
        events: &[ChoreographyEvent],
        new: &[String],
    );

    /// A message from the ownership's own services.
    fn lease_msg(
        ex: &mut Executor<Self>,
        m: LeaseMsg,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    );

    /// The executor stopped with everything committed.
    fn stopped(&self) -> impl Future<Output = ()> + Send;
}

/// Alone on the store: every unfinished execution is this node's, slots are
/// counted here, commits carry no fence, and committed events go straight to
/// the bus. A failed commit stops the executor (its memory is ahead of the
/// store; a restart resumes from what was committed).
pub(crate) struct Alone {
    bus: EventBus,
}

impl Alone {
    pub(crate) fn new(bus: EventBus) -> Self {
        Alone { bus }
    }
}

impl Ownership for Alone {
    async fn start(ex: &mut Executor<Self>, _: &CancellationToken) -> Result<()> {
        ex.recover().await
    }

    fn wake_at(&self) -> Option<Timestamp> {
        None
    }

    fn commit_failed(_: &mut Executor<Self>, _: &Error) -> bool {
        false
    }

    fn fill_slots(
        ex: &mut Executor<Self>,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        ex.fill_local_slots(turn, now, config);
    }

    fn fence(&self, _: &HashMap<String, Live>, _: &mut Turn) -> Option<LeaseFence> {
        None
    }

    fn committed(
        &mut self,
        _: &mut HashMap<String, Live>,
        events: &[ChoreographyEvent],
        _: &[String],
    ) {
        for e in events {
            self.bus.publish(e.clone());
        }
    }

    fn lease_msg(
        _: &mut Executor<Self>,
        _: LeaseMsg,
        _: &mut Turn,
        _: Timestamp,
        _: &MaestroConfig,
    ) {
        // Nothing sends these to a node alone.
    }

    async fn stopped(&self) {}
}
