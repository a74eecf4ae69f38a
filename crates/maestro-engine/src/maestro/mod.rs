//! The `Maestro` facade (docs/ARCHITECTURE.md "The facade"):
//!
//! - `start.rs`: the composition root: [`MaestroOptions`], building the parts
//!   and starting them ([`Maestro::initialize`]);
//! - `api.rs`: the library API (the original's methods, in Rust naming) and
//!   the narrow interfaces the HTTP API uses instead of the parts themselves;
//! - `idempotency.rs`: the digest that tells an `Idempotency-Key` replay from
//!   a reuse.
//!
//! Whether the node runs alone or in a cluster is one
//! [`Coordination`](crate::coordination::Coordination) chosen at start; the
//! cluster plumbing is in [`crate::cluster`].

mod api;
mod idempotency;
mod start;

use std::sync::{Arc, Mutex};

use maestro_core::model::{ChoreographyEvent, MaestroConfig, NewEvent, WorkflowExecution};
use maestro_core::ports::Store;
use maestro_core::{Error, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::ConfigHandle;
use crate::coordination::Coordinator;
use crate::eventbus::EventBus;
use crate::executor::{Control, ExecutorHandle};
use crate::health::HealthChecker;
use crate::invoker::InProcessInvoker;
use crate::registry::Registry;
use crate::tasks::TaskQueue;
use crate::webhooks::Webhooks;

pub use api::{ExecuteOptions, RuntimeStats};
pub use start::MaestroOptions;

/// The running parts of a node, built by the composition root. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Parts {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub bus: EventBus,
    pub catalog: Catalog,
    pub executor: ExecutorHandle,
    pub config: ConfigHandle,
    /// The config from files and environment, under the stored patch.
    pub base_config: MaestroConfig,
    pub inprocess: InProcessInvoker,
    pub tasks: TaskQueue,
    pub webhooks: Webhooks,
    /// The health checker (run by the leader); also checks an agent at once
    /// when an operator releases its hold.
    pub health: Option<HealthChecker>,
    pub retention: crate::retention::Retention,
    /// Stops every service.
    pub cancel: CancellationToken,
}

impl Parts {
    /// Apply the stored runtime config (changed through another node).
    pub(crate) async fn reload_config(&self) {
        let stored = match self.store.load_config().await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the config failed");
                return;
            }
        };
        match self.base_config.patched(&stored) {
            Ok(next) => self.config.set(next),
            Err(e) => tracing::warn!(error = %e, "ignoring an invalid stored config"),
        }
    }
}

struct Inner {
    parts: Parts,
    /// Alone or in a cluster.
    coordination: Coordinator,
    services: Mutex<Vec<JoinHandle<()>>>,
}

/// The orchestrator. Cheap to clone.
#[derive(Clone)]
pub struct Maestro {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Maestro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maestro").finish_non_exhaustive()
    }
}

impl Maestro {
    fn parts(&self) -> &Parts {
        &self.inner.parts
    }

    /// `shutdown`: stop taking work, let calls in flight finish (up to the drain
    /// timeout), persist, stop. Unfinished executions resume at the next start.
    pub async fn shutdown(&self) {
        self.parts().cancel.cancel();
        let services: Vec<_> =
            std::mem::take(&mut *self.inner.services.lock().expect("services lock"));
        for t in services {
            let _ = t.await;
        }
        self.parts().bus.close();
    }

    /// Ready to serve: store reachable at start, executor running.
    pub fn is_ready(&self) -> bool {
        let s = self.parts().executor.stats();
        s.ready.load(std::sync::atomic::Ordering::SeqCst)
            && !s.failed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The store (for tests and tools that inspect it directly).
    #[doc(hidden)]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.parts().store
    }
    /// The event bus (for tests).
    #[doc(hidden)]
    pub fn bus(&self) -> &EventBus {
        &self.parts().bus
    }
    /// The executor (for tests).
    #[doc(hidden)]
    pub fn executor(&self) -> &ExecutorHandle {
        &self.parts().executor
    }
    /// Handlers of `transport: inprocess` agents.
    pub fn in_process(&self) -> &InProcessInvoker {
        &self.parts().inprocess
    }

    async fn emit(&self, e: NewEvent) -> Result<ChoreographyEvent> {
        let mut v = self.parts().executor.append_events(vec![e]).await?;
        v.pop().ok_or_else(|| Error::store("event not committed"))
    }
}

/// The refusal of a control request on a finished execution (the state
/// machine's rule for one, judged from its stored status by a node where it is
/// not live).
pub(crate) fn finished_refusal(id: &str, op: &Control, e: &WorkflowExecution) -> Error {
    Error::InvalidState(maestro_core::machine::Refusal::finished(op.op(), e.status).message(id))
}
