//! The cluster plumbing of a node (docs/ARCHITECTURE.md "Cluster mode"): what
//! [`Cluster`]'s [`Coordination`](crate::coordination::Coordination) starts
//! beside the executor: the event tailer and signaller, the leader loop and
//! the services leadership runs, and the pump that acts on the other nodes'
//! signals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::Error;
use maestro_core::ports::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Signal};
use crate::executor::{Control, ExecutorCluster};
use crate::health::HealthChecker;
use crate::maestro::{Parts, finished_refusal};
use crate::webhooks::Webhooks;

/// What the executor needs to own executions through leases; its committed
/// events go to this node's tailer.
pub(crate) fn executor_leases(cluster: &Cluster) -> ExecutorCluster {
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    *cluster.inner.tail_rx.lock().expect("tail_rx") = Some(rx);
    ExecutorCluster {
        store: cluster.inner.store.clone(),
        node_id: cluster.inner.node_id.clone(),
        lease_ttl_ms: cluster.inner.lease_ttl_ms,
        events,
    }
}

/// Start the tailer, the events signaller, the leader loop and the signal
/// pump.
pub(crate) fn start(cluster: &Cluster, parts: &Parts) -> Vec<JoinHandle<()>> {
    let cancel = &parts.cancel;
    let mut services = Vec::new();
    let local = cluster.inner.tail_rx.lock().expect("tail_rx").take();
    if let Some(local) = local {
        services.push(tokio::spawn(super::tailer(
            parts.store.clone(),
            parts.bus.clone(),
            cluster.clone(),
            local,
            cluster.inner.tail_wake.clone(),
            cancel.clone(),
        )));
    }
    services.push(tokio::spawn(super::events_signaller(
        cluster.clone(),
        cancel.clone(),
    )));
    let on_change = leadership(
        parts.webhooks.clone(),
        parts.health.clone(),
        (parts.store.clone(), parts.retention),
        cancel.clone(),
    );
    services.push(tokio::spawn(super::leader_loop(
        cluster.clone(),
        on_change,
        cancel.clone(),
    )));
    services.push(tokio::spawn(pump(
        cluster.clone(),
        parts.clone(),
        cancel.clone(),
    )));
    services
}

/// Receive the other nodes' signals and act on them; after a lost
/// connection (signals may have been missed) re-read what they stand for.
async fn pump(cluster: Cluster, parts: Parts, cancel: CancellationToken) {
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
            on_signal(&cluster, &parts, Signal::Resync).await;
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
                        on_signal(&cluster, &parts, s).await;
                    }
                }
                Ok(None) => on_signal(&cluster, &parts, Signal::Resync).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster signals: connection lost; listening again");
                    continue 'connect;
                }
            }
        }
    }
}

async fn on_signal(cluster: &Cluster, parts: &Parts, s: Signal) {
    match s {
        Signal::Events { .. } => cluster.inner.tail_wake.notify_one(),
        Signal::Agent { id } => {
            if let Err(e) = parts.registry.refresh(&id).await {
                tracing::warn!(error = %e, agent = %id, "refreshing an agent failed");
            }
        }
        Signal::Config => parts.reload_config().await,
        Signal::Token { .. } => cluster.tell_local(s),
        Signal::Subscriptions => {
            if cluster.is_leader()
                && let Err(e) = parts.webhooks.sync().await
            {
                tracing::warn!(error = %e, "webhook subscriptions: sync failed");
            }
        }
        Signal::TaskQueued { agent } => parts.tasks.wake_agent(&agent),
        Signal::TaskDone { id } => parts.tasks.remote_done(&id).await,
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
            let executor = parts.executor.clone();
            let cluster = cluster.clone();
            let store = parts.store.clone();
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
            cluster.inner.tail_wake.notify_one();
            if let Err(e) = parts.registry.refresh_all().await {
                tracing::warn!(error = %e, "re-reading agents failed");
            }
            parts.reload_config().await;
            parts.tasks.recheck_waiters().await;
            if cluster.is_leader()
                && let Err(e) = parts.webhooks.sync().await
            {
                tracing::warn!(error = %e, "webhook subscriptions: sync failed");
            }
            cluster.tell_local(Signal::Resync);
        }
    }
}

/// What becoming (or ceasing to be) the leader starts (stops): webhook
/// delivery, the health checker and retention.
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
