//! The in-process Event Bus: live delivery of committed events
//! (docs/ARCHITECTURE.md "Events", docs/API.md "Events").
//!
//! Events are committed to the store first, which gives them their `seq` in commit
//! order; they are then [`EventBus::publish`]ed here for live delivery, fanned out to
//! the subscribers whose [`EventFilter`] matches. The bus keeps no history: the
//! store's event log is the history, and every reader of past events (the event
//! routes, [`Feed`](crate::feed::Feed) behind the SSE stream and webhooks) reads it
//! there.
//!
//! # Never blocking the publisher
//!
//! Each subscriber owns a bounded queue. Publishing takes one short lock and
//! `try_send`s to every matching subscriber: a subscriber whose queue is full loses
//! that event (its [`EventStream::dropped`] counter increments) and nobody else is
//! affected. A subscriber that lost events can catch up from the store by `seq`.
//! Publishing and fanning out under the same lock keeps every subscriber's events in
//! `seq` order even with several publishing threads.
//!
//! Events are shared as `Arc<ChoreographyEvent>` between the queues, so publishing
//! costs one allocation plus a reference count per matching subscriber; the receiver
//! pays for its own copy ([`EventStream::recv`]).
//!
//! # Ordering contract for publishers
//!
//! An event whose `seq` is not greater than the last published one is ignored: with
//! several nodes fanning out the same log, the same event may arrive twice. Hence
//! publishers must publish in `seq` order; an event published after a later one is
//! not delivered live (it is still in the store).
//!
//! # Quick start
//!
//! ```
//! use maestro_core::model::{EventFilter, EventType, NewEvent};
//! use maestro_engine::eventbus::EventBus;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = EventBus::new();
//! let mut stream = bus.subscribe(
//!     EventFilter { event_types: vec![EventType::WorkflowCompleted], ..Default::default() },
//!     1024,
//! );
//! // As committed by a store, which gave it seq 1.
//! let committed = NewEvent::engine(EventType::WorkflowCompleted, serde_json::json!({}), 0)
//!     .into_event(1);
//! bus.publish(committed.clone());
//! assert_eq!(stream.recv().await, Some(committed));
//! bus.close();
//! assert_eq!(stream.recv().await, None);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use maestro_core::model::{ChoreographyEvent, EventFilter, EventType};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};
use tokio_util::task::TaskTracker;

/// A subscription's id, `sub_<n>`.
pub type SubscriptionId = String;

/// Cheap-to-clone handle on the Event Bus.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Mirrors `State::last_seq` so that readers need no lock.
    last_seq: AtomicU64,
    published_total: AtomicU64,
    dropped_total: AtomicU64,
    next_subscription: AtomicU64,
    /// The `subscribe_fn` tasks, so that shutdown can wait for them.
    handlers: TaskTracker,
}

struct State {
    last_seq: u64,
    subscribers: Vec<Subscriber>,
    closed: bool,
}

/// Publishing walks every subscriber, so the hot fields are kept small and first:
/// the type mask rejects most non-matching events without touching the filter.
struct Subscriber {
    /// Bit `1 << type` for each accepted type.
    type_mask: u64,
    /// The filter checks more than the event type.
    needs_full_match: bool,
    tx: mpsc::Sender<Arc<ChoreographyEvent>>,
    shared: Arc<SubscriptionShared>,
    filter: Box<EventFilter>,
    id: SubscriptionId,
}

impl Subscriber {
    fn wants(&self, event: &ChoreographyEvent) -> bool {
        self.type_mask & type_bit(event.event_type) != 0
            && (!self.needs_full_match || self.filter.matches(event))
    }
}

const _: () = assert!(EventType::ALL.len() <= 64, "type masks are u64");

fn type_bit(event_type: EventType) -> u64 {
    1 << (event_type as u32)
}

fn type_mask(filter: &EventFilter) -> u64 {
    if filter.event_types.is_empty() {
        u64::MAX
    } else {
        filter.event_types.iter().fold(0, |m, &t| m | type_bit(t))
    }
}

/// What a subscription's two ends both see.
#[derive(Default)]
struct SubscriptionShared {
    /// Set by `unsubscribe`/`close`: the stream ends at once, queued events are discarded.
    ended: AtomicBool,
    dropped: AtomicU64,
}

/// The receiving end of a subscription. Dropping it unsubscribes.
pub struct EventStream {
    id: SubscriptionId,
    rx: mpsc::Receiver<Arc<ChoreographyEvent>>,
    shared: Arc<SubscriptionShared>,
    bus: Weak<Inner>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    /// A bus that has published nothing yet (see [`resume_after`](Self::resume_after)).
    pub fn new() -> Self {
        EventBus {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    last_seq: 0,
                    subscribers: Vec::new(),
                    closed: false,
                }),
                last_seq: AtomicU64::new(0),
                published_total: AtomicU64::new(0),
                dropped_total: AtomicU64::new(0),
                next_subscription: AtomicU64::new(1),
                handlers: TaskTracker::new(),
            }),
        }
    }

    /// Continue after the store's log: events with a `seq` up to `seq` count as
    /// published already (at start, `seq` is the store's last one). Never moves back.
    pub fn resume_after(&self, seq: u64) {
        let mut state = self.inner.lock();
        if seq > state.last_seq {
            state.last_seq = seq;
            self.inner.last_seq.store(seq, Ordering::Release);
        }
    }

    /// Publish an already committed event. Ignored when its `seq` is not greater than
    /// the last published one. Never blocks on a subscriber.
    pub fn publish(&self, event: ChoreographyEvent) {
        let mut state = self.inner.lock();
        if event.seq <= state.last_seq {
            tracing::trace!(
                seq = event.seq,
                last_seq = state.last_seq,
                "event bus: ignoring an event already published"
            );
            return;
        }
        self.inner.publish_locked(&mut state, Arc::new(event));
    }

    /// Tests: publish an event that no store has committed, with `seq = last_seq + 1`.
    #[cfg(test)]
    fn publish_new(&self, event: maestro_core::model::NewEvent) -> ChoreographyEvent {
        let event = event.into_event(self.last_seq() + 1);
        self.publish(event.clone());
        event
    }

    /// The `seq` of the last published event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// Subscribe to the live events matching `filter`, from now on. The subscriber's
    /// queue holds `queue_capacity` events (at least 1); when it is full, further
    /// events are dropped for this subscriber only.
    pub fn subscribe(&self, filter: EventFilter, queue_capacity: usize) -> EventStream {
        self.inner
            .lock()
            .subscribe(&self.inner, filter, queue_capacity)
    }

    /// The original's `subscribe(types, handler)`: one task per subscription awaits
    /// `handler` for each matching event, in order. A panicking handler is logged and
    /// the subscription goes on with the next event. A slow handler only fills its own
    /// queue. Must be called within a tokio runtime.
    pub fn subscribe_fn<F, Fut>(
        &self,
        filter: EventFilter,
        queue_capacity: usize,
        handler: F,
    ) -> SubscriptionId
    where
        F: Fn(ChoreographyEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut stream = self.subscribe(filter, queue_capacity);
        let id = stream.id().to_owned();
        self.inner.handlers.spawn(async move {
            while let Some(event) = stream.recv().await {
                let seq = event.seq;
                let outcome = match catch_unwind(AssertUnwindSafe(|| handler(event))) {
                    Ok(future) => CatchUnwind(Box::pin(future)).await,
                    Err(panic) => Err(panic),
                };
                if let Err(panic) = outcome {
                    tracing::warn!(
                        subscription = stream.id(),
                        seq,
                        panic = panic_message(&*panic),
                        "event bus: subscription handler panicked; continuing with the next event"
                    );
                }
            }
        });
        id
    }

    /// End a subscription: its stream returns `None` from now on, even for events
    /// already queued. False when there is no such subscription.
    pub fn unsubscribe(&self, id: &str) -> bool {
        self.inner.unsubscribe(id)
    }

    pub fn subscription_count(&self) -> usize {
        self.inner.lock().subscribers.len()
    }

    /// Events lost by all subscribers, past and present, because their queue was full.
    pub fn dropped_total(&self) -> u64 {
        self.inner.dropped_total.load(Ordering::Relaxed)
    }

    /// Events accepted by `publish`/`publish_new` (duplicates not counted).
    pub fn published_total(&self) -> u64 {
        self.inner.published_total.load(Ordering::Relaxed)
    }

    /// End every stream (their `recv` returns `None`) and refuse new subscriptions
    /// (they get an ended stream). Publishing still advances [`last_seq`](Self::last_seq).
    pub fn close(&self) {
        let subscribers = {
            let mut state = self.inner.lock();
            state.closed = true;
            std::mem::take(&mut state.subscribers)
        };
        for subscriber in &subscribers {
            subscriber.shared.ended.store(true, Ordering::Release);
        }
        self.inner.handlers.close();
        // Dropping the senders outside the lock wakes the receivers.
        drop(subscribers);
    }

    /// After [`close`](Self::close): wait until every `subscribe_fn` task has
    /// finished its current handler and stopped (bound it with a timeout).
    pub async fn wait_handlers(&self) {
        self.inner.handlers.wait().await;
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("EventBus")
            .field("last_seq", &state.last_seq)
            .field("subscribers", &state.subscribers.len())
            .field("closed", &state.closed)
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; if something did, the state is still
        // consistent (each step leaves it valid), so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_locked(&self, state: &mut State, event: Arc<ChoreographyEvent>) {
        state.last_seq = event.seq;
        self.last_seq.store(event.seq, Ordering::Release);
        self.published_total.fetch_add(1, Ordering::Relaxed);

        state.subscribers.retain(|subscriber| {
            if !subscriber.wants(&event) {
                return true;
            }
            match subscriber.tx.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    let before = subscriber.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    self.dropped_total.fetch_add(1, Ordering::Relaxed);
                    // The first loss, then ever more rarely: a stuck subscriber must not flood the log.
                    if (before + 1).is_power_of_two() {
                        tracing::warn!(
                            subscription = %subscriber.id,
                            dropped = before + 1,
                            "event bus: subscriber queue full, dropping events for it"
                        );
                    }
                    true
                }
                // The stream was dropped without unsubscribing.
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    fn unsubscribe(&self, id: &str) -> bool {
        let removed = {
            let mut state = self.lock();
            state
                .subscribers
                .iter()
                .position(|s| s.id == id)
                .map(|i| state.subscribers.swap_remove(i))
        };
        match removed {
            Some(subscriber) => {
                subscriber.shared.ended.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

impl State {
    fn subscribe(
        &mut self,
        bus: &Arc<Inner>,
        filter: EventFilter,
        queue_capacity: usize,
    ) -> EventStream {
        let n = bus.next_subscription.fetch_add(1, Ordering::Relaxed);
        let id = format!("sub_{n}");
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let shared = Arc::new(SubscriptionShared::default());
        if self.closed {
            shared.ended.store(true, Ordering::Release);
        } else {
            // Robust to new filter fields: anything beyond the types means a full match.
            let needs_full_match = EventFilter {
                event_types: Vec::new(),
                ..filter.clone()
            } != EventFilter::default();
            self.subscribers.push(Subscriber {
                type_mask: type_mask(&filter),
                needs_full_match,
                tx,
                shared: Arc::clone(&shared),
                filter: Box::new(filter),
                id: id.clone(),
            });
        }
        EventStream {
            id,
            rx,
            shared,
            bus: Arc::downgrade(bus),
        }
    }
}

impl EventStream {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event, or `None` once unsubscribed or the bus is closed.
    /// Cancel-safe: usable in `tokio::select!`.
    pub async fn recv(&mut self) -> Option<ChoreographyEvent> {
        if self.check_ended() {
            return None;
        }
        let event = self.rx.recv().await?;
        // Unsubscribed while the event waited in the queue.
        if self.check_ended() {
            return None;
        }
        Some(Arc::unwrap_or_clone(event))
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<ChoreographyEvent> {
        if self.check_ended() {
            return None;
        }
        match self.rx.try_recv() {
            Ok(event) if !self.check_ended() => Some(Arc::unwrap_or_clone(event)),
            Ok(_) | Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Events lost because this subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn check_ended(&mut self) -> bool {
        if !self.shared.ended.load(Ordering::Acquire) {
            return false;
        }
        // Release what is still queued; nothing will read it.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        true
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if self.shared.ended.load(Ordering::Acquire) {
            return;
        }
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(&self.id);
        }
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("id", &self.id)
            .field("dropped", &self.dropped())
            .finish()
    }
}

/// Turns a panic while polling the handler's future into an `Err`, so that one bad
/// event does not end the subscription's task.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future<Output = ()>> Future for CatchUnwind<F> {
    type Output = Result<(), Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::time::{Duration, Instant};

    use maestro_core::model::{EventType, NewEvent};
    use serde_json::json;

    use super::*;

    fn new_event(event_type: EventType, correlation: &str) -> NewEvent {
        NewEvent {
            correlation_id: correlation.to_owned(),
            ..NewEvent::engine(event_type, json!({"n": 1}), 1_700_000_000_000)
        }
    }

    fn committed(seq: u64, event_type: EventType) -> ChoreographyEvent {
        new_event(event_type, "corr").into_event(seq)
    }

    fn types(list: &[EventType]) -> EventFilter {
        EventFilter {
            event_types: list.to_vec(),
            ..EventFilter::default()
        }
    }

    /// The seqs of the events queued for `stream`, taking them.
    fn received(stream: &mut EventStream) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(e) = stream.try_recv() {
            seqs.push(e.seq);
        }
        seqs
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn publishes_to_a_subscriber() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 16);
        let event = bus.publish_new(new_event(EventType::AgentRegistered, "c1"));
        assert_eq!(event.seq, 1);
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.source_agent, "maestro");

        assert_eq!(stream.recv().await, Some(event));
        assert_eq!(bus.published_total(), 1);
        assert_eq!(bus.last_seq(), 1);
    }

    #[tokio::test]
    async fn resume_after_continues_the_store_log() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 16);
        bus.resume_after(41);
        assert_eq!(bus.last_seq(), 41);
        bus.publish(committed(41, EventType::AgentEvent)); // already in the log: ignored
        bus.publish(committed(42, EventType::AgentEvent));
        bus.resume_after(7); // never moves back
        assert_eq!(bus.last_seq(), 42);
        assert_eq!(received(&mut stream), vec![42]);
        assert_eq!(bus.published_total(), 1);
    }

    #[tokio::test]
    async fn filters_by_type() {
        let bus = EventBus::new();
        let mut started = bus.subscribe(types(&[EventType::WorkflowStarted]), 16);
        let mut two = bus.subscribe(
            types(&[EventType::AgentRegistered, EventType::WorkflowCompleted]),
            16,
        );
        bus.publish_new(new_event(EventType::AgentRegistered, "c"));
        bus.publish_new(new_event(EventType::WorkflowStarted, "c"));
        bus.publish_new(new_event(EventType::WorkflowCompleted, "c"));
        bus.publish_new(new_event(EventType::WorkflowStarted, "c"));

        assert_eq!(received(&mut started), vec![2, 4]);
        assert_eq!(received(&mut two), vec![1, 3]);
    }

    #[tokio::test]
    async fn subscribes_to_event_types() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(types(&[EventType::WorkflowCompleted]), 16);
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let id = bus.subscribe_fn(types(&[EventType::WorkflowCompleted]), 16, move |e| {
            let sink = Arc::clone(&sink);
            async move { sink.lock().unwrap().push(e.seq) }
        });
        assert!(id.starts_with("sub_"));
        assert_eq!(bus.subscription_count(), 2);

        bus.publish_new(new_event(EventType::WorkflowStarted, "c"));
        let completed = bus.publish_new(new_event(EventType::WorkflowCompleted, "c"));

        assert_eq!(stream.recv().await, Some(completed));
        assert_eq!(
            stream.try_recv(),
            None,
            "the started event was filtered out"
        );
        eventually("the handler", || *seen.lock().unwrap() == vec![2]).await;
    }

    #[tokio::test]
    async fn subscription_receives_only_events_published_after_it() {
        let bus = EventBus::new();
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        let mut stream = bus.subscribe(EventFilter::default(), 16);
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(2));
        assert_eq!(stream.try_recv(), None);
    }

    #[tokio::test]
    async fn filters_by_correlation_id() {
        let bus = EventBus::new();
        let correlation = |id: &str| EventFilter {
            correlation_id: Some(id.into()),
            ..EventFilter::default()
        };
        let mut a = bus.subscribe(correlation("corr-a"), 16);
        let mut nope = bus.subscribe(correlation("nope"), 16);
        bus.publish_new(new_event(EventType::WorkflowStarted, "corr-a"));
        bus.publish_new(new_event(EventType::WorkflowStarted, "corr-b"));
        bus.publish_new(new_event(EventType::WorkflowCompleted, "corr-a"));

        assert_eq!(received(&mut a), vec![1, 3]);
        assert!(received(&mut nope).is_empty());
    }

    #[tokio::test]
    async fn agent_filter_matches_source_or_target() {
        let bus = EventBus::new();
        let mut from_a = new_event(EventType::AgentEvent, "c");
        from_a.source_agent = "agent-a".into();
        let mut to_a = new_event(EventType::AgentEvent, "c");
        to_a.target_agent = Some("agent-a".into());
        let mut other = new_event(EventType::AgentEvent, "c");
        other.source_agent = "agent-b".into();
        other.target_agent = Some("agent-c".into());

        let filter = EventFilter {
            agent_id: Some("agent-a".into()),
            ..EventFilter::default()
        };
        let mut stream = bus.subscribe(filter, 16);
        let source_only = EventFilter {
            source_agent: Some("agent-a".into()),
            ..EventFilter::default()
        };
        let mut from_a_only = bus.subscribe(source_only, 16);
        for e in [from_a, to_a, other] {
            bus.publish_new(e);
        }

        assert_eq!(stream.recv().await.map(|e| e.seq), Some(1));
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(2));
        assert_eq!(stream.try_recv(), None);
        assert_eq!(received(&mut from_a_only), vec![1]);
    }

    #[tokio::test]
    async fn workflow_filter() {
        let bus = EventBus::new();
        let filter = EventFilter {
            workflow_id: Some("wf-1".into()),
            ..EventFilter::default()
        };
        let mut stream = bus.subscribe(filter, 16);
        for workflow in ["wf-1", "wf-2", "wf-1"] {
            let mut e = new_event(EventType::WorkflowStarted, "c");
            e.workflow_id = Some(workflow.into());
            bus.publish_new(e);
        }
        bus.publish_new(new_event(EventType::AgentRegistered, "c"));

        assert_eq!(received(&mut stream), vec![1, 3]);
    }

    #[tokio::test]
    async fn subscription_filter_combines_types_and_other_fields() {
        let bus = EventBus::new();
        let filter = EventFilter {
            workflow_id: Some("wf-1".into()),
            ..types(&[EventType::WorkflowStarted, EventType::WorkflowCompleted])
        };
        let mut stream = bus.subscribe(filter, 16);
        for (t, workflow) in [
            (EventType::WorkflowStarted, Some("wf-1")),   // 1: yes
            (EventType::WorkflowStarted, Some("wf-2")),   // 2: other workflow
            (EventType::StepStarted, Some("wf-1")),       // 3: other type
            (EventType::WorkflowCompleted, None),         // 4: no workflow
            (EventType::WorkflowCompleted, Some("wf-1")), // 5: yes
        ] {
            let mut e = new_event(t, "c");
            e.workflow_id = workflow.map(Into::into);
            bus.publish_new(e);
        }
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(1));
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(5));
        assert_eq!(stream.try_recv(), None);
    }

    #[tokio::test]
    async fn seq_strictly_increases_and_old_seqs_are_ignored() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 16);

        bus.publish(committed(5, EventType::AgentEvent));
        bus.publish(committed(3, EventType::AgentEvent)); // older: ignored
        bus.publish(committed(5, EventType::AgentAlert)); // duplicate: ignored
        bus.publish(committed(9, EventType::AgentEvent)); // gaps are fine
        let next = bus.publish_new(new_event(EventType::AgentEvent, "c"));
        assert_eq!(next.seq, 10);
        assert_eq!(bus.last_seq(), 10);
        assert_eq!(bus.published_total(), 3);

        let first = stream.try_recv().expect("seq 5");
        assert_eq!(first.event_type, EventType::AgentEvent);
        assert_eq!(received(&mut stream), vec![9, 10]);
    }

    #[tokio::test]
    async fn unsubscribe_ends_the_stream() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 16);
        let other = bus.subscribe(EventFilter::default(), 16);
        bus.publish_new(new_event(EventType::AgentEvent, "c"));

        let id = stream.id().to_owned();
        assert!(bus.unsubscribe(&id));
        assert!(!bus.unsubscribe(&id), "already gone");
        assert!(!bus.unsubscribe("sub_999"));
        assert_eq!(bus.subscription_count(), 1);

        // The queued event is not delivered after unsubscribe.
        assert_eq!(stream.try_recv(), None);
        assert_eq!(stream.recv().await, None);
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        assert_eq!(stream.recv().await, None);
        drop(other);
    }

    #[tokio::test]
    async fn unsubscribe_wakes_a_waiting_receiver() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 16);
        let id = stream.id().to_owned();
        let waiter = tokio::spawn(async move { stream.recv().await });
        tokio::task::yield_now().await;
        assert!(bus.unsubscribe(&id));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("recv returned")
            .unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn dropping_a_stream_unsubscribes() {
        let bus = EventBus::new();
        let stream = bus.subscribe(EventFilter::default(), 16);
        assert_eq!(bus.subscription_count(), 1);
        drop(stream);
        assert_eq!(bus.subscription_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_does_not_block_publish_nor_others() {
        const N: u64 = 10_000;
        const SLOW_CAPACITY: usize = 16;
        let bus = EventBus::new();
        let slow = bus.subscribe(EventFilter::default(), SLOW_CAPACITY);
        let mut fast = bus.subscribe(EventFilter::default(), N as usize);
        let reader = tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(N as usize);
            while let Some(e) = fast.recv().await {
                seqs.push(e.seq);
                if seqs.len() as u64 == N {
                    break;
                }
            }
            (seqs, fast.dropped())
        });

        let publisher = bus.clone();
        let published = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            for _ in 0..N {
                publisher.publish_new(new_event(EventType::AgentEvent, "c"));
            }
            started.elapsed()
        });
        let elapsed = tokio::time::timeout(Duration::from_secs(30), published)
            .await
            .expect("publish must never block")
            .unwrap();
        assert!(
            elapsed < Duration::from_secs(10),
            "publishing took {elapsed:?}"
        );

        let (received, fast_dropped) = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the fast subscriber got everything")
            .unwrap();
        assert_eq!(received, (1..=N).collect::<Vec<_>>());
        assert_eq!(fast_dropped, 0);

        assert_eq!(bus.published_total(), N);
        assert_eq!(slow.dropped(), N - SLOW_CAPACITY as u64);
        assert_eq!(bus.dropped_total(), N - SLOW_CAPACITY as u64);
        // The slow one still has the oldest events it managed to queue.
        let mut slow = slow;
        assert_eq!(slow.try_recv().map(|e| e.seq), Some(1));
    }

    #[tokio::test]
    async fn a_panicking_handler_does_not_stop_its_subscription_nor_others() {
        let bus = EventBus::new();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let others = Arc::new(StdMutex::new(Vec::new()));

        let sink = Arc::clone(&seen);
        bus.subscribe_fn(EventFilter::default(), 16, move |e| {
            // seq 2 panics while building the future, seq 3 while running it.
            assert_ne!(e.seq, 2, "handler refuses event 2");
            let sink = Arc::clone(&sink);
            async move {
                tokio::task::yield_now().await;
                if e.seq == 3 {
                    panic!("handler fails on event 3");
                }
                sink.lock().unwrap().push(e.seq);
            }
        });
        let sink = Arc::clone(&others);
        bus.subscribe_fn(EventFilter::default(), 16, move |e| {
            let sink = Arc::clone(&sink);
            async move { sink.lock().unwrap().push(e.seq) }
        });

        for _ in 0..4 {
            bus.publish_new(new_event(EventType::AgentEvent, "c"));
        }
        eventually("the panicking subscription to reach event 4", || {
            *seen.lock().unwrap() == vec![1, 4]
        })
        .await;
        eventually("the other subscription", || {
            *others.lock().unwrap() == vec![1, 2, 3, 4]
        })
        .await;
        assert_eq!(bus.subscription_count(), 2);

        bus.close();
        tokio::time::timeout(Duration::from_secs(5), bus.wait_handlers())
            .await
            .expect("handler tasks end on close");
    }

    #[tokio::test]
    async fn unsubscribe_stops_a_handler() {
        let bus = EventBus::new();
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let id = bus.subscribe_fn(EventFilter::default(), 16, move |e| {
            let sink = Arc::clone(&sink);
            async move { sink.lock().unwrap().push(e.seq) }
        });
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        eventually("the first event", || seen.lock().unwrap().len() == 1).await;
        assert!(bus.unsubscribe(&id));
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        bus.close();
        tokio::time::timeout(Duration::from_secs(5), bus.wait_handlers())
            .await
            .expect("handler task ended");
        assert_eq!(*seen.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn close_ends_every_stream() {
        let bus = EventBus::new();
        let mut a = bus.subscribe(EventFilter::default(), 16);
        let mut b = bus.subscribe(types(&[EventType::AgentAlert]), 16);
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        bus.close();
        assert_eq!(a.recv().await, None);
        assert_eq!(b.recv().await, None);
        assert_eq!(bus.subscription_count(), 0);

        let mut late = bus.subscribe(EventFilter::default(), 16);
        assert_eq!(bus.subscription_count(), 0);
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        assert_eq!(late.recv().await, None);
        assert_eq!(bus.last_seq(), 2, "publishing still advances the seq");
    }

    #[tokio::test]
    async fn a_full_queue_keeps_order_and_counts_losses() {
        let bus = EventBus::new();
        let mut stream = bus.subscribe(EventFilter::default(), 2);
        for _ in 0..5 {
            bus.publish_new(new_event(EventType::AgentEvent, "c"));
        }
        assert_eq!(stream.dropped(), 3);
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(1));
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(2));
        bus.publish_new(new_event(EventType::AgentEvent, "c"));
        assert_eq!(stream.recv().await.map(|e| e.seq), Some(6));
        assert_eq!(bus.dropped_total(), 3);
    }
}
