//! Probes, monitoring, config, tokens, subscriptions and the OpenAPI document.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maestro_core::model::validate_id;
use maestro_core::ports::SubscriptionRecord;
use maestro_core::protocol::{
    ConfigAnswer, DeliveryCounters, HealthList, Message, MetricsAnswer, NewSubscription, NewToken,
    Probe, SERVER_SETTINGS, SubscriptionCreated, SubscriptionList, SubscriptionListed,
    TokenCreated, TokenList, True,
};
use maestro_core::url::shown;
use maestro_engine::clock::now_ms;
use maestro_engine::webhooks::DeliveryStats;
use rand::RngCore;
use serde_json::{Value, json};

use super::{Access, Route, delete, get, patch, post, schema};
use crate::audit;
use crate::auth::{Principal, Role, check_agent_binding};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, PathId, Query};
use crate::state::AppState;

pub(crate) fn probes() -> Vec<Route> {
    vec![
        get("/healthz", Access::Public, healthz)
            .doc("healthz", "Probes", "The process is alive (no token)")
            .ok::<Probe>(200),
        get("/readyz", Access::Public, readyz)
            .doc(
                "readyz",
                "Probes",
                "Store reachable and engine running (no token); 503 while starting or draining",
            )
            .ok::<Probe>(200)
            .errors(&[503]),
    ]
}

pub(crate) fn routes() -> Vec<Route> {
    vec![
        get("/maestro/metrics", Access::Read, metrics)
            .doc("getMetrics", "Monitoring", "Orchestration metrics")
            .ok::<MetricsAnswer>(200),
        get("/maestro/health", Access::Read, health)
            .doc("getAllAgentHealth", "Monitoring", "Health of every agent")
            .ok::<HealthList>(200),
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
            .ok::<ConfigAnswer>(200),
        patch("/maestro/config", Access::Admin, patch_config)
            .doc(
                "updateConfig",
                "Config",
                "Merge-patch the runtime configuration: validated, stored, applied at once",
            )
            .body(schema::<Value>)
            .ok::<ConfigAnswer>(200),
        post("/maestro/tokens", Access::Admin, create_token)
            .doc(
                "createToken",
                "Tokens",
                "Create a token; its secret is answered once",
            )
            .body(schema::<NewToken>)
            .ok::<TokenCreated>(201),
        get("/maestro/tokens", Access::Admin, list_tokens)
            .doc("listTokens", "Tokens", "Tokens (never their secrets)")
            .query(&super::PAGE)
            .ok::<TokenList>(200),
        delete("/maestro/tokens/{tokenId}", Access::Admin, revoke_token)
            .doc("revokeToken", "Tokens", "Revoke a token")
            .ok::<Message>(200)
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
        .body(schema::<NewSubscription>)
        .ok::<SubscriptionCreated>(201),
        get("/maestro/subscriptions", Access::Read, list_subscriptions)
            .doc(
                "listSubscriptions",
                "Subscriptions",
                "Webhook subscriptions, each with its delivery counters (delivered, failed, catchUps, attempts, lastError) since the server started",
            )
            .query(&super::PAGE)
            .ok::<SubscriptionList>(200),
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
        .ok::<Message>(200)
        .errors(&[404]),
    ]
}

async fn healthz() -> Response {
    axum::Json(Probe {
        status: "ok".into(),
    })
    .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.is_draining() {
        return ApiError::NotReady("draining".into()).into_response();
    }
    if !s.maestro.is_ready() {
        return ApiError::NotReady("engine not running".into()).into_response();
    }
    match s.maestro.ping_store().await {
        Ok(_) => axum::Json(Probe {
            status: "ready".into(),
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            ApiError::NotReady("store unreachable".into()).into_response()
        }
    }
}

async fn metrics(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    let m = s.maestro.get_metrics().await?;
    Ok(axum::Json(MetricsAnswer::new(m)).into_response())
}

async fn health(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    let h = s.maestro.get_all_agent_health();
    Ok(axum::Json(HealthList::all(h)).into_response())
}

async fn openapi(q: Query) -> ApiResult<Response> {
    q.finish()?;
    Ok(axum::Json(crate::openapi::document()).into_response())
}

async fn get_config(State(s): State<AppState>, q: Query) -> ApiResult<Response> {
    q.finish()?;
    Ok(axum::Json(ConfigAnswer::new(s.maestro.get_config())).into_response())
}

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
    Ok(axum::Json(ConfigAnswer::new(c)).into_response())
}

async fn create_token(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(b): Json<NewToken>,
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
        axum::Json(TokenCreated {
            success: True,
            token: m.record,
            secret: m.secret,
        }),
    )
        .into_response())
}

/// A page of an in-memory list, and the length of the list.
fn paged<T>(items: Vec<T>, limit: usize, offset: usize) -> (Vec<T>, u64) {
    let total = items.len() as u64;
    (items.into_iter().skip(offset).take(limit).collect(), total)
}

async fn list_tokens(State(s): State<AppState>, mut q: Query) -> ApiResult<Response> {
    let (limit, offset) = q.page(100, 1000)?;
    q.finish()?;
    let (tokens, total) = paged(s.auth.list().await?, limit, offset);
    Ok(axum::Json(TokenList::new(tokens, total)).into_response())
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
    Ok(axum::Json(Message::new(format!("token {id} revoked"))).into_response())
}

async fn create_subscription(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(b): Json<NewSubscription>,
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
        axum::Json(SubscriptionCreated {
            success: True,
            subscription: rec,
            secret,
        }),
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
    let subs: Vec<SubscriptionListed> = s
        .maestro
        .list_subscriptions()
        .await?
        .into_iter()
        .map(|(mut subscription, stats)| {
            // A query string may carry a receiver's secret: admins only.
            if !who.is_admin() {
                subscription.url = shown(&subscription.url).into_owned();
            }
            SubscriptionListed {
                subscription,
                delivery: counters(stats),
            }
        })
        .collect();
    let (subs, total) = paged(subs, limit, offset);
    Ok(axum::Json(SubscriptionList::new(subs, total)).into_response())
}

/// The engine's delivery counters as answered (every field named, so one
/// added there must be added to the protocol too).
fn counters(stats: DeliveryStats) -> DeliveryCounters {
    let DeliveryStats {
        delivered,
        failed,
        catch_ups,
        attempts,
        last_delivered_seq,
        last_delivered_at,
        last_error,
    } = stats;
    DeliveryCounters {
        delivered,
        failed,
        catch_ups,
        attempts,
        last_delivered_seq,
        last_delivered_at,
        last_error,
    }
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
    Ok(axum::Json(Message::new(format!("subscription {id} deleted"))).into_response())
}
