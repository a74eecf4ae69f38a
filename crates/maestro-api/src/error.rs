//! `ApiError`: the one place where failures become HTTP answers.
//!
//! Every body is `{"success": false, "error", "code", "details"?}` with a code
//! from API.md. 5xx bodies are generic; what went wrong is logged instead.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maestro_core::Error as CoreError;
use serde_json::{Map, Value, json};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A domain refusal (validation, not found, conflict, queue full, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The body is not well-formed JSON/YAML (400 `INVALID_JSON`).
    #[error("{message}")]
    InvalidJson {
        message: String,
        field: Option<String>,
    },
    /// Well-formed but wrong: a wrong type, an unknown field or enum value, a
    /// bad query parameter (400 `VALIDATION_FAILED`).
    #[error("{message}")]
    Validation {
        message: String,
        field: Option<String>,
    },
    /// A URL Maestro would call (agent endpoint, callback, subscription) to a
    /// destination the outbound rules refuse (400 `OUTBOUND_REFUSED`), with
    /// `details.field` and, for a workflow step's callback, `details.stepId`.
    #[error("{message}")]
    OutboundRefused {
        message: String,
        field: String,
        step_id: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// No such route.
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A conflict with its own code (409), e.g. `LEASE_EXPIRED`.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Too many failed authentications from this address (429 `RATE_LIMITED`,
    /// with `Retry-After` in seconds).
    #[error("too many failed authentications from this address; try again in {0} s")]
    RateLimited(u64),
    /// The server is starting or draining (503 `NOT_READY`).
    #[error("{0}")]
    NotReady(String),
    /// A bug or an infrastructure failure: logged, answered generically.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(message: impl Into<String>, field: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// Status, stable code, message and details of this error.
    fn parts(&self) -> (StatusCode, &'static str, String, Option<Value>) {
        use ApiError as A;
        match self {
            A::Core(e) => core_parts(e),
            A::InvalidJson { message, field } => (
                StatusCode::BAD_REQUEST,
                "INVALID_JSON",
                message.clone(),
                field_details(field),
            ),
            A::Validation { message, field } => (
                StatusCode::BAD_REQUEST,
                "VALIDATION_FAILED",
                message.clone(),
                field_details(field),
            ),
            A::OutboundRefused {
                message,
                field,
                step_id,
            } => {
                let mut details = json!({ "field": field });
                if let Some(step) = step_id {
                    details["stepId"] = json!(step);
                }
                (
                    StatusCode::BAD_REQUEST,
                    "OUTBOUND_REFUSED",
                    message.clone(),
                    Some(details),
                )
            }
            A::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m.clone(), None),
            A::Forbidden(m) => (StatusCode::FORBIDDEN, "FORBIDDEN", m.clone(), None),
            A::NoRoute(_) => (StatusCode::NOT_FOUND, "NOT_FOUND", self.to_string(), None),
            A::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                self.to_string(),
                None,
            ),
            A::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                self.to_string(),
                Some(json!({"limit": limit})),
            ),
            A::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                m.clone(),
                None,
            ),
            A::Conflict { code, message } => (StatusCode::CONFLICT, *code, message.clone(), None),
            A::RateLimited(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                self.to_string(),
                Some(json!({"retryAfterSeconds": secs})),
            ),
            A::NotReady(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT_READY",
                m.clone(),
                None,
            ),
            A::Internal(_) => internal(),
        }
    }
}

fn internal() -> (StatusCode, &'static str, String, Option<Value>) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL",
        "internal error (details are in the server log)".to_owned(),
        None,
    )
}

fn field_details(field: &Option<String>) -> Option<Value> {
    field.as_ref().map(|f| json!({ "field": f }))
}

fn core_parts(e: &CoreError) -> (StatusCode, &'static str, String, Option<Value>) {
    use CoreError as C;
    let status = match e {
        C::Invalid { .. } => StatusCode::BAD_REQUEST,
        C::NotFound { .. } => StatusCode::NOT_FOUND,
        C::AlreadyExists { .. } | C::InvalidState(_) | C::IdempotencyKeyReused(_) => {
            StatusCode::CONFLICT
        }
        C::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
        C::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        C::Store {
            retryable: true, ..
        } => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "NOT_READY",
                "the store is temporarily unavailable; try again".to_owned(),
                None,
            );
        }
        C::Store {
            retryable: false, ..
        } => return internal(),
    };
    let details = match e {
        C::Invalid { details, .. } => {
            let mut m = Map::new();
            if let Some(f) = &details.field {
                m.insert("field".into(), json!(f));
            }
            if let Some(s) = &details.step_id {
                m.insert("stepId".into(), json!(s));
            }
            if let Some(c) = &details.cycle {
                m.insert("cycle".into(), json!(c));
            }
            (!m.is_empty()).then_some(Value::Object(m))
        }
        C::NotFound { kind, id } | C::AlreadyExists { kind, id } => {
            Some(json!({"resource": kind, "id": id}))
        }
        C::InvalidState(_)
        | C::IdempotencyKeyReused(_)
        | C::QueueFull(_)
        | C::NotReady(_)
        | C::Store { .. } => None,
    };
    (status, e.code(), e.to_string(), details)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = self.parts();
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self, "request failed");
        }
        let mut body = json!({"success": false, "error": message, "code": code});
        if let Some(d) = details {
            body["details"] = d;
        }
        let retry_after = match &self {
            ApiError::RateLimited(secs) => Some(*secs),
            _ => None,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<maestro_engine::tasks::TaskError> for ApiError {
    fn from(e: maestro_engine::tasks::TaskError) -> Self {
        use maestro_engine::tasks::TaskError as T;
        match e {
            T::NotFound(id) => ApiError::Core(CoreError::not_found("task", id)),
            T::NotYours(_) => ApiError::Forbidden(e.to_string()),
            T::LeaseExpired(_) => ApiError::Conflict {
                code: "LEASE_EXPIRED",
                message: e.to_string(),
            },
            T::Conflict(m) => ApiError::Conflict {
                code: "INVALID_STATE",
                message: m,
            },
            T::Store(e) => ApiError::Core(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_has_the_documented_status() {
        let cases = [
            (CoreError::validation("x"), 400, "VALIDATION_FAILED"),
            (CoreError::not_found("agent", "a"), 404, "NOT_FOUND"),
            (
                CoreError::already_exists("agent", "a"),
                409,
                "ALREADY_EXISTS",
            ),
            (CoreError::InvalidState("x".into()), 409, "INVALID_STATE"),
            (
                CoreError::IdempotencyKeyReused("k".into()),
                409,
                "IDEMPOTENCY_KEY_REUSED",
            ),
            (CoreError::QueueFull(3), 429, "QUEUE_FULL"),
            (CoreError::NotReady("x".into()), 503, "NOT_READY"),
            (CoreError::store("disk on fire"), 500, "INTERNAL"),
        ];
        for (e, status, code) in cases {
            let (s, c, msg, _) = ApiError::Core(e).parts();
            assert_eq!((s.as_u16(), c), (status, code));
            if status == 500 {
                assert!(!msg.contains("disk"), "5xx bodies are generic");
            }
        }
    }
}
