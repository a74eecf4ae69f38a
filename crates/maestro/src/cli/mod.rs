//! The client subcommands of the `maestro` binary (`agents`, `workflows`,
//! `run`, `executions`, `events`, `tokens`): they talk to a server through
//! the HTTP API with [`maestro_client::client::Client`]. See docs/CLI.md.
//!
//! Exit codes: 0 success; 1 the operation ran and failed (an execution that
//! failed, was rolled back or cancelled; a server error); 2 it could not be
//! done (bad usage, server unreachable, token refused, a request the API
//! refused with a 4xx); 3 `run --wait --timeout` gave up waiting.

mod commands;
mod events;
pub mod output;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use maestro_client::Error;
use maestro_client::client::Client;

pub use events::EventsArgs;
pub use run::RunArgs;

/// Where the server is and how to talk to it: accepted anywhere after the
/// subcommand's name (`maestro agents ls --json`).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// URL of the Maestro server.
    #[arg(
        long,
        global = true,
        env = "MAESTRO_SERVER",
        default_value = "http://127.0.0.1:7300",
        value_name = "URL"
    )]
    pub server: String,
    /// Bearer token [default: the contents of DATA_DIR/admin.token].
    #[arg(
        long,
        global = true,
        env = "MAESTRO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Data dir of a local server, where its admin.token is [default: ./maestro-data].
    #[arg(long, global = true, env = "MAESTRO_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Machine output: the API's JSON, one document per command
    /// (`events --follow`: one event per line).
    #[arg(long, global = true)]
    pub json: bool,
}

/// The client subcommands (flattened into the binary's command list).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, show and deregister agents.
    Agents {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: AgentsCmd,
    },
    /// Define or update (apply), list and show workflows.
    Workflows {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: WorkflowsCmd,
    },
    /// Execute a workflow; with --wait, follow its steps until it finishes.
    Run(RunArgs),
    /// List, show, cancel, pause and resume executions.
    Executions {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: ExecutionsCmd,
    },
    /// Show the event history, or follow the live events.
    Events(events::EventsArgs),
    /// Create, list and revoke API tokens (admin only).
    Tokens {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        cmd: TokensCmd,
    },
}

/// `maestro agents ...`.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// List agents.
    #[command(alias = "list")]
    Ls {
        /// Only agents of these types (repeatable or comma-separated).
        #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
        types: Vec<String>,
        /// Only agents in these statuses: online, offline, degraded.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// Only agents having every one of these capabilities.
        #[arg(long = "capability", value_name = "CAPABILITY", value_delimiter = ',')]
        capabilities: Vec<String>,
        /// At most this many (server default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<usize>,
    },
    /// Show one agent.
    Get {
        /// The agent id.
        id: String,
    },
    /// Deregister an agent (its queued tasks fail with AGENT_DEREGISTERED).
    #[command(alias = "delete")]
    Rm {
        /// The agent id.
        id: String,
    },
}

/// `maestro workflows ...`.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCmd {
    /// Define a workflow from a file, or update it to the file's content when
    /// it exists (a new revision; unchanged when nothing differs).
    Apply {
        /// A workflow document: .json, or .yaml/.yml; `-` reads stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List workflows (latest revisions).
    #[command(alias = "list")]
    Ls {
        /// Only workflows carrying every one of these tags.
        #[arg(long = "tag", value_name = "TAG", value_delimiter = ',')]
        tags: Vec<String>,
        /// At most this many (server default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<usize>,
    },
    /// Show one workflow.
    Get {
        /// The workflow id.
        id: String,
        /// A past revision.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Delete a workflow (refused while executions of it are active).
    #[command(alias = "delete")]
    Rm {
        /// The workflow id.
        id: String,
    },
}

/// `maestro executions ...`.
#[derive(Debug, Subcommand)]
pub enum ExecutionsCmd {
    /// List executions, newest first.
    #[command(alias = "list")]
    Ls {
        /// Only executions of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only executions in these statuses (repeatable or comma-separated):
        /// pending, running, paused, completed, failed, rolled_back, cancelled.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// At most this many (server default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<usize>,
    },
    /// Show one execution: its steps, error and result.
    Get {
        /// The execution id.
        id: String,
    },
    /// Cancel an execution.
    Cancel {
        /// The execution id.
        id: String,
        /// Kept with the execution and in its workflow:cancelled event.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause an execution: no new steps start.
    Pause {
        /// The execution id.
        id: String,
    },
    /// Resume a paused execution.
    Resume {
        /// The execution id.
        id: String,
    },
}

/// `maestro tokens ...`.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a token; its secret is printed once.
    Create {
        /// admin, operator, reader or agent.
        #[arg(long)]
        role: String,
        /// For role agent: the only agent the token acts for.
        #[arg(long = "agent", value_name = "AGENT_ID")]
        agent: Option<String>,
        /// A name for humans (default: the role).
        #[arg(long)]
        name: Option<String>,
        /// Expire after this long: 90s, 30m, 24h, 7d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List tokens (never their secrets).
    #[command(alias = "list")]
    Ls {
        /// At most this many (server default 100).
        #[arg(long)]
        limit: Option<usize>,
        /// Skip this many.
        #[arg(long)]
        offset: Option<usize>,
    },
    /// Revoke a token.
    #[command(alias = "rm")]
    Revoke {
        /// The token id (`mst_<id>_...` → `<id>`, as `tokens ls` shows it).
        id: String,
    },
}

/// Run a client subcommand to its exit code.
pub fn run(cmd: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("maestro: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(dispatch(cmd));
    // Do not wait for a stream still being read (events --follow).
    runtime.shutdown_background();
    code
}

async fn dispatch(cmd: Command) -> ExitCode {
    let conn = match &cmd {
        Command::Agents { conn, .. }
        | Command::Workflows { conn, .. }
        | Command::Executions { conn, .. }
        | Command::Tokens { conn, .. } => conn.clone(),
        Command::Run(a) => a.conn.clone(),
        Command::Events(a) => a.conn.clone(),
    };
    let ctx = match Ctx::new(&conn) {
        Ok(c) => c,
        Err(e) => return e.report(None),
    };
    let result = match cmd {
        Command::Agents { cmd, .. } => commands::agents(&ctx, cmd).await,
        Command::Workflows { cmd, .. } => commands::workflows(&ctx, cmd).await,
        Command::Executions { cmd, .. } => commands::executions(&ctx, cmd).await,
        Command::Tokens { cmd, .. } => commands::tokens(&ctx, cmd).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Events(a) => events::events(&ctx, a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => e.report(Some(&ctx)),
    }
}

/// Where the token came from, for the 401 hint.
#[derive(Debug, Clone)]
enum TokenSource {
    Flag,
    Env,
    File(PathBuf),
}

/// What every command needs: the client, the output mode, and where the
/// token came from.
pub(crate) struct Ctx {
    client: Client,
    json: bool,
    server: String,
    token_source: TokenSource,
}

impl Ctx {
    fn new(conn: &Connection) -> Result<Ctx, CliError> {
        let server = conn.server.trim_end_matches('/').to_owned();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--server {server:?} is not a URL: expected http://host:port"
            )));
        }
        let (token, token_source) = resolve_token(conn)?;
        Ok(Ctx {
            client: Client::new(server.clone(), token),
            json: conn.json,
            server,
            token_source,
        })
    }
}

/// `--token`, else `MAESTRO_TOKEN`, else `<dataDir>/admin.token` with
/// dataDir `--data-dir`, else `MAESTRO_DATA_DIR`, else `./maestro-data`.
fn resolve_token(conn: &Connection) -> Result<(String, TokenSource), CliError> {
    if let Some(t) = conn
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let from_env = std::env::var("MAESTRO_TOKEN").is_ok_and(|e| e.trim() == t);
        let source = if from_env {
            TokenSource::Env
        } else {
            TokenSource::Flag
        };
        return Ok((t.to_owned(), source));
    }
    let dir = conn
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./maestro-data"));
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok((t.trim().to_owned(), TokenSource::File(path))),
        Ok(_) => Err(CliError::Usage(format!(
            "no token: {} is empty; pass --token or set MAESTRO_TOKEN",
            path.display()
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "no token: pass --token or set MAESTRO_TOKEN (reading the local server's admin token {} failed: {e}; \
             set --data-dir or MAESTRO_DATA_DIR to the server's data dir)",
            path.display()
        ))),
    }
}

/// A failure of a CLI command.
#[derive(Debug)]
pub(crate) enum CliError {
    /// Bad arguments or input files (exit 2).
    Usage(String),
    /// What the client reported.
    Client(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Client(e)
    }
}

impl CliError {
    /// Print the error on stderr and answer the exit code.
    fn report(&self, ctx: Option<&Ctx>) -> ExitCode {
        let (msg, code) = self.render(ctx);
        eprintln!("maestro: {msg}");
        ExitCode::from(code)
    }

    fn render(&self, ctx: Option<&Ctx>) -> (String, u8) {
        let e = match self {
            CliError::Usage(m) => return (m.clone(), 2),
            CliError::Client(e) => e,
        };
        match e {
            Error::Unreachable(m) => {
                let m = match ctx {
                    // Name the server as given rather than the route's URL.
                    Some(ctx) => match m.split_once(": ") {
                        Some((_, cause)) => {
                            format!("cannot reach Maestro at {}: {cause}", ctx.server)
                        }
                        None => m.clone(),
                    },
                    None => m.clone(),
                };
                (
                    format!("{m} (is 'maestro serve' running? set --server or MAESTRO_SERVER)"),
                    2,
                )
            }
            Error::Api {
                status: 401,
                code,
                message,
                ..
            } => {
                let from = match ctx.map(|c| &c.token_source) {
                    Some(TokenSource::Flag) => "the token given with --token".to_owned(),
                    Some(TokenSource::Env) => "the token in MAESTRO_TOKEN".to_owned(),
                    Some(TokenSource::File(p)) => format!("the token read from {}", p.display()),
                    None => "the token".to_owned(),
                };
                (
                    format!(
                        "{from} was refused: {message} ({code}). Pass a valid token with --token or \
                         MAESTRO_TOKEN; a local server's admin token is in <dataDir>/admin.token \
                         (--data-dir, MAESTRO_DATA_DIR, default ./maestro-data)"
                    ),
                    2,
                )
            }
            Error::Api {
                status: 403,
                code,
                message,
                ..
            } => (
                format!(
                    "{message} ({code}). This needs a token with another role: operator or admin \
                     to change things, admin for tokens and config (--token or MAESTRO_TOKEN)"
                ),
                2,
            ),
            Error::Api {
                status,
                code,
                message,
                details,
            } => {
                let mut extra = Vec::new();
                if let Some(d) = details {
                    for (k, label) in [("field", "field"), ("stepId", "step")] {
                        if let Some(v) = d.get(k).and_then(|v| v.as_str()) {
                            extra.push(format!("{label}: {v}"));
                        }
                    }
                    if let Some(c) = d.get("cycle").and_then(|v| v.as_array()) {
                        let ids: Vec<String> = c.iter().map(output::compact).collect();
                        extra.push(format!("cycle: {}", ids.join(" → ")));
                    }
                }
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!("; {}", extra.join(", "))
                };
                let code_out = if *status >= 500 { 1 } else { 2 };
                (format!("{message} ({code}{extra})"), code_out)
            }
            Error::Decode(m) => (format!("unexpected answer from the server: {m}"), 1),
            Error::InvalidInput(m) => (m.clone(), 2),
        }
    }
}

/// `90s`, `30m`, `24h`, `7d`, `1500ms`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 30m, 24h, 7d)"))?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" | "sec" => n * 1000.0,
        "m" | "min" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        "d" => n * 86_400_000.0,
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m, h, d)")),
    };
    if !(0.0..=1e15).contains(&ms) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// Read a file argument (`-` = stdin).
fn read_input(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        use std::io::Read;
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("reading stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("reading {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn api_errors_render_code_and_field() {
        let e = CliError::Client(Error::Api {
            status: 400,
            code: "CYCLE_DETECTED".into(),
            message: "dependency cycle".into(),
            details: Some(serde_json::json!({"stepId": "a", "cycle": ["a", "b", "a"]})),
        });
        let (m, code) = e.render(None);
        assert_eq!(code, 2);
        assert_eq!(
            m,
            "dependency cycle (CYCLE_DETECTED; step: a, cycle: a → b → a)"
        );
        let e = CliError::Client(Error::Api {
            status: 500,
            code: "INTERNAL".into(),
            message: "bug".into(),
            details: None,
        });
        assert_eq!(e.render(None).1, 1);
    }
}
