//! The domain types of API.md, with its exact field names (camelCase) and enum spellings.
//!
//! Unknown fields: request-shaped types (`RegisteredAgent`, `Workflow`, `WorkflowStep`,
//! `MaestroConfig`, ...) use `deny_unknown_fields`, so a typo such as `dependancies` is
//! refused instead of silently ignored. Server-kept fields (`createdAt`, `updatedAt`,
//! `revision`) are accepted and overwritten, so a read-edit-write round trip works.

mod agent;
mod config;
mod event;
mod execution;
mod metrics;
mod typespec;
mod workflow;

#[cfg(all(test, feature = "schema"))]
mod schema_tests;

pub use agent::*;
pub use config::*;
pub use event::*;
pub use execution::*;
pub use metrics::*;
pub use workflow::*;

use crate::Error;

/// Milliseconds since the Unix epoch.
pub type Timestamp = u64;

/// Longest agent or workflow id.
pub const MAX_ID_LEN: usize = 128;
/// Longest step id.
pub const MAX_STEP_ID_LEN: usize = 64;

/// The kind of a JSON value with its article (`a string`, `null`), for messages.
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Agent and workflow ids: 1–128 of `[A-Za-z0-9._:-]`.
pub fn validate_id(kind: &str, id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(format!(
            "invalid {kind} id {id:?}: expected 1-{MAX_ID_LEN} characters of [A-Za-z0-9._:-]"
        )))
    }
}

/// Step ids: 1–64 of `[A-Za-z0-9_-]` (no dots or colons, so placeholder paths and
/// idempotency keys parse one way). The error names no `stepId`: only a valid id
/// can name a step.
pub fn validate_step_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_STEP_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::validation(format!(
            "invalid step id {id:?}: expected 1-{MAX_STEP_ID_LEN} characters of [A-Za-z0-9_-]"
        )))
    }
}

/// Deserialize a JSON document, naming the path of the offending field in
/// the error (`steps[0].dependancies`), for merge-patched documents.
pub fn from_value_at_path<T: serde::de::DeserializeOwned>(
    doc: serde_json::Value,
    what: &str,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            Error::validation(format!("{what}: {inner}"))
        } else {
            Error::validation(format!("{what}: {path}: {inner}")).field(path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("agent", "sentinel-1").is_ok());
        assert!(validate_id("agent", "a.b:c_d-e").is_ok());
        assert!(validate_id("agent", "").is_err());
        assert!(validate_id("agent", "has space").is_err());
        assert!(validate_id("agent", &"x".repeat(129)).is_err());
        assert!(validate_id("agent", &"x".repeat(128)).is_ok());
        assert!(validate_step_id("verify-user").is_ok());
        assert!(validate_step_id("a.b").is_err());
        assert!(validate_step_id("a:b").is_err());
        assert!(validate_step_id(&"s".repeat(65)).is_err());
    }

    #[test]
    fn agent_round_trip_keeps_original_shape() {
        let json = serde_json::json!({
            "id": "sentinel-1", "type": "sentinel", "name": "Sentinel Agent",
            "description": "Security guardian", "publicKey": "pub_key_123",
            "capabilities": [{"id": "sign", "name": "Sign Data", "version": "1.0",
                "inputs": {"data": "string"}, "outputs": {"signature": "string"},
                "tags": ["crypto"]}],
            "status": "online", "lastHeartbeat": 1764100000000u64,
            "inboundSecret": "s3cret"
        });
        let a: RegisteredAgent = serde_json::from_value(json).unwrap();
        assert_eq!(a.inbound_secret.as_deref(), Some("s3cret"));
        assert_eq!(a.effective_transport(), Transport::Poll);
        let back = serde_json::to_value(&a).unwrap();
        assert!(
            back.get("inboundSecret").is_none(),
            "write-only secret leaked"
        );
        assert_eq!(back["type"], "sentinel");
        assert_eq!(back["capabilities"][0]["inputs"]["data"], "string");
    }

    #[test]
    fn unknown_fields_and_enum_values_are_refused() {
        let bad = serde_json::json!({"id": "a", "type": "t", "bogus": 1});
        assert!(serde_json::from_value::<RegisteredAgent>(bad).is_err());
        let bad = serde_json::json!({"id": "a", "type": "t", "status": "sleepy"});
        assert!(serde_json::from_value::<RegisteredAgent>(bad).is_err());
        let bad = serde_json::json!({"id": "w", "name": "n", "steps": [
            {"id": "s", "capability": "c", "dependancies": []}]});
        assert!(serde_json::from_value::<Workflow>(bad).is_err());
    }

    #[test]
    fn condition_types() {
        let c: ExecutionCondition = serde_json::from_value(serde_json::json!(
            {"type": "javascript", "code": "process.exit()"}))
        .unwrap();
        assert_eq!(
            c,
            ExecutionCondition::Unsupported {
                type_name: "javascript".into()
            }
        );
        let c: ExecutionCondition = serde_json::from_value(serde_json::json!(
            {"type": "comparison", "variable": "verified", "operator": "eq", "value": true}))
        .unwrap();
        assert!(matches!(c, ExecutionCondition::Comparison { .. }));
        // A bad shape reads too, so that validation can name the step and the field.
        let c: ExecutionCondition = serde_json::from_value(serde_json::json!(
            {"type": "comparison", "variable": "v", "operator": "like", "value": 1}))
        .unwrap();
        assert!(
            matches!(&c, ExecutionCondition::Malformed { field, .. } if field == "operator"),
            "{c:?}"
        );
    }

    #[test]
    fn parse_errors_name_the_root_path_and_the_step() {
        use serde_json::json;
        let refusal = |doc: serde_json::Value| match parse_workflow(&doc) {
            Err(Error::Invalid { code, details, .. }) => (
                code.as_str(),
                details.field.clone(),
                details.step_id.clone(),
            ),
            other => panic!("{other:?}"),
        };
        let wf = |steps: serde_json::Value| json!({"id": "w", "name": "n", "steps": steps});
        let ok = json!({"id": "a", "capability": "c"});
        let cases = [
            // A missing field is named under its object.
            (
                wf(json!([ok, {"id": "b"}])),
                Some("steps[1].capability"),
                Some("b"),
            ),
            (
                wf(json!([{"id": "b", "capability": "c", "dependancies": []}])),
                Some("steps[0].dependancies"),
                Some("b"),
            ),
            (
                wf(json!([ok, {"id": "b", "capability": "c",
                    "errorHandler": {"type": "fallback", "acton": "x"}}])),
                Some("steps[1].errorHandler.acton"),
                Some("b"),
            ),
            (
                wf(json!([{"id": "b", "capability": "c",
                    "retryPolicy": {"delayMs": 1}}])),
                Some("steps[0].retryPolicy.maxAttempts"),
                Some("b"),
            ),
            // Only a valid step id names the step.
            (
                wf(json!([{"id": "a b", "capability": "c", "dependancies": []}])),
                Some("steps[0].dependancies"),
                None,
            ),
            (
                wf(json!([{"id": 7, "capability": "c"}])),
                Some("steps[0].id"),
                None,
            ),
            (wf(json!([{"capability": "c"}])), Some("steps[0].id"), None),
            (wf(json!([3])), Some("steps[0]"), None),
            (json!({"id": "w", "name": "n"}), Some("steps"), None),
            (json!([]), None, None),
        ];
        for (doc, field, step) in cases {
            assert_eq!(
                refusal(doc.clone()),
                (
                    "VALIDATION_FAILED",
                    field.map(str::to_owned),
                    step.map(str::to_owned)
                ),
                "{doc}"
            );
        }
        assert!(parse_workflow(&wf(json!([ok]))).is_ok());
    }

    #[test]
    fn config_defaults_are_the_originals() {
        let c = MaestroConfig::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["maxConcurrentWorkflows"], 100);
        assert_eq!(v["defaultWorkflowTimeout"], 300000);
        assert_eq!(v["eventBusBufferSize"], 10000);
        assert_eq!(v["healthCheckIntervalMs"], 30000);
        assert_eq!(v["agentTimeoutMs"], 10000);
        assert_eq!(v["enableRollback"], true);
        assert_eq!(v["enableCompensation"], false);
        assert_eq!(v["logLevel"], "info");
        assert_eq!(v["defaultRetryPolicy"]["maxAttempts"], 3);
        let p = c
            .patched(&serde_json::json!({"agentTimeoutMs": 500}))
            .unwrap();
        assert_eq!(p.agent_timeout_ms, 500);
        assert!(
            c.patched(&serde_json::json!({"agentTimeoutMs": 0}))
                .is_err()
        );
        assert!(c.patched(&serde_json::json!({"nope": 1})).is_err());
        assert!(c.patched(&serde_json::json!({"logLevel": "loud"})).is_err());
    }

    #[test]
    fn step_map_serializes_as_object_in_order() {
        let m = StepMap(vec![StepExecution::new("b"), StepExecution::new("a")]);
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.starts_with("{\"b\":"));
        let back: StepMap = serde_json::from_str(&s).unwrap();
        assert_eq!(back.0[0].step_id, "b");
    }
}
