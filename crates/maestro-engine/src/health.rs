//! The health checker service: every `healthCheckIntervalMs` it looks at each
//! agent. An agent whose last heartbeat is older than 3 × the interval goes
//! `offline` (agents pushed to over HTTP are probed instead, through the
//! [`HealthProbe`] port, when one is configured); one that answers again comes
//! back `online`. Operator holds are respected. Every status change publishes
//! `agent:health`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::model::{AgentStatus, EventType, NewEvent, RegisteredAgent, Transport};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::ConfigHandle;
use crate::executor::ExecutorHandle;
use crate::registry::Registry;

/// Checks whether an agent answers (`GET <endpoint>/health` for HTTP agents).
#[async_trait]
pub trait HealthProbe: Send + Sync {
    async fn probe(&self, agent: &RegisteredAgent, timeout_ms: u64) -> bool;
}

#[derive(Clone)]
pub struct HealthChecker {
    pub registry: Registry,
    pub config: ConfigHandle,
    pub executor: ExecutorHandle,
    pub probe: Option<Arc<dyn HealthProbe>>,
}

impl HealthChecker {
    /// Check every `healthCheckIntervalMs`; a change of the interval restarts
    /// the timer at once (from the moment of the change).
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.config.watch();
        loop {
            let interval = self.config.get().health_check_interval_ms.max(10);
            let tick = tokio::time::sleep(Duration::from_millis(interval));
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut tick => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = self.config.get().health_check_interval_ms.max(10);
                        if now != interval {
                            tick.as_mut().reset(
                                tokio::time::Instant::now() + Duration::from_millis(now),
                            );
                        }
                    }
                }
            }
            self.check_once().await;
        }
    }

    /// One pass over every agent.
    pub async fn check_once(&self) {
        let agents: Vec<RegisteredAgent> = self.registry.read(|r| r.agents().cloned().collect());
        for agent in agents {
            self.check(&agent).await;
        }
    }

    /// Check one agent now (an operator released its hold).
    pub async fn check_id(&self, id: &str) {
        if let Some(agent) = self.registry.get(id) {
            self.check(&agent).await;
        }
    }

    async fn check(&self, agent: &RegisteredAgent) {
        let config = self.config.get();
        let interval = config.health_check_interval_ms;
        let now = now_ms();
        let online = match (agent.effective_transport(), &self.probe) {
            (Transport::Http, Some(p)) => {
                p.probe(agent, config.agent_timeout_ms.min(interval)).await
            }
            (Transport::Inprocess, _) => true,
            _ => now.saturating_sub(agent.last_heartbeat) <= 3 * interval,
        };
        let now = now_ms();
        self.registry
            .write(|r| r.record_health_check(&agent.id, online, now));
        let health = self
            .registry
            .read(|r| r.agent_health(&agent.id, now, config.agent_timeout_ms));
        let wanted = if !online {
            AgentStatus::Offline
        } else if health
            .as_ref()
            .is_some_and(|h| h.status != maestro_core::model::HealthStatus::Healthy)
        {
            AgentStatus::Degraded
        } else {
            AgentStatus::Online
        };
        match self
            .registry
            .set_status_from_health(&agent.id, wanted)
            .await
        {
            Ok(Some((old, new))) => {
                let mut e = NewEvent::engine(
                    EventType::AgentHealth,
                    json!({"agentId": agent.id, "previousStatus": old, "status": new,
                           "health": health}),
                    now,
                );
                e.target_agent = Some(agent.id.clone());
                e.correlation_id = format!("agent:{}", agent.id);
                if let Err(err) = self.executor.append_events(vec![e]).await {
                    tracing::warn!(error = %err, "could not publish agent:health");
                }
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(agent = %agent.id, error = %err, "health status not saved")
            }
        }
    }
}
