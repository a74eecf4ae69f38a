//! The runtime configuration, shared by every component and changeable at run time.

use std::sync::{Arc, RwLock};

use maestro_core::model::MaestroConfig;
use tokio::sync::watch;

/// A cheap handle on the current [`MaestroConfig`]; `set` notifies watchers.
#[derive(Clone)]
pub struct ConfigHandle {
    current: Arc<RwLock<Arc<MaestroConfig>>>,
    tx: Arc<watch::Sender<Arc<MaestroConfig>>>,
}

impl ConfigHandle {
    pub fn new(config: MaestroConfig) -> Self {
        let c = Arc::new(config);
        let (tx, _) = watch::channel(c.clone());
        ConfigHandle {
            current: Arc::new(RwLock::new(c)),
            tx: Arc::new(tx),
        }
    }

    pub fn get(&self) -> Arc<MaestroConfig> {
        self.current.read().expect("config lock").clone()
    }

    pub fn set(&self, config: MaestroConfig) {
        let c = Arc::new(config);
        *self.current.write().expect("config lock") = c.clone();
        self.tx.send_replace(c);
    }

    pub fn watch(&self) -> watch::Receiver<Arc<MaestroConfig>> {
        self.tx.subscribe()
    }
}

impl std::fmt::Debug for ConfigHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConfigHandle").field(&self.get()).finish()
    }
}
