//! Agent health: a sliding window of real invocations, a short history of health
//! checks, and what the agent last reported about itself (API.md, "AgentHealth").
//!
//! Memory is paid only where there is data: an agent that was never called costs
//! one pointer for its call window and one for its last report. A called agent
//! keeps a ring of at most `max_calls` 16-byte records plus the distinct
//! capability names those records refer to. Statistics are computed on read, over
//! at most `max_calls` records.

use std::collections::VecDeque;

use crate::Error;
use crate::model::{AgentHealth, CapabilityHealth, HealthStatus, Timestamp};

/// How many of the latest health checks `uptime` is computed over (at the default
/// 30 s interval, a little over an hour).
pub const UPTIME_CHECKS: u8 = 128;

/// Largest number of capabilities accepted in a reported health.
pub const MAX_REPORTED_CAPABILITIES: usize = 1024;
/// Longest capability name accepted in a reported health.
pub const MAX_REPORTED_NAME_LEN: usize = 128;

/// Records carry their capability as a `u16` index, so the window holds at most
/// this many calls (far above any sensible `max_calls`).
const MAX_WINDOW: usize = u16::MAX as usize;
/// Unreferenced capability names are dropped once the name table reaches this size.
const NAME_COMPACT_AT: usize = 64;

/// The sliding window of invocations each agent's health is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthWindowConfig {
    /// Keep at most this many of the latest calls (default 100).
    pub max_calls: usize,
    /// Ignore calls older than this many ms (default 300,000: 5 minutes).
    pub max_age_ms: u64,
}

impl Default for HealthWindowConfig {
    fn default() -> Self {
        HealthWindowConfig {
            max_calls: 100,
            max_age_ms: 300_000,
        }
    }
}

impl HealthWindowConfig {
    fn capacity(&self) -> usize {
        self.max_calls.min(MAX_WINDOW)
    }

    fn is_fresh(&self, at: Timestamp, now: Timestamp) -> bool {
        now.saturating_sub(at) <= self.max_age_ms
    }
}

/// One invocation, as small as it gets: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Timestamp,
    duration_ms: u32,
    /// Index into [`CallWindow::names`].
    capability: u16,
    ok: bool,
}

/// The latest calls of one agent, oldest first.
#[derive(Debug, Default)]
pub(super) struct CallWindow {
    calls: VecDeque<Call>,
    /// Capability names the calls refer to (an agent calls few distinct ones).
    names: Vec<Box<str>>,
}

impl CallWindow {
    /// Calls currently held (pruned when calls are recorded and on health checks).
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    pub(super) fn record(
        &mut self,
        cfg: &HealthWindowConfig,
        capability: &str,
        ok: bool,
        duration_ms: u64,
        now: Timestamp,
    ) {
        let cap = cfg.capacity();
        if cap == 0 {
            return;
        }
        self.prune_old(cfg, now);
        while self.calls.len() >= cap {
            self.calls.pop_front();
        }
        let Some(capability) = self.intern(capability) else {
            return;
        };
        if self.calls.len() == self.calls.capacity() {
            // Grow by doubling as usual, but never past the window, so a full
            // window of 100 costs 1,600 bytes rather than 2,048.
            let target = (self.calls.capacity() * 2).max(4).min(cap);
            self.calls
                .reserve_exact(target.saturating_sub(self.calls.len()));
        }
        self.calls.push_back(Call {
            at: now,
            duration_ms: u32::try_from(duration_ms).unwrap_or(u32::MAX),
            capability,
            ok,
        });
    }

    /// Drops calls older than the window from the front. Calls recorded out of order
    /// may linger behind a newer one; reads filter by age anyway.
    pub(super) fn prune_old(&mut self, cfg: &HealthWindowConfig, now: Timestamp) {
        while self.calls.front().is_some_and(|c| !cfg.is_fresh(c.at, now)) {
            self.calls.pop_front();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    fn intern(&mut self, name: &str) -> Option<u16> {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            return u16::try_from(i).ok();
        }
        if self.names.len() >= NAME_COMPACT_AT {
            self.compact_names();
        }
        let index = u16::try_from(self.names.len()).ok()?;
        self.names.push(name.into());
        Some(index)
    }

    /// Drops the names no call refers to any more and renumbers the calls.
    fn compact_names(&mut self) {
        let mut used = vec![false; self.names.len()];
        for call in &self.calls {
            if let Some(u) = used.get_mut(usize::from(call.capability)) {
                *u = true;
            }
        }
        let mut remap = vec![0u16; used.len()];
        let old = std::mem::take(&mut self.names);
        for ((name, used), new) in old.into_iter().zip(used).zip(&mut remap) {
            if let (true, Ok(index)) = (used, u16::try_from(self.names.len())) {
                *new = index;
                self.names.push(name);
            }
        }
        for call in &mut self.calls {
            call.capability = remap
                .get(usize::from(call.capability))
                .copied()
                .unwrap_or_default();
        }
    }

    /// Statistics of the calls that are still inside the window at `now`.
    fn stats(&self, cfg: &HealthWindowConfig, now: Timestamp) -> WindowStats {
        let mut s = WindowStats {
            per_capability: vec![CapStats::default(); self.names.len()],
            ..WindowStats::default()
        };
        for call in self.calls.iter().filter(|c| cfg.is_fresh(c.at, now)) {
            s.all.add(call);
            if let Some(c) = s.per_capability.get_mut(usize::from(call.capability)) {
                c.add(call);
            }
        }
        s
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct CapStats {
    calls: u64,
    failures: u64,
    total_ms: u64,
}

impl CapStats {
    fn add(&mut self, call: &Call) {
        self.calls += 1;
        self.failures += u64::from(!call.ok);
        self.total_ms += u64::from(call.duration_ms);
    }

    fn error_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.failures as f64 / self.calls as f64
        }
    }

    fn mean_ms(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.total_ms as f64 / self.calls as f64
        }
    }
}

#[derive(Debug, Default)]
struct WindowStats {
    all: CapStats,
    per_capability: Vec<CapStats>,
}

/// Outcomes of the latest [`UPTIME_CHECKS`] health checks, newest in bit 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct CheckHistory {
    online: u128,
    len: u8,
}

impl CheckHistory {
    pub(super) fn record(&mut self, online: bool) {
        self.online = (self.online << 1) | u128::from(online);
        self.len = self.len.saturating_add(1).min(UPTIME_CHECKS);
    }

    /// Percentage of the recorded checks that found the agent online; `None`
    /// before the first check.
    fn uptime(&self) -> Option<f64> {
        if self.len == 0 {
            return None;
        }
        let mask = if self.len >= UPTIME_CHECKS {
            u128::MAX
        } else {
            (1u128 << self.len) - 1
        };
        Some(f64::from((self.online & mask).count_ones()) * 100.0 / f64::from(self.len))
    }
}

/// What the agent last said about its own health, and when.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reported {
    pub(super) health: AgentHealth,
    pub(super) at: Timestamp,
}

/// Checks an agent-reported health: figures in range and finite, a bounded list of
/// capabilities, and no claim to be another agent.
pub(super) fn validate_reported(agent_id: &str, h: &AgentHealth) -> crate::Result<()> {
    let bad = |field: &str, why: &str| {
        Err(Error::validation(format!("reported health: {field} {why}")).field(field))
    };
    if !h.agent_id.is_empty() && h.agent_id != agent_id {
        return bad("agentId", "names another agent");
    }
    if !(h.response_time.is_finite() && h.response_time >= 0.0) {
        return bad("responseTime", "must be a non-negative number of ms");
    }
    if !(0.0..=1.0).contains(&h.error_rate) {
        return bad("errorRate", "must be between 0 and 1");
    }
    if !(0.0..=100.0).contains(&h.uptime) {
        return bad("uptime", "must be between 0 and 100");
    }
    if h.capabilities.len() > MAX_REPORTED_CAPABILITIES {
        return bad("capabilities", "lists too many capabilities");
    }
    for c in &h.capabilities {
        if c.name.is_empty() || c.name.len() > MAX_REPORTED_NAME_LEN {
            return bad("capabilities", "has an empty or overlong name");
        }
        if !(0.0..=1.0).contains(&c.success_rate) {
            return bad("capabilities", "successRate must be between 0 and 1");
        }
        if !(c.average_time.is_finite() && c.average_time >= 0.0) {
            return bad(
                "capabilities",
                "averageTime must be a non-negative number of ms",
            );
        }
    }
    Ok(())
}

fn severity(s: HealthStatus) -> u8 {
    match s {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy => 2,
    }
}

fn worse(a: HealthStatus, b: HealthStatus) -> HealthStatus {
    if severity(b) > severity(a) { b } else { a }
}

/// Everything [`compute`] needs to know about one agent.
pub(super) struct HealthInputs<'a> {
    pub(super) agent_id: &'a str,
    pub(super) offline: bool,
    pub(super) window: Option<&'a CallWindow>,
    pub(super) checks: CheckHistory,
    pub(super) reported: Option<&'a Reported>,
    pub(super) last_check: Timestamp,
}

/// Computes an agent's health at `now` and merges in what it reported.
///
/// - `responseTime`/`errorRate`: from the window when it holds calls at `now`,
///   else from a fresh report (no older than `max_age_ms`), else 0.
/// - `uptime`: from the health checks when there were any, else a fresh report, else 100.
/// - `status`: `unhealthy` when offline or errorRate > 0.5, `degraded` when
///   errorRate > 0.1 or responseTime > 0.5 × `agent_timeout_ms` (thresholds applied to
///   the figures above), then the worse of that and a fresh report's status.
///   The agent's registry status `degraded` does not feed in: the health checker
///   sets it from this very status, which would then never recover.
/// - `capabilities`: computed entries (`successRate` a 0..=1 fraction, like
///   `errorRate`) for capabilities called within the window, then the report's
///   entries for the others; sorted by name. Capabilities with neither are omitted.
/// - `lastCheck`: the latest health check, invocation or report.
/// - `score`: [`AgentHealth::compute_score`] of the merged figures.
pub(super) fn compute(
    cfg: &HealthWindowConfig,
    inputs: HealthInputs<'_>,
    now: Timestamp,
    agent_timeout_ms: u64,
) -> AgentHealth {
    let stats = inputs.window.map(|w| (w, w.stats(cfg, now)));
    let reported = inputs
        .reported
        .filter(|r| cfg.is_fresh(r.at, now))
        .map(|r| &r.health);

    let (response_time, error_rate) = match (&stats, reported) {
        (Some((_, s)), _) if s.all.calls > 0 => (s.all.mean_ms(), s.all.error_rate()),
        (_, Some(r)) => (r.response_time, r.error_rate),
        _ => (0.0, 0.0),
    };
    let uptime = inputs
        .checks
        .uptime()
        .or(reported.map(|r| r.uptime))
        .unwrap_or(100.0);

    let mut status = if inputs.offline || error_rate > 0.5 {
        HealthStatus::Unhealthy
    } else if error_rate > 0.1 || response_time > 0.5 * agent_timeout_ms as f64 {
        HealthStatus::Degraded
    } else {
        HealthStatus::Healthy
    };
    if let Some(r) = reported {
        status = worse(status, r.status);
    }

    let mut capabilities: Vec<CapabilityHealth> = Vec::new();
    if let Some((w, s)) = &stats {
        for (name, c) in w.names.iter().zip(&s.per_capability) {
            if c.calls > 0 {
                capabilities.push(CapabilityHealth {
                    name: name.to_string(),
                    success_rate: 1.0 - c.error_rate(),
                    average_time: c.mean_ms(),
                    invocations: c.calls,
                });
            }
        }
    }
    if let Some(r) = reported {
        for c in &r.capabilities {
            let known = capabilities.iter().any(|k| k.name == c.name);
            if !known {
                capabilities.push(c.clone());
            }
        }
    }
    capabilities.sort_by(|a, b| a.name.cmp(&b.name));

    AgentHealth {
        agent_id: inputs.agent_id.to_owned(),
        status,
        response_time,
        error_rate,
        last_check: inputs.last_check,
        uptime,
        score: AgentHealth::compute_score(status, error_rate, uptime),
        capabilities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: HealthWindowConfig = HealthWindowConfig {
        max_calls: 5,
        max_age_ms: 1_000,
    };

    fn health(w: &CallWindow, now: Timestamp) -> AgentHealth {
        compute(
            &CFG,
            HealthInputs {
                agent_id: "a",
                offline: false,
                window: Some(w),
                checks: CheckHistory::default(),
                reported: None,
                last_check: now,
            },
            now,
            10_000,
        )
    }

    #[test]
    fn call_record_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Call>(), 16);
    }

    #[test]
    fn window_keeps_the_latest_calls_by_count() {
        let mut w = CallWindow::default();
        for i in 0..8 {
            w.record(&CFG, "c", i >= 3, 10, 100 + i);
        }
        assert_eq!(w.len(), 5);
        assert!(w.calls.capacity() <= 5, "grew past the window");
        // The three failures were the oldest and are gone.
        assert_eq!(health(&w, 110).error_rate, 0.0);
    }

    #[test]
    fn window_forgets_calls_by_age() {
        let mut w = CallWindow::default();
        w.record(&CFG, "c", false, 10, 0);
        w.record(&CFG, "c", true, 10, 600);
        assert_eq!(health(&w, 1_000).error_rate, 0.5);
        // At 1,001 the first call is older than 1,000 ms: ignored on read...
        assert_eq!(health(&w, 1_001).error_rate, 0.0);
        assert_eq!(health(&w, 1_001).capabilities[0].invocations, 1);
        // ...and dropped on the next write.
        w.record(&CFG, "c", true, 10, 1_500);
        assert_eq!(w.len(), 2);
        w.prune_old(&CFG, 3_000);
        assert!(w.is_empty());
    }

    #[test]
    fn zero_sized_window_records_nothing() {
        let cfg = HealthWindowConfig {
            max_calls: 0,
            max_age_ms: 1_000,
        };
        let mut w = CallWindow::default();
        w.record(&cfg, "c", false, 10, 0);
        assert!(w.is_empty());
    }

    #[test]
    fn capability_names_are_compacted() {
        let cfg = HealthWindowConfig {
            max_calls: 3,
            max_age_ms: u64::MAX,
        };
        let mut w = CallWindow::default();
        for i in 0..1_000u64 {
            w.record(&cfg, &format!("cap{i}"), i % 2 == 0, i, i);
        }
        assert!(w.names.len() <= NAME_COMPACT_AT + 1);
        let h = health(&w, 1_000);
        let names: Vec<_> = h.capabilities.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cap997", "cap998", "cap999"]);
        assert_eq!(h.capabilities[1].average_time, 998.0);
        assert_eq!(h.capabilities[1].success_rate, 1.0);
        assert_eq!(h.capabilities[0].success_rate, 0.0);
    }

    #[test]
    fn huge_durations_saturate() {
        let mut w = CallWindow::default();
        w.record(&CFG, "c", true, u64::MAX, 0);
        assert_eq!(health(&w, 0).response_time, f64::from(u32::MAX));
    }

    #[test]
    fn uptime_history() {
        let mut c = CheckHistory::default();
        assert_eq!(c.uptime(), None);
        c.record(true);
        c.record(false);
        c.record(true);
        c.record(true);
        assert_eq!(c.uptime(), Some(75.0));
        for _ in 0..UPTIME_CHECKS {
            c.record(false);
        }
        assert_eq!(c.uptime(), Some(0.0));
        c.record(true);
        assert_eq!(c.uptime(), Some(100.0 / f64::from(UPTIME_CHECKS)));
    }

    #[test]
    fn reported_health_is_validated() {
        let ok = AgentHealth::default();
        validate_reported("a", &ok).unwrap();
        let cases: Vec<(AgentHealth, &str)> = vec![
            (
                AgentHealth {
                    agent_id: "b".into(),
                    ..AgentHealth::default()
                },
                "agentId",
            ),
            (
                AgentHealth {
                    error_rate: 1.5,
                    ..AgentHealth::default()
                },
                "errorRate",
            ),
            (
                AgentHealth {
                    error_rate: f64::NAN,
                    ..AgentHealth::default()
                },
                "errorRate",
            ),
            (
                AgentHealth {
                    uptime: 101.0,
                    ..AgentHealth::default()
                },
                "uptime",
            ),
            (
                AgentHealth {
                    response_time: f64::INFINITY,
                    ..AgentHealth::default()
                },
                "responseTime",
            ),
            (
                AgentHealth {
                    capabilities: vec![CapabilityHealth {
                        name: "c".into(),
                        success_rate: -0.1,
                        ..CapabilityHealth::default()
                    }],
                    ..AgentHealth::default()
                },
                "capabilities",
            ),
            (
                AgentHealth {
                    capabilities: vec![CapabilityHealth::default()],
                    ..AgentHealth::default()
                },
                "capabilities",
            ),
        ];
        for (h, field) in cases {
            match validate_reported("a", &h) {
                Err(Error::Invalid { details, .. }) => {
                    assert_eq!(details.field.as_deref(), Some(field))
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
