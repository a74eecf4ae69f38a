//! Retention (docs/OPERATIONS.md "Retention"): finished executions and events
//! older than their retention are deleted in the background, so the store does
//! not grow without bound.
//!
//! - An execution is deleted (with its steps, attempts and idempotency keys)
//!   once it **finished** longer ago than `executions_ms`; pending, running and
//!   paused executions are never deleted, however old.
//! - An event is deleted once its `timestamp` is older than `events_ms`. Seqs
//!   are never reused; a client resuming from before the horizon (SSE
//!   `Last-Event-ID`, a lagging webhook subscription) continues with the oldest
//!   event left.
//! - A pass runs every [`RETENTION_EVERY`], in batches of [`BATCH`] rows with a
//!   pause between batches, so that commits are never held up for long. In a
//!   cluster the leader runs it.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::Result;
use maestro_core::model::Timestamp;
use maestro_core::ports::Store;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// How often a retention pass runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Rows deleted per statement.
pub const BATCH: usize = 1000;
const PAUSE: Duration = Duration::from_millis(20);

/// How long finished executions and events are kept; `None` keeps them forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub executions_ms: Option<u64>,
    pub events_ms: Option<u64>,
}

impl Retention {
    pub fn is_off(&self) -> bool {
        self.executions_ms.is_none() && self.events_ms.is_none()
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub executions: u64,
    pub events: u64,
}

/// One retention pass as of `now`.
pub async fn purge(store: &dyn Store, retention: Retention, now: Timestamp) -> Result<Purged> {
    let mut out = Purged::default();
    if let Some(ms) = retention.executions_ms {
        let before = now.saturating_sub(ms);
        loop {
            let n = store.purge_executions(before, BATCH).await?;
            out.executions += n;
            if (n as usize) < BATCH {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    if let Some(ms) = retention.events_ms {
        let before = now.saturating_sub(ms);
        loop {
            let n = store.purge_events(before, BATCH).await?;
            out.events += n;
            if (n as usize) < BATCH {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(out)
}

/// Run a pass every [`RETENTION_EVERY`] (the first one soon after start) until
/// `cancel`.
pub(crate) async fn run(store: Arc<dyn Store>, retention: Retention, cancel: CancellationToken) {
    if retention.is_off() {
        return;
    }
    let mut wait = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = RETENTION_EVERY;
        match purge(&*store, retention, now_ms()).await {
            Ok(p) => {
                metrics::counter!("maestro_retention_purged_total", "kind" => "executions")
                    .increment(p.executions);
                metrics::counter!("maestro_retention_purged_total", "kind" => "events")
                    .increment(p.events);
                if p.executions + p.events > 0 {
                    tracing::info!(
                        executions = p.executions,
                        events = p.events,
                        "retention: deleted old rows"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
        }
    }
}
