//! Webhook subscriptions: matching events POSTed to a URL.
//!
//! Each subscription has its own worker reading a [`Feed`]: the event log
//! after the subscription's durable cursor, then live events from the bus
//! (a live queue of [`BACKLOG`] events; when a slow receiver lets it
//! overflow, the worker catches up from the log, so no event is skipped).
//! The worker delivers in seq order, one at a time,
//! retrying a failed delivery with exponential backoff (up to [`MAX_ATTEMPTS`]
//! attempts) before the next event; a destination refused by the outbound
//! allow-list is not retried. Deliveries go through the same [`Outbound`]
//! port (allow-list, no redirects, no proxies) as the `callback` error handler.
//!
//! Each POST carries the event as JSON, masked as a non-admin reader sees it
//! ([`EventMasker`]: sensitive values of the event's execution), and the
//! headers `X-Maestro-Delivery: <subscriptionId>:<seq>` (the same on every
//! retry, so receivers can drop duplicates), `X-Maestro-Event: <type>` and
//! `X-Maestro-Signature: sha256=<hex HMAC-SHA256 of the body with the
//! subscription's secret>`.
//!
//! Delivery is at least once, across restarts too: the seq of the last event
//! handled is stored as the subscription's cursor (at most every
//! [`CURSOR_EVERY_MS`] and when the worker stops), and a worker starts after
//! it. After a crash, events handled since the last stored cursor are
//! delivered again, with the same `X-Maestro-Delivery`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use maestro_core::model::{ChoreographyEvent, EventFilter};
use maestro_core::ports::{Outbound, OutboundError, Store, SubscriptionRecord};
use serde::Serialize;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::eventbus::EventBus;
use crate::feed::{Feed, Overflow};
use crate::redact::EventMasker;
use crate::registry::Registry;

/// Live events a subscription's worker may fall behind before it catches up
/// from the log.
pub const BACKLOG: usize = 1000;
/// The delivery cursor is stored at most this often (and when a worker stops).
pub const CURSOR_EVERY_MS: u64 = 1000;
/// Attempts per event (the first included).
pub const MAX_ATTEMPTS: u32 = 8;
const FIRST_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 30_000;
const DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// Delivery counters of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStats {
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Events given up on after their attempts (or refused by the allow-list).
    pub failed: u64,
    /// Times the live backlog overflowed and the worker caught up from the log.
    pub catch_ups: u64,
    /// POSTs made, retries included.
    pub attempts: u64,
    /// Seq of the last event delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    attempts: AtomicU64,
    catch_ups: AtomicU64,
    last: Mutex<(Option<u64>, Option<u64>, Option<String>)>,
}

struct Worker {
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// The webhook deliverer. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    bus: EventBus,
    registry: Registry,
    outbound: Option<Arc<dyn Outbound>>,
    workers: Arc<Mutex<HashMap<String, Worker>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

/// `sha256=<hex>` of the body with the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn filter_of(sub: &SubscriptionRecord) -> EventFilter {
    EventFilter {
        event_types: sub.event_types.clone(),
        agent_id: sub.agent_id.clone(),
        workflow_id: sub.workflow_id.clone(),
        ..Default::default()
    }
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        bus: EventBus,
        registry: Registry,
        outbound: Option<Arc<dyn Outbound>>,
        stop: CancellationToken,
    ) -> Self {
        Webhooks {
            store,
            bus,
            registry,
            outbound,
            workers: Arc::default(),
            stop,
        }
    }

    /// Start delivering to `sub` the events after `cursor` (replacing a
    /// worker of the same id).
    pub fn start(&self, sub: SubscriptionRecord, cursor: u64) {
        let Some(outbound) = self.outbound.clone() else {
            tracing::warn!(subscription = %sub.id, "no outbound HTTP configured: webhooks are not delivered");
            return;
        };
        let counters = Arc::new(Counters::default());
        let stop = self.stop.child_token();
        let mut feed = Feed::new(
            self.store.clone(),
            &self.bus,
            filter_of(&sub),
            Some(cursor),
            BACKLOG,
            Overflow::CatchUp,
        );
        if let Some(old) = self.workers.lock().expect("webhooks").insert(
            sub.id.clone(),
            Worker {
                counters: counters.clone(),
                stop: stop.clone(),
            },
        ) {
            old.stop.cancel();
        }
        let mut masker = EventMasker::new(self.store.clone(), self.registry.clone());
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut stored = cursor;
            let mut stored_at = now_ms();
            // The last event delivered or given up on.
            let mut handled = cursor;
            while let Some(event) = feed.next(&stop).await {
                let event = masker.event(event).await;
                deliver(&*outbound, &sub, &event, &counters, &stop).await;
                if stop.is_cancelled() {
                    // Maybe not handled: delivered again after the restart.
                    break;
                }
                handled = event.seq;
                counters
                    .catch_ups
                    .store(feed.catch_ups(), Ordering::Relaxed);
                if now_ms().saturating_sub(stored_at) >= CURSOR_EVERY_MS {
                    stored = store_cursor(&*store, &sub.id, handled, stored).await;
                    stored_at = now_ms();
                }
            }
            store_cursor(&*store, &sub.id, handled, stored).await;
        });
    }

    /// Run one worker per stored subscription, from its stored cursor: start
    /// the missing ones, stop those deleted (cluster mode: the leader does this
    /// when it is elected and when subscriptions change on any node).
    pub async fn sync(&self) -> maestro_core::Result<()> {
        let subs = self.store.list_subscriptions().await?;
        let ids: std::collections::HashSet<String> = subs.iter().map(|s| s.id.clone()).collect();
        let gone: Vec<String> = self
            .workers
            .lock()
            .expect("webhooks")
            .keys()
            .filter(|id| !ids.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.stop(&id);
        }
        for sub in subs {
            if self.workers.lock().expect("webhooks").contains_key(&sub.id) {
                continue;
            }
            let cursor = self.store.subscription_cursor(&sub.id).await?.unwrap_or(0);
            self.start(sub, cursor);
        }
        Ok(())
    }

    /// Stop every worker (their cursors are stored as they stop).
    pub fn stop_all(&self) {
        for (_, w) in self.workers.lock().expect("webhooks").drain() {
            w.stop.cancel();
        }
    }

    /// Stop delivering to subscription `id`.
    pub fn stop(&self, id: &str) {
        if let Some(w) = self.workers.lock().expect("webhooks").remove(id) {
            w.stop.cancel();
        }
    }

    /// The counters of subscription `id`.
    pub fn stats(&self, id: &str) -> Option<DeliveryStats> {
        let workers = self.workers.lock().expect("webhooks");
        let c = &workers.get(id)?.counters;
        let last = c.last.lock().expect("webhook counters").clone();
        Some(DeliveryStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            catch_ups: c.catch_ups.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            last_delivered_seq: last.0,
            last_delivered_at: last.1,
            last_error: last.2,
        })
    }
}

/// Store the delivery cursor; answers what is stored now.
async fn store_cursor(store: &dyn Store, id: &str, seq: u64, stored: u64) -> u64 {
    if seq <= stored {
        return stored;
    }
    match store.set_subscription_cursor(id, seq).await {
        Ok(_) => seq,
        Err(e) => {
            tracing::warn!(subscription = %id, error = %e, "storing the webhook cursor failed");
            stored
        }
    }
}

/// Deliver one event, retrying with backoff.
async fn deliver(
    outbound: &dyn Outbound,
    sub: &SubscriptionRecord,
    event: &ChoreographyEvent,
    counters: &Counters,
    stop: &CancellationToken,
) {
    let body = match serde_json::to_value(event) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "webhook: event does not serialize");
            return;
        }
    };
    // What reqwest will send for this value, byte for byte.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let headers = vec![
        (
            "X-Maestro-Delivery".to_owned(),
            format!("{}:{}", sub.id, event.seq),
        ),
        (
            "X-Maestro-Event".to_owned(),
            event.event_type.as_str().to_owned(),
        ),
        (
            "X-Maestro-Signature".to_owned(),
            signature(&sub.secret, &bytes),
        ),
    ];
    let mut backoff = FIRST_BACKOFF_MS;
    for attempt in 1..=MAX_ATTEMPTS {
        counters.attempts.fetch_add(1, Ordering::Relaxed);
        let result = outbound
            .post_json(&sub.url, &body, &headers, DELIVERY_TIMEOUT_MS)
            .await;
        let why = match result {
            Ok(_) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                let mut last = counters.last.lock().expect("webhook counters");
                *last = (Some(event.seq), Some(now_ms()), last.2.take());
                metrics::counter!("maestro_webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                return;
            }
            Err(e) => e,
        };
        let final_ = matches!(
            why,
            OutboundError::Refused(_) | OutboundError::InvalidUrl(_)
        ) || attempt == MAX_ATTEMPTS;
        tracing::debug!(subscription = %sub.id, seq = event.seq, attempt, error = %why, "webhook delivery failed");
        counters.last.lock().expect("webhook counters").2 = Some(why.to_string());
        if final_ {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("maestro_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            tracing::warn!(subscription = %sub.id, seq = event.seq, error = %why, "webhook delivery given up");
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
