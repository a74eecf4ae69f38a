//! `maestro events`: the history, or `--follow` the live stream.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use maestro_client::Error;
use maestro_client::client::EventQuery;
use maestro_core::model::{ChoreographyEvent, EventType};
use serde_json::Value;

use super::commands::list;
use super::output::{self, Table, clock, out, truncate};
use super::{CliError, Connection, Ctx};

/// `maestro events [--follow] [--type t]... [--workflow W] [--execution E] [--correlation C]`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// Keep going: print events as they happen (after the last --limit ones).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only events of these types (repeatable or comma-separated), e.g.
    /// workflow:completed,workflow:failed.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    types: Vec<String>,
    /// Only events of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only events of this execution.
    #[arg(long)]
    execution: Option<String>,
    /// Only events with this correlation id.
    #[arg(long)]
    correlation: Option<String>,
    /// Only events from this agent (`maestro` for the engine's).
    #[arg(long)]
    source: Option<String>,
    /// Only events after this seq (with --follow: replay from there).
    #[arg(long)]
    after: Option<u64>,
    /// How many past events to show [default: 100; with --follow 10].
    #[arg(long)]
    limit: Option<usize>,
}

pub(crate) async fn events(ctx: &Ctx, a: EventsArgs) -> Result<ExitCode, CliError> {
    let event_types = a
        .types
        .iter()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                CliError::Usage(format!(
                    "unknown event type {t:?} (one of {})",
                    known.join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let filter = EventQuery {
        event_types,
        source_agent: a.source,
        workflow_id: a.workflow,
        execution_id: a.execution,
        correlation_id: a.correlation,
        after: a.after,
        limit: a.limit,
        ..Default::default()
    };
    if !a.follow {
        let page = ctx.client.event_history(&filter).await?;
        if ctx.json {
            output::json(&list("events", &page));
            return Ok(ExitCode::SUCCESS);
        }
        let mut t = Table::new(&["SEQ", "TIME", "TYPE", "SOURCE", "EXECUTION", "DETAILS"]);
        for e in &page.items {
            t.row(vec![
                e.seq.to_string(),
                output::time(e.timestamp),
                e.event_type.as_str().to_owned(),
                e.source_agent.clone(),
                e.execution_id.clone().unwrap_or_default(),
                summary(e),
            ]);
        }
        if t.is_empty() {
            eprintln!("no events");
        } else {
            out(&t.render());
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(ctx, filter).await
}

/// The last `limit` events (unless `--after`), then the live ones, resuming
/// after the last one seen whenever the server closes the stream.
async fn follow(ctx: &Ctx, filter: EventQuery) -> Result<ExitCode, CliError> {
    let mut last = filter.after;
    if last.is_none() {
        let history = ctx
            .client
            .event_history(&EventQuery {
                limit: Some(filter.limit.unwrap_or(10)),
                ..filter.clone()
            })
            .await?;
        for e in &history.items {
            print_event(ctx, e);
        }
        // Resume from the log after the last event shown: nothing published
        // in between is missed (0: every matching event from the start,
        // there being none so far).
        last = Some(history.items.last().map_or(0, |e| e.seq));
    }
    let stream_filter = EventQuery {
        after: None,
        limit: None,
        ..filter
    };
    follow_stream(
        ctx,
        &stream_filter,
        last,
        |e| {
            print_event(ctx, e);
            false
        },
        || async { false },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Follow the events of `filter` after `last`, reconnecting whenever the
/// server ends the stream (a restart, or this client fell behind) and resuming
/// after the last event seen, so nothing is missed. `on_event` answers `true`
/// to stop; `finished` is asked after each end of a stream whether to stop.
/// Gives up after 5 failed connections in a row.
pub(super) async fn follow_stream<F, D, Fut>(
    ctx: &Ctx,
    filter: &EventQuery,
    mut last: Option<u64>,
    mut on_event: F,
    mut finished: D,
) -> Result<(), CliError>
where
    F: FnMut(&ChoreographyEvent) -> bool,
    D: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut failures = 0u32;
    loop {
        match ctx.client.stream_events(filter, last).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(e) => {
                            failures = 0;
                            last = Some(e.seq);
                            if on_event(&e) {
                                return Ok(());
                            }
                        }
                        Err(Error::Decode(m)) => eprintln!("maestro: skipping an event: {m}"),
                        Err(_) => break,
                    }
                }
            }
            Err(e @ Error::Api { .. }) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(e.into());
                }
            }
        }
        if finished().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.max(1)))).await;
    }
}

fn print_event(ctx: &Ctx, e: &ChoreographyEvent) {
    if ctx.json {
        out(&serde_json::to_string(e).unwrap_or_default());
        return;
    }
    let exec = e.execution_id.as_deref().unwrap_or("-");
    out(&format!(
        "{:>6}  {}  {:<26} {:<12} {exec}  {}",
        e.seq,
        clock(e.timestamp),
        e.event_type.as_str(),
        e.source_agent,
        summary(e)
    ));
}

/// A few words about an event from its payload.
pub(crate) fn summary(e: &ChoreographyEvent) -> String {
    let p = &e.payload;
    let step = p["stepId"].as_str().unwrap_or_default();
    let err = |v: &Value| {
        let code = v["code"].as_str().unwrap_or_default();
        let msg = v["message"].as_str().unwrap_or_default();
        if code.is_empty() && msg.is_empty() {
            String::new()
        } else {
            format!("{code}: {msg}")
        }
    };
    let s = match e.event_type {
        EventType::StepStarted => format!("{step} attempt {}", output::compact(&p["attempt"])),
        EventType::StepCompleted => match p["duration"].as_u64() {
            Some(d) => format!("{step} ({})", output::duration(d)),
            None => step.to_owned(),
        },
        EventType::StepFailed => format!("{step} {}", err(&p["error"])),
        EventType::StepRetrying => format!(
            "{step} attempt {} in {} ms after {}",
            output::compact(&p["nextAttempt"]),
            output::compact(&p["delayMs"]),
            err(&p["error"])
        ),
        EventType::StepSkipped => format!("{step} ({})", output::compact(&p["reason"])),
        EventType::StepCompensated => format!("{step} {}", output::compact(&p["status"])),
        EventType::WorkflowFailed | EventType::WorkflowRolledBack => err(&p["error"]),
        EventType::WorkflowCancelled => output::compact(&p["reason"]),
        EventType::WorkflowCompleted => match p["duration"].as_u64() {
            Some(d) => output::duration(d),
            None => String::new(),
        },
        _ => {
            if p.is_null() || p.as_object().is_some_and(|o| o.is_empty()) {
                String::new()
            } else {
                p.to_string()
            }
        }
    };
    truncate(s.trim(), 100)
}
