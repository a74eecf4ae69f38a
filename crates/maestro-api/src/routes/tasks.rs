//! The poll transport's routes: agents lease tasks with a long poll, answer
//! them, and keep their leases alive (see `maestro_engine::tasks`).

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maestro_core::model::validate_id;
use maestro_core::ports::{InvokeError, TaskRecord};
use maestro_core::protocol::{
    CompleteBody, FailBody, LeaseAnswer, PollAnswer, PollBody, TaskAnswer, TaskHeartbeatBody,
    TaskState, True,
};
use maestro_engine::clock::now_ms;
use maestro_engine::tasks::{MAX_TASKS_PER_POLL, MAX_WAIT_MS};
use serde_json::{Value, json};

use super::{Access, Route, post, schema};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, OptionalJson, PathId};
use crate::state::AppState;

pub(crate) fn routes() -> Vec<Route> {
    vec![
        post("/maestro/agents/{agentId}/tasks/poll", Access::OperatorOrSelf, poll)
            .doc(
                "pollTasks",
                "Tasks",
                "Lease tasks of a poll agent (long poll; an empty list when none came within waitMs); counts as a heartbeat",
            )
            .optional_body(schema::<PollBody>)
            .ok::<PollAnswer>(200)
            .errors(&[404]),
        post("/maestro/tasks/{taskId}/complete", Access::Worker, complete)
            .doc(
                "completeTask",
                "Tasks",
                "Answer a leased task with its outputs (repeating the same answer is accepted)",
            )
            .body(schema::<CompleteBody>)
            .ok::<TaskAnswer>(200)
            .errors(&[404, 409]),
        post("/maestro/tasks/{taskId}/fail", Access::Worker, fail)
            .doc("failTask", "Tasks", "Fail a leased task")
            .body(schema::<FailBody>)
            .ok::<TaskAnswer>(200)
            .errors(&[404, 409]),
        post("/maestro/tasks/{taskId}/heartbeat", Access::Worker, heartbeat)
            .doc(
                "heartbeatTask",
                "Tasks",
                "Extend a task's lease (default: by its attempt timeout); says whether the call was cancelled",
            )
            .optional_body(schema::<TaskHeartbeatBody>)
            .ok::<LeaseAnswer>(200)
            .errors(&[404, 409]),
    ]
}

/// A leased task as the agent receives it.
fn wire(t: &TaskRecord) -> Value {
    let mut v = t.body.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("leaseExpiresAt".into(), json!(t.lease_expires_at));
        // The attempt is timed by the lease (time in the queue does not
        // count), so its deadline is the lease's end.
        if let Some(until) = t.lease_expires_at {
            o.insert("deadline".into(), json!(until));
        }
    }
    v
}

/// Heartbeats from polling are written at most this often per agent.
const POLL_HEARTBEAT_EVERY_MS: u64 = 1000;

async fn poll(
    State(s): State<AppState>,
    PathId(agent_id): PathId,
    OptionalJson(body): OptionalJson<PollBody>,
) -> ApiResult<Response> {
    validate_id("agent", &agent_id).map_err(|e| e.field("agentId"))?;
    let max = body.max.unwrap_or(1);
    if max == 0 || max > MAX_TASKS_PER_POLL {
        return Err(ApiError::validation(
            format!("max must be 1-{MAX_TASKS_PER_POLL}"),
            "max",
        ));
    }
    let wait = body.wait_ms.unwrap_or(30_000);
    if wait > MAX_WAIT_MS {
        return Err(ApiError::validation(
            format!("waitMs must be at most {MAX_WAIT_MS}"),
            "waitMs",
        ));
    }
    // `maxWaitMs` bounds how long any request is held open waiting (execute's
    // `?wait=` too): a longer wait is shortened to it, not refused, so that an
    // agent written for the default keeps working behind a lower setting.
    let wait = wait.min(s.opts.max_wait_ms);
    if body.capabilities.len() > 100 {
        return Err(ApiError::validation(
            "at most 100 capabilities",
            "capabilities",
        ));
    }
    let Some(agent) = s.maestro.get_agent(&agent_id) else {
        return Err(maestro_core::Error::not_found("agent", &agent_id).into());
    };
    if s.is_draining() {
        return Err(ApiError::NotReady("the server is shutting down".into()));
    }
    // Polling is a sign of life: written at most every second (and often
    // enough for the health checker's interval).
    let every = POLL_HEARTBEAT_EVERY_MS.min(s.maestro.get_config().health_check_interval_ms / 2);
    if agent.status != maestro_core::model::AgentStatus::Online
        || now_ms().saturating_sub(agent.last_heartbeat) >= every
    {
        s.maestro.heartbeat(&agent_id, None).await?;
    }
    let tasks = s
        .maestro
        .poll_tasks(&agent_id, &body.capabilities, max, wait, &s.shutdown)
        .await?;
    let tasks: Vec<Value> = tasks.iter().map(wire).collect();
    Ok(axum::Json(PollAnswer {
        success: True,
        tasks,
    })
    .into_response())
}

fn task_answer(t: &TaskRecord) -> Response {
    axum::Json(TaskAnswer::new(TaskState {
        task_id: t.task_id.clone(),
        status: t.status,
    }))
    .into_response()
}

async fn complete(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(task_id): PathId,
    Json(body): Json<CompleteBody>,
) -> ApiResult<Response> {
    let t = s
        .maestro
        .finish_task(&task_id, p.agent(), Ok(body.outputs))
        .await?;
    Ok(task_answer(&t))
}

async fn fail(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(task_id): PathId,
    Json(body): Json<FailBody>,
) -> ApiResult<Response> {
    let e = body.error;
    if e.code.is_empty() || e.code.len() > 128 {
        return Err(ApiError::validation(
            "error.code must be 1-128 characters",
            "error.code",
        ));
    }
    let err = InvokeError {
        code: e.code,
        message: e.message,
        retryable: e.retryable,
        details: e.details,
    };
    let t = s.maestro.finish_task(&task_id, p.agent(), Err(err)).await?;
    Ok(task_answer(&t))
}

async fn heartbeat(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(task_id): PathId,
    OptionalJson(body): OptionalJson<TaskHeartbeatBody>,
) -> ApiResult<Response> {
    let l = s
        .maestro
        .heartbeat_task(&task_id, p.agent(), body.extend_ms)
        .await?;
    Ok(axum::Json(LeaseAnswer {
        success: True,
        lease_expires_at: l.lease_expires_at,
        cancel_requested: l.cancel_requested,
    })
    .into_response())
}
