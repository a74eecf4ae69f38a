//! The Agent Registry: agents, the capability, tag and type indexes, status and
//! operator holds, in-flight counts, health windows and routing.
//!
//! A pure data structure: no clock (every time is passed in as `now`, in ms), no
//! I/O and no locks; the engine wraps it in a lock and persists agents to the store,
//! from which it can be rebuilt.
//!
//! # Layout
//!
//! Agents live in a slab of slots (`Vec<Option<Slot>>`, freed slots reused),
//! addressed by a `u32`. An ordered map `id -> slot` answers `getAgent` and gives
//! every listing its agent-id order. The capability index (capability id -> slots),
//! the tag index (tag -> slots of the agents with a capability carrying it) and the
//! type index keep their slot lists sorted by agent id, so `findAgentsByCapability`
//! is one hash lookup plus one step per holder, and a query filtered by capability,
//! tag or type only looks at those agents. A membership costs 4 bytes; keeping a
//! list sorted makes registering cost a binary search and a shift per list.
//!
//! Each slot carries the agent's in-flight count, its last 128 health checks (a
//! bitmask) and two pointers that stay null until the agent is first called or
//! reports its own health (see [`HealthWindowConfig`]).
//!
//! ```
//! use maestro_core::model::RegisteredAgent;
//! use maestro_core::registry::{AgentRegistry, HealthWindowConfig, Route};
//!
//! let mut registry = AgentRegistry::new(HealthWindowConfig::default());
//! let agent: RegisteredAgent = serde_json::from_value(serde_json::json!({
//!     "id": "sentinel-1", "type": "sentinel",
//!     "capabilities": [{"id": "sign", "inputs": {"data": "string"}}]
//! }))?;
//! registry.register_agent(agent, 1_764_100_000_000)?;
//!
//! let Route::Agent(chosen) = registry.route("sign", None) else { unreachable!() };
//! assert_eq!(chosen.id, "sentinel-1");
//! let id = chosen.id.clone();
//! registry.acquire(&id);
//! registry.record_invocation("sentinel-1", "sign", true, 12, 1_764_100_000_050);
//! registry.release("sentinel-1");
//!
//! let health = registry.agent_health("sentinel-1", 1_764_100_000_060, 10_000).unwrap();
//! assert_eq!(health.response_time, 12.0);
//! assert_eq!(health.score, 100.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod health;
mod query;
mod route;
mod validate;

use std::collections::{BTreeMap, HashMap};

pub use health::{
    HealthWindowConfig, MAX_REPORTED_CAPABILITIES, MAX_REPORTED_NAME_LEN, UPTIME_CHECKS,
};
pub use query::AgentQuery;
pub use route::Route;
pub use validate::{MAX_ENDPOINT_LEN, MAX_TYPE_LEN, TYPE_NAMES};

use crate::Error;
use crate::model::{AgentHealth, AgentStatus, RegisteredAgent, Timestamp};
use health::{CallWindow, CheckHistory, HealthInputs, Reported};

/// An agent and what the registry tracks about it.
#[derive(Debug)]
struct Slot {
    agent: RegisteredAgent,
    in_flight: u32,
    checks: CheckHistory,
    /// Latest health check, invocation or report.
    last_check: Timestamp,
    /// `None` until the agent is first called (and again once its calls age out).
    window: Option<Box<CallWindow>>,
    reported: Option<Box<Reported>>,
}

impl Slot {
    fn new(agent: RegisteredAgent) -> Self {
        Slot {
            agent,
            in_flight: 0,
            checks: CheckHistory::default(),
            last_check: 0,
            window: None,
            reported: None,
        }
    }

    fn touch(&mut self, now: Timestamp) {
        self.last_check = self.last_check.max(now);
    }
}

/// The id of the agent in slot `s` ("" for an empty slot, which no index refers to).
fn slot_id(slots: &[Option<Slot>], s: u32) -> &str {
    slots
        .get(s as usize)
        .and_then(Option::as_ref)
        .map_or("", |slot| slot.agent.id.as_str())
}

/// key -> slots of the agents under it, each list sorted by agent id.
#[derive(Debug, Default)]
struct Index(HashMap<Box<str>, Vec<u32>>);

impl Index {
    fn get(&self, key: &str) -> &[u32] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    fn insert(&mut self, key: &str, s: u32, id: &str, slots: &[Option<Slot>]) {
        if !self.0.contains_key(key) {
            self.0.insert(key.into(), Vec::new());
        }
        let Some(list) = self.0.get_mut(key) else {
            return;
        };
        // Loading from the store registers agents in id order: append without a
        // search (each probe of the search is a slot and an id to fetch).
        if list.last().is_none_or(|&last| slot_id(slots, last) < id) {
            list.push(s);
            return;
        }
        if let Err(pos) = list.binary_search_by(|&other| slot_id(slots, other).cmp(id)) {
            list.insert(pos, s);
        }
    }

    fn remove(&mut self, key: &str, s: u32, id: &str, slots: &[Option<Slot>]) {
        let Some(list) = self.0.get_mut(key) else {
            return;
        };
        match list.binary_search_by(|&other| slot_id(slots, other).cmp(id)) {
            Ok(pos) if list.get(pos) == Some(&s) => {
                list.remove(pos);
            }
            _ => list.retain(|&other| other != s),
        }
        if list.is_empty() {
            self.0.remove(key);
        }
    }
}

/// The distinct tags over an agent's capabilities.
fn tags_of(agent: &RegisteredAgent) -> Vec<&str> {
    let mut tags: Vec<&str> = agent
        .capabilities
        .iter()
        .flat_map(|c| c.tags.iter().map(String::as_str))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// The registered agents, their indexes and health.
#[derive(Debug)]
pub struct AgentRegistry {
    cfg: HealthWindowConfig,
    ids: BTreeMap<Box<str>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_capability: Index,
    by_tag: Index,
    by_type: Index,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self::new(HealthWindowConfig::default())
    }
}

impl AgentRegistry {
    pub fn new(cfg: HealthWindowConfig) -> Self {
        AgentRegistry {
            cfg,
            ids: BTreeMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_capability: Index::default(),
            by_tag: Index::default(),
            by_type: Index::default(),
        }
    }

    pub fn config(&self) -> HealthWindowConfig {
        self.cfg
    }

    /// Checks an agent definition; every refusal is `VALIDATION_FAILED` naming the
    /// field:
    /// - `id`: 1-128 of `[A-Za-z0-9._:-]`; `type`: 1-64 of `[A-Za-z0-9._-]`;
    /// - `capabilities`: valid, unique ids (and `compensation` ids); `inputs` and
    ///   `outputs` either a JSON Schema (as [`TypeSpec::is_json_schema`] tells) or a
    ///   map of type names ([`TYPE_NAMES`], optional `?` suffix); a bad one is named
    ///   as `capabilities.<capability>.inputs.<field>`;
    /// - `endpoint`: an `http://` or `https://` URL with a host and no credentials,
    ///   required with `transport: http`;
    /// - `maxConcurrency`: at least 1.
    ///
    /// [`TypeSpec::is_json_schema`]: crate::model::TypeSpec::is_json_schema
    pub fn validate_agent(agent: &RegisteredAgent) -> crate::Result<()> {
        validate::validate_agent(agent)
    }

    /// Adds a new agent; a `lastHeartbeat` of 0 becomes `now`. The agent is stored
    /// as given otherwise, `statusHold` included (so the registry can be rebuilt from
    /// the store): the API must clear a hold a client sends.
    pub fn register_agent(
        &mut self,
        mut agent: RegisteredAgent,
        now: Timestamp,
    ) -> crate::Result<&RegisteredAgent> {
        Self::validate_agent(&agent)?;
        if self.ids.contains_key(agent.id.as_str()) {
            return Err(Error::already_exists("agent", agent.id));
        }
        agent.settle_transport();
        if agent.last_heartbeat == 0 {
            agent.last_heartbeat = now;
        }
        let s = match self.free.pop() {
            Some(s) => s,
            None => u32::try_from(self.slots.len())
                .map_err(|_| Error::InvalidState("the agent registry is full".into()))?,
        };
        self.ids.insert(agent.id.as_str().into(), s);
        let slot = Some(Slot::new(agent));
        match self.slots.get_mut(s as usize) {
            Some(place) => *place = slot,
            None => self.slots.push(slot),
        }
        self.index(s);
        self.agent_at(s)
    }

    /// Take an agent's record as stored by another node (cluster mode), keeping
    /// this node's call statistics and in-flight counts of it.
    pub fn replace_agent(&mut self, mut agent: RegisteredAgent) -> crate::Result<()> {
        let Some(&s) = self.ids.get(agent.id.as_str()) else {
            let hb = agent.last_heartbeat;
            self.register_agent(agent, hb)?;
            return Ok(());
        };
        Self::validate_agent(&agent)?;
        agent.settle_transport();
        self.unindex(s);
        if let Some(slot) = self.slot_mut(s) {
            slot.agent = agent;
        }
        self.index(s);
        Ok(())
    }

    /// Registers the agent, or updates it when the id exists (a restarted agent
    /// re-registering). An update replaces the definition but keeps the operator
    /// hold (and the held status), health statistics, in-flight count, and the stored
    /// `inboundSecret` when the new one is `None`. Returns `(created, agent)`.
    pub fn upsert_agent(
        &mut self,
        mut agent: RegisteredAgent,
        now: Timestamp,
    ) -> crate::Result<(bool, &RegisteredAgent)> {
        let Some(&s) = self.ids.get(agent.id.as_str()) else {
            return Ok((true, self.register_agent(agent, now)?));
        };
        Self::validate_agent(&agent)?;
        agent.settle_transport();
        if agent.last_heartbeat == 0 {
            agent.last_heartbeat = now;
        }
        self.unindex(s);
        if let Some(slot) = self.slot_mut(s) {
            let old = &mut slot.agent;
            agent.status_hold = old.status_hold;
            if old.status_hold {
                agent.status = old.status;
            }
            if agent.inbound_secret.is_none() {
                agent.inbound_secret = old.inbound_secret.take();
            }
            slot.agent = agent;
        }
        self.index(s);
        Ok((false, self.agent_at(s)?))
    }

    /// Removes the agent, returning it (`None` when unknown). Its health and
    /// in-flight count go with it.
    pub fn deregister_agent(&mut self, id: &str) -> Option<RegisteredAgent> {
        let s = *self.ids.get(id)?;
        self.unindex(s);
        self.ids.remove(id);
        let slot = self.slots.get_mut(s as usize)?.take()?;
        self.free.push(s);
        Some(slot.agent)
    }

    pub fn get_agent(&self, id: &str) -> Option<&RegisteredAgent> {
        self.entry(id).map(|s| &s.agent)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every agent, ordered by id.
    pub fn agents(&self) -> impl Iterator<Item = &RegisteredAgent> {
        self.ids
            .values()
            .filter_map(|&s| self.slot(s))
            .map(|slot| &slot.agent)
    }

    /// An operator's `PATCH .../status`: any status but `online` is held against
    /// heartbeats and the health checker; `online` releases the hold.
    pub fn update_agent_status(
        &mut self,
        id: &str,
        status: AgentStatus,
    ) -> crate::Result<&RegisteredAgent> {
        let slot = self
            .entry_mut(id)
            .ok_or_else(|| Error::not_found("agent", id))?;
        slot.agent.status = status;
        slot.agent.status_hold = status != AgentStatus::Online;
        Ok(&slot.agent)
    }

    /// The health checker's verdict. Ignored while an operator hold is in place;
    /// `Some((old, new))` only when the status changed (publish `agent:health`).
    pub fn set_status_from_health(
        &mut self,
        id: &str,
        status: AgentStatus,
    ) -> Option<(AgentStatus, AgentStatus)> {
        let slot = self.entry_mut(id)?;
        let old = slot.agent.status;
        if slot.agent.status_hold || old == status {
            return None;
        }
        slot.agent.status = status;
        Some((old, status))
    }

    /// A heartbeat: `lastHeartbeat = now`, and `online` unless held.
    pub fn heartbeat(&mut self, id: &str, now: Timestamp) -> crate::Result<&RegisteredAgent> {
        let slot = self
            .entry_mut(id)
            .ok_or_else(|| Error::not_found("agent", id))?;
        slot.agent.last_heartbeat = now;
        if !slot.agent.status_hold {
            slot.agent.status = AgentStatus::Online;
        }
        Ok(&slot.agent)
    }

    /// Feeds a finished call into the agent's health window (unknown agents are
    /// ignored: the call may finish after a deregistration). Durations above
    /// `u32::MAX` ms (49 days) count as that.
    pub fn record_invocation(
        &mut self,
        agent_id: &str,
        capability: &str,
        success: bool,
        duration_ms: u64,
        now: Timestamp,
    ) {
        let cfg = self.cfg;
        let Some(slot) = self.entry_mut(agent_id) else {
            return;
        };
        slot.touch(now);
        if cfg.max_calls == 0 {
            return;
        }
        slot.window.get_or_insert_with(Box::default).record(
            &cfg,
            capability,
            success,
            duration_ms,
            now,
        );
    }

    /// Feeds a health check (heartbeat age or `GET <endpoint>/health`) into the
    /// agent's uptime, and frees its call window once every call has aged out.
    pub fn record_health_check(&mut self, agent_id: &str, online: bool, now: Timestamp) {
        let cfg = self.cfg;
        let Some(slot) = self.entry_mut(agent_id) else {
            return;
        };
        slot.touch(now);
        slot.checks.record(online);
        if let Some(window) = &mut slot.window {
            window.prune_old(&cfg, now);
            if window.is_empty() {
                slot.window = None;
            }
        }
    }

    /// Stores what the agent says about its own health (`PUT .../health`, or the
    /// `health` of a heartbeat), replacing its previous report. A report counts for
    /// `max_age_ms`, like the calls of the window. `score` and `lastCheck` of the
    /// report are ignored (recomputed); an `agentId`, if given, must be the agent's.
    pub fn record_reported_health(
        &mut self,
        agent_id: &str,
        reported: AgentHealth,
        now: Timestamp,
    ) -> crate::Result<()> {
        let slot = self
            .entry_mut(agent_id)
            .ok_or_else(|| Error::not_found("agent", agent_id))?;
        health::validate_reported(agent_id, &reported)?;
        slot.touch(now);
        slot.reported = Some(Box::new(Reported {
            health: reported,
            at: now,
        }));
        Ok(())
    }

    /// The agent's health at `now` (see API.md "AgentHealth"): computed from the
    /// window and health checks, merged with a fresh report. Rates (`errorRate`,
    /// each capability's `successRate`) are fractions 0..=1, `uptime` a percentage.
    pub fn agent_health(
        &self,
        id: &str,
        now: Timestamp,
        agent_timeout_ms: u64,
    ) -> Option<AgentHealth> {
        self.entry(id)
            .map(|slot| self.health_of(slot, now, agent_timeout_ms))
    }

    /// Health of every agent, ordered by agent id.
    pub fn all_agent_health(&self, now: Timestamp, agent_timeout_ms: u64) -> Vec<AgentHealth> {
        self.ids
            .values()
            .filter_map(|&s| self.slot(s))
            .map(|slot| self.health_of(slot, now, agent_timeout_ms))
            .collect()
    }

    fn health_of(&self, slot: &Slot, now: Timestamp, agent_timeout_ms: u64) -> AgentHealth {
        health::compute(
            &self.cfg,
            HealthInputs {
                agent_id: &slot.agent.id,
                offline: slot.agent.status == AgentStatus::Offline,
                window: slot.window.as_deref(),
                checks: slot.checks,
                reported: slot.reported.as_deref(),
                last_check: slot.last_check,
            },
            now,
            agent_timeout_ms,
        )
    }

    fn slot(&self, s: u32) -> Option<&Slot> {
        self.slots.get(s as usize)?.as_ref()
    }

    fn slot_mut(&mut self, s: u32) -> Option<&mut Slot> {
        self.slots.get_mut(s as usize)?.as_mut()
    }

    fn entry(&self, id: &str) -> Option<&Slot> {
        self.slot(*self.ids.get(id)?)
    }

    fn entry_mut(&mut self, id: &str) -> Option<&mut Slot> {
        let s = *self.ids.get(id)?;
        self.slot_mut(s)
    }

    fn agent_at(&self, s: u32) -> crate::Result<&RegisteredAgent> {
        self.slot(s)
            .map(|slot| &slot.agent)
            .ok_or_else(|| Error::InvalidState("agent registry slot is empty".into()))
    }

    /// Adds the agent in slot `s` to the capability, tag and type indexes.
    fn index(&mut self, s: u32) {
        let Some(slot) = self.slots.get(s as usize).and_then(Option::as_ref) else {
            return;
        };
        let id = slot.agent.id.as_str();
        for cap in &slot.agent.capabilities {
            self.by_capability.insert(&cap.id, s, id, &self.slots);
        }
        for tag in tags_of(&slot.agent) {
            self.by_tag.insert(tag, s, id, &self.slots);
        }
        self.by_type
            .insert(&slot.agent.agent_type, s, id, &self.slots);
    }

    /// Removes the agent in slot `s` from the indexes (before the slot changes).
    fn unindex(&mut self, s: u32) {
        let Some(slot) = self.slots.get(s as usize).and_then(Option::as_ref) else {
            return;
        };
        let id = slot.agent.id.as_str();
        for cap in &slot.agent.capabilities {
            self.by_capability.remove(&cap.id, s, id, &self.slots);
        }
        for tag in tags_of(&slot.agent) {
            self.by_tag.remove(tag, s, id, &self.slots);
        }
        self.by_type
            .remove(&slot.agent.agent_type, s, id, &self.slots);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::{AgentCapability, CapabilityHealth, HealthStatus};

    /// An online poll agent with the given capabilities.
    pub(crate) fn agent(id: &str, agent_type: &str, caps: &[&str]) -> RegisteredAgent {
        RegisteredAgent {
            id: id.into(),
            agent_type: agent_type.into(),
            name: String::new(),
            description: String::new(),
            public_key: String::new(),
            capabilities: caps.iter().map(|c| capability(c, &[])).collect(),
            status: AgentStatus::Online,
            last_heartbeat: 0,
            endpoint: None,
            transport: None,
            max_concurrency: None,
            metadata: Default::default(),
            inbound_secret: None,
            status_hold: false,
        }
    }

    fn capability(id: &str, tags: &[&str]) -> AgentCapability {
        serde_json::from_value(json!({"id": id, "tags": tags})).unwrap()
    }

    pub(crate) fn ids<'a>(agents: impl Iterator<Item = &'a RegisteredAgent>) -> Vec<String> {
        agents.map(|a| a.id.clone()).collect()
    }

    #[test]
    fn registers_an_agent() {
        let mut r = AgentRegistry::default();
        assert!(r.is_empty());
        let a = r.register_agent(agent("sentinel-1", "sentinel", &["sign"]), 42);
        assert_eq!(a.unwrap().last_heartbeat, 42, "lastHeartbeat 0 means now");
        let mut b = agent("bridge-1", "bridge", &[]);
        b.last_heartbeat = 7;
        assert_eq!(r.register_agent(b, 42).unwrap().last_heartbeat, 7);
        assert_eq!(r.len(), 2);
        assert_eq!(r.get_agent("sentinel-1").unwrap().agent_type, "sentinel");
        assert!(r.get_agent("nope").is_none());
        assert_eq!(ids(r.agents()), ["bridge-1", "sentinel-1"]);
    }

    #[test]
    fn refuses_an_invalid_agent_and_changes_nothing() {
        let mut r = AgentRegistry::default();
        let err = r
            .register_agent(agent("bad id", "t", &["sign"]), 1)
            .unwrap_err();
        assert_eq!(err.code(), "VALIDATION_FAILED");
        assert!(r.is_empty());
        assert!(r.find_agents_by_capability("sign").is_empty());
    }

    #[test]
    fn prevents_duplicate_registration() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        let err = r
            .register_agent(agent("a", "t", &["verify"]), 2)
            .unwrap_err();
        assert_eq!(err, Error::already_exists("agent", "a"));
        assert_eq!(ids(r.find_agents_by_capability("sign").into_iter()), ["a"]);
        assert!(r.find_agents_by_capability("verify").is_empty());
    }

    #[test]
    fn deregisters_an_agent() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        r.register_agent(agent("b", "t", &["sign"]), 1).unwrap();
        r.acquire("a");
        assert_eq!(r.deregister_agent("a").unwrap().id, "a");
        assert!(r.deregister_agent("a").is_none());
        assert!(r.get_agent("a").is_none());
        assert_eq!(r.len(), 1);
        assert_eq!(ids(r.find_agents_by_capability("sign").into_iter()), ["b"]);
        // The freed slot is reused, with nothing left over from its last tenant.
        r.register_agent(agent("a", "t", &["verify"]), 1).unwrap();
        assert_eq!(r.in_flight("a"), 0);
        assert_eq!(ids(r.find_agents_by_capability("sign").into_iter()), ["b"]);
        assert_eq!(
            ids(r.find_agents_by_capability("verify").into_iter()),
            ["a"]
        );
        assert_eq!(r.slots.len(), 2);
    }

    #[test]
    fn operator_hold_beats_heartbeats_and_health_checks() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &[]), 1).unwrap();
        assert!(r.heartbeat("nope", 2).is_err());
        assert_eq!(
            r.set_status_from_health("a", AgentStatus::Offline),
            Some((AgentStatus::Online, AgentStatus::Offline))
        );
        assert_eq!(r.set_status_from_health("a", AgentStatus::Offline), None);
        let a = r.heartbeat("a", 5).unwrap();
        assert_eq!((a.status, a.last_heartbeat), (AgentStatus::Online, 5));

        let a = r.update_agent_status("a", AgentStatus::Degraded).unwrap();
        assert!(a.status_hold);
        let a = r.heartbeat("a", 6).unwrap();
        assert_eq!((a.status, a.last_heartbeat), (AgentStatus::Degraded, 6));
        assert_eq!(r.set_status_from_health("a", AgentStatus::Offline), None);
        assert_eq!(r.get_agent("a").unwrap().status, AgentStatus::Degraded);

        let a = r.update_agent_status("a", AgentStatus::Online).unwrap();
        assert!(!a.status_hold);
        assert_eq!(
            r.set_status_from_health("a", AgentStatus::Degraded),
            Some((AgentStatus::Online, AgentStatus::Degraded))
        );
        assert_eq!(
            r.heartbeat("a", 7).unwrap().status,
            AgentStatus::Online,
            "without a hold a heartbeat brings the agent back"
        );
        assert_eq!(
            r.update_agent_status("nope", AgentStatus::Online)
                .unwrap_err()
                .code(),
            "NOT_FOUND"
        );
        assert_eq!(r.set_status_from_health("nope", AgentStatus::Online), None);
    }

    #[test]
    fn upsert_creates_then_updates_keeping_hold_secret_and_stats() {
        let mut r = AgentRegistry::default();
        let mut a = agent("a", "t", &["sign"]);
        a.inbound_secret = Some("s3cret".into());
        let (created, _) = r.upsert_agent(a, 1).unwrap();
        assert!(created);
        r.update_agent_status("a", AgentStatus::Offline).unwrap();
        r.acquire("a");
        r.record_invocation("a", "sign", true, 10, 2);

        let mut b = agent("a", "t2", &["verify"]);
        b.endpoint = Some("http://h:1".into());
        let (created, stored) = r.upsert_agent(b, 3).unwrap();
        assert!(!created);
        assert_eq!(stored.agent_type, "t2");
        assert_eq!(stored.endpoint.as_deref(), Some("http://h:1"));
        assert_eq!(stored.last_heartbeat, 3);
        assert!(stored.status_hold, "hold kept");
        assert_eq!(stored.status, AgentStatus::Offline, "held status kept");
        assert_eq!(stored.inbound_secret.as_deref(), Some("s3cret"));
        assert_eq!(r.in_flight("a"), 1);
        let h = r.agent_health("a", 4, 10_000).unwrap();
        assert_eq!(h.capabilities[0].invocations, 1, "window kept");
        assert!(r.find_agents_by_capability("sign").is_empty());
        assert_eq!(
            ids(r.find_agents_by_capability("verify").into_iter()),
            ["a"]
        );

        // A new secret replaces the old; without a hold the new status applies.
        r.update_agent_status("a", AgentStatus::Online).unwrap();
        let mut c = agent("a", "t", &["verify"]);
        c.inbound_secret = Some("new".into());
        c.status = AgentStatus::Degraded;
        let (_, stored) = r.upsert_agent(c, 5).unwrap();
        assert_eq!(stored.inbound_secret.as_deref(), Some("new"));
        assert_eq!(stored.status, AgentStatus::Degraded);
        assert!(!stored.status_hold);

        // An invalid update changes nothing.
        assert!(r.upsert_agent(agent("a", "bad type", &[]), 6).is_err());
        assert_eq!(r.get_agent("a").unwrap().agent_type, "t");
    }

    #[test]
    fn tag_and_type_indexes_follow_updates() {
        let mut r = AgentRegistry::default();
        let mut a = agent("a", "t", &[]);
        a.capabilities = vec![
            capability("sign", &["crypto", "fast"]),
            capability("verify", &["crypto"]),
        ];
        r.register_agent(a, 1).unwrap();
        assert_eq!(r.by_tag.get("crypto"), &[0]);
        let mut a = agent("a", "t", &[]);
        a.capabilities = vec![capability("sign", &["slow"])];
        r.upsert_agent(a, 1).unwrap();
        assert!(r.by_tag.get("crypto").is_empty());
        assert!(!r.by_tag.0.contains_key("fast"), "empty keys are dropped");
        assert_eq!(r.by_tag.get("slow"), &[0]);
        assert_eq!(r.by_type.get("t"), &[0]);
        let mut a = agent("a", "u", &[]);
        a.capabilities = vec![capability("sign", &["slow"])];
        r.upsert_agent(a, 1).unwrap();
        assert!(r.by_type.get("t").is_empty());
        assert_eq!(r.by_type.get("u"), &[0]);
    }

    fn health(r: &AgentRegistry, id: &str, now: Timestamp) -> AgentHealth {
        r.agent_health(id, now, 1_000).unwrap()
    }

    #[test]
    fn health_of_an_agent_never_seen() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        let h = health(&r, "a", 10);
        assert_eq!(h.agent_id, "a");
        assert_eq!(h.status, HealthStatus::Healthy);
        assert_eq!((h.error_rate, h.response_time, h.uptime), (0.0, 0.0, 100.0));
        assert_eq!(h.score, 100.0);
        assert_eq!(h.last_check, 0);
        assert!(h.capabilities.is_empty());
        assert!(r.agent_health("nope", 10, 1_000).is_none());
    }

    #[test]
    fn error_rate_thresholds() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        fn outcome(ok: bool, n: usize, r: &mut AgentRegistry) {
            for _ in 0..n {
                r.record_invocation("a", "sign", ok, 10, 100);
            }
        }
        // 1 failure in 10: 10% is not above 10%.
        outcome(false, 1, &mut r);
        outcome(true, 9, &mut r);
        let h = health(&r, "a", 100);
        assert_eq!((h.status, h.error_rate), (HealthStatus::Healthy, 0.1));
        // 2 in 11: degraded.
        outcome(false, 1, &mut r);
        assert_eq!(health(&r, "a", 100).status, HealthStatus::Degraded);
        // 11 of 22 is exactly 50%: still degraded; 12 of 23 is unhealthy.
        outcome(false, 9, &mut r);
        outcome(true, 2, &mut r);
        let h = health(&r, "a", 100);
        assert_eq!((h.status, h.error_rate), (HealthStatus::Degraded, 0.5));
        outcome(false, 1, &mut r);
        assert_eq!(health(&r, "a", 100).status, HealthStatus::Unhealthy);
    }

    #[test]
    fn latency_threshold_is_half_the_agent_timeout() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        r.record_invocation("a", "sign", true, 400, 10);
        r.record_invocation("a", "sign", true, 600, 10);
        // Mean 500 ms against a 1,000 ms timeout: not above half.
        let h = health(&r, "a", 10);
        assert_eq!((h.status, h.response_time), (HealthStatus::Healthy, 500.0));
        r.record_invocation("a", "sign", true, 503, 10);
        assert_eq!(health(&r, "a", 10).status, HealthStatus::Degraded);
        assert_eq!(
            r.agent_health("a", 10, 2_000).unwrap().status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn window_prunes_by_count_and_by_age() {
        let mut r = AgentRegistry::new(HealthWindowConfig {
            max_calls: 4,
            max_age_ms: 1_000,
        });
        r.register_agent(agent("a", "t", &["sign", "verify"]), 1)
            .unwrap();
        r.record_invocation("a", "verify", false, 100, 0);
        r.record_invocation("a", "verify", false, 100, 0);
        for _ in 0..4 {
            r.record_invocation("a", "sign", true, 10, 500);
        }
        // The two failed verifies fell out by count.
        let h = health(&r, "a", 500);
        assert_eq!((h.error_rate, h.response_time), (0.0, 10.0));
        assert_eq!(h.capabilities.len(), 1);
        assert_eq!(h.capabilities[0].invocations, 4);

        r.record_invocation("a", "verify", false, 30, 1_200);
        // At 1,200 the signs at 500 are 700 ms old and still count; the window
        // dropped the oldest of them to make room.
        let h = health(&r, "a", 1_200);
        assert_eq!(h.capabilities.len(), 2);
        assert_eq!(h.error_rate, 0.25, "window holds at most 4 calls");
        // At 1,600 the signs are older than 1,000 ms.
        let h = health(&r, "a", 1_600);
        assert_eq!((h.error_rate, h.response_time), (1.0, 30.0));
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.capabilities.len(), 1);
        // A health check long after frees the window.
        r.record_health_check("a", true, 10_000);
        assert!(r.entry("a").unwrap().window.is_none());
        let h = health(&r, "a", 10_000);
        assert_eq!((h.error_rate, h.status), (0.0, HealthStatus::Healthy));
    }

    #[test]
    fn per_capability_stats() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign", "verify"]), 1)
            .unwrap();
        r.record_invocation("a", "verify", true, 30, 1);
        r.record_invocation("a", "sign", true, 10, 1);
        r.record_invocation("a", "sign", false, 20, 1);
        r.record_invocation("a", "sign", true, 30, 1);
        r.record_invocation("a", "sign", true, 40, 1);
        let h = health(&r, "a", 2);
        let sign = &h.capabilities[0];
        assert_eq!(sign.name, "sign");
        assert_eq!(
            (sign.success_rate, sign.average_time, sign.invocations),
            (0.75, 25.0, 4)
        );
        assert_eq!(h.capabilities[1].name, "verify");
        assert_eq!(h.capabilities[1].success_rate, 1.0);
        assert_eq!(h.error_rate, 0.2);
        assert_eq!(h.response_time, 26.0);
        assert_eq!(h.last_check, 1);
    }

    #[test]
    fn uptime_and_offline() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &[]), 1).unwrap();
        for online in [true, true, true, false] {
            r.record_health_check("a", online, 50);
        }
        let h = health(&r, "a", 60);
        assert_eq!((h.uptime, h.last_check), (75.0, 50));
        assert_eq!(h.status, HealthStatus::Healthy);
        r.set_status_from_health("a", AgentStatus::Offline);
        let h = health(&r, "a", 60);
        assert_eq!(h.status, HealthStatus::Unhealthy);
        // Degraded in the registry does not feed back into health.
        r.set_status_from_health("a", AgentStatus::Degraded);
        assert_eq!(health(&r, "a", 60).status, HealthStatus::Healthy);
        r.record_health_check("nope", true, 1);
    }

    #[test]
    fn score_formula_with_exact_numbers() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign"]), 1).unwrap();
        // 1 failure in 5 (errorRate 0.2: degraded), uptime 3/4 = 75.
        for ok in [true, true, false, true, true] {
            r.record_invocation("a", "sign", ok, 10, 100);
        }
        for online in [true, false, true, true] {
            r.record_health_check("a", online, 100);
        }
        let h = health(&r, "a", 100);
        assert_eq!(h.status, HealthStatus::Degraded);
        // (50 + 80 + 75) / 3
        assert!((h.score - 205.0 / 3.0).abs() < 1e-9, "{}", h.score);
        assert!((h.score - 68.333_333).abs() < 1e-5);
        // Offline: (0 + 80 + 75) / 3
        r.update_agent_status("a", AgentStatus::Offline).unwrap();
        assert!((health(&r, "a", 100).score - 155.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn merges_with_reported_health() {
        let mut r = AgentRegistry::default();
        r.register_agent(agent("a", "t", &["sign", "verify"]), 1)
            .unwrap();
        let reported = AgentHealth {
            agent_id: String::new(),
            status: HealthStatus::Degraded,
            response_time: 80.0,
            error_rate: 0.05,
            last_check: 999_999,
            uptime: 90.0,
            score: 1.0,
            capabilities: vec![
                CapabilityHealth {
                    name: "sign".into(),
                    success_rate: 0.5,
                    average_time: 1.0,
                    invocations: 7,
                },
                CapabilityHealth {
                    name: "verify".into(),
                    success_rate: 0.95,
                    average_time: 80.0,
                    invocations: 20,
                },
            ],
        };
        assert_eq!(
            r.record_reported_health("nope", reported.clone(), 1)
                .unwrap_err()
                .code(),
            "NOT_FOUND"
        );
        r.record_reported_health("a", reported.clone(), 100)
            .unwrap();

        // No computed data: the report's figures; its status counts.
        let h = health(&r, "a", 100);
        assert_eq!(
            (h.response_time, h.error_rate, h.uptime),
            (80.0, 0.05, 90.0)
        );
        assert_eq!(h.status, HealthStatus::Degraded);
        assert_eq!(
            h.last_check, 100,
            "the report time, not the reported lastCheck"
        );
        assert!((h.score - (50.0 + 95.0 + 90.0) / 3.0).abs() < 1e-9);
        assert_eq!(h.capabilities, reported.capabilities);

        // Computed data wins where there is some.
        r.record_invocation("a", "sign", true, 10, 150);
        r.record_health_check("a", true, 160);
        let h = health(&r, "a", 200);
        assert_eq!(
            (h.response_time, h.error_rate, h.uptime),
            (10.0, 0.0, 100.0)
        );
        assert_eq!(
            h.status,
            HealthStatus::Degraded,
            "worse of computed and reported"
        );
        assert_eq!(h.last_check, 160);
        assert_eq!(h.capabilities[0].name, "sign");
        assert_eq!(
            (
                h.capabilities[0].success_rate,
                h.capabilities[0].invocations
            ),
            (1.0, 1)
        );
        assert_eq!(h.capabilities[1], reported.capabilities[1]);

        // Computed unhealthy beats a reported healthy.
        let healthy = AgentHealth {
            status: HealthStatus::Healthy,
            ..AgentHealth::default()
        };
        r.record_reported_health("a", healthy, 210).unwrap();
        r.record_invocation("a", "sign", false, 10, 210);
        r.record_invocation("a", "sign", false, 10, 210);
        assert_eq!(health(&r, "a", 220).status, HealthStatus::Unhealthy);

        // A report older than the window no longer counts.
        r.record_reported_health("a", reported, 300).unwrap();
        let later = 300 + HealthWindowConfig::default().max_age_ms + 1;
        let h = health(&r, "a", later);
        assert_eq!(h.status, HealthStatus::Healthy);
        assert!(h.capabilities.is_empty());

        // Bad reports are refused and change nothing.
        let bad = AgentHealth {
            agent_id: "someone-else".into(),
            ..AgentHealth::default()
        };
        let err = r.record_reported_health("a", bad, 400).unwrap_err();
        assert_eq!(err.code(), "VALIDATION_FAILED");
    }

    #[test]
    fn all_agent_health_is_ordered_by_id() {
        let mut r = AgentRegistry::default();
        for id in ["c", "a", "b"] {
            r.register_agent(agent(id, "t", &[]), 1).unwrap();
        }
        let all = r.all_agent_health(1, 1_000);
        let order: Vec<_> = all.iter().map(|h| h.agent_id.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn slot_stays_small() {
        // What an agent costs beyond its definition (printed for the docs).
        let slot = std::mem::size_of::<Slot>();
        let agent = std::mem::size_of::<RegisteredAgent>();
        println!("Slot: {slot} bytes, of which RegisteredAgent {agent}");
        assert!(slot - agent <= 64, "{slot} - {agent}");
    }

    #[derive(Debug, Clone)]
    struct Spec {
        agent: usize,
        agent_type: usize,
        status: AgentStatus,
        caps: Vec<usize>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(Spec),
        Upsert(Spec),
        Deregister(usize),
    }

    const POOL: usize = 8;

    fn spec() -> impl Strategy<Value = Spec> {
        let status = prop_oneof![
            Just(AgentStatus::Online),
            Just(AgentStatus::Offline),
            Just(AgentStatus::Degraded)
        ];
        (
            0..POOL,
            0..3usize,
            status,
            proptest::collection::vec(0..POOL, 0..4),
        )
            .prop_map(|(agent, agent_type, status, caps)| Spec {
                agent,
                agent_type,
                status,
                caps,
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            spec().prop_map(Op::Register),
            spec().prop_map(Op::Upsert),
            (0..POOL).prop_map(Op::Deregister),
        ]
    }

    fn make(spec: &Spec) -> RegisteredAgent {
        let mut agent = agent(
            &format!("agent-{}", spec.agent),
            &format!("type-{}", spec.agent_type),
            &[],
        );
        agent.status = spec.status;
        // Duplicate capability ids are allowed through here on purpose: the
        // registry must refuse them without touching its indexes.
        agent.capabilities = spec
            .caps
            .iter()
            .map(|c| capability(&format!("cap-{c}"), &[&format!("tag-{}", c % 3)]))
            .collect();
        agent
    }

    /// The query semantics, spelled out the slow way.
    fn scan<'a>(all: &[&'a RegisteredAgent], q: &AgentQuery) -> (Vec<&'a str>, usize) {
        let hits: Vec<&str> = all
            .iter()
            .filter(|a| q.types.is_empty() || q.types.contains(&a.agent_type))
            .filter(|a| q.statuses.is_empty() || q.statuses.contains(&a.status))
            .filter(|a| {
                q.capabilities.is_empty()
                    || q.capabilities.iter().any(|c| a.capability(c).is_some())
            })
            .filter(|a| {
                q.tags.is_empty()
                    || a.capabilities
                        .iter()
                        .any(|c| q.tags.iter().any(|t| c.tags.contains(t)))
            })
            .map(|a| a.id.as_str())
            .collect();
        let total = hits.len();
        let page = hits.into_iter().skip(q.offset).take(q.limit).collect();
        (page, total)
    }

    fn queries() -> Vec<AgentQuery> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let q = AgentQuery::default;
        vec![
            q(),
            AgentQuery {
                limit: 2,
                offset: 1,
                ..q()
            },
            AgentQuery {
                types: s(&["type-1"]),
                ..q()
            },
            AgentQuery {
                types: s(&["type-0", "type-2", "type-0"]),
                limit: 3,
                ..q()
            },
            AgentQuery {
                statuses: vec![AgentStatus::Online],
                ..q()
            },
            AgentQuery {
                capabilities: s(&["cap-1", "cap-2"]),
                ..q()
            },
            AgentQuery {
                tags: s(&["tag-0"]),
                ..q()
            },
            AgentQuery {
                tags: s(&["tag-1", "tag-2"]),
                offset: 2,
                ..q()
            },
            AgentQuery {
                types: s(&["type-0", "type-1"]),
                statuses: vec![AgentStatus::Online, AgentStatus::Degraded],
                capabilities: s(&["cap-0", "cap-3", "cap-4"]),
                tags: s(&["tag-0", "tag-1"]),
                ..q()
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn indexes_agree_with_a_linear_scan(ops in proptest::collection::vec(op(), 1..40)) {
            let mut r = AgentRegistry::default();
            for op in ops {
                match op {
                    Op::Register(spec) => { let _ = r.register_agent(make(&spec), 1); }
                    Op::Upsert(spec) => { let _ = r.upsert_agent(make(&spec), 1); }
                    Op::Deregister(a) => { r.deregister_agent(&format!("agent-{a}")); }
                }
                let all: Vec<&RegisteredAgent> = r.agents().collect();
                prop_assert_eq!(all.len(), r.len());
                prop_assert!(all.windows(2).all(|w| w[0].id < w[1].id));
                for c in 0..=POOL {
                    let cap = format!("cap-{c}");
                    let scan: Vec<&str> = all.iter()
                        .filter(|a| a.capability(&cap).is_some())
                        .map(|a| a.id.as_str()).collect();
                    let found: Vec<&str> = r.find_agents_by_capability(&cap)
                        .into_iter().map(|a| a.id.as_str()).collect();
                    prop_assert_eq!(&found, &scan, "capability {}", cap);
                    if found.is_empty() {
                        prop_assert!(!r.by_capability.0.contains_key(cap.as_str()));
                    }
                }
                for q in queries() {
                    let (page, total) = r.query_agents(&q);
                    let found: Vec<&str> = page.into_iter().map(|a| a.id.as_str()).collect();
                    prop_assert_eq!((found, total), scan(&all, &q), "{:?}", q);
                }
            }
        }
    }
}
