//! The Agent Registry service: the in-memory [`AgentRegistry`] (a cache that can
//! be rebuilt from the store) kept in step with the store, plus a notification
//! when agents change or free capacity, which waiting calls listen to.

use std::sync::{Arc, RwLock};

use maestro_core::model::{AgentHealth, AgentStatus, RegisteredAgent, Timestamp};
use maestro_core::ports::Store;
use maestro_core::registry::{AgentRegistry, HealthWindowConfig};
use maestro_core::{Error, Result};
use tokio::sync::Notify;

/// Told the id of every agent whose stored record changed (`true`) or whose
/// heartbeat moved (`false`); cluster mode signals the other nodes.
pub type ChangeHook = Arc<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Clone)]
pub struct Registry {
    inner: Arc<RwLock<AgentRegistry>>,
    store: Arc<dyn Store>,
    changed: Arc<Notify>,
    hook: Arc<std::sync::OnceLock<ChangeHook>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("agents", &self.read(|r| r.len()))
            .finish()
    }
}

impl Registry {
    /// Load every agent from the store.
    pub async fn load(store: Arc<dyn Store>, window: HealthWindowConfig) -> Result<Self> {
        let mut reg = AgentRegistry::new(window);
        for a in store.list_agents().await? {
            let hb = a.last_heartbeat;
            if let Err(e) = reg.upsert_agent(a, hb) {
                tracing::warn!(error = %e, "skipping an invalid stored agent");
            }
        }
        Ok(Registry {
            inner: Arc::new(RwLock::new(reg)),
            store,
            changed: Arc::new(Notify::new()),
            hook: Arc::default(),
        })
    }

    /// Set the hook told about changes (once).
    pub fn set_change_hook(&self, hook: ChangeHook) {
        let _ = self.hook.set(hook);
    }

    fn changed_in_store(&self, id: &str, record: bool) {
        if let Some(h) = self.hook.get() {
            h(id, record);
        }
    }

    /// Re-read one agent from the store (changed through another node).
    pub async fn refresh(&self, id: &str) -> Result<()> {
        match self.store.get_agent(id).await? {
            Some(a) => self.write_and_notify(|r| r.replace_agent(a))?,
            None => {
                self.write_and_notify(|r| r.deregister_agent(id));
            }
        }
        Ok(())
    }

    /// Re-read every agent from the store (after signals may have been missed).
    pub async fn refresh_all(&self) -> Result<()> {
        let stored = self.store.list_agents().await?;
        let ids: std::collections::HashSet<String> = stored.iter().map(|a| a.id.clone()).collect();
        self.write_and_notify(|r| {
            let gone: Vec<String> = r
                .agents()
                .map(|a| a.id.clone())
                .filter(|id| !ids.contains(id))
                .collect();
            for id in gone {
                r.deregister_agent(&id);
            }
            for a in stored {
                if let Err(e) = r.replace_agent(a) {
                    tracing::warn!(error = %e, "skipping an invalid stored agent");
                }
            }
        });
        Ok(())
    }

    pub fn read<R>(&self, f: impl FnOnce(&AgentRegistry) -> R) -> R {
        f(&self.inner.read().expect("registry lock"))
    }

    /// Mutate the cache (no persistence, nobody woken).
    pub fn write<R>(&self, f: impl FnOnce(&mut AgentRegistry) -> R) -> R {
        f(&mut self.inner.write().expect("registry lock"))
    }

    /// Mutate the cache in a way that may make an agent available (capacity
    /// freed, status or agents changed): wakes calls waiting for an agent.
    pub fn write_and_notify<R>(&self, f: impl FnOnce(&mut AgentRegistry) -> R) -> R {
        let r = self.write(f);
        self.changed.notify_waiters();
        r
    }

    /// Give back an in-flight slot taken by routing.
    pub fn release(&self, agent_id: &str) {
        self.write_and_notify(|r| r.release(agent_id));
    }

    /// Resolves when agents changed or capacity was freed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub fn get(&self, id: &str) -> Option<RegisteredAgent> {
        self.read(|r| r.get_agent(id).cloned())
    }

    /// `registerAgent`: refuses a duplicate id.
    pub async fn register(
        &self,
        agent: RegisteredAgent,
        now: Timestamp,
    ) -> Result<RegisteredAgent> {
        let stored = self.write_and_notify(|r| r.register_agent(agent, now).cloned())?;
        if let Err(e) = self.store.put_agent(&stored).await {
            self.write(|r| r.deregister_agent(&stored.id));
            return Err(e);
        }
        self.changed_in_store(&stored.id, true);
        Ok(stored)
    }

    /// Create or update (`PUT`); `true` when created.
    pub async fn upsert(
        &self,
        agent: RegisteredAgent,
        now: Timestamp,
    ) -> Result<(bool, RegisteredAgent)> {
        let before = self.get(&agent.id);
        let (created, stored) =
            self.write_and_notify(|r| r.upsert_agent(agent, now).map(|(c, a)| (c, a.clone())))?;
        if let Err(e) = self.store.put_agent(&stored).await {
            self.write(|r| match before {
                Some(b) => {
                    let _ = r.upsert_agent(b, now);
                }
                None => {
                    r.deregister_agent(&stored.id);
                }
            });
            return Err(e);
        }
        self.changed_in_store(&stored.id, true);
        Ok((created, stored))
    }

    pub async fn deregister(&self, id: &str) -> Result<RegisteredAgent> {
        if !self.store.delete_agent(id).await? && self.get(id).is_none() {
            return Err(Error::not_found("agent", id));
        }
        let r = self
            .write_and_notify(|r| r.deregister_agent(id))
            .ok_or_else(|| Error::not_found("agent", id));
        self.changed_in_store(id, true);
        r
    }

    async fn persist(&self, agent: RegisteredAgent, record: bool) -> Result<RegisteredAgent> {
        self.store.put_agent(&agent).await?;
        self.changed_in_store(&agent.id, record);
        Ok(agent)
    }

    /// Operator status change (an operator hold unless set back to `online`).
    pub async fn update_status(&self, id: &str, status: AgentStatus) -> Result<RegisteredAgent> {
        let a = self.write_and_notify(|r| r.update_agent_status(id, status).cloned())?;
        self.persist(a, true).await
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        now: Timestamp,
        health: Option<AgentHealth>,
    ) -> Result<RegisteredAgent> {
        let a = self.write_and_notify(|r| -> Result<RegisteredAgent> {
            let a = r.heartbeat(id, now)?.clone();
            if let Some(h) = health {
                r.record_reported_health(id, h, now)?;
            }
            Ok(a)
        })?;
        self.persist(a, false).await
    }

    /// Health checker verdict; `Some((old, new))` when the status changed.
    pub async fn set_status_from_health(
        &self,
        id: &str,
        status: AgentStatus,
    ) -> Result<Option<(AgentStatus, AgentStatus)>> {
        let (changed, agent) = self.write_and_notify(|r| {
            let c = r.set_status_from_health(id, status);
            (c, r.get_agent(id).cloned())
        });
        if let (Some(_), Some(a)) = (changed, agent) {
            self.persist(a, true).await?;
        }
        Ok(changed)
    }
}
