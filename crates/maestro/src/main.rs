//! `maestro`: the server (`maestro serve`) and the CLI that talks to one
//! (`agents`, `workflows`, `run`, `executions`, `events`, `tokens`; see
//! docs/CLI.md).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use maestro_server::serve;
use maestro_server::settings::{self, Flags, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// jemalloc with background threads: memory freed by closed connections goes
/// back to the system within seconds, where glibc's malloc kept it
/// (docs/RELIABILITY.md "Connection churn"). Off: `--no-default-features`
/// (the heap profile of `scripts/soak-heap.sh` needs the system allocator).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "maestro", version, about = "Durable multi-agent orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded SQLite by default).
    Serve {
        /// Address to listen on; 127.0.0.1:0 picks a free port.
        #[arg(long)]
        listen: Option<String>,
        /// Directory of the database and admin.token.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// sqlite://PATH (default sqlite://DATA_DIR/maestro.db).
        #[arg(long)]
        database_url: Option<String>,
        /// Config file (default ./maestro.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    #[command(flatten)]
    Client(maestro_server::cli::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Client(cmd) => maestro_server::cli::run(cmd),
        Command::Serve {
            listen,
            data_dir,
            database_url,
            config,
        } => {
            let flags = Flags {
                config,
                listen,
                data_dir,
                database_url,
            };
            let env: Vec<(String, String)> = std::env::vars().collect();
            let settings = match settings::load(&flags, &env) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("maestro: {e:#}");
                    return std::process::ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("maestro: starting the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(settings)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("maestro: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs go to stderr (stdout carries only the ready line), at `logLevel`,
/// which a PATCH of the config changes at run time.
fn init_logging(
    settings: &settings::Settings,
) -> reload::Handle<EnvFilter, tracing_subscriber::Registry> {
    let filter = EnvFilter::new(level_directive(settings.runtime.log_level.as_str()));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match settings.server.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
    handle
}

/// Maestro's own crates at `level`; dependencies one notch quieter.
fn level_directive(level: &str) -> String {
    let deps = match level {
        "trace" | "debug" => "info",
        other => other,
    };
    format!(
        "{deps},maestro={level},maestro_server={level},maestro_api={level},maestro_engine={level},maestro_store={level},maestro_core={level}"
    )
}

/// A panic is logged through `tracing`, as one line in the log's format (JSON included),
/// instead of the default hook's raw text on stderr. Maestro catches the panics it can
/// (a library panic on a CEL condition, a request handler); the log still records them,
/// at error level, with the backtrace when `RUST_BACKTRACE` asks for one.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info.payload_as_str().unwrap_or("(no message)");
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = message, location, thread, %backtrace, "panicked");
        } else {
            tracing::error!(panic = message, location, thread, "panicked");
        }
    }));
}

async fn run(settings: settings::Settings) -> anyhow::Result<()> {
    let log = init_logging(&settings);
    log_panics();
    let running = serve::start(settings.clone()).await?;
    if let Some(token) = &running.generated_admin_token {
        // Printed once, never through the logger.
        eprintln!(
            "maestro: generated the admin token (stored hashed; also written to {}):\n\n    {token}\n",
            settings.server.data_dir.join("admin.token").display()
        );
    }
    println!("maestro listening on http://{}", running.addr);
    tracing::info!(addr = %running.addr, data_dir = %settings.server.data_dir.display(), "maestro ready");

    // Apply logLevel changes made through PATCH /maestro/config (here or on
    // another node) as they happen.
    let mut changes = running.maestro.watch_config();
    let watcher = tokio::spawn(async move {
        let mut current = changes.borrow_and_update().log_level;
        while changes.changed().await.is_ok() {
            let wanted = changes.borrow_and_update().log_level;
            if wanted != current {
                current = wanted;
                let _ = log.reload(EnvFilter::new(level_directive(wanted.as_str())));
                tracing::info!(level = wanted.as_str(), "log level changed");
            }
        }
    });

    shutdown_signal().await;
    tracing::info!("shutting down: draining");
    watcher.abort();
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
