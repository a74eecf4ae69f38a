//! Prometheus metrics (`GET /metrics`).
//!
//! The `metrics` facade has one recorder per process; it is installed on first
//! use and shared by every server in the process. HTTP requests are counted by
//! a middleware (route template, method, status); the engine records step
//! invocations, latencies and retries where they happen; gauges that describe
//! state (executions by status, queue depth, event bus totals) are refreshed
//! from the store and the bus when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use maestro_core::model::ExecutionStatus;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

/// Latency buckets in seconds: 0.5 ms to 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process's Prometheus recorder.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("static bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when Maestro is embedded; then our
            // own handle renders only what it saw, which is nothing.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            maestro_engine::metrics::describe();
            metrics::describe_counter!(
                "maestro_http_requests_total",
                "HTTP requests by route template, method and status"
            );
            metrics::describe_histogram!(
                "maestro_http_request_duration_seconds",
                "HTTP request latency by route template, method and status"
            );
            metrics::describe_gauge!(
                "maestro_http_connections_open",
                "Client connections open (at most maxConnections)"
            );
            metrics::describe_counter!(
                "maestro_http_connections_refused_total",
                "Client connections refused at the maxConnections cap (answered 503 and closed)"
            );
            metrics::describe_counter!(
                "maestro_http_connection_timeouts_total",
                "Client connections closed by a timeout: kind=header (headerReadTimeoutMs) or idle (keepAliveIdleTimeoutMs)"
            );
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Fold histogram samples into their buckets every [`UPKEEP_EVERY`], whether
/// or not anyone scrapes `/metrics`: the recorder keeps every sample until
/// then, so a server nobody scraped grew by each request's and step's sample
/// (found by the soak run, docs/RELIABILITY.md). Runs until `stop`.
pub fn start_upkeep(stop: tokio_util::sync::CancellationToken) {
    let h = handle();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(UPKEEP_EVERY) => h.run_upkeep(),
            }
        }
    });
}

/// Count and time every request under its route template (never the raw
/// path, whose ids would explode the label set).
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("maestro_http_requests_total", &labels).increment(1);
    metrics::histogram!("maestro_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: refresh the state gauges, then render.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.maestro.runtime_stats().await?;
    for status in ExecutionStatus::ALL {
        let n: u64 = stats
            .executions_by_status
            .iter()
            .filter(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .sum();
        metrics::gauge!("maestro_executions", "status" => status.as_str()).set(n as f64);
    }
    metrics::gauge!("maestro_queue_depth").set(stats.queued as f64);
    metrics::gauge!("maestro_executions_active").set(stats.active as f64);
    metrics::gauge!("maestro_executor_timers").set(stats.timers as f64);
    metrics::counter!("maestro_executor_commits_total").absolute(stats.commits);
    metrics::counter!("maestro_late_results_total").absolute(stats.late_results);
    metrics::counter!("maestro_eventbus_published_total").absolute(stats.events_published);
    metrics::counter!("maestro_eventbus_dropped_total").absolute(stats.events_dropped);
    metrics::gauge!("maestro_eventbus_subscribers").set(stats.event_subscribers as f64);
    let agents = stats.agents_by_status;
    for (i, s) in ["online", "offline", "degraded"].iter().enumerate() {
        metrics::gauge!("maestro_agents", "status" => *s).set(agents[i] as f64);
    }
    let body = state.prometheus.render();
    Response::builder()
        .header(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(axum::body::Body::from(body))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
