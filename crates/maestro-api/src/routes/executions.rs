//! `/maestro/executions`: read, query, cancel, pause, resume.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maestro_core::model::{ExecutionStatus, WorkflowExecution};
use maestro_core::ports::ExecutionQuery;
use maestro_core::protocol::{CancelBody, ExecutionAnswer, ExecutionList};

use super::{Access, PAGE, Route, get, post, q, schema};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{OptionalJson, PathId, Query};
use crate::state::AppState;

pub(crate) fn routes() -> Vec<Route> {
    const ONE: &str = "/maestro/executions/{executionId}";
    vec![
        get("/maestro/executions", Access::ReadOrAgent, list)
            .doc(
                "queryExecutions",
                "Executions",
                "Query executions, newest first",
            )
            .query(&[
                q("workflowId", "string", "Executions of this workflow."),
                q(
                    "status",
                    "list",
                    "pending, running, paused, completed, failed, rolled_back, cancelled.",
                ),
                q(
                    "agentId",
                    "string",
                    "Executions with a step that ran on this agent.",
                ),
                q(
                    "tags",
                    "list",
                    "Executions of workflows carrying every one of these tags.",
                ),
                q(
                    "correlationId",
                    "string",
                    "Executions with this correlation id.",
                ),
                q(
                    "createdAfter",
                    "integer",
                    "Created at or after (ms since the epoch).",
                ),
                q(
                    "createdBefore",
                    "integer",
                    "Created before (ms since the epoch).",
                ),
            ])
            .query(&PAGE)
            .ok::<ExecutionList>(200),
        get(ONE, Access::ReadOrAgent, get_one)
            .doc("getExecution", "Executions", "One execution")
            .ok::<ExecutionAnswer>(200)
            .errors(&[404]),
        post(
            "/maestro/executions/{executionId}/cancel",
            Access::Operator,
            cancel,
        )
        .doc(
            "cancelExecution",
            "Executions",
            "Cancel (409 if already finished)",
        )
        .optional_body(schema::<CancelBody>)
        .ok::<ExecutionAnswer>(200)
        .errors(&[404, 409]),
        post(
            "/maestro/executions/{executionId}/pause",
            Access::Operator,
            pause,
        )
        .doc("pauseExecution", "Executions", "Pause: no new steps start")
        .ok::<ExecutionAnswer>(200)
        .errors(&[404, 409]),
        post(
            "/maestro/executions/{executionId}/resume",
            Access::Operator,
            resume,
        )
        .doc("resumeExecution", "Executions", "Resume a paused execution")
        .ok::<ExecutionAnswer>(200)
        .errors(&[404, 409]),
    ]
}

/// An execution as `p` may see it (sensitive outputs masked for non-admins).
pub(crate) async fn redact(s: &AppState, p: &Principal, e: WorkflowExecution) -> WorkflowExecution {
    crate::redact::execution(s, p, e).await
}

fn one(e: WorkflowExecution) -> Response {
    axum::Json(ExecutionAnswer::new(e)).into_response()
}

async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
    q: Query,
) -> ApiResult<Response> {
    q.finish()?;
    let e = s
        .maestro
        .get_execution(&id)
        .await?
        .ok_or_else(|| maestro_core::Error::not_found("execution", &id))?;
    Ok(one(redact(&s, &p, e).await))
}

async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    mut q: Query,
) -> ApiResult<Response> {
    let statuses = q
        .list("status")?
        .into_iter()
        .map(|v| {
            ExecutionStatus::parse(&v).ok_or_else(|| {
                ApiError::validation(
                    format!("unknown status {v:?} (pending, running, paused, completed, failed, rolled_back, cancelled)"),
                    "status",
                )
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let query = ExecutionQuery {
        workflow_id: q.string("workflowId")?,
        statuses,
        agent_id: q.string("agentId")?,
        tags: q.list("tags")?,
        correlation_id: q.string("correlationId")?,
        created_after: q.u64("createdAfter")?,
        created_before: q.u64("createdBefore")?,
        limit: 0,
        offset: 0,
    };
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let page = s
        .maestro
        .query_executions(&ExecutionQuery {
            limit,
            offset,
            ..query
        })
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for e in page.items {
        items.push(redact(&s, &p, e).await);
    }
    Ok(axum::Json(ExecutionList::new(items, page.total)).into_response())
}

async fn cancel(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
    OptionalJson(body): OptionalJson<CancelBody>,
) -> ApiResult<Response> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::validation(
            "reason is longer than 1024 characters",
            "reason",
        ));
    }
    let e = s.maestro.cancel_execution(&id, body.reason).await?;
    Ok(one(redact(&s, &p, e).await))
}

async fn pause(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let e = s.maestro.pause_execution(&id).await?;
    Ok(one(redact(&s, &p, e).await))
}

async fn resume(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let e = s.maestro.resume_execution(&id).await?;
    Ok(one(redact(&s, &p, e).await))
}
