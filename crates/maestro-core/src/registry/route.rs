//! Choosing the agent a step runs on, and counting what runs where.

use crate::model::{AgentStatus, RegisteredAgent};

use super::{AgentRegistry, Slot};

/// Where a step with a capability (and maybe a named agent) should go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route<'a> {
    Agent(&'a RegisteredAgent),
    /// The named agent is not registered (fatal: `AGENT_NOT_FOUND`).
    AgentNotFound,
    /// The named agent, or every registered agent, lacks the capability (fatal:
    /// `CAPABILITY_NOT_FOUND`).
    CapabilityNotFound,
    /// Agents with the capability exist, but none is up with free `maxConcurrency`
    /// (the step waits, then fails `NO_AGENT_AVAILABLE`, retryable).
    NoneAvailable,
}

impl Slot {
    fn has_capacity(&self) -> bool {
        self.agent
            .max_concurrency
            .is_none_or(|max| self.in_flight < max)
    }

    fn is_available(&self) -> bool {
        self.agent.status != AgentStatus::Offline && self.has_capacity()
    }

    /// Routing preference, smallest first: online before degraded, then fewest
    /// calls in flight, then fewest calls in the health window (pruned when calls or
    /// health checks are recorded, so "recent" is as of the last of those).
    fn load_key(&self) -> (bool, u32, usize) {
        (
            self.agent.status != AgentStatus::Online,
            self.in_flight,
            self.window.as_ref().map_or(0, |w| w.len()),
        )
    }
}

impl AgentRegistry {
    /// Picks the agent for a step: see the crate's routing rules in API.md.
    ///
    /// A named agent is used when registered, holding the capability, not offline
    /// and below its `maxConcurrency`. Otherwise the least-loaded available holder of
    /// the capability wins: online before degraded, then fewest in flight, then
    /// fewest recent calls, then the smallest agent id. Cost: one index lookup and a
    /// pass over the capability's holders.
    pub fn route(&self, capability: &str, agent_id: Option<&str>) -> Route<'_> {
        if let Some(id) = agent_id {
            let Some(slot) = self.entry(id) else {
                return Route::AgentNotFound;
            };
            if slot.agent.capability(capability).is_none() {
                return Route::CapabilityNotFound;
            }
            if !slot.is_available() {
                return Route::NoneAvailable;
            }
            return Route::Agent(&slot.agent);
        }

        let holders = self.by_capability.get(capability);
        if holders.is_empty() {
            return Route::CapabilityNotFound;
        }
        // Holders are in agent-id order, so keeping the first of equal keys breaks
        // the last tie by id.
        let mut best: Option<(&Slot, (bool, u32, usize))> = None;
        for slot in holders.iter().filter_map(|&s| self.slot(s)) {
            if !slot.is_available() {
                continue;
            }
            let key = slot.load_key();
            if best.is_none_or(|(_, best_key)| key < best_key) {
                best = Some((slot, key));
            }
        }
        best.map_or(Route::NoneAvailable, |(slot, _)| Route::Agent(&slot.agent))
    }

    /// Counts a call dispatched to the agent (unknown agents are ignored).
    pub fn acquire(&mut self, agent_id: &str) {
        if let Some(slot) = self.entry_mut(agent_id) {
            slot.in_flight = slot.in_flight.saturating_add(1);
        }
    }

    /// Counts a call of the agent finished (never below zero).
    pub fn release(&mut self, agent_id: &str) {
        if let Some(slot) = self.entry_mut(agent_id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
    }

    /// Calls in flight on the agent (0 when unknown).
    pub fn in_flight(&self, agent_id: &str) -> u32 {
        self.entry(agent_id).map_or(0, |s| s.in_flight)
    }

    /// Whether the agent may take another call: in flight below `maxConcurrency`
    /// (unbounded when unset). False for an unknown agent.
    pub fn has_capacity(&self, agent_id: &str) -> bool {
        self.entry(agent_id).is_some_and(Slot::has_capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::agent;
    use super::*;
    use crate::model::AgentStatus::{Degraded, Offline, Online};

    fn picked<'a>(r: Route<'a>) -> &'a str {
        match r {
            Route::Agent(a) => &a.id,
            other => panic!("expected an agent, got {other:?}"),
        }
    }

    fn registry() -> AgentRegistry {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a1", "t", &["sign"]), 1).unwrap();
        r.register_agent(agent("a2", "t", &["sign", "verify"]), 1)
            .unwrap();
        r.register_agent(agent("a3", "t", &["verify"]), 1).unwrap();
        r
    }

    #[test]
    fn named_agent_routes() {
        let mut r = registry();
        assert_eq!(picked(r.route("sign", Some("a2"))), "a2");
        assert_eq!(r.route("sign", Some("nope")), Route::AgentNotFound);
        assert_eq!(r.route("sign", Some("a3")), Route::CapabilityNotFound);
        r.update_agent_status("a2", Degraded).unwrap();
        assert_eq!(picked(r.route("sign", Some("a2"))), "a2");
        r.update_agent_status("a2", Offline).unwrap();
        assert_eq!(r.route("sign", Some("a2")), Route::NoneAvailable);
    }

    #[test]
    fn unnamed_routes_to_an_agent_with_the_capability() {
        let r = registry();
        assert_eq!(picked(r.route("sign", None)), "a1");
        assert_eq!(picked(r.route("verify", None)), "a2");
        assert_eq!(r.route("fly", None), Route::CapabilityNotFound);
    }

    #[test]
    fn offline_agents_are_skipped() {
        let mut r = registry();
        r.update_agent_status("a1", Offline).unwrap();
        assert_eq!(picked(r.route("sign", None)), "a2");
        r.set_status_from_health("a2", Offline);
        assert_eq!(r.route("sign", None), Route::NoneAvailable);
        assert_eq!(r.route("sign", Some("a1")), Route::NoneAvailable);
    }

    #[test]
    fn least_loaded_agent_is_chosen() {
        let mut r = registry();
        r.acquire("a1");
        assert_eq!(picked(r.route("sign", None)), "a2");
        r.acquire("a2");
        r.acquire("a2");
        assert_eq!(picked(r.route("sign", None)), "a1");
        r.release("a2");
        // Equal in flight: fewer recent calls wins.
        r.record_invocation("a1", "sign", true, 5, 10);
        assert_eq!(picked(r.route("sign", None)), "a2");
        r.record_invocation("a2", "sign", true, 5, 10);
        // Equal again: smallest id.
        assert_eq!(picked(r.route("sign", None)), "a1");
        r.release("a1");
        r.release("a1");
        r.release("a2");
        r.release("a2");
        assert_eq!(r.in_flight("a1"), 0);
        assert_eq!(r.in_flight("a2"), 0);
        assert_eq!(r.in_flight("nope"), 0);
        r.acquire("nope");
        r.release("nope");
    }

    #[test]
    fn max_concurrency_is_respected() {
        let mut r = AgentRegistry::default();
        let mut a = agent("solo", "t", &["sign"]);
        a.max_concurrency = Some(2);
        r.register_agent(a, 1).unwrap();
        assert!(r.has_capacity("solo"));
        r.acquire("solo");
        assert_eq!(picked(r.route("sign", None)), "solo");
        r.acquire("solo");
        assert!(!r.has_capacity("solo"));
        assert_eq!(r.route("sign", None), Route::NoneAvailable);
        assert_eq!(r.route("sign", Some("solo")), Route::NoneAvailable);
        r.register_agent(agent("spare", "t", &["sign"]), 1).unwrap();
        assert_eq!(picked(r.route("sign", None)), "spare");
        r.release("solo");
        assert_eq!(r.in_flight("solo"), 1);
        assert_eq!(picked(r.route("sign", Some("solo"))), "solo");
        assert!(!r.has_capacity("nope"));
    }

    #[test]
    fn degraded_agents_only_after_online_ones() {
        let mut r = registry();
        r.update_agent_status("a1", Degraded).unwrap();
        r.acquire("a2");
        r.acquire("a2");
        // a2 is busier but online.
        assert_eq!(picked(r.route("sign", None)), "a2");
        r.update_agent_status("a2", Offline).unwrap();
        assert_eq!(picked(r.route("sign", None)), "a1");
        r.update_agent_status("a2", Online).unwrap();
        r.update_agent_status("a2", Degraded).unwrap();
        // Both degraded: the less loaded one.
        assert_eq!(picked(r.route("sign", None)), "a1");
    }
}
