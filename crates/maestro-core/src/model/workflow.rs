//! Workflow definitions (API.md "Workflows").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Timestamp;

/// What the workflow does when a step fails for good (after retries and handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Schedule nothing more, let running steps finish, execution `failed`.
    #[default]
    Stop,
    /// Independent steps go on; dependents of the failed step are skipped.
    Continue,
    /// Stop, then compensate completed steps in reverse completion order.
    Rollback,
}

/// A workflow definition. `revision`, `createdAt`, `updatedAt` are kept by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workflow {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_workflow_version")]
    pub version: String,
    pub steps: Vec<WorkflowStep>,
    #[serde(default)]
    pub initial_inputs: Map<String, Value>,
    #[serde(default)]
    pub expected_outputs: Map<String, Value>,
    /// Wall-time limit of an execution in ms (else `defaultWorkflowTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<u64>,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Set by the server (ms since the Unix epoch); ignored on input.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("readOnly" = true)))]
    pub created_at: Timestamp,
    /// Set by the server (ms since the Unix epoch); ignored on input.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("readOnly" = true)))]
    pub updated_at: Timestamp,
    /// Who defined the workflow: taken from the request when given on creation,
    /// else the caller's identity; kept unchanged by updates.
    #[serde(default)]
    pub created_by: String,
    /// Set by the server: a new revision on each update (executions pin one);
    /// ignored on input.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("readOnly" = true)))]
    pub revision: u64,
}

fn default_workflow_version() -> String {
    "1".to_owned()
}

impl Workflow {
    pub fn step(&self, id: &str) -> Option<&WorkflowStep> {
        self.steps.iter().find(|s| s.id == id)
    }
}

/// One capability call of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowStep {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub capability: String,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Per-attempt timeout in ms (else `agentTimeoutMs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_handler: Option<ErrorHandler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<ExecutionCondition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<Compensate>,
}

/// `delay = min(delayMs × multiplier^(attempt-1), maxDelayMs)`, optional full jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default = "default_multiplier")]
    pub backoff_multiplier: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jitter: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_retryable_codes: Vec<String>,
}

fn default_multiplier() -> f64 {
    1.0
}

impl Default for RetryPolicy {
    /// The original's default: 3 attempts, 1 s, ×2, at most 30 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            delay_ms: 1000,
            backoff_multiplier: 2.0,
            max_delay_ms: Some(30_000),
            jitter: false,
            non_retryable_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 = the delay after the first attempt),
    /// before jitter.
    pub fn delay_before_retry(&self, retry: u32) -> u64 {
        let exp = retry.saturating_sub(1).min(1024) as i32;
        let raw = self.delay_ms as f64 * self.backoff_multiplier.max(0.0).powi(exp);
        let cap = self.max_delay_ms.unwrap_or(u64::MAX) as f64;
        let d = raw.min(cap);
        if d.is_finite() && d >= 0.0 {
            d.min(u64::MAX as f64) as u64
        } else {
            self.max_delay_ms.unwrap_or(0)
        }
    }
}

/// The kind of an `ErrorHandler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ErrorHandlerType {
    Retry,
    Skip,
    Callback,
    Fallback,
}

/// What happens after a step's retries are exhausted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorHandler {
    #[serde(rename = "type")]
    pub handler_type: ErrorHandlerType,
    /// Fallback: the step id to run instead. Callback: the URL to POST to.
    #[serde(default)]
    pub action: String,
    /// Retry: the retry policy of the extra round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

/// The operator of a `comparison` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    NotIn,
    Exists,
    Contains,
}

/// The operator of a `logical` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogicalOp {
    And,
    Or,
    Not,
}

/// A step's condition: structured data, or a CEL expression. Never code to `eval`.
///
/// On the wire `{type: comparison|logical|expression, ...}`. Any other `type`
/// deserializes to [`ExecutionCondition::Unsupported`] so that validation can answer
/// with the right code: `javascript` is `UNSAFE_CONDITION`, anything else
/// `INVALID_CONDITION`. Validated workflows never contain `Unsupported`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecutionCondition {
    Comparison {
        variable: String,
        operator: CompareOp,
        value: Value,
    },
    Logical {
        operator: LogicalOp,
        conditions: Vec<ExecutionCondition>,
    },
    Expression {
        expression: String,
    },
    /// A condition type Maestro does not run (kept only to report it).
    Unsupported {
        #[serde(rename = "unsupportedType")]
        type_name: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawCondition {
    Comparison {
        variable: String,
        operator: CompareOp,
        #[serde(default)]
        value: Value,
    },
    Logical {
        operator: LogicalOp,
        conditions: Vec<ExecutionCondition>,
    },
    Expression {
        expression: String,
    },
}

impl<'de> Deserialize<'de> for ExecutionCondition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let map = Map::<String, Value>::deserialize(d)?;
        let type_name = match map.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(D::Error::custom("condition `type` must be a string")),
            None => return Err(D::Error::missing_field("type")),
        };
        match type_name.as_str() {
            "comparison" | "logical" | "expression" => {
                let raw: RawCondition =
                    serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
                Ok(match raw {
                    RawCondition::Comparison {
                        variable,
                        operator,
                        value,
                    } => ExecutionCondition::Comparison {
                        variable,
                        operator,
                        value,
                    },
                    RawCondition::Logical {
                        operator,
                        conditions,
                    } => ExecutionCondition::Logical {
                        operator,
                        conditions,
                    },
                    RawCondition::Expression { expression } => {
                        ExecutionCondition::Expression { expression }
                    }
                })
            }
            _ => Ok(ExecutionCondition::Unsupported { type_name }),
        }
    }
}

/// The schema of the wire forms that validation accepts (`serde` itself maps any
/// other `type` to [`ExecutionCondition::Unsupported`], which validation refuses).
#[cfg(feature = "schema")]
impl schemars::JsonSchema for ExecutionCondition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExecutionCondition".into()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        concat!(module_path!(), "::ExecutionCondition").into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let compare_op = generator.subschema_for::<CompareOp>();
        let logical_op = generator.subschema_for::<LogicalOp>();
        let condition = generator.subschema_for::<ExecutionCondition>();
        // `value` may be omitted on input (it then reads as `null`, e.g. for
        // `exists`) but is always written.
        let comparison_required: &[&str] = if generator.contract().is_serialize() {
            &["type", "variable", "operator", "value"]
        } else {
            &["type", "variable", "operator"]
        };
        schemars::json_schema!({
            "description": "A step's condition: structured data or a CEL expression, never code. \
                The step runs when it holds and is skipped otherwise. \
                `type` is one of `comparison`, `logical` or `expression`; \
                `javascript` is refused (UNSAFE_CONDITION) and any other type is \
                refused (INVALID_CONDITION).",
            "oneOf": [
                {
                    "title": "comparison",
                    "description": "Compare the value at a variable path (e.g. `user.age` or \
                        `steps.verify-user.outputs.valid`) with `value`.",
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "const": "comparison"},
                        "variable": {"type": "string"},
                        "operator": compare_op,
                        "value": {
                            "description": "The value to compare with (`null` when omitted): an \
                                array for `in` / `not_in`, a boolean or nothing for `exists`, a \
                                number or a string for `gt` / `gte` / `lt` / `lte`."
                        }
                    },
                    "required": comparison_required,
                    "additionalProperties": false
                },
                {
                    "title": "logical",
                    "description": "Combine conditions: `and` / `or` take at least one, `not` exactly one.",
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "const": "logical"},
                        "operator": logical_op,
                        "conditions": {"type": "array", "items": condition}
                    },
                    "required": ["type", "operator", "conditions"],
                    "additionalProperties": false
                },
                {
                    "title": "expression",
                    "description": "A CEL expression over the execution's variables and step outputs.",
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "const": "expression"},
                        "expression": {"type": "string"}
                    },
                    "required": ["type", "expression"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// How to undo a step when the execution rolls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compensate {
    pub capability: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Map<String, Value>>,
}
