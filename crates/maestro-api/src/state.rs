//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use maestro_engine::Maestro;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;

/// Limits and knobs of the HTTP layer (server settings, not runtime config).
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Largest accepted request body (`maxBodyBytes`, 413 above).
    pub max_body_bytes: usize,
    /// Deepest accepted JSON nesting (`maxJsonDepth`, 400 above).
    pub max_json_depth: usize,
    /// Longest `?wait=` of execute, ms.
    pub max_wait_ms: u64,
    /// Events an SSE client may fall behind before it is dropped.
    pub sse_queue: usize,
    /// Interval of SSE keep-alive comments, ms.
    pub sse_keepalive_ms: u64,
    /// Failed authentications per client address and minute before it is
    /// refused with 429 for the rest of the minute (`authFailuresPerMinute`).
    pub auth_failures_per_minute: u32,
    /// A request head must be complete within this long of the connection's
    /// accept (or of its first byte on a kept-alive connection), ms
    /// (`headerReadTimeoutMs`).
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request is closed this long after its
    /// last response, ms (`keepAliveIdleTimeoutMs`).
    pub keep_alive_idle_timeout_ms: u64,
    /// Open connections at most; more are answered 503 and closed
    /// (`maxConnections`).
    pub max_connections: usize,
    /// The outbound rules of the server's HTTP clients (`outboundAllowList`,
    /// or the default for its listen address): a URL they would refuse is
    /// refused when it is given (agent endpoint, callback, subscription).
    pub outbound: crate::outbound::AllowList,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body_bytes: 1 << 20,
            max_json_depth: 64,
            max_wait_ms: 60_000,
            sse_queue: 1024,
            sse_keepalive_ms: 15_000,
            auth_failures_per_minute: 30,
            header_read_timeout_ms: 10_000,
            keep_alive_idle_timeout_ms: 60_000,
            max_connections: 10_000,
            // The default server listens on loopback.
            outbound: crate::outbound::AllowList::default_for_listen(true),
        }
    }
}

pub struct Inner {
    pub maestro: Maestro,
    pub auth: Auth,
    pub opts: ApiOptions,
    pub prometheus: PrometheusHandle,
    /// Cancelled when the server drains: event streams and `?wait=` end.
    pub shutdown: CancellationToken,
    draining: AtomicBool,
    pub failures: crate::auth::FailureLimiter,
}

/// Shared state of the router. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(maestro: Maestro, auth: Auth, opts: ApiOptions) -> Self {
        {
            // Tokens revoked through another node of a cluster stop working
            // here at once (a node alone receives no signals).
            let mut signals = maestro.signals();
            let auth = auth.clone();
            tokio::spawn(async move {
                use maestro_engine::cluster::Signal;
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match signals.recv().await {
                        Ok(Signal::Token { id }) => auth.forget(&id),
                        Ok(Signal::Resync) | Err(RecvError::Lagged(_)) => auth.forget_all(),
                        Ok(_) => {}
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        let failures = crate::auth::FailureLimiter::new(opts.auth_failures_per_minute);
        // Cancelled when draining: event streams, `?wait=` and the metrics upkeep end.
        let shutdown = CancellationToken::new();
        crate::metrics::start_upkeep(shutdown.clone());
        AppState(Arc::new(Inner {
            maestro,
            auth,
            opts,
            prometheus: crate::metrics::handle(),
            shutdown,
            draining: AtomicBool::new(false),
            failures,
        }))
    }

    /// Stop taking new work: `/readyz` answers 503 from now on.
    /// Long-lived requests (event streams, `?wait=`) end now.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.shutdown.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }
}
