//! The one error type of the typed client ([`crate::client::Client`]).

use serde_json::Value;

/// What can go wrong when calling the Maestro API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status. Parsed from the API's error
    /// envelope `{"success": false, "error", "code", "details"?}`; an answer
    /// that is not such an envelope gets the code `HTTP_<status>` and its body
    /// (shortened) as the message.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status (400, 401, 403, 404, 409, 429, 503, ...).
        status: u16,
        /// The machine code, e.g. `NOT_FOUND` or `VALIDATION_FAILED`.
        code: String,
        /// The human message (`error` of the envelope).
        message: String,
        /// `details` of the envelope (`field`, `stepId`, `cycle`, ...), if any.
        details: Option<Value>,
    },
    /// No answer: connection refused, DNS failure, TLS failure, timeout, or the
    /// connection broke. The message names the URL that was called.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered 2xx but the body was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The request could not be built from what the caller gave (a bad base
    /// URL, a header value that is not ASCII, a document that does not parse).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// The HTTP status of an [`Error::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The machine code of an [`Error::Api`] (`NOT_FOUND`, `ALREADY_EXISTS`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// `details.field` of an [`Error::Api`]: the request field at fault.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Api {
                details: Some(d), ..
            } => d.get("field").and_then(Value::as_str),
            _ => None,
        }
    }

    /// Whether this is an [`Error::Api`] with `code`.
    pub fn is_code(&self, code: &str) -> bool {
        self.code() == Some(code)
    }

    /// Whether the resource does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}
