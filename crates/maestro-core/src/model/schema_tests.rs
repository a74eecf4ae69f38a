//! The JSON Schemas of the wire types (feature `schema`) against what serde
//! really reads and writes: every serialized sample must validate against the
//! schema of the serialize contract and of the deserialize contract, and inputs
//! serde refuses must be refused by the schema too.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::*;
use crate::ports::{
    Invocation, InvokeError, SubscriptionRecord, TaskRecord, TaskStatus, TokenRecord,
};

/// The schema of `T` for input (what serde accepts).
fn input_schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// The schema of `T` for output (what serde writes).
fn output_schema<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Follow `$ref`s to the schema they name.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("local $ref");
        schema = root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    schema
}

/// The `properties` of a (root or referenced) object schema.
fn properties<'a>(root: &'a Value, schema: &'a Value) -> &'a Map<String, Value> {
    resolve(root, schema)
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no properties in {schema}"))
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("unexpected type {other:?} in schema"),
    }
}

/// A small JSON Schema validator: the keywords schemars emits for these types.
fn validate(root: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: nothing is allowed here")),
        Value::Object(s) => s,
        other => panic!("not a schema: {other}"),
    };
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let target = root
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
        validate(root, target, v, at)?;
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_matches(t.as_str().unwrap(), v)) => {
            return Err(format!("{at}: {v} is none of the types {ts:?}"));
        }
        _ => {}
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        return Err(format!("{at}: {v} is not {c}"));
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} < minimum {min}"));
    }
    if let (Some(max), Some(n)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64())
        && n > max
    {
        return Err(format!("{at}: {n} > maximum {max}"));
    }
    if let Value::Object(obj) = v {
        if let Some(Value::Array(req)) = s.get("required") {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required property {r:?} is missing"));
                }
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            let path = format!("{at}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(root, sub, x, &path)?,
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        return Err(format!("{at}: unknown property {k:?}"));
                    }
                    Some(sub) => validate(root, sub, x, &path)?,
                    None => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (v, s.get("items")) {
        for (i, x) in items.iter().enumerate() {
            validate(root, sub, x, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            validate(root, sub, v, at)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf")
        && !any.iter().any(|sub| validate(root, sub, v, at).is_ok())
    {
        return Err(format!("{at}: {v} matches no anyOf branch"));
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let errors: Vec<String> = one
            .iter()
            .filter_map(|sub| validate(root, sub, v, at).err())
            .collect();
        let matched = one.len() - errors.len();
        if matched != 1 {
            return Err(format!(
                "{at}: {v} matches {matched} oneOf branches (expected 1): {errors:?}"
            ));
        }
    }
    Ok(())
}

fn validate_root(schema: &Value, v: &Value) -> Result<(), String> {
    validate(schema, schema, v, "$")
}

/// `value` as serde writes it must validate against both schemas of `T` (what is
/// written can be sent back), and read back to the same value. Returns the JSON.
fn check_sample<T>(value: &T) -> Value
where
    T: Serialize + DeserializeOwned + JsonSchema + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_value(value).expect("serializes");
    let name = T::schema_name();
    if let Err(e) = validate_root(&output_schema::<T>(), &json) {
        panic!("{name}: written JSON does not match the output schema: {e}\n{json:#}");
    }
    if let Err(e) = validate_root(&input_schema::<T>(), &json) {
        panic!("{name}: written JSON does not match the input schema: {e}\n{json:#}");
    }
    let back: T = serde_json::from_value(json.clone()).expect("reads back");
    assert_eq!(&back, value, "{name}: round trip");
    json
}

/// An input document serde accepts must validate against the input schema.
fn check_input<T: DeserializeOwned + JsonSchema>(doc: Value) -> T {
    let name = T::schema_name();
    if let Err(e) = validate_root(&input_schema::<T>(), &doc) {
        panic!("{name}: accepted input does not match the input schema: {e}\n{doc:#}");
    }
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{name}: serde refused: {e}"))
}

/// An input document serde refuses must not validate against the input schema.
fn check_refused<T: DeserializeOwned + JsonSchema>(doc: Value) {
    let name = T::schema_name();
    assert!(
        serde_json::from_value::<T>(doc.clone()).is_err(),
        "{name}: serde accepted {doc}"
    );
    assert!(
        validate_root(&input_schema::<T>(), &doc).is_err(),
        "{name}: the schema accepts what serde refuses: {doc}"
    );
}

/// Every top-level key of `json` is a property of the root schema.
fn assert_keys_are_properties(schema: &Value, json: &Value) {
    let props = properties(schema, schema);
    for k in json.as_object().expect("an object").keys() {
        assert!(
            props.contains_key(k),
            "{k:?} is not a property of the schema: {:?}",
            props.keys().collect::<Vec<_>>()
        );
    }
}

/// Every property name anywhere in the schema (root and `$defs`).
fn all_property_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(p)) = m.get("properties") {
                out.extend(p.keys().cloned());
            }
            m.values().for_each(|x| all_property_names(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| all_property_names(x, out)),
        _ => {}
    }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Representative values
// ---------------------------------------------------------------------------

fn agent_doc() -> Value {
    json!({
        "id": "sentinel-1", "type": "sentinel", "name": "Sentinel Agent",
        "description": "Security guardian", "publicKey": "pub_key_123",
        "capabilities": [
            {"id": "sign", "name": "Sign Data", "version": "1.0",
             "inputs": {"data": "string", "n": "integer?"},
             "outputs": {"signature": "string"},
             "tags": ["crypto"], "deprecated": true, "compensation": "unsign",
             "sensitive": ["signature"]},
            {"id": "unsign",
             "inputs": {"type": "object", "required": ["signature"],
                        "properties": {"signature": {"type": "string"}}}}
        ],
        "status": "degraded", "lastHeartbeat": 1764100000000u64,
        "endpoint": "https://agent.example/maestro", "transport": "http",
        "maxConcurrency": 4, "metadata": {"region": "eu", "tier": 2},
        "inboundSecret": "s3cret", "statusHold": true
    })
}

fn sample_agent() -> RegisteredAgent {
    let mut a: RegisteredAgent = serde_json::from_value(agent_doc()).unwrap();
    // Write-only: what is written never has it.
    a.inbound_secret = None;
    a
}

fn minimal_agent() -> RegisteredAgent {
    serde_json::from_value(json!({"id": "a", "type": "t"})).unwrap()
}

fn workflow_doc() -> Value {
    json!({
        "id": "wf-1", "name": "Onboarding", "description": "d", "version": "2",
        "steps": [
            {"id": "verify-user", "agentId": "sentinel-1", "capability": "sign",
             "inputs": {"data": "${user.name}"},
             "retryPolicy": {"maxAttempts": 5, "delayMs": 100, "backoffMultiplier": 1.5,
                             "maxDelayMs": 2000, "jitter": true,
                             "nonRetryableCodes": ["BAD_INPUT"]},
             "timeout": 5000,
             "errorHandler": {"type": "retry", "action": "", "params": {"maxAttempts": 2}},
             "compensate": {"capability": "unsign", "agentId": "sentinel-1",
                            "inputs": {"x": 1}}},
            {"id": "notify", "capability": "notify",
             "dependencies": ["verify-user"],
             "errorHandler": {"type": "fallback", "action": "verify-user"},
             "condition": {"type": "logical", "operator": "and", "conditions": [
                 {"type": "comparison", "variable": "steps.verify-user.outputs.valid",
                  "operator": "eq", "value": true},
                 {"type": "logical", "operator": "not", "conditions": [
                     {"type": "expression", "expression": "user.age < 18"}]},
                 {"type": "comparison", "variable": "user.email", "operator": "exists"}
             ]}}
        ],
        "initialInputs": {"user": {"name": "ada", "age": 36}},
        "expectedOutputs": {"signature": "string"},
        "maxDuration": 60000, "onError": "rollback", "tags": ["onboarding"],
        "createdAt": 1764100000000u64, "updatedAt": 1764100000001u64,
        "createdBy": "admin", "revision": 3
    })
}

fn sample_workflow() -> Workflow {
    serde_json::from_value(workflow_doc()).unwrap()
}

fn minimal_workflow() -> Workflow {
    serde_json::from_value(json!({"id": "w", "name": "n", "steps": [
        {"id": "s", "capability": "c"}]}))
    .unwrap()
}

fn sample_execution() -> WorkflowExecution {
    let error = json!({"code": "AGENT_ERROR", "message": "boom",
        "details": {"status": 500}, "timestamp": 1764100000500u64, "stepId": "a"});
    serde_json::from_value(json!({
        "id": "exec-1", "workflowId": "wf-1", "revision": 3, "status": "rolled_back",
        "stepExecutions": {
            "a": {"stepId": "a", "status": "compensated", "agentId": "sentinel-1",
                  "inputs": {"data": "ada"}, "outputs": {"signature": "sig"},
                  "error": error, "startedAt": 1764100000100u64,
                  "completedAt": 1764100000200u64, "duration": 100, "retryCount": 1,
                  "attempts": [
                      {"attempt": 1, "startedAt": 1764100000100u64,
                       "completedAt": 1764100000150u64, "error": error,
                       "agentId": "sentinel-1",
                       "lateResult": {"outcome": "failed", "at": 1764100000160u64,
                                      "errorCode": "AGENT_ERROR"}},
                      {"attempt": 2, "startedAt": 1764100000170u64}
                  ],
                  "nextRetryAt": 1764100000300u64, "fallbackStep": "b",
                  "retryRoundStart": 2, "awaitingCallback": true},
            "b": {"stepId": "b", "status": "skipped", "retryCount": 0}
        },
        "context": {"executionId": "exec-1", "workflowId": "wf-1",
                    "variables": {"user": {"name": "ada"}},
                    "stepOutputs": {"a": {"signature": "sig"}},
                    "correlationId": "corr-1", "parentExecutionId": "exec-0"},
        "outputs": {"signature": "sig"}, "result": {"ok": false},
        "createdAt": 1764100000000u64, "startedAt": 1764100000050u64,
        "completedAt": 1764100000900u64, "error": error,
        "rollbackLog": [
            {"stepId": "a", "action": "compensate", "rollbackCapability": "unsign",
             "agentId": "sentinel-1", "inputs": {"x": 1}, "status": "failed",
             "error": error, "attempts": 2, "inFlight": true,
             "nextAttemptAt": 1764100001000u64},
            {"stepId": "b", "action": "none", "status": "skipped"}
        ],
        "deadline": 1764100060000u64, "cancelReason": "operator"
    }))
    .unwrap()
}

fn minimal_execution() -> WorkflowExecution {
    serde_json::from_value(json!({
        "id": "e", "workflowId": "w", "revision": 1, "status": "pending",
        "stepExecutions": {},
        "context": {"executionId": "e", "workflowId": "w", "variables": {},
                    "stepOutputs": {}, "correlationId": "c"},
        "createdAt": 1
    }))
    .unwrap()
}

fn sample_event(event_type: EventType) -> ChoreographyEvent {
    ChoreographyEvent {
        id: "evt_7".into(),
        seq: 7,
        event_type,
        source_agent: "maestro".into(),
        target_agent: Some("sentinel-1".into()),
        workflow_id: Some("wf-1".into()),
        execution_id: Some("exec-1".into()),
        payload: json!({"stepId": "a", "attempt": 1}),
        timestamp: 1764100000000,
        correlation_id: "corr-1".into(),
        metadata: Some(obj(json!({"node": "n1"}))),
    }
}

fn sample_health() -> AgentHealth {
    AgentHealth {
        agent_id: "sentinel-1".into(),
        status: HealthStatus::Degraded,
        response_time: 12.5,
        error_rate: 0.25,
        last_check: 1764100000000,
        uptime: 99.5,
        score: AgentHealth::compute_score(HealthStatus::Degraded, 0.25, 99.5),
        capabilities: vec![CapabilityHealth {
            name: "sign".into(),
            success_rate: 0.75,
            average_time: 10.0,
            invocations: 8,
        }],
    }
}

fn sample_metrics() -> ChoreographyMetrics {
    ChoreographyMetrics {
        total_workflows: 3,
        total_executions: 10,
        completed_workflows: 6,
        failed_workflows: 2,
        rolled_back_workflows: 1,
        cancelled_workflows: 1,
        average_execution_time: 123.5,
        success_rate: 60.0,
        active_executions: 2,
        queued_executions: 1,
        agent_health_scores: [("sentinel-1".to_owned(), 83.2)].into(),
        event_throughput: 1.5,
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn schema_samples_match_the_schemas() {
    let cases: Vec<(Value, Value)> = vec![
        (input_schema::<Workflow>(), check_sample(&sample_workflow())),
        (
            input_schema::<Workflow>(),
            check_sample(&minimal_workflow()),
        ),
        (
            input_schema::<RegisteredAgent>(),
            check_sample(&sample_agent()),
        ),
        (
            input_schema::<RegisteredAgent>(),
            check_sample(&minimal_agent()),
        ),
        (
            input_schema::<WorkflowExecution>(),
            check_sample(&sample_execution()),
        ),
        (
            input_schema::<WorkflowExecution>(),
            check_sample(&minimal_execution()),
        ),
        (
            input_schema::<ChoreographyEvent>(),
            check_sample(&sample_event(EventType::StepCompleted)),
        ),
        (
            input_schema::<MaestroConfig>(),
            check_sample(&MaestroConfig::default()),
        ),
        (
            input_schema::<AgentHealth>(),
            check_sample(&sample_health()),
        ),
        (
            input_schema::<AgentHealth>(),
            check_sample(&AgentHealth::default()),
        ),
        (
            input_schema::<ChoreographyMetrics>(),
            check_sample(&sample_metrics()),
        ),
        (
            input_schema::<ChoreographyMetrics>(),
            check_sample(&ChoreographyMetrics::default()),
        ),
    ];
    for (schema, json) in &cases {
        assert_keys_are_properties(schema, json);
    }
    // The rich samples really use every property of the output schemas.
    for (schema, json) in [
        (output_schema::<Workflow>(), &cases[0].1),
        (output_schema::<RegisteredAgent>(), &cases[2].1),
        (output_schema::<WorkflowExecution>(), &cases[4].1),
        (output_schema::<ChoreographyEvent>(), &cases[6].1),
    ] {
        let written = json.as_object().unwrap();
        for k in properties(&schema, &schema).keys() {
            assert!(written.contains_key(k), "sample lacks {k:?}");
        }
    }
    for t in EventType::ALL {
        check_sample(&sample_event(t));
    }
    check_sample(&MaestroConfig {
        log_level: LogLevel::Trace,
        default_retry_policy: RetryPolicy {
            jitter: true,
            max_delay_ms: None,
            non_retryable_codes: vec!["X".into()],
            ..RetryPolicy::default()
        },
        ..MaestroConfig::default()
    });
}

#[test]
fn schema_of_ports_records() {
    let token = TokenRecord {
        id: "tok-1".into(),
        role: "agent".into(),
        agent_id: Some("sentinel-1".into()),
        name: "ci".into(),
        secret_hash: String::new(), // skipped: reads back empty
        created_at: 1,
        expires_at: Some(2),
        revoked_at: Some(3),
    };
    let json = check_sample(&token);
    let schema = input_schema::<TokenRecord>();
    assert_keys_are_properties(&schema, &json);
    let props = properties(&schema, &schema);
    assert!(props.contains_key("agentId") && props.contains_key("createdAt"));
    assert!(!props.contains_key("secretHash") && !props.contains_key("secret_hash"));

    let sub = SubscriptionRecord {
        id: "sub-1".into(),
        event_types: vec![EventType::WorkflowCompleted, EventType::Audit],
        agent_id: None,
        workflow_id: Some("wf-1".into()),
        url: "https://hooks.example/x".into(),
        secret: String::new(),
        created_at: 1,
    };
    check_sample(&sub);
    let schema = input_schema::<SubscriptionRecord>();
    assert!(!properties(&schema, &schema).contains_key("secret"));

    for status in TaskStatus::ALL {
        let task = TaskRecord {
            task_id: "t-1".into(),
            agent_id: "a".into(),
            capability: "c".into(),
            execution_id: "e".into(),
            step_id: "s".into(),
            attempt: 1,
            compensation: false,
            body: json!({"taskId": "t-1"}),
            status,
            lease_expires_at: None,
            result: None,
            created_at: 1,
            updated_at: 2,
        };
        check_sample(&task);
        check_sample(&TaskRecord {
            lease_expires_at: Some(3),
            result: Some(json!({"ok": true})),
            ..task
        });
    }

    let mut err = InvokeError::new("AGENT_ERROR", "boom", true);
    check_sample(&err);
    err.details = Some(json!({"status": 502}));
    check_sample(&err);

    // Invocation is write-only (no Deserialize): check what it writes.
    let inv = Invocation {
        task_id: "t".into(),
        execution_id: "e".into(),
        workflow_id: "w".into(),
        step_id: "s".into(),
        attempt: 1,
        capability: "c".into(),
        inputs: obj(json!({"x": 1})),
        correlation_id: "c".into(),
        deadline: 10,
        timeout_ms: 5,
        idempotency_key: "e:s:1".into(),
        compensation: true,
    };
    let json = serde_json::to_value(&inv).unwrap();
    let schema = output_schema::<Invocation>();
    validate_root(&schema, &json).unwrap();
    let props = properties(&schema, &schema);
    assert_eq!(props.len(), json.as_object().unwrap().len());
    assert!(!props.contains_key("idempotencyKey") && !props.contains_key("compensation"));
}

#[test]
fn schema_property_names_are_camel_case() {
    let agent = input_schema::<RegisteredAgent>();
    let workflow = input_schema::<Workflow>();
    let execution = input_schema::<WorkflowExecution>();
    assert!(properties(&agent, &agent).contains_key("lastHeartbeat"));
    assert!(properties(&agent, &agent).contains_key("type"));
    assert!(properties(&workflow, &workflow).contains_key("initialInputs"));
    assert!(properties(&execution, &execution).contains_key("stepExecutions"));
    for schema in [
        agent,
        workflow,
        execution,
        input_schema::<ChoreographyEvent>(),
        input_schema::<MaestroConfig>(),
        input_schema::<AgentHealth>(),
        input_schema::<ChoreographyMetrics>(),
        input_schema::<TokenRecord>(),
        input_schema::<SubscriptionRecord>(),
        input_schema::<TaskRecord>(),
        output_schema::<Invocation>(),
    ] {
        let mut names = Vec::new();
        all_property_names(&schema, &mut names);
        assert!(!names.is_empty());
        for n in names {
            assert!(
                !n.contains('_') && n.chars().next().is_some_and(|c| c.is_ascii_lowercase()),
                "{n:?} is not camelCase"
            );
        }
    }
}

#[test]
fn schema_write_only_and_read_only_fields() {
    // `inboundSecret` is accepted on input and never written.
    let input = input_schema::<RegisteredAgent>();
    let secret = &properties(&input, &input)["inboundSecret"];
    assert_eq!(secret["writeOnly"], true);
    let output = output_schema::<RegisteredAgent>();
    assert!(!properties(&output, &output).contains_key("inboundSecret"));
    let a: RegisteredAgent = check_input(agent_doc());
    assert_eq!(a.inbound_secret.as_deref(), Some("s3cret"));

    // Server-kept workflow fields: accepted (and ignored) on input.
    let wf = input_schema::<Workflow>();
    let props = properties(&wf, &wf);
    for k in ["createdAt", "updatedAt", "revision"] {
        assert_eq!(props[k]["readOnly"], true, "{k}");
    }
    assert!(
        props["createdAt"]["description"]
            .as_str()
            .unwrap()
            .contains("server")
    );
    let required: Vec<&str> = wf["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["id", "name", "steps"]);
}

#[test]
fn schema_maps_are_plain_objects() {
    let wf = input_schema::<Workflow>();
    let props = properties(&wf, &wf);
    for k in ["initialInputs", "expectedOutputs"] {
        assert_eq!(resolve(&wf, &props[k])["type"], "object", "{k}");
    }
    let agent = input_schema::<RegisteredAgent>();
    assert_eq!(
        resolve(&agent, &properties(&agent, &agent)["metadata"])["type"],
        "object"
    );
    // TypeSpec (transparent map) is an object of anything.
    let cap = &properties(&agent, &agent)["capabilities"]["items"];
    let inputs = resolve(&agent, &properties(&agent, cap)["inputs"]);
    assert_eq!(inputs["type"], "object");
    assert_eq!(inputs["additionalProperties"], true);
    // Timestamps are non-negative integers.
    let hb = &properties(&agent, &agent)["lastHeartbeat"];
    assert_eq!(hb["type"], "integer");
    assert_eq!(hb["minimum"], 0);
    // stepExecutions: an object of step executions keyed by step id.
    let ex = input_schema::<WorkflowExecution>();
    let steps = resolve(&ex, &properties(&ex, &ex)["stepExecutions"]);
    assert_eq!(steps["type"], "object");
    let step = resolve(&ex, &steps["additionalProperties"]);
    assert!(properties(&ex, step).contains_key("retryCount"));
}

#[test]
fn schema_of_execution_condition() {
    let schema = input_schema::<ExecutionCondition>();
    let text = schema.to_string();
    for t in ["comparison", "logical", "expression", "javascript"] {
        assert!(text.contains(t), "{t} not mentioned");
    }
    let branches = schema["oneOf"].as_array().unwrap();
    let types: Vec<&Value> = branches
        .iter()
        .map(|b| &b["properties"]["type"]["const"])
        .collect();
    assert_eq!(
        types,
        [
            &json!("comparison"),
            &json!("logical"),
            &json!("expression")
        ]
    );

    // Accepted forms.
    for doc in [
        json!({"type": "comparison", "variable": "v", "operator": "not_in", "value": [1, 2]}),
        json!({"type": "comparison", "variable": "v", "operator": "exists"}),
        json!({"type": "logical", "operator": "or", "conditions": [
            {"type": "expression", "expression": "true"},
            {"type": "logical", "operator": "not", "conditions": [
                {"type": "comparison", "variable": "v", "operator": "gt", "value": 1}]}]}),
        json!({"type": "expression", "expression": "x == 1"}),
    ] {
        let c: ExecutionCondition = check_input(doc);
        check_sample(&c);
    }
    // Read by serde (so that validation reports the right code, step and field) but
    // refused by validation: the schema refuses them.
    for doc in [
        json!({"variable": "v", "operator": "eq", "value": 1}),
        json!({"type": 1}),
        json!({"type": "comparison", "variable": "v", "operator": "like", "value": 1}),
        json!({"type": "comparison", "variable": "v", "operator": "eq", "extra": 1}),
        json!({"type": "expression"}),
        json!({"type": "logical", "operator": "xor", "conditions": []}),
        json!("a > 1"),
    ] {
        assert!(
            matches!(
                serde_json::from_value::<ExecutionCondition>(doc.clone()),
                Ok(ExecutionCondition::Malformed { .. })
            ),
            "{doc}"
        );
        assert!(validate_root(&schema, &doc).is_err(), "{doc}");
    }
    let js = json!({"type": "javascript", "code": "process.exit()"});
    assert!(matches!(
        serde_json::from_value::<ExecutionCondition>(js.clone()),
        Ok(ExecutionCondition::Unsupported { .. })
    ));
    assert!(validate_root(&schema, &js).is_err());
    // `value` is always written.
    let out = output_schema::<ExecutionCondition>();
    assert_eq!(out["oneOf"][0]["required"][3], "value");
}

#[test]
fn schema_refuses_what_serde_refuses() {
    check_refused::<Workflow>(json!({"id": "w", "name": "n", "steps": [
        {"id": "s", "capability": "c", "dependancies": []}]}));
    check_refused::<Workflow>(json!({"id": "w", "name": "n"}));
    check_refused::<Workflow>(json!({"id": "w", "name": "n", "steps": [],
        "onError": "explode"}));
    check_refused::<RegisteredAgent>(json!({"id": "a", "type": "t", "bogus": 1}));
    check_refused::<RegisteredAgent>(json!({"id": "a", "type": "t", "status": "sleepy"}));
    check_refused::<RegisteredAgent>(json!({"id": "a", "type": "t", "transport": "smoke"}));
    check_refused::<RegisteredAgent>(json!({"id": "a"}));
    check_refused::<MaestroConfig>(json!({"agentTimeoutMs": 1}));
    let mut cfg = serde_json::to_value(MaestroConfig::default()).unwrap();
    cfg["logLevel"] = json!("loud");
    check_refused::<MaestroConfig>(cfg.clone());
    cfg["logLevel"] = json!("info");
    cfg["nope"] = json!(1);
    check_refused::<MaestroConfig>(cfg);
    check_refused::<AgentHealth>(json!({"agentId": "a", "extra": true}));
    check_refused::<ChoreographyEvent>(json!({"id": "e", "seq": 1, "type": "agent:nope",
        "sourceAgent": "s", "payload": null, "timestamp": 1, "correlationId": "c"}));
    // Optional inputs may be left out.
    let _: Workflow = check_input(workflow_doc());
    let _: MaestroConfig = check_input(serde_json::to_value(MaestroConfig::default()).unwrap());
    let _: AgentHealth = check_input(json!({}));
}
