//! `maestro serve`: wire the store, the engine, the transports and the HTTP API
//! together, and run them until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use maestro_api::auth::Auth;
use maestro_api::outbound::{AllowList, HttpOutbound};
use maestro_api::push::{HttpPushInvoker, PushOptions};
use maestro_api::{ApiOptions, AppState};
use maestro_core::choreography::{CelBudget, Limits};
use maestro_core::ports::{ClusterStore, Store};
use maestro_engine::cluster::ClusterOptions;
use maestro_engine::{Maestro, MaestroOptions};
use maestro_store::SqliteStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::settings::{Settings, write_admin_token};

/// A server that is up: listening, engine running.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    pub maestro: Maestro,
    /// The admin token generated at this start (first start only).
    pub generated_admin_token: Option<String>,
    stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    /// SQLite: the one-server-per-database claim (a cluster needs none).
    lock: Option<ServerLock>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Open the store named by the settings: `sqlite://<path>` or, with the
/// `postgres` feature (on by default), `postgres://...` with a pool of
/// `databaseMaxConnections` connections; with its cluster side when it has one
/// (PostgreSQL).
async fn open_backend(
    settings: &Settings,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn ClusterStore>>)> {
    let url = settings.server.database_url();
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return open_postgres(&url, settings.server.database_max_connections).await;
    }
    if !url.starts_with("sqlite:") {
        bail!("unsupported databaseUrl {url:?} (sqlite://<path> or postgres://...)");
    }
    // Created 0600 before SQLite opens it (it gives `-wal` and `-shm` the
    // database's mode), or tightened: it holds secrets in plain text.
    if let Some(file) = SqliteStore::file_of_url(&url) {
        crate::private::sqlite_files(&file)?;
    }
    let store = SqliteStore::open_url(&url)
        .await
        .with_context(|| format!("opening {url}"))?;
    Ok((Arc::new(store), None))
}

#[cfg(feature = "postgres")]
async fn open_postgres(
    url: &str,
    max_connections: u32,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn ClusterStore>>)> {
    let store = maestro_store::PostgresStore::connect(url, max_connections)
        .await
        .with_context(|| format!("opening {}", maestro_store::PostgresStore::redact_url(url)))?;
    let store = Arc::new(store);
    Ok((store.clone(), Some(store)))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(
    _url: &str,
    _max_connections: u32,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<dyn ClusterStore>>)> {
    bail!("this build has no PostgreSQL store (feature `postgres`); use sqlite://")
}

/// Start everything; answers once `/readyz` would answer 200.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    let srv = &settings.server;
    // Owner-only (0700, files 0600), whatever the umask: see `private`.
    crate::private::data_dir(&srv.data_dir)?;
    for file in ["node.id", "admin.token"] {
        crate::private::tighten(&srv.data_dir.join(file));
    }
    let (store, cluster_store) = open_backend(&settings).await?;
    let node_id = node_id(&srv.data_dir)?;
    // PostgreSQL: a cluster of any number of nodes. SQLite: one server per file.
    let (lock, cluster) = match cluster_store {
        Some(cs) => (
            None,
            Some(ClusterOptions {
                store: cs,
                node_id,
                lease_ttl_ms: srv.cluster_lease_ttl_ms,
            }),
        ),
        None => (Some(ServerLock::take(store.clone(), node_id).await?), None),
    };

    let allow = match &srv.outbound_allow_list {
        Some(list) => AllowList::new(list).map_err(anyhow::Error::msg)?,
        None => AllowList::default_for_listen(srv.listen.ip().is_loopback()),
    };
    let push = HttpPushInvoker::new(
        allow.clone(),
        PushOptions {
            max_response_bytes: srv.max_output_bytes + (64 << 10),
            ..PushOptions::default()
        },
    );
    let mut opts = MaestroOptions::new(store.clone());
    opts.config = settings.runtime.clone();
    opts.health_probe = Some(Arc::new(push.health_probe()));
    opts.http_invoker = Some(Arc::new(push));
    opts.outbound = Some(Arc::new(HttpOutbound::new(allow.clone())));
    opts.limits = Limits {
        max_steps: srv.max_steps_per_workflow,
        cel: CelBudget {
            max_cost: srv.cel_max_cost,
            max_list_size: srv.cel_max_list_size,
        },
        ..Limits::default()
    };
    opts.max_queued_executions = srv.max_queued_executions;
    opts.max_output_bytes = srv.max_output_bytes;
    opts.drain_timeout_ms = srv.drain_timeout_ms;
    opts.cluster = cluster;
    let keep = |ms: u64| (ms > 0).then_some(ms);
    opts.retention = maestro_engine::retention::Retention {
        executions_ms: keep(srv.retention_executions_ms),
        events_ms: keep(srv.retention_events_ms),
    };
    let maestro = Maestro::initialize(opts)
        .await
        .context("starting the engine")?;

    let auth = Auth::new(store.clone(), srv.admin_token.as_deref());
    let generated = auth
        .bootstrap(maestro_engine::clock::now_ms())
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin token: {e}"))?;
    let generated_admin_token = match generated {
        Some(m) => {
            write_admin_token(&srv.data_dir, &m.secret)?;
            Some(m.secret)
        }
        None => None,
    };

    let state = AppState::new(
        maestro.clone(),
        auth,
        ApiOptions {
            max_body_bytes: srv.max_body_bytes,
            max_json_depth: srv.max_json_depth,
            max_wait_ms: srv.max_wait_ms,
            sse_queue: srv.sse_queue,
            sse_keepalive_ms: srv.sse_keepalive_ms,
            auth_failures_per_minute: srv.auth_failures_per_minute,
            header_read_timeout_ms: srv.header_read_timeout_ms,
            keep_alive_idle_timeout_ms: srv.keep_alive_idle_timeout_ms,
            max_connections: srv.max_connections,
            outbound: allow,
        },
    );
    let listener = tokio::net::TcpListener::bind(srv.listen)
        .await
        .with_context(|| format!("listening on {}", srv.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let server = tokio::spawn(maestro_api::serve(
        listener,
        state.clone(),
        async move { signal.cancelled().await },
        Duration::from_millis(srv.drain_timeout_ms),
    ));
    Ok(Running {
        lock,
        addr,
        state,
        maestro,
        generated_admin_token,
        stop,
        server,
    })
}

impl Running {
    /// Drain: stop accepting, end streams, let requests and agent calls in
    /// flight finish (up to the drain deadline), persist, stop the engine.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let served = self.server.await;
        self.maestro.shutdown().await;
        if let Some(lock) = self.lock {
            lock.release().await;
        }
        match served {
            Ok(r) => r.context("serving"),
            Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
        }
    }
}

/// This server's node id: made once and kept in `<dataDir>/node.id`, so a
/// restart on the same data dir is the same node.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("node_{}", uuid::Uuid::new_v4().simple());
            crate::private::write(&path, &format!("{id}\n"))?;
            Ok(id)
        }
    }
}

/// One server per SQLite database (clusters run on PostgreSQL): a second server
/// (another node id) on the same file would resume and drive the same
/// executions, so it is refused at start. The claim is a lease row (`maestro:server`) renewed
/// every [`LOCK_RENEW_MS`]; after a crash it lapses within [`LOCK_TTL_MS`], and
/// the same node (same data dir) may take it back at once.
struct ServerLock {
    store: Arc<dyn Store>,
    node_id: String,
    stop: CancellationToken,
}

/// The lease row that stands for "a server uses this database".
const SERVER_LOCK: &str = "maestro:server";
const LOCK_TTL_MS: u64 = 15_000;
const LOCK_RENEW_MS: u64 = 5_000;

impl ServerLock {
    async fn take(store: Arc<dyn Store>, node_id: String) -> anyhow::Result<ServerLock> {
        let now = maestro_engine::clock::now_ms();
        let mine = store
            .acquire_lease(SERVER_LOCK, &node_id, now, LOCK_TTL_MS)
            .await
            .map_err(|e| anyhow::anyhow!("claiming the database: {e}"))?;
        if !mine {
            bail!(
                "another Maestro server uses this database (its claim lapses {} s after it \
                 stops); run one server per database",
                LOCK_TTL_MS / 1000
            );
        }
        let stop = CancellationToken::new();
        let (s, id, cancel) = (store.clone(), node_id.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(LOCK_RENEW_MS)) => {}
                }
                let now = maestro_engine::clock::now_ms();
                if let Err(e) = s.acquire_lease(SERVER_LOCK, &id, now, LOCK_TTL_MS).await {
                    tracing::warn!(error = %e, "renewing the database claim failed");
                }
            }
        });
        Ok(ServerLock {
            store,
            node_id,
            stop,
        })
    }

    async fn release(self) {
        self.stop.cancel();
        if let Err(e) = self.store.release_lease(SERVER_LOCK, &self.node_id).await {
            tracing::warn!(error = %e, "releasing the database claim failed");
        }
    }
}
