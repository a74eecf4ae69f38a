//! Push calls deduplicated by `Idempotency-Key`: one run per key while it is
//! in flight (repeats wait for its result), and a bounded cache of recent
//! results answered again.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::watch;

use super::{AgentError, Outputs};

/// A finished call's result, shared by everyone who asked.
pub(crate) type Outcome = Arc<Result<Outputs, AgentError>>;

/// What a call with some key should do.
pub(crate) enum Claim {
    /// Run it, then [`Dedupe::finish`] with this sender.
    Run(watch::Sender<Option<Outcome>>),
    /// Wait for the run in flight.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Answer this earlier result.
    Done(Outcome),
    /// The key was used for another capability or other inputs.
    Conflict,
}

struct InFlight {
    fingerprint: u64,
    rx: watch::Receiver<Option<Outcome>>,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<String, InFlight>,
    done: HashMap<String, (u64, Outcome)>,
    /// Keys of `done`, oldest first.
    order: VecDeque<String>,
}

pub(crate) struct Dedupe {
    state: Mutex<State>,
    capacity: usize,
}

/// Identifies a request: its capability and inputs.
pub(crate) fn fingerprint(capability: &str, inputs: &Map<String, Value>) -> u64 {
    let mut h = DefaultHasher::new();
    capability.hash(&mut h);
    // serde_json's Display is deterministic for one map (insertion order kept).
    Value::Object(inputs.clone()).to_string().hash(&mut h);
    h.finish()
}

impl Dedupe {
    /// Remembers up to `capacity` results (0: only dedupes calls in flight).
    pub(crate) fn new(capacity: usize) -> Self {
        Dedupe {
            state: Mutex::new(State::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn claim(&self, key: &str, fingerprint: u64) -> Claim {
        let mut s = self.lock();
        if let Some((fp, outcome)) = s.done.get(key) {
            return if *fp == fingerprint {
                Claim::Done(outcome.clone())
            } else {
                Claim::Conflict
            };
        }
        if let Some(f) = s.in_flight.get(key) {
            // A run whose task vanished without finishing does not count.
            let alive = f.rx.borrow().is_some() || f.rx.has_changed().is_ok();
            if alive {
                return if f.fingerprint == fingerprint {
                    Claim::Wait(f.rx.clone())
                } else {
                    Claim::Conflict
                };
            }
        }
        let (tx, rx) = watch::channel(None);
        s.in_flight
            .insert(key.to_owned(), InFlight { fingerprint, rx });
        Claim::Run(tx)
    }

    /// Publishes the result of the run of `key`. Successes and non-retryable
    /// errors are remembered; a retryable error lets a repeat run again.
    pub(crate) fn finish(
        &self,
        key: &str,
        fingerprint: u64,
        outcome: Outcome,
        tx: watch::Sender<Option<Outcome>>,
    ) {
        let mut s = self.lock();
        s.in_flight.remove(key);
        let keep = match outcome.as_ref() {
            Ok(_) => true,
            Err(e) => !e.retryable,
        };
        if keep && self.capacity > 0 && !s.done.contains_key(key) {
            s.done
                .insert(key.to_owned(), (fingerprint, outcome.clone()));
            s.order.push_back(key.to_owned());
            while s.order.len() > self.capacity {
                if let Some(old) = s.order.pop_front() {
                    s.done.remove(&old);
                }
            }
        }
        // Waiters hold receivers: the value reaches them even after this.
        let _ = tx.send(Some(outcome));
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.lock().done.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(n: i64) -> Outcome {
        let mut m = Map::new();
        m.insert("n".into(), n.into());
        Arc::new(Ok(m))
    }

    #[tokio::test]
    async fn one_run_per_key_and_waiters_get_its_result() {
        let d = Dedupe::new(2);
        let Claim::Run(tx) = d.claim("k", 1) else {
            panic!("first claim runs")
        };
        let Claim::Wait(mut rx) = d.claim("k", 1) else {
            panic!("second claim waits")
        };
        assert!(matches!(d.claim("k", 2), Claim::Conflict));
        d.finish("k", 1, ok(7), tx);
        let got = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert_eq!(got.as_ref().as_ref().unwrap()["n"], 7);
        let Claim::Done(again) = d.claim("k", 1) else {
            panic!("cached")
        };
        assert_eq!(again.as_ref().as_ref().unwrap()["n"], 7);
        assert!(matches!(d.claim("k", 3), Claim::Conflict));
    }

    #[test]
    fn the_cache_is_bounded_and_skips_retryable_errors() {
        let d = Dedupe::new(2);
        for k in ["a", "b", "c"] {
            let Claim::Run(tx) = d.claim(k, 0) else {
                panic!()
            };
            d.finish(k, 0, ok(1), tx);
        }
        assert_eq!(d.cached(), 2);
        assert!(matches!(d.claim("a", 0), Claim::Run(_)));
        let Claim::Run(tx) = d.claim("r", 0) else {
            panic!()
        };
        d.finish("r", 0, Arc::new(Err(AgentError::retryable("X", "x"))), tx);
        assert!(matches!(d.claim("r", 0), Claim::Run(_)));
        let Claim::Run(tx) = d.claim("f", 0) else {
            panic!()
        };
        d.finish("f", 0, Arc::new(Err(AgentError::fatal("X", "x"))), tx);
        assert!(matches!(d.claim("f", 0), Claim::Done(_)));
    }

    #[test]
    fn an_abandoned_run_can_be_claimed_again() {
        let d = Dedupe::new(2);
        let Claim::Run(tx) = d.claim("k", 0) else {
            panic!()
        };
        drop(tx);
        assert!(matches!(d.claim("k", 0), Claim::Run(_)));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"x": 1}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"x": 2}"#).unwrap();
        assert_eq!(fingerprint("c", &a), fingerprint("c", &a.clone()));
        assert_ne!(fingerprint("c", &a), fingerprint("c", &b));
        assert_ne!(fingerprint("c", &a), fingerprint("d", &a));
    }
}
