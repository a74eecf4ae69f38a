//! Serving the router: our own accept loop over hyper's HTTP/1 connection, so
//! that every connection is bounded in time and their number is capped
//! (`axum::serve` exposes neither), with a graceful drain.
//!
//! - **Header read timeout** (`header_read_timeout_ms`): a new connection must
//!   deliver a complete request head within it of being accepted; on a
//!   kept-alive connection, a request head must be complete within it of its
//!   first byte. Slow or silent clients are closed (no answer: the TCP
//!   connection is shut).
//! - **Keep-alive idle timeout** (`keep_alive_idle_timeout_ms`): a kept-alive
//!   connection on which no request is in flight and no byte of a next request
//!   has arrived is closed this long after its last response ended. A request
//!   in flight (a long `?wait=`, an event stream) is never cut by either.
//! - **Connection cap** (`max_connections`): at the cap a new connection is
//!   accepted, answered `503` with `Connection: close` at once, and closed
//!   (counted in `maestro_http_connections_refused_total`): a client learns at
//!   once instead of hanging in the kernel's backlog, and the refused
//!   connection costs no memory past that moment. The cap is also kept under
//!   the process's open-file limit.
//!
//! The semantics follow Go's `ReadHeaderTimeout` and `IdleTimeout`. hyper's
//! own `header_read_timeout` is not used: it runs one clock from the end of a
//! response to the end of the next request head, which makes the idle time of a
//! kept-alive connection and the header time one setting.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::routes::router;
use crate::state::AppState;

/// The time and count limits of connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header: Duration,
    idle: Duration,
    max: usize,
}

/// Serve until `shutdown` resolves; then stop accepting, end event streams and
/// waits, and give requests in flight up to `drain` to finish (connections
/// still open then are closed). The engine is not stopped here: the caller
/// shuts the [`maestro_engine::Maestro`] down afterwards, which lets agent
/// calls in flight finish and persists.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let opts = &state.opts;
    let limits = Limits {
        header: Duration::from_millis(opts.header_read_timeout_ms.max(1)),
        idle: Duration::from_millis(opts.keep_alive_idle_timeout_ms.max(1)),
        max: capped_by_open_files(opts.max_connections.max(1), open_file_limit()),
    };
    let app = router(state.clone());
    let slots = Arc::new(Semaphore::new(limits.max));
    let tracker = TaskTracker::new();
    // `graceful`: finish the request in flight, then close. `kill`: close now.
    let (graceful, kill) = (CancellationToken::new(), CancellationToken::new());
    let mut refusals = Refusals::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Most likely out of file descriptors (EMFILE): wait for some
                // to be closed rather than spin.
                tracing::error!(error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refuse(stream, limits.max);
            continue;
        };
        tracker.spawn(connection(
            stream,
            peer,
            app.clone(),
            limits,
            slot,
            graceful.clone(),
            kill.clone(),
        ));
    }
    drop(listener);
    state.set_draining();
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            connections = tracker.len(),
            "requests still open after the drain deadline; closing them"
        );
        kill.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// `maxConnections`, lowered to three quarters of the open-file limit when that
/// is lower: the rest is for the database, agent calls, webhooks and logs.
fn capped_by_open_files(max: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else { return max };
    let room = usize::try_from(nofile / 4 * 3).unwrap_or(usize::MAX).max(1);
    if room < max {
        tracing::warn!(
            max_connections = max,
            open_file_limit = nofile,
            lowered_to = room,
            "maxConnections is above what the open-file limit allows; lowered"
        );
        return room;
    }
    max
}

/// The soft open-file limit (`RLIMIT_NOFILE`), where `/proc` tells it.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Connections refused at the cap: answered and counted, and logged at most
/// every 10 s.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn refuse(&mut self, stream: TcpStream, max: usize) {
        metrics::counter!("maestro_http_connections_refused_total").increment(1);
        // Best effort, never waiting: a fresh socket's send buffer is empty.
        let _ = stream.try_write(REFUSED);
        drop(stream);
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                max_connections = max,
                refused = self.since_log,
                "at the connection cap: refusing new connections"
            );
            self.since_log = 0;
            self.logged = Some(Instant::now());
        }
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: application/json\r\nretry-after: 1\r\ncontent-length: 90\r\n\r\n\
{\"success\":false,\"error\":\"too many connections; try again in a moment\",\"code\":\"NOT_READY\"}";

/// Why a connection was closed by a timeout (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Header,
    Idle,
}

/// Serve one connection until it ends, times out, or the drain closes it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
    graceful: CancellationToken,
    kill: CancellationToken,
) {
    metrics::gauge!("maestro_http_connections_open").increment(1.0);
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        clock: clock.clone(),
    });
    let service = ConnService {
        app: TowerToHyperService::new(app),
        peer,
        clock: clock.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our own clock replaces hyper's (see the module's documentation).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            expired = clock.expired(limits) => {
                let kind = match expired {
                    Expired::Header => "header",
                    Expired::Idle => "idle",
                };
                metrics::counter!("maestro_http_connection_timeouts_total", "kind" => kind)
                    .increment(1);
                tracing::debug!(%peer, kind, "closing a connection: timed out");
                break;
            }
            _ = graceful.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = kill.cancelled() => break,
        }
    }
    metrics::gauge!("maestro_http_connections_open").decrement(1.0);
}

/// Where a connection is between requests, for its timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No byte of a request yet: since accept (`fresh`, header timeout) or
    /// since the last response ended (idle timeout).
    Waiting { since: Instant, fresh: bool },
    /// A request head is arriving: header timeout from `since`.
    Head { since: Instant },
    /// Requests in flight: no timeout.
    Busy { requests: usize },
}

struct Clock {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                fresh: true,
            }),
            changed: Notify::new(),
        }
    }

    fn set(&self, f: impl FnOnce(Phase) -> Option<Phase>) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = f(*p) {
            *p = next;
            drop(p);
            self.changed.notify_one();
        }
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        self.set(|p| match p {
            // A new connection's head counts from accept.
            Phase::Waiting { since, fresh: true } => Some(Phase::Head { since }),
            Phase::Waiting { fresh: false, .. } => Some(Phase::Head {
                since: Instant::now(),
            }),
            _ => None,
        });
    }

    /// hyper parsed a request head and called the service.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.set(|p| match p {
            Phase::Busy { requests } => Some(Phase::Busy {
                requests: requests + 1,
            }),
            _ => Some(Phase::Busy { requests: 1 }),
        });
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        self.set(|p| match p {
            Phase::Busy { requests } if requests > 1 => Some(Phase::Busy {
                requests: requests - 1,
            }),
            _ => Some(Phase::Waiting {
                since: Instant::now(),
                fresh: false,
            }),
        });
    }

    fn deadline(&self, limits: Limits) -> Option<(Instant, Expired)> {
        match *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Waiting { since, fresh: true } | Phase::Head { since } => {
                Some((since + limits.header, Expired::Header))
            }
            Phase::Waiting {
                since,
                fresh: false,
            } => Some((since + limits.idle, Expired::Idle)),
            Phase::Busy { .. } => None,
        }
    }

    /// Resolves when the connection's current deadline passes.
    async fn expired(&self, limits: Limits) -> Expired {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                None => changed.await,
                Some((at, why)) => {
                    if at <= Instant::now() {
                        return why;
                    }
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }
}

/// A request in flight: dropped with the response body once it is sent (or
/// when the request is abandoned).
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The router, with the peer address for [`ConnectInfo`] and the clock told of
/// each request.
struct ConnService {
    app: TowerToHyperService<Router>,
    peer: SocketAddr,
    clock: Arc<Clock>,
}

type Answer = Response<Tracked>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let in_flight = self.clock.request_started();
        let answer = self.app.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|body| Tracked {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that ends the request's [`InFlight`] when hyper is done
/// with it.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, telling the clock when bytes arrive.
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_and_bounds_the_cap() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             63704                63704                processes \n\
            Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        assert_eq!(
            parse_open_file_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(capped_by_open_files(10_000, Some(1024)), 768);
        assert_eq!(capped_by_open_files(10_000, Some(20_000)), 10_000);
        assert_eq!(capped_by_open_files(10_000, None), 10_000);
        assert_eq!(capped_by_open_files(10_000, Some(1)), 1);
    }

    #[test]
    fn the_refusal_is_a_complete_answer() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_times_heads_and_idle_time_but_never_a_request_in_flight() {
        let limits = Limits {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max: 1,
        };
        let clock = Arc::new(Clock::new());
        let t0 = Instant::now();
        // A new connection: the header timeout from accept, bytes or not.
        tokio::time::advance(Duration::from_secs(4)).await;
        clock.read();
        assert_eq!(clock.expired(limits).await, Expired::Header);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        // A request in flight is never timed out.
        let in_flight = clock.request_started();
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), clock.expired(limits))
                .await
                .is_err()
        );
        // After the response: the idle timeout; then a next head: the header
        // timeout from its first byte.
        drop(in_flight);
        let t1 = Instant::now();
        assert_eq!(clock.expired(limits).await, Expired::Idle);
        assert_eq!(t1.elapsed(), Duration::from_secs(60));
        drop(clock.request_started());
        tokio::time::advance(Duration::from_secs(50)).await;
        let t2 = Instant::now();
        clock.read();
        assert_eq!(clock.expired(limits).await, Expired::Header);
        assert_eq!(t2.elapsed(), Duration::from_secs(10));
    }
}
