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

/// Step this runtime's wall clock forward by `ms` (as an NTP step would),
/// without moving tokio's clock: for tests that need a day to pass on a store
/// whose driver runs on real time (SQLite, PostgreSQL), where tokio's paused
/// clock cannot be used. Timers armed for a wall-clock time come due earlier
/// accordingly. Outside a runtime it does nothing.
#[doc(hidden)]
pub fn step_wall_clock(ms: u64) {
    if anchor().is_none() {
        return;
    }
    let Ok(id) = Handle::try_current().map(|h| h.id()) else {
        return;
    };
    let anchors = ANCHORS.get_or_init(Default::default);
    if let Some(a) = anchors.write().expect("clock lock").get_mut(&id) {
        a.1 += ms;
    }
}

/// The tokio instant at which wall-clock `at` is reached.
pub fn instant_at(at: Timestamp) -> Instant {
    let now = now_ms();
    Instant::now() + std::time::Duration::from_millis(at.saturating_sub(now))
}
