//! `/maestro/agents` and `/maestro/capabilities`.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maestro_core::model::{AgentHealth, AgentStatus, RegisteredAgent, validate_id};
use maestro_core::protocol::{
    AgentAnswer, AgentCreated, AgentList, HealthAnswer, HeartbeatBody, Message, StatusBody, True,
};
use maestro_core::registry::AgentQuery;
use maestro_engine::clock::now_ms;
use serde_json::json;

use super::{Access, PAGE, Route, delete, get, patch, post, put, q, schema};
use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, OptionalJson, PathId, Query};
use crate::state::AppState;

pub(crate) fn routes() -> Vec<Route> {
    const A: &str = "/maestro/agents";
    const ONE: &str = "/maestro/agents/{agentId}";
    vec![
        post(A, Access::Operator, register)
            .doc("registerAgent", "Agents", "Register an agent; answers its agent token once")
            .body(schema::<RegisteredAgent>)
            .ok::<AgentCreated>(201)
            .errors(&[409]),
        get(A, Access::ReadOrAgent, list)
            .doc("queryAgents", "Agents", "List agents, filtered")
            .query(&[
                q("types", "list", "Agent types."),
                q("status", "list", "online, offline, degraded."),
                q("capabilities", "list", "Agents having any of these capabilities."),
                q("tags", "list", "Agents with a capability carrying one of these tags."),
            ])
            .query(&PAGE)
            .ok::<AgentList>(200),
        get(ONE, Access::ReadOrAgent, get_one)
            .doc("getAgent", "Agents", "One agent")
            .ok::<AgentAnswer>(200)
            .errors(&[404]),
        put(ONE, Access::OperatorOrSelf, upsert)
            .doc(
                "upsertAgent",
                "Agents",
                "Create (201, with agentToken) or update (200) an agent: how a restarted agent re-registers",
            )
            .body(schema::<RegisteredAgent>)
            .ok::<AgentAnswer>(200)
            .ok::<AgentCreated>(201),
        delete(ONE, Access::Operator, deregister)
            .doc("deregisterAgent", "Agents", "Deregister an agent")
            .ok::<Message>(200)
            .errors(&[404]),
        patch("/maestro/agents/{agentId}/status", Access::OperatorOrSelf, set_status)
            .doc(
                "updateAgentStatus",
                "Agents",
                "Set the status (an operator hold until set back to online)",
            )
            .body(schema::<StatusBody>)
            .ok::<AgentAnswer>(200)
            .errors(&[404]),
        post("/maestro/agents/{agentId}/heartbeat", Access::OperatorOrSelf, heartbeat)
            .doc("heartbeat", "Agents", "Heartbeat, optionally with a health report")
            .optional_body(schema::<HeartbeatBody>)
            .ok::<AgentAnswer>(200)
            .errors(&[404]),
        get("/maestro/agents/{agentId}/health", Access::ReadOrAgent, get_health)
            .doc("getAgentHealth", "Agents", "Health computed from calls and checks, merged with the agent's report")
            .ok::<HealthAnswer>(200)
            .errors(&[404]),
        put("/maestro/agents/{agentId}/health", Access::OperatorOrSelf, put_health)
            .doc("recordAgentHealth", "Agents", "The agent's own health report")
            .body(schema::<AgentHealth>)
            .ok::<HealthAnswer>(200)
            .errors(&[404]),
        get(
            "/maestro/capabilities/{capabilityId}/agents",
            Access::ReadOrAgent,
            by_capability,
        )
        .doc("findAgentsByCapability", "Agents", "Agents offering a capability")
        .ok::<AgentList>(200),
    ]
}

fn agent_id(id: &str) -> ApiResult<()> {
    validate_id("agent", id).map_err(|e| e.field("agentId").into())
}

async fn register(
    State(s): State<AppState>,
    Json(mut agent): Json<RegisteredAgent>,
) -> ApiResult<Response> {
    vet_endpoint(&s, &agent)?;
    // An operator hold is only set through PATCH .../status.
    agent.status_hold = false;
    let a = s.maestro.register_agent(agent).await?;
    created_with_token(&s, a).await
}

/// An endpoint with credentials, or to a literal address the outbound rules
/// refuse, is refused now rather than at every call.
fn vet_endpoint(s: &AppState, agent: &RegisteredAgent) -> ApiResult<()> {
    match agent.endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => {
            crate::outbound::refuse_at_creation(&s.opts.outbound, e, "endpoint", None)
        }
        _ => Ok(()),
    }
}

/// An agent as `p` may see it: readers and agent tokens get the endpoint
/// without its query string, which may carry a secret. Admins and operators
/// register agents, so they see what they would write back (an update
/// replaces the definition: a hidden query would be dropped by a round trip).
fn as_seen_by(p: &Principal, mut a: RegisteredAgent) -> RegisteredAgent {
    if !p.is_operator()
        && let Some(e) = &mut a.endpoint
    {
        *e = maestro_core::url::shown(e).into_owned();
    }
    a
}

/// 201 with a new agent's first token (its secret is shown this once).
async fn created_with_token(s: &AppState, a: RegisteredAgent) -> ApiResult<Response> {
    let token = s
        .auth
        .create(
            Role::Agent,
            Some(a.id.clone()),
            format!("agent:{}", a.id),
            None,
            now_ms(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(AgentCreated {
            success: True,
            agent: a,
            agent_token: token.secret,
        }),
    )
        .into_response())
}

async fn upsert(
    State(s): State<AppState>,
    PathId(id): PathId,
    Json(mut agent): Json<RegisteredAgent>,
) -> ApiResult<Response> {
    agent_id(&id)?;
    if agent.id != id {
        return Err(ApiError::validation(
            format!("body id {:?} differs from the path's {id:?}", agent.id),
            "id",
        ));
    }
    agent.status_hold = false;
    vet_endpoint(&s, &agent)?;
    let (created, a) = s.maestro.upsert_agent(agent).await?;
    if created {
        return created_with_token(&s, a).await;
    }
    Ok(axum::Json(AgentAnswer::new(a)).into_response())
}

async fn list(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    mut q: Query,
) -> ApiResult<Response> {
    let statuses = q
        .list("status")?
        .into_iter()
        .map(|v| match v.as_str() {
            "online" => Ok(AgentStatus::Online),
            "offline" => Ok(AgentStatus::Offline),
            "degraded" => Ok(AgentStatus::Degraded),
            other => Err(ApiError::validation(
                format!("unknown status {other:?} (online, offline, degraded)"),
                "status",
            )),
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let query = AgentQuery {
        types: q.list("types")?,
        statuses,
        capabilities: q.list("capabilities")?,
        tags: q.list("tags")?,
        ..Default::default()
    };
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let (agents, total) = s.maestro.query_agents(&AgentQuery {
        limit,
        offset,
        ..query
    });
    let agents: Vec<_> = agents.into_iter().map(|a| as_seen_by(&p, a)).collect();
    Ok(axum::Json(AgentList::new(agents, total as u64)).into_response())
}

fn found(s: &AppState, id: &str) -> ApiResult<RegisteredAgent> {
    agent_id(id)?;
    s.maestro
        .get_agent(id)
        .ok_or_else(|| maestro_core::Error::not_found("agent", id).into())
}

async fn get_one(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(id): PathId,
    q: Query,
) -> ApiResult<Response> {
    q.finish()?;
    let a = as_seen_by(&p, found(&s, &id)?);
    Ok(axum::Json(AgentAnswer::new(a)).into_response())
}

async fn deregister(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    PathId(id): PathId,
) -> ApiResult<Response> {
    agent_id(&id)?;
    s.maestro.deregister_agent(&id).await?;
    crate::audit::record(&s, &who, "agent.deregistered", json!({"agentId": id})).await;
    Ok(axum::Json(Message::new(format!("agent {id} deregistered"))).into_response())
}

async fn set_status(
    State(s): State<AppState>,
    PathId(id): PathId,
    Json(body): Json<StatusBody>,
) -> ApiResult<Response> {
    agent_id(&id)?;
    let a = s.maestro.update_agent_status(&id, body.status).await?;
    Ok(axum::Json(AgentAnswer::new(a)).into_response())
}

async fn heartbeat(
    State(s): State<AppState>,
    PathId(id): PathId,
    OptionalJson(body): OptionalJson<HeartbeatBody>,
) -> ApiResult<Response> {
    agent_id(&id)?;
    let a = s.maestro.heartbeat(&id, body.health).await?;
    Ok(axum::Json(AgentAnswer::new(a)).into_response())
}

async fn get_health(State(s): State<AppState>, PathId(id): PathId) -> ApiResult<Response> {
    agent_id(&id)?;
    let h = s
        .maestro
        .get_agent_health(&id)
        .ok_or_else(|| maestro_core::Error::not_found("agent", &id))?;
    Ok(axum::Json(HealthAnswer::new(h)).into_response())
}

async fn put_health(
    State(s): State<AppState>,
    PathId(id): PathId,
    Json(h): Json<AgentHealth>,
) -> ApiResult<Response> {
    agent_id(&id)?;
    let h = s.maestro.record_agent_health(&id, h).await?;
    Ok(axum::Json(HealthAnswer::new(h)).into_response())
}

async fn by_capability(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    PathId(cap): PathId,
    q: Query,
) -> ApiResult<Response> {
    q.finish()?;
    let agents: Vec<_> = s
        .maestro
        .find_agents_by_capability(&cap)
        .into_iter()
        .map(|a| as_seen_by(&p, a))
        .collect();
    Ok(axum::Json(AgentList::all(agents)).into_response())
}

/// Used by the events route: an agent token publishes as itself only.
pub(crate) fn check_source(p: &Principal, source: &Option<String>) -> ApiResult<()> {
    if let Some(own) = p.agent()
        && source.as_deref().is_some_and(|s| s != own)
    {
        return Err(ApiError::Forbidden(format!(
            "an agent token publishes as its own agent ({own})"
        )));
    }
    Ok(())
}
