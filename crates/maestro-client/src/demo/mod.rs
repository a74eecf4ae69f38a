//! The demo agents of `docs/AGENTS.md` (feature `demo`): a
//! [`Sentinel`](sentinel::Sentinel) that signs with Ed25519 and a
//! [`Bridge`](bridge::Bridge) that issues JWTs, built on the
//! [agent SDK](crate::agent). The `sentinel` and `bridge` examples are thin
//! mains around them; the logic lives here so it can be tested in process.

pub mod bridge;
pub mod sentinel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, PollConfig, PushConfig, SdkError};

/// How a demo agent runs.
#[derive(Clone)]
pub struct RunOptions {
    pub maestro_url: String,
    pub token: String,
    /// Pull tasks instead of serving the push protocol.
    pub poll: bool,
    pub pollers: usize,
    pub listen: SocketAddr,
    pub advertise_url: Option<String>,
    pub inbound_secret: Option<String>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("maestro_url", &self.maestro_url)
            .field("poll", &self.poll)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// The Maestro token: `explicit` (flag or `MAESTRO_TOKEN`), else the
/// contents of `file`, else `./maestro-data/admin.token` (where a local
/// `maestro serve` writes its admin token).
pub fn resolve_token(explicit: Option<String>, file: Option<PathBuf>) -> Result<String, String> {
    if let Some(t) = explicit.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    let path = file.unwrap_or_else(|| Path::new("maestro-data").join("admin.token"));
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => Err(format!(
            "no Maestro token: pass --token or set MAESTRO_TOKEN (or --token-file; {} was not readable)",
            path.display()
        )),
    }
}

/// Runs `agent` until Ctrl-C (SIGINT) or SIGTERM, then shuts down gracefully.
/// Prints one line to stdout once registered.
pub async fn run(agent: Agent, opts: RunOptions) -> Result<(), SdkError> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let id = agent.id().to_owned();
    if opts.poll {
        let runner = agent
            .start_poll(
                PollConfig {
                    maestro_url: opts.maestro_url.clone(),
                    token: opts.token,
                    pollers: opts.pollers,
                    heartbeat_every: Duration::from_secs(10),
                    ..PollConfig::default()
                },
                cancel,
            )
            .await?;
        println!(
            "{id}: polling {} for tasks with {} pollers (capabilities: {}); Ctrl-C to stop",
            opts.maestro_url,
            opts.pollers,
            agent.capability_ids().join(", ")
        );
        runner.wait().await
    } else {
        let server = agent
            .start_push(
                PushConfig {
                    maestro_url: opts.maestro_url.clone(),
                    token: opts.token,
                    listen: opts.listen,
                    advertise_url: opts.advertise_url,
                    inbound_secret: opts.inbound_secret,
                    heartbeat_every: Duration::from_secs(10),
                    ..PushConfig::default()
                },
                cancel,
            )
            .await?;
        println!(
            "{id}: listening on {}, registered with {} (capabilities: {}); Ctrl-C to stop",
            server.url(),
            opts.maestro_url,
            agent.capability_ids().join(", ")
        );
        server.wait().await
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
