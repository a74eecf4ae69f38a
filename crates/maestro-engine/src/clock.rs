//! Wall-clock milliseconds that follow tokio's clock.
//!
//! The engine's timestamps and timers are wall-clock milliseconds (they are
//! persisted and survive restarts). Reading them through tokio's `Instant`,
//! anchored to the wall clock once per runtime, keeps them monotonic and lets
//! tests drive time with tokio's paused clock (each test runtime has its own
//! anchor, so a paused runtime never skews a real-time one).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use maestro_core::model::Timestamp;
use tokio::runtime::{Handle, Id};
use tokio::time::Instant;

type Anchors = RwLock<HashMap<Id, (Instant, Timestamp)>>;

static ANCHORS: OnceLock<Anchors> = OnceLock::new();

fn system_ms() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Timestamp)
        .unwrap_or(0)
}

fn anchor() -> Option<(Instant, Timestamp)> {
    let id = Handle::try_current().ok()?.id();
    let anchors = ANCHORS.get_or_init(Default::default);
    if let Some(a) = anchors.read().expect("clock lock").get(&id) {
        return Some(*a);
    }
    let mut w = anchors.write().expect("clock lock");
    Some(*w.entry(id).or_insert_with(|| (Instant::now(), system_ms())))
}

/// Milliseconds since the Unix epoch, monotonic within a runtime.
pub fn now_ms() -> Timestamp {
    match anchor() {
        Some((i, ms)) => ms + i.elapsed().as_millis() as Timestamp,
        None => system_ms(),
    }
}

/// The tokio instant at which wall-clock `at` is reached.
pub fn instant_at(at: Timestamp) -> Instant {
    let now = now_ms();
    Instant::now() + std::time::Duration::from_millis(at.saturating_sub(now))
}
