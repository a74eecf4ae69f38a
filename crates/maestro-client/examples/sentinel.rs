//! The Sentinel demo agent: Ed25519 `sign`, `verify` and `verify-identity`
//! (see `docs/AGENTS.md`).
//!
//! ```sh
//! cargo run -p maestro-client --features demo --example sentinel -- \
//!     --maestro http://127.0.0.1:7300 --token "$MAESTRO_TOKEN" --users alice,bob
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use maestro_client::demo::sentinel::{Sentinel, generate_key, load_or_create_key};
use maestro_client::demo::{RunOptions, resolve_token, run};

/// A Sentinel agent that signs and verifies with Ed25519.
#[derive(Parser)]
struct Args {
    /// The agent id.
    #[arg(long, default_value = "sentinel-1")]
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
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    /// The URL Maestro reaches this agent at (default: http://<listen>).
    #[arg(long)]
    advertise_url: Option<String>,
    /// A secret Maestro must send as the bearer token on calls.
    #[arg(long, env = "SENTINEL_INBOUND_SECRET", hide_env_values = true)]
    inbound_secret: Option<String>,
    /// Pull tasks (transport poll) instead of serving the push protocol.
    #[arg(long)]
    poll: bool,
    /// Concurrent pollers with --poll.
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// The Ed25519 key file (base64 secret key); created when missing.
    /// Without it a fresh key is generated for this run.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The users verify-identity vouches for.
    #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
    users: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    let token = match resolve_token(args.token, args.token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sentinel: {e}");
            return ExitCode::from(2);
        }
    };
    let key = match &args.key {
        Some(path) => match load_or_create_key(path) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("sentinel: key file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => generate_key(),
    };
    let users = args
        .users
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty());
    let sentinel = Arc::new(Sentinel::new(key, users));
    eprintln!(
        "sentinel: public key {} (Ed25519, base64); users: {}",
        sentinel.public_key(),
        sentinel.users().collect::<Vec<_>>().join(",")
    );
    let agent = sentinel.agent(&args.id);
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
            eprintln!("sentinel: {e}");
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
