//! The executor's timers: wall-clock deadlines in order. Timers are not a
//! source of truth: every one can be re-derived from persisted state (retry
//! `nextRetryAt`, the execution `deadline`, rollback entries), which is how they
//! survive a restart. A timer that no longer matches the state is ignored by the
//! state machine.
//!
//! The timers of an execution are dropped when it finishes or leaves this node
//! ([`Timers::cancel`]): otherwise every finished execution would hold its
//! workflow-timeout timer until the deadline, and memory would grow with the
//! rate of executions times `defaultWorkflowTimeout`.

use std::collections::{BTreeMap, HashMap};

use maestro_core::machine::TimerKey;
use maestro_core::model::Timestamp;

/// A timer's place in the order: its deadline, then a sequence number that
/// keeps equal deadlines apart and in arming order.
type Slot = (Timestamp, u64);

#[derive(Default)]
pub(super) struct Timers {
    due: BTreeMap<Slot, (String, TimerKey)>,
    by_exec: HashMap<String, Vec<Slot>>,
    next_id: u64,
}

impl Timers {
    pub fn push(&mut self, at: Timestamp, exec_id: String, key: TimerKey) {
        let slot = (at, self.next_id);
        self.next_id += 1;
        self.by_exec.entry(exec_id.clone()).or_default().push(slot);
        self.due.insert(slot, (exec_id, key));
    }

    pub fn next_at(&self) -> Option<Timestamp> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    pub fn pop_due(&mut self, now: Timestamp) -> Vec<(String, TimerKey)> {
        let mut fired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (slot, (exec_id, key)) = entry.remove_entry();
            if let Some(slots) = self.by_exec.get_mut(&exec_id) {
                slots.retain(|s| *s != slot);
                if slots.is_empty() {
                    self.by_exec.remove(&exec_id);
                }
            }
            fired.push((exec_id, key));
        }
        fired
    }

    /// Drop every timer of `exec_id` (it finished, or another node owns it now).
    pub fn cancel(&mut self, exec_id: &str) {
        for slot in self.by_exec.remove(exec_id).unwrap_or_default() {
            self.due.remove(&slot);
        }
    }

    /// Timers armed.
    pub fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(step: &str) -> TimerKey {
        TimerKey::Retry {
            step_id: step.to_owned(),
            attempt: 1,
        }
    }

    #[test]
    fn fire_in_deadline_order_then_arming_order() {
        let mut t = Timers::default();
        t.push(30, "a".into(), retry("3"));
        t.push(10, "b".into(), retry("1"));
        t.push(20, "a".into(), retry("2a"));
        t.push(20, "b".into(), retry("2b"));
        assert_eq!(t.next_at(), Some(10));
        assert!(t.pop_due(9).is_empty());
        let fired: Vec<_> = t.pop_due(20).into_iter().map(|(e, _)| e).collect();
        assert_eq!(fired, ["b", "a", "b"]);
        assert_eq!(t.next_at(), Some(30));
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_exec.len(), 1, "b has no timer left");
        assert_eq!(t.pop_due(u64::MAX).len(), 1);
        assert_eq!((t.len(), t.by_exec.len(), t.next_at()), (0, 0, None));
    }

    #[test]
    fn cancel_drops_only_that_execution() {
        let mut t = Timers::default();
        for i in 0..1000u64 {
            t.push(1_000 + i, format!("e{}", i % 10), retry("s"));
        }
        t.cancel("e3");
        t.cancel("e3");
        t.cancel("nope");
        assert_eq!(t.len(), 900);
        let fired = t.pop_due(u64::MAX);
        assert_eq!(fired.len(), 900);
        assert!(fired.iter().all(|(e, _)| e != "e3"));
        assert_eq!((t.len(), t.by_exec.len()), (0, 0));
    }
}
