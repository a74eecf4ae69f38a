//! The route table: one entry per method and path, carrying the handler, who
//! may call it and its documentation. The router and the OpenAPI document are
//! both built from this table, so they cannot disagree.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use schemars::{JsonSchema, Schema, SchemaGenerator};

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod admin;
pub(crate) mod agents;
pub(crate) mod events;
pub(crate) mod executions;
pub(crate) mod tasks;
pub(crate) mod workflows;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (`/healthz`, `/readyz`).
    Public,
    /// admin only.
    Admin,
    /// admin, operator.
    Operator,
    /// admin, operator, or the agent named by the path's `agentId`.
    OperatorOrSelf,
    /// admin, operator, reader.
    Read,
    /// admin, operator, reader and agent tokens.
    ReadOrAgent,
    /// admin, operator, agent (the handler checks what an agent may publish).
    Publish,
    /// admin, operator, agent (the handler checks that a task is the agent's).
    Worker,
}

impl Access {
    /// Whether `p` may call, `agent_in_path` being the path's `agentId`.
    pub fn allows(self, p: &Principal, agent_in_path: Option<&str>) -> bool {
        match self {
            Access::Public => true,
            Access::Admin => p.role == Role::Admin,
            Access::Operator => p.is_operator(),
            Access::OperatorOrSelf => {
                p.is_operator() || (p.agent().is_some() && p.agent() == agent_in_path)
            }
            Access::Read => p.role != Role::Agent,
            Access::ReadOrAgent => true,
            Access::Publish | Access::Worker => p.role != Role::Reader,
        }
    }

    /// The roles that pass (for the docs), ignoring the agent binding.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            Access::Public => &[],
            Access::Admin => &["admin"],
            Access::Operator => &["admin", "operator"],
            Access::OperatorOrSelf => &["admin", "operator", "agent (itself)"],
            Access::Read => &["admin", "operator", "reader"],
            Access::ReadOrAgent => &["admin", "operator", "reader", "agent"],
            Access::Publish => &["admin", "operator", "agent (as itself)"],
            Access::Worker => &["admin", "operator", "agent (its own tasks)"],
        }
    }
}

/// A schema of the OpenAPI document, generated from a Rust type.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

pub(crate) fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// A documented query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// `string`, `integer`, `list` (comma-separated / repeatable) or `boolean`.
    pub kind: &'static str,
    pub description: &'static str,
}

pub(crate) const fn q(name: &'static str, kind: &'static str, description: &'static str) -> Param {
    Param {
        name,
        kind,
        description,
    }
}

pub(crate) const PAGE: [Param; 2] = [
    q(
        "limit",
        "integer",
        "Items per page (default 100, max 1000).",
    ),
    q("offset", "integer", "Items to skip (default 0)."),
];

/// How a route answers when it succeeds.
#[derive(Clone)]
pub enum Answer {
    /// A JSON body: the schema of its type in `maestro_core::protocol`, the
    /// type the handler answers with.
    Json { status: u16, schema: SchemaFn },
    /// Another body (`text/plain`, `text/event-stream`, ...).
    Raw {
        status: u16,
        content_type: &'static str,
    },
}

/// One entry of the table.
pub struct Route {
    pub method: Method,
    /// axum path syntax (`/maestro/agents/{agentId}`), also OpenAPI's.
    pub path: &'static str,
    pub access: Access,
    pub operation_id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub query: Vec<Param>,
    /// Request body schema and its content types.
    pub body: Option<(SchemaFn, &'static [&'static str])>,
    pub body_required: bool,
    pub answers: Vec<Answer>,
    /// Error statuses besides the ones every route may give (401, 403, 400 for
    /// bad input, 413/415 with a body).
    pub errors: &'static [u16],
    pub handler: MethodRouter<AppState>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("standard method");
        Route {
            method,
            path,
            access,
            operation_id: "",
            tag: "",
            summary: "",
            query: Vec::new(),
            body: None,
            body_required: true,
            answers: Vec::new(),
            errors: &[],
            handler: on(filter, handler),
        }
    }
    pub(crate) fn doc(
        mut self,
        operation_id: &'static str,
        tag: &'static str,
        summary: &'static str,
    ) -> Self {
        self.operation_id = operation_id;
        self.tag = tag;
        self.summary = summary;
        self
    }
    pub(crate) fn query(mut self, params: &[Param]) -> Self {
        self.query.extend_from_slice(params);
        self
    }
    pub(crate) fn body(mut self, schema: SchemaFn) -> Self {
        self.body = Some((schema, &["application/json"]));
        self
    }
    pub(crate) fn optional_body(mut self, schema: SchemaFn) -> Self {
        self.body = Some((schema, &["application/json"]));
        self.body_required = false;
        self
    }
    pub(crate) fn body_types(mut self, schema: SchemaFn, types: &'static [&'static str]) -> Self {
        self.body = Some((schema, types));
        self
    }
    /// A JSON answer of type `T` (one of `maestro_core::protocol`).
    pub(crate) fn ok<T: JsonSchema>(mut self, status: u16) -> Self {
        self.answers.push(Answer::Json {
            status,
            schema: schema::<T>,
        });
        self
    }
    pub(crate) fn raw(mut self, status: u16, content_type: &'static str) -> Self {
        self.answers.push(Answer::Raw {
            status,
            content_type,
        });
        self
    }
    pub(crate) fn errors(mut self, errors: &'static [u16]) -> Self {
        self.errors = errors;
        self
    }
}

pub(crate) fn get<H: axum::handler::Handler<T, AppState>, T: 'static>(
    path: &'static str,
    access: Access,
    h: H,
) -> Route {
    Route::new(Method::GET, path, access, h)
}
pub(crate) fn post<H: axum::handler::Handler<T, AppState>, T: 'static>(
    path: &'static str,
    access: Access,
    h: H,
) -> Route {
    Route::new(Method::POST, path, access, h)
}
pub(crate) fn put<H: axum::handler::Handler<T, AppState>, T: 'static>(
    path: &'static str,
    access: Access,
    h: H,
) -> Route {
    Route::new(Method::PUT, path, access, h)
}
pub(crate) fn patch<H: axum::handler::Handler<T, AppState>, T: 'static>(
    path: &'static str,
    access: Access,
    h: H,
) -> Route {
    Route::new(Method::PATCH, path, access, h)
}
pub(crate) fn delete<H: axum::handler::Handler<T, AppState>, T: 'static>(
    path: &'static str,
    access: Access,
    h: H,
) -> Route {
    Route::new(Method::DELETE, path, access, h)
}

/// Every route of the API.
pub fn table() -> Vec<Route> {
    let mut v = Vec::new();
    v.extend(admin::probes());
    v.extend(agents::routes());
    v.extend(workflows::routes());
    v.extend(executions::routes());
    v.extend(tasks::routes());
    v.extend(events::routes());
    v.extend(admin::routes());
    v
}

#[derive(Clone)]
struct Guard {
    state: AppState,
    access: Access,
    /// The documented query parameters: anything else is refused here, so a
    /// route cannot accept a parameter its documentation does not list.
    query: Arc<[&'static str]>,
}

/// Refuse query parameters the route does not take (400 naming the first).
fn check_query_names(req: &Request, allowed: &[&'static str]) -> Result<(), ApiError> {
    let Some(raw) = req.uri().query() else {
        return Ok(());
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let name = pair.split('=').next().unwrap_or("");
        if !allowed.contains(&name) {
            let shown: String = name.chars().take(64).collect();
            return Err(ApiError::validation(
                format!("unknown query parameter {shown:?}"),
                shown,
            ));
        }
    }
    Ok(())
}

/// Authenticate, then check the route's [`Access`] and query parameter
/// names; the principal goes into the request's extensions for the handler.
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    if g.access == Access::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let params = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(p) => p,
        Err(e) => {
            return ApiError::Validation {
                message: format!("bad path: {}", e.body_text()),
                field: None,
            }
            .into_response();
        }
    };
    let mut req = Request::from_parts(parts, body);
    let now = maestro_engine::clock::now_ms();
    let mut headers = req
        .headers()
        .get_all(axum::http::header::AUTHORIZATION)
        .iter();
    let header = headers.next().map(|v| v.to_str().unwrap_or(""));
    if headers.next().is_some() {
        // Which of two credentials wins is up to each proxy and server on the
        // way: refuse rather than guess.
        return ApiError::Validation {
            message: "more than one Authorization header".into(),
            field: Some("Authorization".into()),
        }
        .into_response();
    }
    let principal = match g.state.auth.authenticate(header, now).await {
        Ok(p) => p,
        Err(ApiError::Unauthorized(m)) => {
            // The peer address (absent when the router is served without it,
            // e.g. in unit tests): failed authentications are counted per
            // address, and only failing requests are ever refused by it.
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            if let Some(ip) = peer {
                tracing::info!(peer = %ip, "authentication failed");
                if let Some(wait) = g.state.failures.failed(ip, now) {
                    return ApiError::RateLimited(wait).into_response();
                }
            }
            return ApiError::Unauthorized(m).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let agent_in_path = params.iter().find(|(k, _)| *k == "agentId").map(|(_, v)| v);
    if !g.access.allows(&principal, agent_in_path) {
        return ApiError::Forbidden(format!(
            "role {} may not call {} {}",
            principal.role.as_str(),
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    if let Err(e) = check_query_names(&req, &g.query) {
        return e.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// A panic in a handler is a bug: answer a generic 500 (and log it) rather
/// than dropping the connection without an answer.
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let what = format!("{} {}", req.method(), req.uri().path());
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            ApiError::Internal(format!("handler panicked on {what}: {msg}")).into_response()
        }
    }
}

/// The router: every route of [`table`], the JSON 404/405 answers, and the
/// request metrics.
pub fn router(state: AppState) -> Router {
    let mut router: Router<AppState> = Router::new();
    for r in table() {
        let guarded = r.handler.layer(middleware::from_fn_with_state(
            Guard {
                state: state.clone(),
                access: r.access,
                query: r.query.iter().map(|p| p.name).collect(),
            },
            guard,
        ));
        router = router.route(r.path, guarded);
    }
    router
        .fallback(|req: Request| async move {
            ApiError::NoRoute(format!("{} {}", req.method(), req.uri().path()))
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn(crate::metrics::track))
        .with_state(state)
}
