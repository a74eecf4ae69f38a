//! `/maestro/workflows`: define, read, update, delete, execute.

use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maestro_core::model::{ErrorHandlerType, Workflow, parse_workflow, validate_id};
use maestro_core::protocol::{ExecuteBody, ExecutionAnswer, Message, WorkflowAnswer, WorkflowList};
use maestro_engine::ExecuteOptions;
use serde_json::Value;

use super::{Access, PAGE, Route, delete, get, patch, post, q, schema};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, JsonOrYaml, OptionalJson, PathId, Query};
use crate::routes::executions::redact;
use crate::state::AppState;

pub(crate) fn routes() -> Vec<Route> {
    const W: &str = "/maestro/workflows";
    const ONE: &str = "/maestro/workflows/{workflowId}";
    vec![
        post(W, Access::Operator, define)
            .doc("defineWorkflow", "Workflows", "Define a workflow (JSON or YAML)")
            .body_types(
                schema::<Workflow>,
                &["application/json", "application/yaml"],
            )
            .ok::<WorkflowAnswer>(201)
            .errors(&[409]),
        get(W, Access::ReadOrAgent, list)
            .doc("listWorkflows", "Workflows", "List workflows (latest revisions)")
            .query(&[q("tags", "list", "Workflows carrying every one of these tags.")])
            .query(&PAGE)
            .ok::<WorkflowList>(200),
        get(ONE, Access::ReadOrAgent, get_one)
            .doc("getWorkflow", "Workflows", "A workflow: the latest revision or ?revision=N")
            .query(&[q("revision", "integer", "A past revision.")])
            .ok::<WorkflowAnswer>(200)
            .errors(&[404]),
        patch(ONE, Access::Operator, update)
            .doc("updateWorkflow", "Workflows", "Merge-patch a workflow: a new revision")
            .body(schema::<Value>)
            .ok::<WorkflowAnswer>(200)
            .errors(&[404]),
        delete(ONE, Access::Operator, remove)
            .doc("deleteWorkflow", "Workflows", "Delete a workflow (409 while executions of it are active)")
            .ok::<Message>(200)
            .errors(&[404, 409]),
        post("/maestro/workflows/{workflowId}/execute", Access::Operator, execute)
            .doc(
                "executeWorkflow",
                "Workflows",
                "Start an execution (202); ?wait=<ms> answers 200 with the finished execution; an Idempotency-Key seen before answers 200 with the existing one",
            )
            .query(&[q("wait", "integer", "Wait up to this many ms for the execution to finish.")])
            .optional_body(schema::<ExecuteBody>)
            .ok::<ExecutionAnswer>(202)
            .ok::<ExecutionAnswer>(200)
            .errors(&[404, 409, 429]),
    ]
}

fn workflow_id(id: &str) -> ApiResult<()> {
    validate_id("workflow", id).map_err(|e| e.field("workflowId").into())
}

async fn define(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonOrYaml(doc): JsonOrYaml<Value>,
) -> ApiResult<Response> {
    // Read as a document first: a step that does not parse is still named by its
    // `id` (`details.stepId`), as on update.
    let wf = parse_workflow(&doc)?;
    for (i, step) in wf.steps.iter().enumerate() {
        if let Some(h) = &step.error_handler
            && h.handler_type == ErrorHandlerType::Callback
        {
            vet_callback(&s, i, Some(&step.id), &h.action)?;
        }
    }
    let wf = s.maestro.define_workflow(wf, &p.name).await?;
    Ok((StatusCode::CREATED, axum::Json(WorkflowAnswer::new(wf))).into_response())
}

/// A callback URL with credentials, or to a literal address the outbound
/// rules refuse, is refused now rather than when a step fails. An action that
/// is not an http(s) URL at all is left to the workflow's validation.
fn vet_callback(s: &AppState, i: usize, step_id: Option<&str>, action: &str) -> ApiResult<()> {
    let lower = action.get(..8).unwrap_or(action).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Ok(());
    }
    let field = format!("steps[{i}].errorHandler.action");
    crate::outbound::refuse_at_creation(&s.opts.outbound, action, &field, step_id)
}

/// A workflow as `p` may see it: readers and agent tokens get callback URLs
/// without their query string, which may carry a secret. Admins and operators
/// define workflows, so they see what they would write back (an update with
/// `steps` replaces them all: a hidden query would be dropped by a round trip).
fn as_seen_by(p: &Principal, mut wf: Workflow) -> Workflow {
    if !p.is_operator() {
        for step in &mut wf.steps {
            if let Some(h) = &mut step.error_handler
                && h.handler_type == ErrorHandlerType::Callback
            {
                h.action = maestro_core::url::shown(&h.action).into_owned();
            }
        }
    }
    wf
}

async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    mut q: Query,
) -> ApiResult<Response> {
    let tags = q.list("tags")?;
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let page = s.maestro.list_workflows(&tags, limit, offset).await?;
    let workflows: Vec<_> = page.items.into_iter().map(|w| as_seen_by(&p, w)).collect();
    Ok(axum::Json(WorkflowList::new(workflows, page.total)).into_response())
}

async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
    mut q: Query,
) -> ApiResult<Response> {
    workflow_id(&id)?;
    let revision = q.u64("revision")?;
    q.finish()?;
    if revision == Some(0) {
        return Err(ApiError::validation("revision starts at 1", "revision"));
    }
    let wf = s
        .maestro
        .get_workflow(&id, revision)
        .await?
        .ok_or_else(|| match revision {
            Some(r) => maestro_core::Error::not_found("workflow revision", format!("{id}@{r}")),
            None => maestro_core::Error::not_found("workflow", &id),
        })?;
    let wf = as_seen_by(&p, wf);
    Ok(axum::Json(WorkflowAnswer::new(wf)).into_response())
}

async fn update(
    State(s): State<AppState>,
    PathId(id): PathId,
    Json(patch): Json<Value>,
) -> ApiResult<Response> {
    workflow_id(&id)?;
    if !patch.is_object() {
        return Err(ApiError::Validation {
            message: "the body must be a JSON object (a merge patch of the workflow)".into(),
            field: None,
        });
    }
    // A merge patch replaces `steps` whole: every callback the update brings
    // is in the patch (the ones kept were vetted when they were given).
    if let Some(steps) = patch.get("steps").and_then(Value::as_array) {
        for (i, step) in steps.iter().enumerate() {
            let h = &step["errorHandler"];
            if h["type"] == "callback"
                && let Some(action) = h["action"].as_str()
            {
                vet_callback(&s, i, step["id"].as_str(), action)?;
            }
        }
    }
    let wf = s.maestro.update_workflow(&id, &patch).await?;
    Ok(axum::Json(WorkflowAnswer::new(wf)).into_response())
}

async fn remove(State(s): State<AppState>, PathId(id): PathId) -> ApiResult<Response> {
    workflow_id(&id)?;
    s.maestro.delete_workflow(&id).await?;
    Ok(axum::Json(Message::new(format!("workflow {id} deleted"))).into_response())
}

async fn execute(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
    headers: HeaderMap,
    mut q: Query,
    OptionalJson(body): OptionalJson<ExecuteBody>,
) -> ApiResult<Response> {
    workflow_id(&id)?;
    let wait = q.u64("wait")?;
    q.finish()?;
    if let Some(w) = wait
        && w > s.opts.max_wait_ms
    {
        return Err(ApiError::validation(
            format!("wait must be at most {} ms", s.opts.max_wait_ms),
            "wait",
        ));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::validation("Idempotency-Key must be ASCII", "Idempotency-Key")
                })?
                .to_owned(),
        ),
    };
    if let Some(parent) = &body.parent_execution_id
        && (parent.is_empty() || parent.len() > 256)
    {
        return Err(ApiError::validation(
            "parentExecutionId must be 1-256 characters",
            "parentExecutionId",
        ));
    }
    if s.is_draining() {
        return Err(ApiError::NotReady("the server is shutting down".into()));
    }
    let (exec, existing) = s
        .maestro
        .execute_workflow(
            &id,
            ExecuteOptions {
                inputs: body.inputs,
                correlation_id: body.correlation_id,
                parent_execution_id: body.parent_execution_id,
                idempotency_key: key,
            },
        )
        .await?;
    // 202 for a new execution; 200 for an existing one (Idempotency-Key) or,
    // with `?wait=`, for one that finished in time.
    let (status, exec) = match wait {
        Some(ms) => {
            let done = if exec.status.is_terminal() {
                exec
            } else {
                let waited = tokio::select! {
                    r = s.maestro.wait_for_execution(&exec.id, Duration::from_millis(ms)) => r?,
                    _ = s.shutdown.cancelled() => s.maestro.get_execution(&exec.id).await?,
                };
                waited.unwrap_or(exec)
            };
            let code = if done.status.is_terminal() || existing {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (code, done)
        }
        None if existing => (StatusCode::OK, exec),
        None => (StatusCode::ACCEPTED, exec),
    };
    let exec = redact(&s, &p, exec).await;
    Ok((status, axum::Json(ExecutionAnswer::new(exec))).into_response())
}
