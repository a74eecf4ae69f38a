//! Errors: what a handler answers ([`AgentError`]) and why an agent could not
//! run ([`SdkError`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Error codes the SDK answers by itself.
pub mod codes {
    /// The inputs do not deserialize into the handler's input type (400).
    pub const INVALID_INPUT: &str = "INVALID_INPUT";
    /// The request is not a task (400).
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// The agent has no such capability (404).
    pub const UNKNOWN_CAPABILITY: &str = "UNKNOWN_CAPABILITY";
    /// The handler panicked (500, retryable).
    pub const AGENT_PANIC: &str = "AGENT_PANIC";
    /// The handler's output is not a JSON object (500, not retryable).
    pub const INVALID_OUTPUT: &str = "INVALID_OUTPUT";
    /// A push call without the agent's inbound secret (401).
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// An `Idempotency-Key` seen before with another capability or inputs (409).
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// Conventional code for a handler that stopped because it was cancelled.
    pub const CANCELLED: &str = "CANCELLED";
}

/// A handler's failure, as the agent protocol carries it:
/// `{"error": {"code", "message", "retryable", "details"?}}`.
///
/// `retryable` decides whether Maestro's retry policy applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AgentError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl AgentError {
    /// A failure worth retrying (a dependency is down, a timeout...).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        AgentError {
            code: code.into(),
            message: message.into(),
            retryable: true,
            details: None,
        }
    }

    /// A failure retrying cannot fix (bad input, refused...).
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        AgentError {
            code: code.into(),
            message: message.into(),
            retryable: false,
            details: None,
        }
    }

    /// Adds `details` (any JSON) to the error.
    pub fn with_details(mut self, details: impl Into<Value>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The HTTP status a push agent answers with: 400 `INVALID_INPUT` /
    /// `INVALID_REQUEST`, 401 `UNAUTHORIZED`, 404 `UNKNOWN_CAPABILITY`, 409
    /// `IDEMPOTENCY_KEY_REUSED`, 500 a retryable `AGENT_PANIC`; any other
    /// code 503 when retryable, else 422. The body always carries
    /// `retryable`, which is what Maestro goes by; the status matches it for
    /// proxies and logs (without the field, Maestro retries 5xx and 429 only).
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            codes::INVALID_INPUT | codes::INVALID_REQUEST => 400,
            codes::UNAUTHORIZED => 401,
            codes::UNKNOWN_CAPABILITY => 404,
            codes::IDEMPOTENCY_KEY_REUSED => 409,
            // Statuses that agree with `retryable`: a retryable error is a
            // 5xx, a final one a 4xx.
            codes::AGENT_PANIC if self.retryable => 500,
            _ if self.retryable => 503,
            _ => 422,
        }
    }

    /// The protocol body `{"error": {...}}`.
    pub fn to_body(&self) -> Value {
        serde_json::json!({ "error": self })
    }
}

/// Why an agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The configuration cannot work (e.g. no token, a bad URL).
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The push server could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Maestro refused a request for good (401, 403, 400...).
    #[error("Maestro refused {what}: HTTP {status} {code}: {message}")]
    Refused {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    /// Cancelled before the agent was registered.
    #[error("cancelled before the agent was registered")]
    Cancelled,
    /// The push server failed.
    #[error("push server: {0}")]
    Server(std::io::Error),
}
