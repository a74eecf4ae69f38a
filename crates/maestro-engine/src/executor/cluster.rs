//! The executor in cluster mode (docs/ARCHITECTURE.md "Cluster mode",
//! docs/OPERATIONS.md "Running a cluster"): every execution this node acts on
//! is owned through a lease row.
//!
//! - A new execution is committed with a *queued* lease of this node; it starts
//!   once a slot *activation* (serialized cluster-wide) turns its lease active,
//!   which is how `maxConcurrentWorkflows` holds for the whole cluster.
//! - Every commit carries a [`LeaseFence`](maestro_core::ports::LeaseFence):
//!   it renews the leases of the executions it writes and fails if one of them
//!   moved to another node; finishing an execution drops its lease in the same
//!   commit.
//! - The *lease keeper* renews all of this node's leases every third of the
//!   lease time and checks that none was taken over; when renewal keeps failing
//!   for two thirds of the lease time the node fences itself: it drops every
//!   execution (nothing is cancelled at the agents) and claims them again once
//!   the database answers.
//! - The *claimer* takes over executions whose lease lapsed (a dead node's) or
//!   that have none, oldest first, and resumes them exactly as a restart does:
//!   completed steps are kept, the interrupted attempt is re-sent with the same
//!   attempt number and idempotency key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use maestro_core::machine::Input;
use maestro_core::model::{ChoreographyEvent, ExecutionStatus, MaestroConfig, Timestamp};
use maestro_core::ports::{ClusterStore, LeaseFence, Store};
use maestro_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::ownership::{LeaseMsg, Ownership};
use super::{Adopted, Executor, ExecutorCluster, Lease, Live, Msg, Turn, timers::Timers};
use crate::catalog::Catalog;
use crate::clock::now_ms;

/// Most executions claimed per round.
const CLAIM_BATCH: usize = 256;
/// Pause before asking again for a slot when the cluster had none free.
const SLOT_RETRY_MS: u64 = 50;

/// The executor's ownership on a node of a cluster: through lease rows.
pub(crate) struct Leased {
    opts: ExecutorCluster,
    /// A slot activation is in flight.
    activating: bool,
    /// No slot was free at the last activation: try again then.
    retry_at: Option<Timestamp>,
    /// Wakes the orphan claimer at once (after a fence).
    claim_now: Arc<tokio::sync::Notify>,
    /// A fence happened while a commit was in flight: leases that commit creates are released.
    release_after_commit: bool,
    /// Stops the lease keeper when the executor has stopped (it renews during the drain).
    keeper_stop: CancellationToken,
}

impl Leased {
    pub(crate) fn new(opts: ExecutorCluster) -> Self {
        Leased {
            opts,
            activating: false,
            retry_at: None,
            claim_now: Arc::new(tokio::sync::Notify::new()),
            release_after_commit: false,
            keeper_stop: CancellationToken::new(),
        }
    }
}

impl Ownership for Leased {
    async fn start(ex: &mut Executor<Self>, cancel: &CancellationToken) -> Result<()> {
        ex.cluster_start(cancel).await
    }

    fn wake_at(&self) -> Option<Timestamp> {
        self.retry_at
    }

    fn commit_failed(ex: &mut Executor<Self>, e: &Error) -> bool {
        // Lost a lease, or the database went away: drop every execution;
        // the committed state is claimed again.
        ex.fence_all(&format!("commit failed: {e}"));
        true
    }

    fn fill_slots(
        ex: &mut Executor<Self>,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        ex.fill_cluster_slots(turn, now, config);
    }

    fn fence(&self, live: &HashMap<String, Live>, turn: &mut Turn) -> Option<LeaseFence> {
        let leased = |id: &String| live.get(id).is_some_and(|l| l.lease != Lease::None);
        // Finished in the turn that created it (cancelled while queued):
        // no lease is created at all.
        let finished: HashSet<&String> = turn.finished.iter().collect();
        turn.new_leases.retain(|id| !finished.contains(id));
        Some(LeaseFence {
            node_id: self.opts.node_id.clone(),
            expires_at: now_ms() + self.opts.lease_ttl_ms,
            held: turn
                .touched
                .iter()
                .filter(|id| leased(id))
                .cloned()
                .collect(),
            release: turn
                .finished
                .iter()
                .filter(|id| leased(id))
                .cloned()
                .collect(),
            queued: turn.new_leases.clone(),
        })
    }

    fn committed(
        &mut self,
        live: &mut HashMap<String, Live>,
        events: &[ChoreographyEvent],
        new: &[String],
    ) {
        // The tailer publishes the whole log in seq order.
        if !events.is_empty() {
            let _ = self.opts.events.send(events.to_vec());
        }
        if std::mem::take(&mut self.release_after_commit) {
            // Fenced while this commit was in flight: the leases it
            // created are not wanted here.
            release_leases(self, new.to_vec());
        } else {
            for id in new {
                if let Some(l) = live.get_mut(id) {
                    l.lease = Lease::Queued;
                }
            }
        }
    }

    fn lease_msg(
        ex: &mut Executor<Self>,
        m: LeaseMsg,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        match m {
            LeaseMsg::Activated(r) => ex.activated(r, turn, now, config),
            LeaseMsg::Adopt(list) => ex.adopt(list, turn, now, config),
            LeaseMsg::Snapshot(reply) => {
                let held = ex
                    .live
                    .iter()
                    .filter(|(_, l)| l.lease != Lease::None)
                    .map(|(id, _)| id.clone())
                    .collect();
                let _ = reply.send(held);
            }
            LeaseMsg::Lost(ids) => {
                for id in ids {
                    if ex.live.get(&id).is_some_and(|l| l.lease != Lease::None) {
                        tracing::warn!(execution = %id, "lease taken over by another node; dropping the execution here");
                        ex.drop_live(&id);
                    }
                }
            }
            LeaseMsg::Fence(reason) => ex.fence_all(&reason),
        }
    }

    async fn stopped(&self) {
        self.keeper_stop.cancel();
        if let Err(e) = self
            .opts
            .store
            .release_node_leases(&self.opts.node_id)
            .await
        {
            tracing::warn!(error = %e, "releasing this node's leases failed; they lapse instead");
        }
    }
}

/// Release leases this node does not want (best effort: a lease left behind
/// lapses and is claimed anyway).
fn release_leases(c: &Leased, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let store = c.opts.store.clone();
    let node = c.opts.node_id.clone();
    let claim_now = c.claim_now.clone();
    tokio::spawn(async move {
        if let Err(e) = store.release_leases(&node, &ids).await {
            tracing::warn!(error = %e, "releasing leases failed; they lapse instead");
        }
        claim_now.notify_one();
    });
}

impl Executor<Leased> {
    /// Start in cluster mode: drop the leases of this node's previous life,
    /// claim what is unowned, start the lease keeper and the claimer.
    pub(super) async fn cluster_start(&mut self, cancel: &CancellationToken) -> Result<()> {
        let (store, node, ttl, claim_now) = {
            let c = &self.own;
            (
                c.opts.store.clone(),
                c.opts.node_id.clone(),
                c.opts.lease_ttl_ms,
                c.claim_now.clone(),
            )
        };
        let dropped = store.release_node_leases(&node).await?;
        if dropped > 0 {
            tracing::info!(
                leases = dropped,
                "dropped the leases of this node's previous run"
            );
        }
        let mut turn = Turn::default();
        let now = now_ms();
        let config = self.opts.config.get();
        loop {
            let claimed =
                claim_round(&*store, &*self.opts.store, &self.opts.catalog, &node, ttl).await?;
            let n = claimed.len();
            self.adopt(claimed, &mut turn, now, &config);
            if n < CLAIM_BATCH {
                break;
            }
        }
        self.fill_cluster_slots(&mut turn, now, &config);
        self.commit_now(turn).await?;
        let tx = self.call_env.tx.clone();
        tokio::spawn(lease_keeper(
            store.clone(),
            node.clone(),
            ttl,
            tx.clone(),
            self.own.keeper_stop.clone(),
        ));
        tokio::spawn(claimer(
            store,
            self.opts.store.clone(),
            self.opts.catalog.clone(),
            node,
            ttl,
            tx,
            claim_now,
            cancel.clone(),
        ));
        Ok(())
    }

    /// Make claimed executions live here: running ones resume at once, pending
    /// ones queue (an active lease starts without asking for a slot).
    pub(super) fn adopt(
        &mut self,
        list: Vec<Adopted>,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        let n = list.len();
        for a in list {
            let id = a.execution.id.clone();
            if let Some(l) = self.live.get_mut(&id) {
                // Our own lease had lapsed and we took it back: nothing changes.
                if a.active {
                    l.lease = Lease::Active;
                }
                continue;
            }
            let lease = if a.active {
                Lease::Active
            } else {
                Lease::Queued
            };
            self.resume(a.execution, a.workflow, a.plan, lease, turn, now, config);
        }
        if n > 0 {
            tracing::info!(executions = n, "claimed executions");
        }
    }

    /// Start queued executions: those with an active lease at once, the others
    /// once the cluster grants them a slot.
    pub(super) fn fill_cluster_slots(
        &mut self,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        let max = config.max_concurrent_workflows as usize;
        let ready: Vec<String> = self
            .queue
            .iter()
            .filter(|id| self.live.get(*id).is_some_and(|l| l.lease == Lease::Active))
            .cloned()
            .collect();
        for id in ready {
            self.apply(&id, Input::Start, turn, now, config);
        }
        let c = &mut self.own;
        if c.activating || c.retry_at.is_some_and(|at| at > now) || self.active >= max {
            return;
        }
        c.retry_at = None;
        let want: Vec<String> = self
            .queue
            .iter()
            .filter(|id| self.live.get(*id).is_some_and(|l| l.lease == Lease::Queued))
            .take(max - self.active)
            .cloned()
            .collect();
        if want.is_empty() {
            return;
        }
        c.activating = true;
        let store = c.opts.store.clone();
        let node = c.opts.node_id.clone();
        let ttl = c.opts.lease_ttl_ms;
        let tx = self.call_env.tx.clone();
        let cluster_max = config.max_concurrent_workflows as u64;
        tokio::spawn(async move {
            let r = store
                .activate_leases(&node, &want, cluster_max, now_ms(), ttl)
                .await;
            let _ = tx.send(Msg::Lease(LeaseMsg::Activated(r)));
        });
        self.publish_stats();
    }

    pub(super) fn activated(
        &mut self,
        r: Result<Vec<String>>,
        turn: &mut Turn,
        now: Timestamp,
        config: &MaestroConfig,
    ) {
        let c = &mut self.own;
        c.activating = false;
        let ids = match r {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "slot activation failed; trying again");
                c.retry_at = Some(now + SLOT_RETRY_MS);
                return;
            }
        };
        if ids.is_empty() {
            c.retry_at = Some(now + SLOT_RETRY_MS);
        }
        for id in ids {
            let Some(l) = self.live.get_mut(&id) else {
                continue;
            };
            l.lease = Lease::Active;
            self.apply(&id, Input::Start, turn, now, config);
        }
    }

    /// Forget an execution here (another node owns it now).
    pub(super) fn drop_live(&mut self, id: &str) {
        self.timers.cancel(id);
        if let Some(l) = self.live.remove(id) {
            if l.state.status() != ExecutionStatus::Pending {
                self.active = self.active.saturating_sub(1);
            }
            if let Some(pos) = self.queue.iter().position(|q| q == id) {
                self.queue.remove(pos);
            }
        }
        if let Some(ws) = self.waiters.remove(id) {
            for w in ws {
                let _ = w.send(());
            }
        }
        self.publish_stats();
    }

    /// Stop acting on every execution: the store may have moved on without
    /// this node. Calls in flight are left to finish (their answers are
    /// ignored); the claimer takes the executions back from the store.
    pub(super) fn fence_all(&mut self, reason: &str) {
        tracing::warn!(
            reason,
            executions = self.live.len(),
            "fencing: dropping every execution of this node; they are claimed again from the store"
        );
        // Executions whose creating commit has not been made yet are not
        // written (nor their keys claimed): their execute requests fail.
        self.live.clear();
        self.queue.clear();
        self.active = 0;
        self.timers = Timers::default();
        self.calls = super::calls::InFlight::default();
        for (_, ws) in self.waiters.drain() {
            for w in ws {
                let _ = w.send(());
            }
        }
        let c = &mut self.own;
        c.release_after_commit = true;
        c.retry_at = None;
        let store = c.opts.store.clone();
        let node = c.opts.node_id.clone();
        let claim_now = c.claim_now.clone();
        tokio::spawn(async move {
            if let Err(e) = store.release_node_leases(&node).await {
                tracing::warn!(error = %e, "releasing this node's leases failed; they lapse instead");
            }
            claim_now.notify_one();
        });
        self.publish_stats();
    }

    fn publish_stats(&self) {
        self.stats
            .active
            .store(self.active as u64, std::sync::atomic::Ordering::Relaxed);
        self.stats.queued.store(
            self.queue.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Claim up to [`CLAIM_BATCH`] orphaned executions and load them.
async fn claim_round(
    cluster: &dyn ClusterStore,
    store: &dyn Store,
    catalog: &Catalog,
    node: &str,
    ttl: u64,
) -> Result<Vec<Adopted>> {
    let claimed = cluster
        .claim_orphans(node, now_ms(), ttl, CLAIM_BATCH)
        .await?;
    let mut out = Vec::with_capacity(claimed.len());
    for (id, active) in claimed {
        let Some(execution) = store.get_execution(&id).await? else {
            continue;
        };
        match catalog
            .revision(&execution.workflow_id, execution.revision)
            .await
        {
            Ok(Some((workflow, plan))) => out.push(Adopted {
                execution,
                workflow,
                plan,
                active,
            }),
            _ => tracing::error!(execution = %id, workflow = %execution.workflow_id,
                revision = execution.revision, "cannot resume: workflow revision missing"),
        }
    }
    Ok(out)
}

/// Renew this node's leases every third of the lease time; report leases
/// taken over; fence when renewal fails for two thirds of it.
async fn lease_keeper(
    store: Arc<dyn ClusterStore>,
    node: String,
    ttl: u64,
    tx: mpsc::UnboundedSender<Msg>,
    cancel: CancellationToken,
) {
    let every = Duration::from_millis((ttl / 3).max(1));
    let mut last_ok = now_ms();
    let mut fenced = false;
    let mut prev_strays: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (reply, rx) = oneshot::channel();
        if tx.send(Msg::Lease(LeaseMsg::Snapshot(reply))).is_err() {
            return;
        }
        let Ok(held) = rx.await else { return };
        let now = now_ms();
        let checked = async {
            store.renew_node_leases(&node, now, ttl).await?;
            store.node_leases(&node).await
        }
        .await;
        match checked {
            Ok(ours) => {
                last_ok = now;
                fenced = false;
                let ours: HashSet<String> = ours.into_iter().collect();
                let held: HashSet<String> = held.into_iter().collect();
                let lost: Vec<String> = held
                    .iter()
                    .filter(|id| !ours.contains(*id))
                    .cloned()
                    .collect();
                if !lost.is_empty() && tx.send(Msg::Lease(LeaseMsg::Lost(lost))).is_err() {
                    return;
                }
                // Leases of this node that no execution here stands for (a
                // claim or a release interrupted by a lost connection, a fence
                // whose release failed): seen twice in a row, they are given
                // up, so that they are claimed again instead of renewed forever.
                let strays: HashSet<String> = ours.difference(&held).cloned().collect();
                let give_up: Vec<String> = strays.intersection(&prev_strays).cloned().collect();
                prev_strays = strays;
                if !give_up.is_empty() {
                    tracing::warn!(
                        leases = give_up.len(),
                        "releasing leases no execution here stands for"
                    );
                    if let Err(e) = store.release_leases(&node, &give_up).await {
                        tracing::warn!(error = %e, "releasing stray leases failed");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing execution leases failed");
                if !fenced && now.saturating_sub(last_ok) > ttl * 2 / 3 {
                    fenced = true;
                    if tx
                        .send(Msg::Lease(LeaseMsg::Fence(format!(
                            "lease renewal failing: {e}"
                        ))))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Claim orphaned executions every half lease time (and when woken).
#[allow(clippy::too_many_arguments)]
async fn claimer(
    cluster: Arc<dyn ClusterStore>,
    store: Arc<dyn Store>,
    catalog: Catalog,
    node: String,
    ttl: u64,
    tx: mpsc::UnboundedSender<Msg>,
    claim_now: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let every = Duration::from_millis((ttl / 2).max(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = claim_now.notified() => {}
        }
        loop {
            match claim_round(&*cluster, &*store, &catalog, &node, ttl).await {
                Ok(list) => {
                    let n = list.len();
                    if n > 0 && tx.send(Msg::Lease(LeaseMsg::Adopt(list))).is_err() {
                        return;
                    }
                    if n < CLAIM_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming orphaned executions failed");
                    break;
                }
            }
        }
    }
}
