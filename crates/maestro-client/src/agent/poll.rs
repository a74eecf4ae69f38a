//! The pull transport: long-poll `POST /maestro/agents/<id>/tasks/poll`, run
//! each task while heartbeating its lease, report `/complete` or `/fail`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maestro_core::model::Transport;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::now_ms;
use super::link::{Backoff, CallError, Link};
use super::push::heartbeat_loop;
use super::{Agent, AgentError, Outputs, SdkError, Task, codes};

/// How long a result is retried while Maestro is unreachable.
const REPORT_BUDGET: Duration = Duration::from_secs(60);
/// After the grace period, cancelled handlers get this long to report.
const LAST_WORDS: Duration = Duration::from_secs(3);
/// Lease heartbeats are never closer together than this.
const MIN_LEASE_HEARTBEAT: Duration = Duration::from_millis(50);

/// How [`Agent::run_poll`] pulls tasks.
#[derive(Clone)]
pub struct PollConfig {
    /// Maestro's base URL, e.g. `http://127.0.0.1:7300`.
    pub maestro_url: String,
    /// An admin/operator token, or an agent token of this agent.
    pub token: String,
    /// Concurrent poll loops; each runs one task at a time, so this is also
    /// the agent's concurrency.
    pub pollers: usize,
    /// The long poll's `waitMs`.
    pub wait_ms: u64,
    /// Agent heartbeat period (`Duration::ZERO`: none; polling counts as a
    /// heartbeat too, but busy pollers do not poll).
    pub heartbeat_every: Duration,
    /// On shutdown, how long running tasks may take to finish before their
    /// contexts are cancelled.
    pub shutdown_grace: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            maestro_url: "http://127.0.0.1:7300".to_owned(),
            token: String::new(),
            pollers: 4,
            wait_ms: 30_000,
            heartbeat_every: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollConfig")
            .field("maestro_url", &self.maestro_url)
            .field("token", &"<redacted>")
            .field("pollers", &self.pollers)
            .field("wait_ms", &self.wait_ms)
            .field("heartbeat_every", &self.heartbeat_every)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

/// A running poll agent (see [`Agent::start_poll`]).
#[derive(Debug)]
pub struct PollRunner {
    done: JoinHandle<Result<(), SdkError>>,
}

impl PollRunner {
    /// Resolves when every poller stopped (after the cancellation token fired
    /// and the running tasks were reported), or with the error that stopped
    /// them (Maestro refusing the token).
    pub async fn wait(self) -> Result<(), SdkError> {
        match self.done.await {
            Ok(r) => r,
            Err(e) => Err(SdkError::Server(std::io::Error::other(e.to_string()))),
        }
    }
}

impl Agent {
    /// Pulls and runs tasks until `cancel` fires:
    /// [`start_poll`](Self::start_poll) followed by [`PollRunner::wait`].
    pub async fn run_poll(
        &self,
        config: PollConfig,
        cancel: CancellationToken,
    ) -> Result<(), SdkError> {
        self.start_poll(config, cancel).await?.wait().await
    }

    /// Registers as a `transport: poll` agent (retrying while Maestro is
    /// unreachable), then starts `pollers` poll loops and the heartbeats;
    /// answers once registered.
    ///
    /// When `cancel` fires the pollers stop polling (a poll waiting for work
    /// is abandoned); tasks already running finish and are reported, up to
    /// `shutdown_grace`, after which their contexts are cancelled.
    pub async fn start_poll(
        &self,
        config: PollConfig,
        cancel: CancellationToken,
    ) -> Result<PollRunner, SdkError> {
        let link = Link::new(&config.maestro_url, &config.token, self.id())?;
        if config.pollers == 0 {
            return Err(SdkError::Config("pollers must be at least 1".to_owned()));
        }
        let stop = cancel.child_token();
        link.register_until_done(self, Transport::Poll, None, None, &stop)
            .await?;
        tracing::info!(agent = %self.id(), pollers = config.pollers, "poll agent running");

        let hard = CancellationToken::new();
        let fatal = Arc::new(Mutex::new(None::<SdkError>));
        let tracker = TaskTracker::new();
        let capabilities = Arc::new(self.capability_ids());
        for n in 0..config.pollers {
            tracker.spawn(poller(Poller {
                n,
                link: link.clone(),
                agent: self.clone(),
                capabilities: capabilities.clone(),
                wait_ms: config.wait_ms,
                stop: stop.clone(),
                hard: hard.clone(),
                fatal: fatal.clone(),
            }));
        }
        tracker.close();
        let heartbeats = tokio::spawn(heartbeat_loop(
            link,
            self.clone(),
            config.heartbeat_every,
            None,
            None,
            stop.clone(),
        ));
        let grace = config.shutdown_grace;
        let agent_id = self.id().to_owned();
        let done = tokio::spawn(async move {
            stop.cancelled().await;
            tracing::info!(agent = %agent_id, "poll agent shutting down");
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(agent = %agent_id, grace_ms = grace.as_millis(),
                    "tasks still running after the grace period; cancelling them");
                hard.cancel();
                let _ = tokio::time::timeout(LAST_WORDS, tracker.wait()).await;
            }
            let _ = heartbeats.await;
            tracing::info!(agent = %agent_id, "poll agent stopped");
            let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
            match fatal {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        Ok(PollRunner { done })
    }
}

struct Poller {
    n: usize,
    link: Link,
    agent: Agent,
    capabilities: Arc<Vec<String>>,
    wait_ms: u64,
    stop: CancellationToken,
    hard: CancellationToken,
    fatal: Arc<Mutex<Option<SdkError>>>,
}

async fn poller(p: Poller) {
    let mut backoff = Backoff::new();
    let id = p.agent.id().to_owned();
    loop {
        let polled = tokio::select! {
            biased;
            _ = p.stop.cancelled() => return,
            r = p.link.poll(&p.capabilities, 1, p.wait_ms) => r,
        };
        match polled {
            Ok(tasks) => {
                backoff.reset();
                for task in tasks {
                    // Not raced against `stop`: a task taken is finished.
                    run_task(&p.link, &p.agent, task, &p.hard).await;
                }
                if p.stop.is_cancelled() {
                    return;
                }
            }
            Err(CallError::Refused {
                status: status @ (401 | 403),
                code,
                message,
            }) => {
                tracing::error!(agent = %id, poller = p.n, status, %code, %message,
                    "Maestro refused the token; stopping");
                let mut fatal = p.fatal.lock().unwrap_or_else(|e| e.into_inner());
                fatal.get_or_insert(SdkError::Refused {
                    what: "the poll".to_owned(),
                    status,
                    code,
                    message,
                });
                p.stop.cancel();
                return;
            }
            Err(e) => {
                if e.status() == Some(404) {
                    tracing::warn!(agent = %id, poller = p.n, error = %e,
                        "poll answered 404; re-registering");
                    if let Err(e) = p.link.register(&p.agent, Transport::Poll, None, None).await {
                        tracing::warn!(agent = %id, error = %e, "re-registration failed");
                    }
                } else {
                    tracing::warn!(agent = %id, poller = p.n, error = %e, "poll failed; retrying");
                }
                if !backoff.wait(&p.stop).await {
                    return;
                }
            }
        }
    }
}

/// Runs one polled task: its handler, the lease heartbeats meanwhile, then
/// the report.
async fn run_task(link: &Link, agent: &Agent, raw: Value, hard: &CancellationToken) {
    let task: Task = match serde_json::from_value(raw.clone()) {
        Ok(t) => t,
        Err(e) => {
            let Some(task_id) = raw.get("taskId").and_then(Value::as_str) else {
                tracing::warn!(agent = %agent.id(), error = %e, "polled something that is not a task");
                return;
            };
            let err = AgentError::fatal(codes::INVALID_REQUEST, format!("not a task: {e}"));
            report(link, agent.id(), task_id, &Err(err)).await;
            return;
        }
    };
    let task_id = task.task_id.clone();
    let capability = task.capability.clone();
    let token = hard.child_token();
    let finished = CancellationToken::new();
    let heartbeats = tokio::spawn(lease_loop(
        link.clone(),
        agent.id().to_owned(),
        task_id.clone(),
        task.lease_expires_at,
        task.timeout_ms,
        token.clone(),
        finished.clone(),
    ));
    let started = std::time::Instant::now();
    tracing::debug!(agent = %agent.id(), %capability, task = %task_id, "task started");
    let result = agent.handle(task, token).await;
    finished.cancel();
    let _ = heartbeats.await;
    match &result {
        Ok(_) => tracing::debug!(agent = %agent.id(), %capability, task = %task_id,
            ms = started.elapsed().as_millis(), "task done"),
        Err(e) => tracing::debug!(agent = %agent.id(), %capability, task = %task_id,
            ms = started.elapsed().as_millis(), code = %e.code, "task failed"),
    }
    report(link, agent.id(), &task_id, &result).await;
}

/// Half of what is left of the lease (of the attempt timeout without a
/// usable lease), at least [`MIN_LEASE_HEARTBEAT`].
fn half_lease(lease_expires_at: Option<u64>, timeout_ms: u64) -> Duration {
    let now = now_ms();
    let left = match lease_expires_at {
        Some(at) if at > now => at - now,
        // Past already (clock skew?) or unknown: go by the attempt timeout.
        _ if timeout_ms > 0 => timeout_ms,
        _ => 10_000,
    };
    Duration::from_millis(left / 2).max(MIN_LEASE_HEARTBEAT)
}

/// Extends the task's lease until `finished`; cancels `token` when Maestro
/// asks for it or the lease is lost.
async fn lease_loop(
    link: Link,
    agent_id: String,
    task_id: String,
    mut lease: Option<u64>,
    timeout_ms: u64,
    token: CancellationToken,
    finished: CancellationToken,
) {
    let mut wait = half_lease(lease, timeout_ms);
    loop {
        tokio::select! {
            _ = finished.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match link.task_heartbeat(&task_id).await {
            Ok(l) => {
                lease = l.expires_at.or(lease);
                wait = half_lease(lease, timeout_ms);
                if l.cancel_requested && !token.is_cancelled() {
                    tracing::info!(agent = %agent_id, task = %task_id, "Maestro cancelled the task");
                    token.cancel();
                }
            }
            Err(CallError::Transient(why)) => {
                tracing::debug!(agent = %agent_id, task = %task_id, error = %why,
                    "lease heartbeat failed; retrying");
                // Half of what is left: retries come faster as the end nears.
                wait = half_lease(lease, timeout_ms / 2);
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, task = %task_id, error = %e,
                    "the task's lease is lost; cancelling the handler");
                token.cancel();
                return;
            }
        }
    }
}

/// `/complete` or `/fail`, retrying transient failures for a while. A 409
/// (late, or another result recorded) gives the task up with a warning.
async fn report(link: &Link, agent_id: &str, task_id: &str, result: &Result<Outputs, AgentError>) {
    let give_up_at = Instant::now() + REPORT_BUDGET;
    let mut backoff = Backoff::new();
    loop {
        let sent = match result {
            Ok(outputs) => link.complete(task_id, outputs).await,
            Err(e) => link.fail(task_id, e).await,
        };
        match sent {
            Ok(()) => return,
            Err(CallError::Refused {
                status: 409,
                code,
                message,
            }) => {
                tracing::warn!(agent = %agent_id, task = %task_id, %code, %message,
                    "Maestro did not take the result; giving the task up");
                return;
            }
            Err(e @ CallError::Refused { .. }) => {
                tracing::warn!(agent = %agent_id, task = %task_id, error = %e,
                    "Maestro refused the result; giving the task up");
                return;
            }
            Err(CallError::Transient(why)) => {
                if Instant::now() >= give_up_at {
                    tracing::warn!(agent = %agent_id, task = %task_id, error = %why,
                        "cannot reach Maestro to report the result; giving up");
                    return;
                }
                tracing::debug!(agent = %agent_id, task = %task_id, error = %why,
                    "reporting the result failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_heartbeats_come_at_half_the_lease() {
        let now = now_ms();
        let d = half_lease(Some(now + 10_000), 0);
        assert!(
            d <= Duration::from_millis(5_000) && d >= Duration::from_millis(4_900),
            "{d:?}"
        );
        assert_eq!(half_lease(Some(now - 5), 800), Duration::from_millis(400));
        assert_eq!(half_lease(None, 0), Duration::from_millis(5_000));
        assert_eq!(half_lease(None, 10), MIN_LEASE_HEARTBEAT);
    }
}
