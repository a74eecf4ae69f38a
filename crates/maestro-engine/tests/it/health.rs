//! The health checker: heartbeats older than 3 × the interval take an agent
//! offline, a heartbeat brings it back, operator holds are respected, and every
//! change publishes `agent:health`.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::model::{AgentStatus, EventFilter, EventType, RegisteredAgent};
use maestro_engine::{Maestro, MaestroOptions};
use serde_json::json;

use crate::support::*;

async fn with_checker(interval_ms: u64) -> Maestro {
    let mut config = test_config();
    config.health_check_interval_ms = interval_ms;
    let mut o = MaestroOptions::new(Arc::new(maestro_store::MemoryStore::new()));
    o.config = config;
    o.health_checker = true;
    Maestro::initialize(o).await.unwrap()
}

fn poll_agent(id: &str) -> RegisteredAgent {
    serde_json::from_value(json!({"id": id, "type": "worker", "capabilities": [{"id": "op"}]}))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn stale_heartbeats_go_offline_and_come_back() {
    let m = with_checker(100).await;
    m.register_agent(poll_agent("p1")).await.unwrap();
    let mut health = m.subscribe(
        EventFilter {
            event_types: vec![EventType::AgentHealth],
            ..Default::default()
        },
        16,
    );
    // Heartbeats every 100 ms keep it online.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m.heartbeat("p1", None).await.unwrap();
    }
    assert_eq!(m.get_agent("p1").unwrap().status, AgentStatus::Online);
    assert!(health.try_recv().is_none(), "no change, no event");
    // Silence for more than 3 intervals: offline, with an event.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(m.get_agent("p1").unwrap().status, AgentStatus::Offline);
    let e = tokio::time::timeout(Duration::from_secs(1), health.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.payload["status"], "offline");
    assert_eq!(e.target_agent.as_deref(), Some("p1"));
    // A heartbeat brings it back.
    m.heartbeat("p1", None).await.unwrap();
    assert_eq!(m.get_agent("p1").unwrap().status, AgentStatus::Online);
    let h = m.get_agent_health("p1").unwrap();
    assert!(
        h.uptime < 100.0,
        "uptime counts the checks that found it offline: {}",
        h.uptime
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn operator_hold_is_not_overridden() {
    let m = with_checker(100).await;
    m.register_agent(poll_agent("p1")).await.unwrap();
    m.update_agent_status("p1", AgentStatus::Degraded)
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m.heartbeat("p1", None).await.unwrap();
    }
    assert_eq!(
        m.get_agent("p1").unwrap().status,
        AgentStatus::Degraded,
        "heartbeats keep the hold"
    );
    m.update_agent_status("p1", AgentStatus::Online)
        .await
        .unwrap();
    m.heartbeat("p1", None).await.unwrap();
    assert_eq!(m.get_agent("p1").unwrap().status, AgentStatus::Online);
    m.shutdown().await;
}
