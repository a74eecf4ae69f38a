//! Probes, monitoring, config, tokens, subscriptions and the OpenAPI document.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maestro_core::model::{
    AgentHealth, ChoreographyMetrics, EventType, MaestroConfig, Timestamp, validate_id,
};
use maestro_core::ports::{SubscriptionRecord, TokenRecord};
use maestro_core::url::shown;
use maestro_engine::clock::now_ms;
use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Access, Route, delete, get, patch, post, schema};
use crate::audit;
use crate::auth::{Principal, Role, check_agent_binding};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, PathId, Query};
use crate::state::AppState;

/// `{"success": true, "message": ...}`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Message {
    success: bool,
    message: String,
}

/// `/healthz`, `/readyz`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Probe {
    status: String,
}

pub(crate) fn probes() -> Vec<Route> {
    vec![
        get("/healthz", Access::Public, healthz)
            .doc("healthz", "Probes", "The process is alive (no token)")
            .json(200, schema::<Probe>),
        get("/readyz", Access::Public, readyz)
            .doc(
                "readyz",
                "Probes",
                "Store reachable and engine running (no token); 503 while starting or draining",
            )
            .json(200, schema::<Probe>)
            .errors(&[503]),
    ]
}

pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/maestro/metrics", Access::Read, metrics)
            .doc("getMetrics", "Monitoring", "Orchestration metrics")
            .ok(200, "metrics", schema::<ChoreographyMetrics>),
        get("/maestro/health", Access::Read, health)
            .doc("getAllAgentHealth", "Monitoring", "Health of every agent")
            .list("health", schema::<AgentHealth>),
        get("/metrics", Access::Read, crate::metrics::render)
            .doc(
                "prometheus",
                "Monitoring",
                "Prometheus metrics (text format)",
            )
            .raw(200, "text/plain; version=0.0.4"),
        get("/maestro/openapi.json", Access::ReadOrAgent, openapi)
            .doc("openapi", "Monitoring", "This API's OpenAPI 3.1 document")
            .raw(200, "application/json"),
        get("/maestro/config", Access::Read, get_config)
            .doc("getConfig", "Config", "The runtime configuration")
            .ok(200, "config", schema::<MaestroConfig>),
        patch("/maestro/config", Access::Admin, patch_config)
            .doc(
                "updateConfig",
                "Config",
                "Merge-patch the runtime configuration: validated, stored, applied at once",
            )
            .body(schema::<Value>)
            .ok(200, "config", schema::<MaestroConfig>),
        post("/maestro/tokens", Access::Admin, create_token)
            .doc(
                "createToken",
                "Tokens",
                "Create a token; its secret is answered once",
            )
            .body(schema::<TokenBody>)
            .json(201, schema::<TokenCreated>),
        get("/maestro/tokens", Access::Admin, list_tokens)
            .doc("listTokens", "Tokens", "Tokens (never their secrets)")
            .query(&super::PAGE)
            .list("tokens", schema::<TokenRecord>),
        delete("/maestro/tokens/{tokenId}", Access::Admin, revoke_token)
            .doc("revokeToken", "Tokens", "Revoke a token")
            .json(200, schema::<Message>)
            .errors(&[404]),
        post(
            "/maestro/subscriptions",
            Access::Operator,
            create_subscription,
        )
        .doc(
            "createSubscription",
            "Subscriptions",
            "Subscribe a URL to events; the signing secret is answered once",
        )
        .body(schema::<SubscriptionBody>)
        .json(201, schema::<SubscriptionCreated>),
        get("/maestro/subscriptions", Access::Read, list_subscriptions)
            .doc(
                "listSubscriptions",
                "Subscriptions",
                "Webhook subscriptions, each with its delivery counters (delivered, failed, catchUps, attempts, lastError) since the server started",
            )
            .query(&super::PAGE)
            .list("subscriptions", schema::<SubscriptionListed>),
        delete(
            "/maestro/subscriptions/{subscriptionId}",
            Access::Operator,
            delete_subscription,
        )
        .doc(
            "deleteSubscription",
            "Subscriptions",
            "Delete a subscription",
        )
        .json(200, schema::<Message>)
        .errors(&[404]),
    ]
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.is_draining() {
        return ApiError::NotReady("draining".into()).into_response();
    }
    if !s.maestro.is_ready() {
        return ApiError::NotReady("engine not running".into()).into_response();
    }
    match s.maestro.ping_store().await {
        Ok(_) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            ApiError::NotReady("store unreachable".into()).into_response()
        }
    }
}

async fn metrics(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    let m = s.maestro.get_metrics().await?;
    Ok(axum::Json(json!({"success": true, "metrics": m})).into_response())
}

async fn health(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    let h = s.maestro.get_all_agent_health();
    let n = h.len();
    Ok(axum::Json(json!({"success": true, "count": n, "total": n, "health": h})).into_response())
}

async fn openapi(q: Query) -> ApiResult<Response> {
    q.finish()?;
    Ok(axum::Json(crate::openapi::document()).into_response())
}

async fn get_config(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    Ok(axum::Json(json!({"success": true, "config": s.maestro.get_config()})).into_response())
}

/// Settings read at start that a PATCH cannot change.
const SERVER_SETTINGS: &[&str] = &[
    "listen",
    "dataDir",
    "databaseUrl",
    "databaseMaxConnections",
    "clusterLeaseTtlMs",
    "authFailuresPerMinute",
    "retentionExecutionsMs",
    "retentionEventsMs",
    "maxBodyBytes",
    "maxQueuedExecutions",
    "maxStepsPerWorkflow",
    "maxJsonDepth",
    "maxOutputBytes",
    "retention",
    "outboundAllowList",
    "adminToken",
];

async fn patch_config(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(patch): Json<Value>,
) -> ApiResult<Response> {
    let Some(obj) = patch.as_object() else {
        return Err(ApiError::Validation {
            message: "the body must be a JSON object (a merge patch of the config)".into(),
            field: None,
        });
    };
    if let Some(k) = obj.keys().find(|k| SERVER_SETTINGS.contains(&k.as_str())) {
        return Err(ApiError::validation(
            format!(
                "{k} is a server setting: set it in maestro.toml, MAESTRO_* or a flag and restart"
            ),
            k.clone(),
        ));
    }
    let c = s.maestro.update_config(&patch).await?;
    audit::record(&s, &who, "config.changed", json!({"patch": patch})).await;
    Ok(axum::Json(json!({"success": true, "config": c})).into_response())
}

/// `POST /maestro/tokens`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TokenBody {
    /// admin, operator, reader or agent.
    role: String,
    /// Required for role agent: the only agent the token acts for.
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Expiry, ms since the epoch.
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

/// Answer of `POST /maestro/tokens`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct TokenCreated {
    success: bool,
    token: TokenRecord,
    /// `mst_<id>_<secret>`: shown once.
    secret: String,
}

async fn create_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(b): Json<TokenBody>,
) -> ApiResult<Response> {
    let role = Role::parse(&b.role).ok_or_else(|| {
        ApiError::validation(
            format!("unknown role {:?} (admin, operator, reader, agent)", b.role),
            "role",
        )
    })?;
    check_agent_binding(role, &b.agent_id)?;
    let now = now_ms();
    if b.expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::validation(
            "expiresAt is in the past",
            "expiresAt",
        ));
    }
    let name = b.name.unwrap_or_else(|| role.as_str().to_owned());
    if name.is_empty() || name.len() > 128 {
        return Err(ApiError::validation(
            "name must be 1-128 characters",
            "name",
        ));
    }
    let m = s
        .auth
        .create(role, b.agent_id, name, b.expires_at, now)
        .await?;
    // The other nodes learn the new id (they answer unknown ids from memory).
    s.maestro.token_changed(&m.record.id);
    audit::record(
        &s,
        &who,
        "token.created",
        json!({"tokenId": m.record.id, "role": role.as_str(), "agentId": m.record.agent_id}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"success": true, "token": m.record, "secret": m.secret})),
    )
        .into_response())
}

/// A page of an in-memory list.
fn paged<T: Serialize>(key: &str, items: Vec<T>, limit: usize, offset: usize) -> Response {
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({"success": true, "count": page.len(), "total": total});
    body[key] = serde_json::to_value(page).unwrap_or_default();
    axum::Json(body).into_response()
}

async fn list_tokens(State(s): State<AppState>, mut q: Query) -> ApiResult<Response> {
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let tokens = s.auth.list().await?;
    Ok(paged("tokens", tokens, limit, offset))
}

async fn revoke_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    PathId(id): PathId,
) -> ApiResult<Response> {
    let revoked = s.auth.revoke(&id, now_ms()).await?;
    s.maestro.token_changed(&id);
    if !revoked {
        return Err(maestro_core::Error::not_found("token", &id).into());
    }
    audit::record(&s, &who, "token.revoked", json!({"tokenId": id})).await;
    Ok(
        axum::Json(json!({"success": true, "message": format!("token {id} revoked")}))
            .into_response(),
    )
}

/// `POST /maestro/subscriptions`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SubscriptionBody {
    /// Event types to deliver (at least one).
    event_types: Vec<EventType>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    workflow_id: Option<String>,
    /// http(s) URL; checked against the outbound allow-list on delivery.
    url: String,
}

/// A subscription as listed: the record and its delivery counters.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SubscriptionListed {
    #[serde(flatten)]
    subscription: SubscriptionRecord,
    delivery: DeliveryCounters,
}

/// Delivery counters since the server started.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryCounters {
    delivered: u64,
    failed: u64,
    catch_ups: u64,
    attempts: u64,
    last_delivered_seq: Option<u64>,
    last_delivered_at: Option<u64>,
    last_error: Option<String>,
}

/// Answer of `POST /maestro/subscriptions`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SubscriptionCreated {
    success: bool,
    subscription: SubscriptionRecord,
    /// HMAC-SHA256 key of `X-Maestro-Signature`: shown once.
    secret: String,
}

async fn create_subscription(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(b): Json<SubscriptionBody>,
) -> ApiResult<Response> {
    if b.event_types.is_empty() {
        return Err(ApiError::validation(
            "eventTypes must not be empty",
            "eventTypes",
        ));
    }
    if let Some(a) = &b.agent_id {
        validate_id("agent", a).map_err(|e| e.field("agentId"))?;
    }
    if let Some(w) = &b.workflow_id {
        validate_id("workflow", w).map_err(|e| e.field("workflowId"))?;
    }
    if b.url.len() > 2048 {
        return Err(ApiError::validation(
            "url must be at most 2048 characters",
            "url",
        ));
    }
    // Refused now rather than at every delivery: credentials (receivers check
    // X-Maestro-Signature instead) and literal addresses the outbound rules refuse.
    crate::outbound::refuse_at_creation(&s.opts.outbound, &b.url, "url", None)?;
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let rec = SubscriptionRecord {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        event_types: b.event_types,
        agent_id: b.agent_id,
        workflow_id: b.workflow_id,
        url: b.url,
        secret: secret.clone(),
        created_at: now_ms(),
    };
    let rec = s.maestro.create_subscription(rec).await?;
    audit::record(
        &s,
        &who,
        "subscription.created",
        // Audit events reach every reader and webhook: the URL without its query.
        json!({"subscriptionId": rec.id, "url": shown(&rec.url), "eventTypes": rec.event_types}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"success": true, "subscription": rec, "secret": secret})),
    )
        .into_response())
}

async fn list_subscriptions(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    mut q: Query,
) -> ApiResult<Response> {
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let subs: Vec<Value> = s
        .maestro
        .list_subscriptions()
        .await?
        .into_iter()
        .map(|(mut sub, stats)| {
            // A query string may carry a receiver's secret: admins only.
            if !who.is_admin() {
                sub.url = shown(&sub.url).into_owned();
            }
            let mut v = serde_json::to_value(sub).unwrap_or_default();
            v["delivery"] = serde_json::to_value(stats).unwrap_or_default();
            v
        })
        .collect();
    Ok(paged("subscriptions", subs, limit, offset))
}

async fn delete_subscription(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    PathId(id): PathId,
) -> ApiResult<Response> {
    s.maestro.delete_subscription(&id).await?;
    audit::record(
        &s,
        &who,
        "subscription.deleted",
        json!({"subscriptionId": id}),
    )
    .await;
    Ok(
        axum::Json(json!({"success": true, "message": format!("subscription {id} deleted")}))
            .into_response(),
    )
}
