//! A gapless, ordered feed of the events matching a filter after a cursor:
//! first the persisted log, then live events from the bus.
//!
//! The feed subscribes to the bus *before* it reads the log, so nothing
//! committed in between is missed (events are committed before they are
//! published); events seen twice are skipped by seq. When the live queue
//! overflows (the reader fell behind), the feed either ends (event streams:
//! the client resumes from the log with `Last-Event-ID`) or goes back to the
//! log from where it was and catches up (webhooks: nothing is ever skipped).

use std::collections::VecDeque;
use std::sync::Arc;

use maestro_core::model::{ChoreographyEvent, EventFilter};
use maestro_core::ports::{EventOrder, Store};
use tokio_util::sync::CancellationToken;

use crate::eventbus::{EventBus, EventStream};

/// Events read from the log per query.
const PAGE: usize = 500;

/// What a feed does when its live queue overflowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// End the feed.
    End,
    /// Read the missed events from the log, then go on.
    CatchUp,
}

enum Phase {
    Log { after: u64 },
    Live,
    Done,
}

/// See the module docs.
pub struct Feed {
    store: Arc<dyn Store>,
    filter: EventFilter,
    live: EventStream,
    overflow: Overflow,
    phase: Phase,
    pending: VecDeque<ChoreographyEvent>,
    last: u64,
    seen_dropped: u64,
    catch_ups: u64,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Events matching `filter` (its `after` is ignored) after `after`, or
    /// only live ones with `None`. `queue` bounds the live queue.
    pub fn new(
        store: Arc<dyn Store>,
        bus: &EventBus,
        filter: EventFilter,
        after: Option<u64>,
        queue: usize,
        overflow: Overflow,
    ) -> Feed {
        let filter = EventFilter {
            after: None,
            ..filter
        };
        // Subscribe before reading the log: nothing falls in between.
        let live = bus.subscribe(filter.clone(), queue);
        Feed {
            store,
            filter,
            live,
            overflow,
            phase: match after {
                Some(after) => Phase::Log { after },
                None => Phase::Live,
            },
            pending: VecDeque::new(),
            last: after.unwrap_or(0),
            seen_dropped: 0,
            catch_ups: 0,
        }
    }

    /// How often the live queue overflowed and the feed caught up from the log.
    pub fn catch_ups(&self) -> u64 {
        self.catch_ups
    }

    /// The seq of the last event handed out (the cursor to resume from).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The next event, in seq order; `None` when the feed ended (`cancel`,
    /// the bus closed, the log unreadable, or an overflow with
    /// [`Overflow::End`]).
    pub async fn next(&mut self, cancel: &CancellationToken) -> Option<ChoreographyEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if e.seq <= self.last {
                    continue;
                }
                self.last = e.seq;
                return Some(e);
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Log { after } => {
                    let f = EventFilter {
                        after: Some(after),
                        ..self.filter.clone()
                    };
                    match self
                        .store
                        .query_events(&f, EventOrder::Ascending, PAGE)
                        .await
                    {
                        Ok(batch) => {
                            let full = batch.len() == PAGE;
                            let next = batch.last().map(|e| e.seq).unwrap_or(after);
                            self.pending.extend(batch);
                            self.phase = if full {
                                Phase::Log { after: next }
                            } else {
                                Phase::Live
                            };
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "event feed: reading the log failed");
                            self.phase = Phase::Done;
                        }
                    }
                }
                Phase::Live => {
                    let got = tokio::select! {
                        e = self.live.recv() => e,
                        _ = cancel.cancelled() => None,
                    };
                    let dropped = self.live.dropped();
                    if dropped > self.seen_dropped {
                        self.seen_dropped = dropped;
                        match self.overflow {
                            Overflow::End => {
                                tracing::debug!(feed = self.live.id(), "slow reader: feed ended");
                                self.phase = Phase::Done;
                            }
                            Overflow::CatchUp => {
                                self.catch_ups += 1;
                                // What the queue lost is in the log; what it
                                // still holds is skipped by seq afterwards.
                                self.pending.clear();
                                self.phase = Phase::Log { after: self.last };
                            }
                        }
                        continue;
                    }
                    match got {
                        Some(e) => self.pending.push_back(e),
                        None => self.phase = Phase::Done,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use maestro_core::model::{EventType, NewEvent};
    use serde_json::json;

    use super::*;

    /// Append `n` events to the store and publish them, as the executor does.
    async fn commit(store: &Arc<dyn Store>, bus: &EventBus, n: usize) -> Vec<u64> {
        let events: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent::engine(EventType::AgentEvent, json!({"i": i}), 1))
            .collect();
        let committed = store.append_events(events).await.unwrap();
        let seqs = committed.iter().map(|e| e.seq).collect();
        for e in committed {
            bus.publish(e);
        }
        seqs
    }

    #[tokio::test]
    async fn log_then_live_in_order_and_catch_up_after_an_overflow() {
        let store: Arc<dyn Store> = Arc::new(maestro_store::MemoryStore::new());
        let bus = EventBus::new();
        let before = commit(&store, &bus, 3).await;
        let cancel = CancellationToken::new();
        // From after the first event, a live queue of 2, catching up.
        let mut feed = Feed::new(
            store.clone(),
            &bus,
            EventFilter::default(),
            Some(before[0]),
            2,
            Overflow::CatchUp,
        );
        // 10 more while nobody reads: the live queue overflows.
        let after = commit(&store, &bus, 10).await;
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(feed.next(&cancel).await.unwrap().seq);
        }
        let want: Vec<u64> = before[1..].iter().chain(&after).copied().collect();
        assert_eq!(got, want, "every event once, in order");
        assert_eq!(feed.last_seq(), *after.last().unwrap());
        let more = commit(&store, &bus, 1).await;
        assert_eq!(feed.next(&cancel).await.unwrap().seq, more[0], "then live");
        // The overflow was noticed on the way and read back from the log.
        assert_eq!(feed.catch_ups(), 1);
        cancel.cancel();
        assert!(feed.next(&cancel).await.is_none());
    }

    #[tokio::test]
    async fn an_overflow_ends_a_feed_that_says_so() {
        let store: Arc<dyn Store> = Arc::new(maestro_store::MemoryStore::new());
        let bus = EventBus::new();
        let cancel = CancellationToken::new();
        let mut feed = Feed::new(
            store.clone(),
            &bus,
            EventFilter::default(),
            None,
            2,
            Overflow::End,
        );
        let seqs = commit(&store, &bus, 5).await;
        let mut got = Vec::new();
        while let Some(e) = feed.next(&cancel).await {
            got.push(e.seq);
        }
        assert!(got.len() < seqs.len(), "{got:?}");
        assert_eq!(
            &seqs[..got.len()],
            &got[..],
            "in order, no gap before the end"
        );
    }
}
