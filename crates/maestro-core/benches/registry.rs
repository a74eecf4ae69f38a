//! Agent Registry at scale: 100,000 agents, each with 3 capabilities out of 1,000
//! (about 300 holders per capability), 5 types, 20 tags.
//!
//! Run: `cargo bench -p maestro-core --bench registry` (about a minute). Before the
//! measurements it prints the resident memory the registry took, per agent, and
//! what a full health window adds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use maestro_core::model::{AgentCapability, AgentStatus, RegisteredAgent};
use maestro_core::registry::{AgentQuery, AgentRegistry, HealthWindowConfig, Route};
use serde_json::json;

const AGENTS: usize = 100_000;
const CAPABILITIES: usize = 1_000;
const TAGS: usize = 20;
const TYPES: [&str; 5] = ["sentinel", "bridge", "sovereign", "prism", "atlas"];
const NOW: u64 = 1_764_100_000_000;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

fn capability(c: usize, rng: &mut Rng) -> AgentCapability {
    let tags: Vec<String> = (0..1 + rng.below(2))
        .map(|_| format!("tag-{:02}", rng.below(TAGS)))
        .collect();
    serde_json::from_value(json!({
        "id": format!("cap-{c:04}"),
        "name": format!("Capability {c}"),
        "inputs": {"data": "string"},
        "outputs": {"result": "string"},
        "tags": tags,
    }))
    .expect("capability")
}

fn agent(i: usize, rng: &mut Rng) -> RegisteredAgent {
    let mut caps: Vec<usize> = Vec::with_capacity(3);
    while caps.len() < 3 {
        let c = rng.below(CAPABILITIES);
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    let status = match i % 10 {
        8 => AgentStatus::Degraded,
        9 => AgentStatus::Offline,
        _ => AgentStatus::Online,
    };
    RegisteredAgent {
        id: format!("agent-{i:06}"),
        agent_type: TYPES[i % TYPES.len()].to_owned(),
        name: format!("Agent {i}"),
        description: String::new(),
        public_key: String::new(),
        capabilities: caps.into_iter().map(|c| capability(c, rng)).collect(),
        status,
        last_heartbeat: 0,
        endpoint: Some(format!("http://10.0.{}.{}:9000", i / 250 % 250, i % 250)),
        transport: None,
        max_concurrency: Some(16),
        metadata: Default::default(),
        inbound_secret: None,
        status_hold: false,
    }
}

/// Resident set size in bytes (Linux), 0 elsewhere.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn build() -> (AgentRegistry, String) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let before = rss();
    let agents: Vec<RegisteredAgent> = (0..AGENTS).map(|i| agent(i, &mut rng)).collect();
    let definitions = rss().saturating_sub(before);

    let before = rss();
    let started = Instant::now();
    let mut registry = AgentRegistry::new(HealthWindowConfig::default());
    for a in agents {
        registry.register_agent(a, NOW).expect("register");
    }
    let built = started.elapsed();
    let overhead = rss().saturating_sub(before);
    println!(
        "registered {AGENTS} agents in {built:.2?}; RSS per agent: {} bytes of definitions \
         (3 capabilities each, as serde types), {} bytes of registry on top \
         (slot, id map, indexes)",
        definitions / AGENTS,
        overhead / AGENTS
    );

    // What a full window (100 calls over 3 capabilities) adds, on 10,000 agents.
    let windowed = 10_000;
    let before = rss();
    let ids: Vec<String> = registry
        .agents()
        .take(windowed)
        .map(|a| a.id.clone())
        .collect();
    let caps: Vec<Vec<String>> = registry
        .agents()
        .take(windowed)
        .map(|a| a.capabilities.iter().map(|c| c.id.clone()).collect())
        .collect();
    let lists = rss().saturating_sub(before);
    for (id, caps) in ids.iter().zip(&caps) {
        for call in 0..100u64 {
            let cap = &caps[call as usize % caps.len()];
            registry.record_invocation(id, cap, !call.is_multiple_of(7), 5 + call % 40, NOW + call);
        }
    }
    let window = rss().saturating_sub(before).saturating_sub(lists);
    println!(
        "a full health window adds about {} bytes per agent",
        window / windowed
    );

    // The capability held by the number of agents closest to 300.
    let capability = (0..CAPABILITIES)
        .map(|c| format!("cap-{c:04}"))
        .min_by_key(|c| registry.find_agents_by_capability(c).len().abs_diff(300))
        .expect("capability");
    println!(
        "benchmark capability {capability} is held by {} agents",
        registry.find_agents_by_capability(&capability).len()
    );
    (registry, capability)
}

fn main() {
    let (mut registry, capability) = build();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    c.bench_function("find_agents_by_capability (~300 of 100k)", |b| {
        b.iter(|| {
            registry
                .find_agents_by_capability(black_box(&capability))
                .len()
        })
    });

    let query = AgentQuery {
        types: vec!["sentinel".into()],
        statuses: vec![AgentStatus::Online],
        capabilities: vec![capability.clone()],
        limit: 100,
        ..AgentQuery::default()
    };
    c.bench_function("query_agents type+status+capability limit 100", |b| {
        b.iter(|| registry.query_agents(black_box(&query)).1)
    });

    let by_type = AgentQuery {
        types: vec!["sentinel".into()],
        statuses: vec![AgentStatus::Online],
        limit: 100,
        ..AgentQuery::default()
    };
    c.bench_function("query_agents type+status limit 100 (20k candidates)", |b| {
        b.iter(|| registry.query_agents(black_box(&by_type)).1)
    });

    let by_status = AgentQuery {
        statuses: vec![AgentStatus::Degraded],
        limit: 100,
        ..AgentQuery::default()
    };
    c.bench_function("query_agents status limit 100 (full scan)", |b| {
        b.iter(|| registry.query_agents(black_box(&by_status)).1)
    });

    c.bench_function("route unnamed (~300 holders)", |b| {
        b.iter(|| match registry.route(black_box(&capability), None) {
            Route::Agent(a) => a.id.len(),
            _ => 0,
        })
    });

    let named = registry.find_agents_by_capability(&capability)[0]
        .id
        .clone();
    c.bench_function("route named", |b| {
        b.iter(|| {
            matches!(
                registry.route(black_box(&capability), Some(&named)),
                Route::Agent(_)
            )
        })
    });

    let mut rng = Rng(42);
    let mut fresh = agent(AGENTS + 1, &mut rng);
    // An id in the middle of the range, so every index list is searched and
    // shifted (ids past the end are appended, as when loading from the store).
    fresh.id = "agent-050000a".into();
    c.bench_function("register + deregister one agent (mid-range id)", |b| {
        b.iter_batched(
            || fresh.clone(),
            |a| {
                registry.register_agent(a, NOW).expect("register");
                registry.deregister_agent("agent-050000a")
            },
            BatchSize::SmallInput,
        )
    });

    let busy = registry.agents().next().expect("agent").id.clone();
    let busy_cap = registry.agents().next().expect("agent").capabilities[0]
        .id
        .clone();
    let mut t = NOW + 1_000;
    c.bench_function("record_invocation (full window)", |b| {
        b.iter(|| {
            t += 1;
            registry.record_invocation(black_box(&busy), &busy_cap, !t.is_multiple_of(5), 12, t);
        })
    });

    c.bench_function("agent_health (full window, 3 capabilities)", |b| {
        b.iter(|| {
            registry
                .agent_health(black_box(&busy), t, 10_000)
                .map(|h| h.score)
        })
    });

    c.final_summary();
}
