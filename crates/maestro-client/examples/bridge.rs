//! The Bridge demo agent: `issue-jwt` (HS256, compensated by `revoke-jwt`),
//! `revoke-jwt` and `verify-jwt` (see `docs/AGENTS.md`).
//!
//! ```sh
//! cargo run -p maestro-client --features demo --example bridge -- \
//!     --maestro http://127.0.0.1:7300 --token "$MAESTRO_TOKEN" --secret "$BRIDGE_SECRET"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use maestro_client::demo::bridge::Bridge;
use maestro_client::demo::{RunOptions, resolve_token, run};

/// A Bridge agent that issues signed JWTs.
#[derive(Parser)]
struct Args {
    /// The agent id.
    #[arg(long, default_value = "bridge-1")]
    id: String,
    /// Maestro's URL.
    #[arg(long, env = "MAESTRO_SERVER", default_value = "http://127.0.0.1:7300")]
    maestro: String,
    /// An admin/operator token, or an agent token of this agent.
    #[arg(long, env = "MAESTRO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (default: ./maestro-data/admin.token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Where the push server listens.
    #[arg(long, default_value = "127.0.0.1:9102")]
    listen: SocketAddr,
    /// The URL Maestro reaches this agent at (default: http://<listen>).
    #[arg(long)]
    advertise_url: Option<String>,
    /// A secret Maestro must send as the bearer token on calls.
    #[arg(long, env = "BRIDGE_INBOUND_SECRET", hide_env_values = true)]
    inbound_secret: Option<String>,
    /// Pull tasks (transport poll) instead of serving the push protocol.
    #[arg(long)]
    poll: bool,
    /// Concurrent pollers with --poll.
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// The HS256 signing secret (default: a random one for this run).
    #[arg(long, env = "BRIDGE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    let token = match resolve_token(args.token, args.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let bridge = match args.secret.filter(|s| !s.is_empty()) {
        Some(secret) => Bridge::new(secret.into_bytes()),
        None => {
            eprintln!(
                "bridge: no --secret/BRIDGE_SECRET: signing with a random secret for this run \
                 (tokens cannot be verified outside it)"
            );
            Bridge::generate()
        }
    };
    let bridge = Arc::new(bridge.with_ttl(Duration::from_secs(args.ttl_secs)));
    let agent = bridge.agent(&args.id);
    let opts = RunOptions {
        maestro_url: args.maestro,
        token,
        poll: args.poll,
        pollers: args.pollers,
        listen: args.listen,
        advertise_url: args.advertise_url,
        inbound_secret: args.inbound_secret,
    };
    match run(agent, opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAESTRO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
