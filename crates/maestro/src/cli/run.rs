//! `maestro run <workflow> [--input k=v]... [--input-json '{..}'] [--wait [--timeout 60s]]`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use maestro_client::client::{EventQuery, ExecuteOptions};
use maestro_core::model::{ChoreographyEvent, EventType, ExecutionStatus, WorkflowExecution};
use serde_json::{Map, Value};

use super::commands::one;
use super::events::follow_stream;
use super::output::{self, block, out};
use super::{CliError, Connection, Ctx, parse_duration};

/// `maestro run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// The workflow id.
    workflow: String,
    /// An input, repeatable: key=value (a string) or key:=JSON (a number,
    /// boolean, object...).
    #[arg(short = 'i', long = "input", value_name = "KEY=VALUE")]
    inputs: Vec<String>,
    /// Inputs as one JSON object (an --input of the same key wins).
    #[arg(long, value_name = "JSON")]
    input_json: Option<String>,
    /// Follow the steps until the execution finishes, then print its status
    /// and result; exit 0 if it completed, 1 if it failed, was rolled back or
    /// cancelled.
    #[arg(short = 'w', long)]
    wait: bool,
    /// With --wait: stop waiting after this long (90s, 5m), exit 3; the
    /// execution goes on.
    #[arg(long, requires = "wait", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Correlation id of the execution's events (default: the execution id).
    #[arg(long)]
    correlation_id: Option<String>,
    /// Idempotency-Key: running again with the same key answers the same
    /// execution instead of starting another.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// The execute body's `inputs` from `--input-json` and `--input`.
fn inputs(a: &RunArgs) -> Result<Map<String, Value>, CliError> {
    let mut m = match &a.input_json {
        None => Map::new(),
        Some(j) => match serde_json::from_str(j) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(CliError::Usage(
                    "--input-json must be a JSON object, e.g. '{\"userId\": \"alice\"}'".into(),
                ));
            }
            Err(e) => return Err(CliError::Usage(format!("--input-json: {e}"))),
        },
    };
    for kv in &a.inputs {
        let Some((key, value)) = kv.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--input {kv:?}: expected KEY=VALUE or KEY:=JSON"
            )));
        };
        let (key, value) = match key.strip_suffix(':') {
            Some(k) => (
                k,
                serde_json::from_str(value).map_err(|e| {
                    CliError::Usage(format!("--input {kv:?}: the value is not JSON: {e}"))
                })?,
            ),
            None => (key, Value::String(value.to_owned())),
        };
        if key.is_empty() {
            return Err(CliError::Usage(format!("--input {kv:?}: empty key")));
        }
        m.insert(key.to_owned(), value);
    }
    Ok(m)
}

pub(crate) async fn run(ctx: &Ctx, a: RunArgs) -> Result<ExitCode, CliError> {
    let options = ExecuteOptions {
        inputs: inputs(&a)?,
        correlation_id: a.correlation_id.clone(),
        idempotency_key: a.idempotency_key.clone(),
        ..Default::default()
    };
    let started = ctx.client.execute_workflow(&a.workflow, &options).await?;
    let exec = started.execution;
    let existing = started.status == 200;
    if !a.wait {
        if ctx.json {
            output::json(&one("execution", &exec));
        } else {
            out(&block(&[
                ("execution", exec.id.clone()),
                (
                    "workflow",
                    format!("{} (revision {})", exec.workflow_id, exec.revision),
                ),
                (
                    "status",
                    if existing {
                        format!("{} (existing: same Idempotency-Key)", exec.status.as_str())
                    } else {
                        exec.status.as_str().to_owned()
                    },
                ),
            ]));
            eprintln!("(follow it with: maestro executions get {})", exec.id);
        }
        return Ok(ExitCode::SUCCESS);
    }

    let human = !ctx.json;
    if human {
        let how = if existing {
            " (existing: same Idempotency-Key)"
        } else {
            ""
        };
        out(&format!(
            "execution {} of {} (revision {}){how}",
            exec.id, exec.workflow_id, exec.revision
        ));
    }
    let progress = Progress::new(human, human && std::io::stdout().is_terminal());
    let watched = match a.timeout {
        Some(t) => tokio::time::timeout(t, watch(ctx, &exec.id, &progress)).await,
        None => Ok(watch(ctx, &exec.id, &progress).await),
    };
    progress.finish();
    match watched {
        Ok(r) => r?,
        Err(_) => {
            let now = ctx.client.get_execution(&exec.id).await?;
            if ctx.json {
                output::json(&one("execution", &now));
            }
            eprintln!(
                "maestro: gave up waiting after {}: execution {} is {} (see: maestro executions get {})",
                output::duration(a.timeout.unwrap_or_default().as_millis() as u64),
                now.id,
                now.status.as_str(),
                now.id
            );
            return Ok(ExitCode::from(3));
        }
    }
    let fin = ctx.client.get_execution(&exec.id).await?;
    if ctx.json {
        output::json(&one("execution", &fin));
    } else {
        out(&final_text(&fin));
    }
    Ok(if fin.status == ExecutionStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Follow the execution's events from its first one (a resumed stream
/// replays from the log, so nothing is missed) until its terminal event.
async fn watch(ctx: &Ctx, id: &str, progress: &Progress) -> Result<(), CliError> {
    let filter = EventQuery {
        execution_id: Some(id.to_owned()),
        ..Default::default()
    };
    follow_stream(
        ctx,
        &filter,
        Some(0),
        |e| {
            progress.event(e);
            e.event_type.is_terminal()
        },
        // The stream ended early: the execution may have finished anyway.
        || async {
            matches!(ctx.client.get_execution(id).await, Ok(now) if now.status.is_terminal())
        },
    )
    .await
}

/// The lines printed while waiting, and the spinner (on a terminal only).
struct Progress {
    human: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(human: bool, spinner: bool) -> Progress {
        let bar = spinner.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { human, bar }
    }

    fn event(&self, e: &ChoreographyEvent) {
        if !self.human {
            return;
        }
        let p = &e.payload;
        let step = p["stepId"].as_str().unwrap_or_default();
        let err = |v: &Value| {
            format!(
                "{} {}",
                v["code"].as_str().unwrap_or_default(),
                v["message"].as_str().unwrap_or_default()
            )
            .trim()
            .to_owned()
        };
        let line = match e.event_type {
            EventType::StepStarted => {
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("running {step}"));
                }
                None
            }
            EventType::StepCompleted => Some(match p["duration"].as_u64() {
                Some(d) => format!("✓ {step} ({})", output::duration(d)),
                None => format!("✓ {step}"),
            }),
            EventType::StepFailed => Some(format!("✗ {step}: {}", err(&p["error"]))),
            EventType::StepRetrying => Some(format!(
                "↻ {step}: retrying (attempt {} in {}) after {}",
                output::compact(&p["nextAttempt"]),
                output::duration(p["delayMs"].as_u64().unwrap_or(0)),
                err(&p["error"])
            )),
            EventType::StepSkipped => Some(format!(
                "- {step} skipped ({})",
                output::compact(&p["reason"])
            )),
            EventType::StepCompensated => Some(format!(
                "↺ {step} compensated: {}",
                output::compact(&p["status"])
            )),
            EventType::WorkflowPaused => Some("‖ paused".to_owned()),
            EventType::WorkflowResumed => Some("▶ resumed".to_owned()),
            _ => None,
        };
        if let Some(l) = line {
            match &self.bar {
                Some(bar) => bar.println(l),
                None => out(&l),
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The status line, the error, and the result of a finished execution.
fn final_text(e: &WorkflowExecution) -> String {
    let mut s = match e.duration() {
        Some(d) => format!("{} in {}\n", e.status.as_str(), output::duration(d)),
        None => format!("{}\n", e.status.as_str()),
    };
    if let Some(er) = &e.error {
        let step = er
            .step_id
            .as_ref()
            .map(|st| format!(" (step {st})"))
            .unwrap_or_default();
        s.push_str(&format!("error: {}: {}{step}\n", er.code, er.message));
    }
    if let Some(r) = &e.result
        && !r.is_empty()
    {
        s.push_str("result:\n");
        let pretty = serde_json::to_string_pretty(&Value::Object(r.clone())).unwrap_or_default();
        for l in pretty.lines() {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}
