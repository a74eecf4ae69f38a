//! Engine metrics, recorded through the `metrics` facade where they happen.
//! Nothing is collected unless the process installs a recorder (the server
//! installs a Prometheus one).

use std::time::Duration;

/// Describe the engine's metrics to the installed recorder (help texts).
pub fn describe() {
    metrics::describe_counter!(
        "maestro_step_invocations_total",
        "Capability calls by agent, capability and outcome (ok | error)"
    );
    metrics::describe_histogram!(
        "maestro_step_duration_seconds",
        "Capability call latency by agent and capability"
    );
    metrics::describe_counter!(
        "maestro_step_retries_total",
        "Step attempts scheduled again by a retry policy"
    );
}

/// One finished capability call.
pub(crate) fn step_invocation(agent: &str, capability: &str, ok: bool, took: Duration) {
    let labels = [
        ("agent", agent.to_owned()),
        ("capability", capability.to_owned()),
    ];
    metrics::histogram!("maestro_step_duration_seconds", &labels).record(took.as_secs_f64());
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("maestro_step_invocations_total",
        "agent" => agent.to_owned(), "capability" => capability.to_owned(), "outcome" => outcome)
    .increment(1);
}
