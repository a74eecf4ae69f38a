//! Builders for the rows the checks write.

use std::collections::BTreeMap;
use std::sync::Arc;

use maestro_core::model::{
    Attempt, EventType, ExecutionContext, ExecutionError, ExecutionStatus, LateResult, NewEvent,
    RegisteredAgent, RollbackEntry, StepExecution, StepMap, StepStatus, Timestamp, Workflow,
};
use maestro_core::ports::{AttemptRow, Batch, ExecutionHeader, StepRow};
use serde_json::{Map, Value, json};

pub(super) fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("fixture: expected a JSON object, got {other}"),
    }
}

/// JSON that exercises a backend's encoding: nesting, unicode, escapes, floats,
/// big and negative integers, empty containers, nulls.
pub(super) fn tricky_json() -> Value {
    json!({
        "text": "quote \" backslash \\ newline \n tab \t unicode é 漢字 🎼",
        "float": 1.5,
        "small": 0.1,
        "exp": 1e300,
        "negative": -42,
        "big": 9_007_199_254_740_993u64,
        "bool": true,
        "null": null,
        "empty_object": {},
        "empty_array": [],
        "nested": {"list": [1, "two", {"three": [3.25]}], "z": 0, "a": 1}
    })
}

/// Built from JSON (the API shape), so that fields added to the model later
/// take their defaults here.
pub(super) fn agent(id: &str, secret: Option<&str>) -> RegisteredAgent {
    let mut agent: RegisteredAgent = serde_json::from_value(json!({
        "id": id,
        "type": "sentinel",
        "name": format!("Agent {id}"),
        "description": "conformance agent",
        "publicKey": "pub_key_123",
        "capabilities": [{
            "id": "sign", "name": "Sign Data", "version": "1.0",
            "inputs": {"data": "string"}, "outputs": {"signature": "string"},
            "tags": ["crypto"], "compensation": "unsign", "sensitive": ["signature"]
        }],
        "status": "online",
        "lastHeartbeat": 1_764_100_000_000u64,
        "endpoint": "http://127.0.0.1:9000",
        "transport": "http",
        "maxConcurrency": 4,
        "metadata": {"region": "eu", "tricky": tricky_json()}
    }))
    .expect("fixture agent");
    agent.inbound_secret = secret.map(str::to_owned);
    agent
}

pub(super) fn workflow(id: &str, revision: u64, tags: &[&str]) -> Workflow {
    serde_json::from_value(json!({
        "id": id,
        "name": format!("Workflow {id} r{revision}"),
        "description": "conformance workflow",
        "version": "1",
        "steps": [
            {"id": "verify", "capability": "verify_identity", "inputs": {"user": "${userId}"},
             "timeout": 500,
             "retryPolicy": {"maxAttempts": 4, "delayMs": 10, "backoffMultiplier": 1.5}},
            {"id": "sign", "agentId": "sentinel-1", "capability": "sign",
             "inputs": {"data": "${steps.verify.outputs.token}"}, "dependencies": ["verify"],
             "condition": {"type": "comparison", "variable": "verified", "operator": "eq", "value": true},
             "errorHandler": {"type": "fallback", "action": "verify"}}
        ],
        "initialInputs": {"userId": "u-1", "tricky": tricky_json()},
        "expectedOutputs": {"signature": "${steps.sign.outputs.signature}"},
        "maxDuration": 60_000,
        "onError": "rollback",
        "tags": tags,
        "createdAt": 1_000,
        "updatedAt": 1_000 + revision,
        "createdBy": "conformance",
        "revision": revision
    }))
    .expect("fixture workflow")
}

pub(super) fn error(code: &str, at: Timestamp, step: Option<&str>) -> ExecutionError {
    ExecutionError {
        code: code.to_owned(),
        message: format!("{code} happened"),
        details: Some(json!({"why": "because", "n": 3})),
        timestamp: at,
        step_id: step.map(str::to_owned),
    }
}

pub(super) fn attempt(n: u32, agent: Option<&str>, started_at: Timestamp) -> Attempt {
    Attempt {
        attempt: n,
        started_at,
        completed_at: Some(started_at + 7),
        error: None,
        agent_id: agent.map(str::to_owned),
        late_result: None,
    }
}

pub(super) fn failed_attempt(n: u32, agent: Option<&str>, started_at: Timestamp) -> Attempt {
    Attempt {
        error: Some(error("STEP_TIMEOUT", started_at + 5, None)),
        late_result: Some(LateResult {
            outcome: "completed".to_owned(),
            at: started_at + 9,
            error_code: None,
        }),
        ..attempt(n, agent, started_at)
    }
}

pub(super) fn step(
    id: &str,
    status: StepStatus,
    agent: Option<&str>,
    attempts: Vec<Attempt>,
) -> StepExecution {
    let mut s = StepExecution::new(id);
    s.status = status;
    s.agent_id = agent.map(str::to_owned);
    s.inputs = object(json!({"input": id, "tricky": tricky_json()}));
    s.retry_count = attempts.len().saturating_sub(1) as u32;
    if !attempts.is_empty() {
        s.started_at = attempts.first().map(|a| a.started_at);
    }
    match status {
        StepStatus::Completed => {
            s.outputs = Some(object(json!({"out": id, "empty": {}})));
            s.completed_at = s.started_at.map(|t| t + 10);
            s.duration = Some(10);
        }
        StepStatus::Failed => {
            s.error = Some(error("AGENT_ERROR", 5, Some(id)));
            s.next_retry_at = Some(99);
            s.fallback_step = Some("fallback".to_owned());
            s.retry_round_start = Some(2);
            s.awaiting_callback = true;
        }
        _ => {}
    }
    s.attempts = attempts;
    s
}

/// An execution with the given steps. Terminal statuses get `startedAt`,
/// `completedAt` (10 ms apart) and result documents; failed ones an error and a
/// rollback log.
pub(super) fn execution(
    id: &str,
    workflow_id: &str,
    status: ExecutionStatus,
    created_at: Timestamp,
    steps: Vec<StepExecution>,
) -> maestro_core::model::WorkflowExecution {
    let mut step_outputs = BTreeMap::new();
    for s in &steps {
        if let Some(o) = &s.outputs {
            step_outputs.insert(s.step_id.clone(), o.clone());
        }
    }
    let started = status != ExecutionStatus::Pending;
    let finished = status.is_terminal();
    maestro_core::model::WorkflowExecution {
        id: id.to_owned(),
        workflow_id: workflow_id.to_owned(),
        revision: 2,
        status,
        context: ExecutionContext {
            execution_id: id.to_owned(),
            workflow_id: workflow_id.to_owned(),
            variables: object(json!({"userId": "u-1", "tricky": tricky_json()})),
            step_outputs: step_outputs.clone(),
            correlation_id: format!("corr-{id}"),
            parent_execution_id: None,
        },
        step_executions: StepMap(steps),
        outputs: finished.then(|| {
            step_outputs
                .iter()
                .map(|(k, v)| (k.clone(), Value::Object(v.clone())))
                .collect()
        }),
        result: finished.then(|| object(json!({"signature": "sig"}))),
        created_at,
        started_at: started.then_some(created_at + 1),
        completed_at: finished.then_some(created_at + 11),
        error: (status == ExecutionStatus::Failed).then(|| error("AGENT_ERROR", 3, Some("sign"))),
        rollback_log: (status == ExecutionStatus::Failed).then(|| {
            vec![
                serde_json::from_value::<RollbackEntry>(json!({
                    "stepId": "verify",
                    "action": "compensate",
                    "rollbackCapability": "verify_rollback",
                    "agentId": "a-1",
                    "inputs": {"inputs": {}, "outputs": {"x": 1}},
                    "status": "failed",
                    "error": error("COMPENSATION_FAILED", 4, Some("verify")),
                    "attempts": 2,
                    "inFlight": true,
                    "nextAttemptAt": 77
                }))
                .expect("fixture rollback entry"),
            ]
        }),
        deadline: Some(created_at + 60_000),
        cancel_reason: (status == ExecutionStatus::Cancelled).then(|| "operator".to_owned()),
    }
}

/// Split full executions into the rows of one batch: headers (steps stripped),
/// step rows (attempts stripped) with their positions, attempt rows.
pub(super) fn rows_of(executions: &[(&maestro_core::model::WorkflowExecution, &[&str])]) -> Batch {
    let mut batch = Batch::default();
    for (execution, tags) in executions {
        let mut header = (*execution).clone();
        header.step_executions = StepMap::default();
        batch.executions.push(Arc::new(ExecutionHeader {
            execution: header,
            workflow_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }));
        for (position, step) in execution.step_executions.iter().enumerate() {
            for a in &step.attempts {
                batch.attempts.push(AttemptRow {
                    execution_id: execution.id.clone(),
                    step_id: step.step_id.clone(),
                    attempt: a.clone(),
                });
            }
            let mut row = step.clone();
            row.attempts = Vec::new();
            batch.steps.push(StepRow {
                execution_id: execution.id.clone(),
                position: position as u32,
                step: row,
            });
        }
    }
    batch
}

pub(super) fn header_of(
    execution: &maestro_core::model::WorkflowExecution,
    tags: &[&str],
) -> Arc<ExecutionHeader> {
    let mut header = execution.clone();
    header.step_executions = StepMap::default();
    Arc::new(ExecutionHeader {
        execution: header,
        workflow_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
    })
}

pub(super) struct EventSpec<'a> {
    pub event_type: EventType,
    pub source: &'a str,
    pub target: Option<&'a str>,
    pub workflow: Option<&'a str>,
    pub execution: Option<&'a str>,
    pub correlation: &'a str,
    pub timestamp: Timestamp,
    pub payload: Value,
}

pub(super) fn event(spec: EventSpec<'_>) -> NewEvent {
    NewEvent {
        event_type: spec.event_type,
        source_agent: spec.source.to_owned(),
        target_agent: spec.target.map(str::to_owned),
        workflow_id: spec.workflow.map(str::to_owned),
        execution_id: spec.execution.map(str::to_owned),
        payload: spec.payload,
        timestamp: spec.timestamp,
        correlation_id: spec.correlation.to_owned(),
        metadata: spec
            .timestamp
            .is_multiple_of(2)
            .then(|| object(json!({"trace": "00-abc", "n": 1}))),
    }
}

pub(super) fn engine_event(
    event_type: EventType,
    execution: &str,
    timestamp: Timestamp,
) -> NewEvent {
    event(EventSpec {
        event_type,
        source: "maestro",
        target: None,
        workflow: Some("wf"),
        execution: Some(execution),
        correlation: execution,
        timestamp,
        payload: json!({"executionId": execution}),
    })
}
