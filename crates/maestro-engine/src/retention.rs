//! Retention (docs/OPERATIONS.md "Retention"): finished executions and events
//! older than their retention are deleted in the background, so the store does
//! not grow without bound.
//!
//! - An execution is deleted (with its steps, attempts and idempotency keys)
//!   once it **finished** longer ago than `executions_ms`; pending, running and
//!   paused executions are never deleted, however old, nor one that a live
//!   `Idempotency-Key` claim points at (it stays until the claim expires, 24 h
//!   after its creation).
//! - An event is deleted once its `timestamp` is older than `events_ms`. Seqs
//!   are never reused; a client resuming from before the horizon (SSE
//!   `Last-Event-ID`, a lagging webhook subscription) continues with the oldest
//!   event left.
//! - A pass runs every [`RETENTION_EVERY`], in batches sized so that each one
//!   holds the store's writer for about [`HOLD`], each followed by a pause at
//!   least as long: commits are never held up for long, and retention takes at
//!   most about half of the writer's time. In a cluster the leader runs it.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::Result;
use maestro_core::model::Timestamp;
use maestro_core::ports::Store;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// How often a retention pass runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How long one batch should hold the writer.
pub const HOLD: Duration = Duration::from_millis(10);
/// The first batch of a pass; later ones are sized from the time it took.
const FIRST_BATCH: usize = 100;
const MIN_BATCH: usize = 10;
const MAX_BATCH: usize = 5000;
const MIN_PAUSE: Duration = Duration::from_millis(5);

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
        out.executions = paced(move |n| store.purge_executions(before, now, n)).await?;
    }
    if let Some(ms) = retention.events_ms {
        let before = now.saturating_sub(ms);
        out.events = paced(move |n| store.purge_events(before, n)).await?;
    }
    Ok(out)
}

/// Run `delete(batch)` until it deletes fewer rows than asked, sizing each batch
/// from the last one's time per row (see [`next_batch`]) and pausing after each
/// for at least as long as it took.
async fn paced<F, Fut>(mut delete: F) -> Result<u64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut batch = FIRST_BATCH;
    let mut total = 0;
    loop {
        let started = tokio::time::Instant::now();
        let n = delete(batch).await?;
        total += n;
        if (n as usize) < batch {
            return Ok(total);
        }
        let took = started.elapsed();
        batch = next_batch(batch, took);
        tokio::time::sleep(took.max(MIN_PAUSE)).await;
    }
}

/// The batch that should take about [`HOLD`], given that `batch` rows took
/// `took`: at most twice the last one, within [`MIN_BATCH`]..=[`MAX_BATCH`].
fn next_batch(batch: usize, took: Duration) -> usize {
    let per_row = took.as_secs_f64() / batch as f64;
    let fits = if per_row > 0.0 {
        (HOLD.as_secs_f64() / per_row) as usize
    } else {
        MAX_BATCH
    };
    fits.min(batch.saturating_mul(2))
        .clamp(MIN_BATCH, MAX_BATCH)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sized_to_the_hold() {
        let ms = Duration::from_millis;
        // 100 rows in 20 ms: 5 rows per ms, 50 fit in 10 ms.
        assert_eq!(next_batch(100, ms(20)), 50);
        // Fast rows: growth is at most twofold per batch, up to the cap.
        assert_eq!(next_batch(100, ms(1)), 200);
        assert_eq!(next_batch(4000, Duration::ZERO), MAX_BATCH);
        // Very slow rows: never below the floor.
        assert_eq!(next_batch(100, Duration::from_secs(5)), MIN_BATCH);
    }

    #[tokio::test(start_paused = true)]
    async fn paced_deletes_until_a_short_batch_and_pauses_between() {
        let mut left = 1_000u64;
        let mut asked = Vec::new();
        let started = tokio::time::Instant::now();
        let total = paced(|n| {
            asked.push(n);
            let took = left.min(n as u64);
            left -= took;
            async move {
                // 0.1 ms per row.
                tokio::time::sleep(Duration::from_micros(100 * took)).await;
                Ok(took)
            }
        })
        .await
        .unwrap();
        assert_eq!(total, 1_000);
        assert_eq!(left, 0);
        assert_eq!(asked[0], FIRST_BATCH);
        assert!(
            asked.iter().all(|&n| n <= 100),
            "10 ms hold at 0.1 ms per row is 100 rows: {asked:?}"
        );
        // 1000 rows of deleting (100 ms) and a pause as long after each full batch.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(190),
            "pauses between batches: {elapsed:?}"
        );
    }
}
