//! `core::Error`: what the domain can refuse, each with its stable API code.

/// Stable machine codes of API.md for domain refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    ValidationFailed,
    CycleDetected,
    UnknownDependency,
    DuplicateStepId,
    UnknownFallback,
    InvalidPlaceholder,
    InvalidCondition,
    UnsafeCondition,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ValidationFailed => "VALIDATION_FAILED",
            Code::CycleDetected => "CYCLE_DETECTED",
            Code::UnknownDependency => "UNKNOWN_DEPENDENCY",
            Code::DuplicateStepId => "DUPLICATE_STEP_ID",
            Code::UnknownFallback => "UNKNOWN_FALLBACK",
            Code::InvalidPlaceholder => "INVALID_PLACEHOLDER",
            Code::InvalidCondition => "INVALID_CONDITION",
            Code::UnsafeCondition => "UNSAFE_CONDITION",
        }
    }
}

/// Details of a refused input: which field, which step, which cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invalid {
    pub field: Option<String>,
    pub step_id: Option<String>,
    pub cycle: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// Bad input: answered 400 with `code`.
    #[error("{message}")]
    Invalid {
        code: Code,
        message: String,
        details: Box<Invalid>,
    },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    /// The request conflicts with the resource's state (409 `INVALID_STATE`).
    #[error("{0}")]
    InvalidState(String),
    /// The same idempotency key came with a different body.
    #[error("idempotency key {0:?} was already used with a different request")]
    IdempotencyKeyReused(String),
    /// The pending queue is full (429).
    #[error("execution queue is full ({0} pending)")]
    QueueFull(usize),
    /// Not ready or shutting down (503).
    #[error("{0}")]
    NotReady(String),
    /// The store failed; `retryable` tells whether trying again may succeed.
    #[error("store error: {message}")]
    Store { message: String, retryable: bool },
}

impl Error {
    pub fn invalid(code: Code, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::invalid(Code::ValidationFailed, message)
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn already_exists(kind: &'static str, id: impl Into<String>) -> Self {
        Error::AlreadyExists {
            kind,
            id: id.into(),
        }
    }

    pub fn store(message: impl Into<String>) -> Self {
        Error::Store {
            message: message.into(),
            retryable: false,
        }
    }

    /// Name the offending field (keeps a field set earlier, the most precise one).
    pub fn field(mut self, field: impl Into<String>) -> Self {
        if let Error::Invalid { details, .. } = &mut self
            && details.field.is_none()
        {
            details.field = Some(field.into());
        }
        self
    }

    /// Name the offending step.
    pub fn step(mut self, step_id: impl Into<String>) -> Self {
        if let Error::Invalid { details, .. } = &mut self
            && details.step_id.is_none()
        {
            details.step_id = Some(step_id.into());
        }
        self
    }

    pub fn with_cycle(mut self, cycle: Vec<String>) -> Self {
        if let Error::Invalid { details, .. } = &mut self {
            details.cycle = Some(cycle);
        }
        self
    }

    /// The API code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { code, .. } => code.as_str(),
            Error::NotFound { .. } => "NOT_FOUND",
            Error::AlreadyExists { .. } => "ALREADY_EXISTS",
            Error::InvalidState(_) => "INVALID_STATE",
            Error::IdempotencyKeyReused(_) => "IDEMPOTENCY_KEY_REUSED",
            Error::QueueFull(_) => "QUEUE_FULL",
            Error::NotReady(_) => "NOT_READY",
            Error::Store { .. } => "INTERNAL",
        }
    }
}

/// Error codes a step or an execution can end with (API.md), besides whatever
/// code an agent returns.
pub mod step_codes {
    pub const AGENT_NOT_FOUND: &str = "AGENT_NOT_FOUND";
    pub const CAPABILITY_NOT_FOUND: &str = "CAPABILITY_NOT_FOUND";
    pub const NO_AGENT_AVAILABLE: &str = "NO_AGENT_AVAILABLE";
    pub const UNRESOLVED_VARIABLE: &str = "UNRESOLVED_VARIABLE";
    pub const INPUT_SCHEMA_MISMATCH: &str = "INPUT_SCHEMA_MISMATCH";
    /// A successful answer whose outputs do not match the capability's declared outputs.
    pub const OUTPUT_SCHEMA_MISMATCH: &str = "OUTPUT_SCHEMA_MISMATCH";
    pub const STEP_TIMEOUT: &str = "STEP_TIMEOUT";
    pub const WORKFLOW_TIMEOUT: &str = "WORKFLOW_TIMEOUT";
    pub const LEASE_EXPIRED: &str = "LEASE_EXPIRED";
    pub const AGENT_DEREGISTERED: &str = "AGENT_DEREGISTERED";
    pub const DEPENDENCY_FAILED: &str = "DEPENDENCY_FAILED";
    pub const CANCELLED: &str = "CANCELLED";
    pub const INVALID_AGENT_RESPONSE: &str = "INVALID_AGENT_RESPONSE";
    pub const OUTPUT_TOO_LARGE: &str = "OUTPUT_TOO_LARGE";
    pub const CONDITION_ERROR: &str = "CONDITION_ERROR";
    pub const AGENT_ERROR: &str = "AGENT_ERROR";
    pub const CALLBACK_FAILED: &str = "CALLBACK_FAILED";
    pub const COMPENSATION_FAILED: &str = "COMPENSATION_FAILED";
    /// A push agent could not be reached (refused, reset, broken answer): retryable.
    pub const AGENT_UNREACHABLE: &str = "AGENT_UNREACHABLE";
    /// The agent's endpoint is refused by `outboundAllowList`: not retryable.
    pub const OUTBOUND_REFUSED: &str = "OUTBOUND_REFUSED";
    /// A push agent without a usable endpoint URL: not retryable.
    pub const INVALID_AGENT_ENDPOINT: &str = "INVALID_AGENT_ENDPOINT";
}
