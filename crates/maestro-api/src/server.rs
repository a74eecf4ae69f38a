//! Serving the router with a graceful drain.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::routes::router;
use crate::state::AppState;

/// Serve until `shutdown` resolves; then stop accepting, end event streams and
/// waits, and give requests in flight up to `drain` to finish. The engine is
/// not stopped here: the caller shuts the [`maestro_engine::Maestro`] down
/// afterwards, which lets agent calls in flight finish and persists.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let draining = state.clone();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        draining.set_draining();
        let _ = tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let mut server = server;
    tokio::select! {
        r = &mut server => return r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        _ = rx => {}
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(r) => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!(
                drain_ms = drain.as_millis() as u64,
                "requests still open after the drain deadline; closing them"
            );
            server.abort();
            Ok(())
        }
    }
}
