//! `/maestro/events`: history, by correlation, the live SSE stream, and
//! events published by agents.
//!
//! The stream subscribes to the bus first and then reads the persisted log
//! after the resume point, so nothing committed in between is missed (events
//! are committed before they are published); events seen twice are dropped by
//! seq. A client that falls more than `sseQueue` events behind is
//! disconnected; it resumes with `Last-Event-ID` from the log.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use maestro_core::model::{ChoreographyEvent, EventFilter, EventType, NewEvent};
use maestro_core::protocol::{EventAnswer, EventList, PublishEvent};
use maestro_engine::clock::now_ms;
use maestro_engine::feed::Overflow;

use super::{Access, Param, Route, get, post, q, schema};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, PathId, Query};
use crate::redact;
use crate::state::AppState;

const FILTERS: [Param; 8] = [
    q(
        "eventTypes",
        "list",
        "Event types, e.g. workflow:completed,workflow:failed.",
    ),
    q("sourceAgent", "string", "Events from this agent."),
    q("agentId", "string", "Events from or to this agent."),
    q("workflowId", "string", "Events of this workflow."),
    q("executionId", "string", "Events of this execution."),
    q(
        "correlationId",
        "string",
        "Events with this correlation id.",
    ),
    q(
        "since",
        "integer",
        "Events at or after this time (ms since the epoch).",
    ),
    q("after", "integer", "Events after this seq."),
];

pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/maestro/events", Access::ReadOrAgent, history)
            .doc(
                "getEventHistory",
                "Events",
                "Persisted events in seq order: with after, the first limit after it; else the newest limit",
            )
            .query(&FILTERS)
            .query(&[q("limit", "integer", "Events per answer (default 100, max 10000).")])
            .ok::<EventList>(200),
        get("/maestro/events/stream", Access::ReadOrAgent, stream)
            .doc(
                "streamEvents",
                "Events",
                "Live events as Server-Sent Events (id = seq, event = type); Last-Event-ID or ?after= resumes from the log",
            )
            .query(&FILTERS)
            .raw(200, "text/event-stream"),
        get("/maestro/events/{correlationId}", Access::ReadOrAgent, by_correlation)
            .doc("getEventsByCorrelation", "Events", "Events of one correlation id, in seq order")
            .query(&[
                q("after", "integer", "Events after this seq."),
                q("limit", "integer", "Events per answer (default 100, max 10000)."),
            ])
            .ok::<EventList>(200),
        post("/maestro/events", Access::Publish, publish)
            .doc(
                "publishEvent",
                "Events",
                "Publish agent:event or agent:alert (an agent token publishes as itself)",
            )
            .body(schema::<PublishEvent>)
            .ok::<EventAnswer>(201),
    ]
}

fn filter(q: &mut Query) -> ApiResult<EventFilter> {
    let event_types = q
        .list("eventTypes")?
        .into_iter()
        .map(|t| {
            EventType::parse(&t).ok_or_else(|| {
                ApiError::validation(format!("unknown event type {t:?}"), "eventTypes")
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(EventFilter {
        event_types,
        source_agent: q.string("sourceAgent")?,
        agent_id: q.string("agentId")?,
        workflow_id: q.string("workflowId")?,
        execution_id: q.string("executionId")?,
        correlation_id: q.string("correlationId")?,
        since: q.u64("since")?,
        after: q.u64("after")?,
    })
}

/// `total`: every event matching the filter (`after` included), not only
/// this page. Sensitive outputs are masked for `p`.
async fn listing(
    s: &AppState,
    p: &Principal,
    events: Vec<ChoreographyEvent>,
    total: u64,
) -> Response {
    let events = match redact::events(s, p) {
        Some(mut m) => m.events(events).await,
        None => events,
    };
    axum::Json(EventList::new(events, total)).into_response()
}

async fn history(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    mut q: Query,
) -> ApiResult<Response> {
    let f = filter(&mut q)?;
    let (limit, _) = page_limit(&mut q)?;
    q.finish()?;
    let events = s.maestro.get_event_history(&f, limit).await?;
    let total = s.maestro.count_events(&f).await?;
    Ok(listing(&s, &p, events, total).await)
}

fn page_limit(q: &mut Query) -> ApiResult<(usize, ())> {
    let limit = q.u64("limit")?.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::validation("limit must be 1-10000", "limit"));
    }
    Ok((limit as usize, ()))
}

async fn by_correlation(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(correlation): PathId,
    mut q: Query,
) -> ApiResult<Response> {
    let after = q.u64("after")?;
    let (limit, _) = page_limit(&mut q)?;
    q.finish()?;
    let events = s
        .maestro
        .get_events_by_correlation(&correlation, after, limit)
        .await?;
    let total = s
        .maestro
        .count_events(&EventFilter {
            correlation_id: Some(correlation.clone()),
            after,
            ..Default::default()
        })
        .await?;
    Ok(listing(&s, &p, events, total).await)
}

async fn publish(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Json(b): Json<PublishEvent>,
) -> ApiResult<Response> {
    if !matches!(b.event_type, EventType::AgentEvent | EventType::AgentAlert) {
        return Err(ApiError::validation(
            format!(
                "only agent:event and agent:alert may be published, not {}",
                b.event_type.as_str()
            ),
            "type",
        ));
    }
    super::agents::check_source(&p, &b.source_agent)?;
    for (field, v) in [
        ("sourceAgent", &b.source_agent),
        ("targetAgent", &b.target_agent),
        ("correlationId", &b.correlation_id),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
            return Err(ApiError::validation(
                format!("{field} must be 1-256 characters"),
                field,
            ));
        }
    }
    let source = b
        .source_agent
        .or_else(|| p.agent().map(str::to_owned))
        .unwrap_or_else(|| p.name.clone());
    let e = s
        .maestro
        .publish_event(NewEvent {
            event_type: b.event_type,
            source_agent: source,
            target_agent: b.target_agent,
            workflow_id: None,
            execution_id: None,
            payload: b.payload,
            timestamp: now_ms(),
            correlation_id: b.correlation_id.unwrap_or_default(),
            metadata: b.metadata,
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(EventAnswer::new(e))).into_response())
}

fn sse_event(e: &ChoreographyEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.event_type.as_str())
        .data(serde_json::to_string(e).unwrap_or_else(|_| "{}".into()))
}

async fn stream(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
    mut q: Query,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let mut f = filter(&mut q)?;
    q.finish()?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::validation("Last-Event-ID must be an event seq", "Last-Event-ID")
                })?,
        ),
        None => f.after,
    };
    f.after = None;
    if s.is_draining() {
        return Err(ApiError::NotReady("the server is shutting down".into()));
    }
    let masker = redact::events(&s, &p);
    let feed = s.maestro.event_feed(
        f,
        resume,
        s.opts.sse_queue,
        // A client that falls behind is dropped; it resumes from the log.
        Overflow::End,
    );
    let shutdown = s.shutdown.clone();
    let events = futures_util::stream::unfold(
        (feed, shutdown, masker),
        |(mut feed, shutdown, mut masker)| async move {
            let mut e = feed.next(&shutdown).await?;
            if let Some(m) = masker.as_mut() {
                e = m.event(e).await;
            }
            Some((Ok(sse_event(&e)), (feed, shutdown, masker)))
        },
    );
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_millis(s.opts.sse_keepalive_ms))
            .text("keep-alive"),
    ))
}
