//! The composition root: build the parts of a node from [`MaestroOptions`]
//! and start them.

use std::sync::{Arc, Mutex};

use maestro_core::Result;
use maestro_core::choreography::Limits;
use maestro_core::model::MaestroConfig;
use maestro_core::ports::{Invoker, Outbound, Store};
use maestro_core::registry::HealthWindowConfig;
use tokio_util::sync::CancellationToken;

use super::{Inner, Maestro, Parts};
use crate::catalog::Catalog;
use crate::cluster::{Cluster, ClusterOptions, Signal};
use crate::config::ConfigHandle;
use crate::coordination::{Coordinator, SingleNode};
use crate::eventbus::EventBus;
use crate::executor::ExecutorOptions;
use crate::health::{HealthChecker, HealthProbe};
use crate::invoker::{InProcessInvoker, TransportInvoker};
use crate::registry::Registry;
use crate::tasks::{TaskQueue, TaskSignal};
use crate::webhooks::Webhooks;

/// How to build a [`Maestro`].
pub struct MaestroOptions {
    pub store: Arc<dyn Store>,
    /// Runtime config from file/environment; keys PATCHed earlier (stored) win.
    pub config: MaestroConfig,
    /// Invoker of `transport: http` agents.
    pub http_invoker: Option<Arc<dyn Invoker>>,
    /// Invoker of `transport: poll` agents.
    pub poll_invoker: Option<Arc<dyn Invoker>>,
    /// Handlers of `transport: inprocess` agents. Register them before
    /// `initialize` when executions may be resumed at start (they are re-sent
    /// at once); more can be added later through [`Maestro::in_process`].
    pub in_process: InProcessInvoker,
    /// Outbound POSTs (callbacks); enforces the allow-list.
    pub outbound: Option<Arc<dyn Outbound>>,
    /// Liveness probe of HTTP agents for the health checker.
    pub health_probe: Option<Arc<dyn HealthProbe>>,
    pub limits: Limits,
    pub max_queued_executions: usize,
    pub max_output_bytes: usize,
    pub drain_timeout_ms: u64,
    pub health_window: HealthWindowConfig,
    /// Run the health checker (on by default; in a cluster, on the leader).
    pub health_checker: bool,
    /// Share the store with other nodes (PostgreSQL): `None` runs alone.
    pub cluster: Option<ClusterOptions>,
    /// How long finished executions and events are kept (default: forever).
    pub retention: crate::retention::Retention,
}

impl MaestroOptions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        MaestroOptions {
            store,
            config: MaestroConfig::default(),
            http_invoker: None,
            poll_invoker: None,
            in_process: InProcessInvoker::new(),
            outbound: None,
            health_probe: None,
            limits: Limits::default(),
            max_queued_executions: 10_000,
            max_output_bytes: 1 << 20,
            drain_timeout_ms: 10_000,
            health_window: HealthWindowConfig::default(),
            health_checker: true,
            cluster: None,
            retention: crate::retention::Retention::default(),
        }
    }
}

impl Maestro {
    /// `initialize`: load config, agents and unfinished executions from the
    /// store, start the executor (which resumes them), then the services of
    /// this node's mode (alone: the health checker, webhooks and retention;
    /// in a cluster: see [`crate::cluster`]).
    pub async fn initialize(opts: MaestroOptions) -> Result<Maestro> {
        let store = opts.store.clone();
        let mut config = opts.config.clone();
        if let Some(stored) = store.load_config().await? {
            config = config.patched(&stored).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring invalid stored config");
                opts.config.clone()
            });
        }
        config.validate()?;
        let config = ConfigHandle::new(config);
        // The one place that knows whether the node runs alone.
        let coordination: Coordinator = match &opts.cluster {
            Some(c) => Arc::new(Cluster::new(c)),
            None => Arc::new(SingleNode::new()),
        };
        // Live delivery continues after the log: what it holds is read from the store.
        let bus = EventBus::new();
        bus.resume_after(store.last_seq().await?);
        let registry = Registry::load(store.clone(), opts.health_window).await?;
        let catalog = Catalog::new(store.clone(), opts.limits);
        let inprocess = opts.in_process.clone();
        let tasks = TaskQueue::new(store.clone());
        let c1 = coordination.clone();
        registry.set_change_hook(Arc::new(move |id: &str, record: bool| {
            c1.agent_changed(id, record)
        }));
        let c2 = coordination.clone();
        tasks.set_hook(Arc::new(move |s| {
            c2.send(match s {
                TaskSignal::Queued(agent) => Signal::TaskQueued { agent },
                TaskSignal::Done(id) => Signal::TaskDone { id },
            })
        }));
        let invoker = TransportInvoker {
            inprocess: Some(Arc::new(inprocess.clone())),
            http: opts.http_invoker.clone(),
            poll: Some(
                opts.poll_invoker
                    .clone()
                    .unwrap_or_else(|| Arc::new(tasks.clone())),
            ),
        };
        let cancel = CancellationToken::new();
        let (executor, handle) = coordination.start_executor(
            ExecutorOptions {
                store: store.clone(),
                invoker: Arc::new(invoker),
                registry: registry.clone(),
                bus: bus.clone(),
                config: config.clone(),
                catalog: catalog.clone(),
                outbound: opts.outbound.clone(),
                max_queued: opts.max_queued_executions,
                max_output_bytes: opts.max_output_bytes,
                drain_timeout_ms: opts.drain_timeout_ms,
                cel_budget: opts.limits.cel,
            },
            cancel.clone(),
        );
        let webhooks = Webhooks::new(
            store.clone(),
            bus.clone(),
            registry.clone(),
            opts.outbound.clone(),
            cancel.clone(),
        );
        let mut services = vec![executor, tokio::spawn(tasks.clone().run(cancel.clone()))];
        let health = opts.health_checker.then(|| HealthChecker {
            registry: registry.clone(),
            config: config.clone(),
            executor: handle.clone(),
            probe: opts.health_probe.clone(),
        });
        let parts = Parts {
            store,
            registry,
            bus,
            catalog,
            executor: handle,
            config,
            base_config: opts.config.clone(),
            inprocess,
            tasks,
            webhooks,
            health,
            retention: opts.retention,
            cancel,
        };
        // Recovery is done (or failed): the executor says so.
        let started = async {
            parts.executor.started().await?;
            coordination.start(&parts).await
        };
        match started.await {
            Ok(more) => services.extend(more),
            Err(e) => {
                parts.cancel.cancel();
                return Err(e);
            }
        }
        Ok(Maestro {
            inner: Arc::new(Inner {
                parts,
                coordination,
                services: Mutex::new(services),
            }),
        })
    }
}
