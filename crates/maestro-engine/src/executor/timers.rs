//! The executor's timers: a min-heap of wall-clock deadlines. Timers are not a
//! source of truth: every one can be re-derived from persisted state (retry
//! `nextRetryAt`, the execution `deadline`, rollback entries), which is how they
//! survive a restart. A timer that no longer matches the state is ignored by the
//! state machine, so nothing needs cancelling.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use maestro_core::machine::TimerKey;
use maestro_core::model::Timestamp;

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Timestamp, u64)>>,
    entries: std::collections::HashMap<u64, (String, TimerKey)>,
    next_id: u64,
}

impl Timers {
    pub fn push(&mut self, at: Timestamp, exec_id: String, key: TimerKey) {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((at, id)));
        self.entries.insert(id, (exec_id, key));
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(String, TimerKey)> {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(e) = self.entries.remove(&id) {
                due.push(e);
            }
        }
        due
    }
}
