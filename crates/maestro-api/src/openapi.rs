//! The OpenAPI 3.1 document, built from the route table ([`crate::routes::table`])
//! and the model types' JSON Schemas (schemars). The router is built from the
//! same table, so a route cannot be served undocumented or documented unserved.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::routes::{Access, Answer, table};

/// Statuses every route may answer besides its own, with their codes.
fn common_errors(access: Access, has_body: bool, has_query: bool) -> Vec<(u16, &'static str)> {
    let mut v = Vec::new();
    if has_body || has_query {
        v.push((
            400,
            "Bad input: INVALID_JSON, VALIDATION_FAILED (details.field names the field) or a validation code",
        ));
    } else if access != Access::Public {
        v.push((
            400,
            "VALIDATION_FAILED: more than one Authorization header (details.field Authorization)",
        ));
    }
    if access != Access::Public {
        v.push((401, "UNAUTHORIZED: no, unknown, revoked or expired token"));
        v.push((403, "FORBIDDEN: the token's role may not do this"));
        v.push((429, RATE_LIMITED));
    }
    if has_body {
        v.push((413, "PAYLOAD_TOO_LARGE: body over maxBodyBytes"));
        v.push((415, "UNSUPPORTED_MEDIA_TYPE: wrong Content-Type"));
    }
    v
}

/// Answered instead of 401 once an address failed authentication too often.
const RATE_LIMITED: &str = "RATE_LIMITED: this request failed authentication and its address \
     already failed authFailuresPerMinute times within the minute (Retry-After says when the \
     minute ends); a request with a valid token is never refused this way";

fn error_text(status: u16) -> &'static str {
    match status {
        404 => "NOT_FOUND",
        409 => "Conflict: ALREADY_EXISTS, INVALID_STATE or IDEMPOTENCY_KEY_REUSED",
        429 => {
            "QUEUE_FULL: too many executions queued; or RATE_LIMITED: this request failed \
             authentication and its address already failed authFailuresPerMinute times within \
             the minute (Retry-After)"
        }
        503 => "NOT_READY: starting, draining or the store is unreachable",
        _ => "Error",
    }
}

/// The document (built once).
pub fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build).clone()
}

fn build() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in table() {
        let mut op = Map::new();
        op.insert("operationId".into(), json!(r.operation_id));
        op.insert("summary".into(), json!(r.summary));
        op.insert("tags".into(), json!([r.tag]));
        let roles = r.access.roles();
        if roles.is_empty() {
            op.insert("security".into(), json!([]));
        } else {
            op.insert(
                "description".into(),
                json!(format!("Roles: {}.", roles.join(", "))),
            );
        }
        let mut params = Vec::new();
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true,
                    "schema": path_id_schema(name)}));
            }
        }
        for p in &r.query {
            let schema = match p.kind {
                "integer" => json!({"type": "integer", "minimum": 0}),
                "boolean" => json!({"type": "boolean"}),
                "list" => json!({"type": "array", "items": {"type": "string"}}),
                _ => json!({"type": "string"}),
            };
            let mut q = json!({"name": p.name, "in": "query", "required": false,
                "description": p.description, "schema": schema});
            if p.kind == "list" {
                q["style"] = json!("form");
                q["explode"] = json!(false);
            }
            params.push(q);
        }
        if r.operation_id == "executeWorkflow" {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                "description": "Scoped to the workflow: one execution per key. Claimed for 24 h or until its execution finished, whichever is later; a replay answers that execution (200), the same key with another body is 409 IDEMPOTENCY_KEY_REUSED.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
        }
        if r.operation_id == "streamEvents" {
            params.push(
                json!({"name": "Last-Event-ID", "in": "header", "required": false,
                "description": "Resume after this seq.", "schema": {"type": "integer"}}),
            );
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some((schema_fn, types)) = r.body {
            let schema = serde_json::to_value(schema_fn(&mut generator)).unwrap_or(json!({}));
            let content: Map<String, Value> = types
                .iter()
                .map(|t| ((*t).to_owned(), json!({"schema": schema})))
                .collect();
            op.insert(
                "requestBody".into(),
                json!({"required": r.body_required, "content": content}),
            );
        }
        let mut responses = Map::new();
        for a in &r.answers {
            let (status, body) = match a {
                Answer::Json { status, schema } => {
                    let s = serde_json::to_value(schema(&mut generator)).unwrap_or(json!({}));
                    (
                        *status,
                        json!({"description": "Success", "content": {"application/json": {"schema": s}}}),
                    )
                }
                Answer::Raw {
                    status,
                    content_type,
                } => (*status, raw_answer(content_type)),
            };
            responses.insert(status.to_string(), body);
        }
        let err_ref = json!({"$ref": "#/components/schemas/ApiError"});
        for (status, text) in common_errors(
            r.access,
            r.body.is_some(),
            !r.query.is_empty() || r.path.contains('{'),
        ) {
            responses.insert(
                status.to_string(),
                json!({"description": text, "content": {"application/json": {"schema": err_ref}}}),
            );
        }
        for status in r.errors {
            responses.insert(
                status.to_string(),
                json!({"description": error_text(*status), "content": {"application/json": {"schema": err_ref}}}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        paths
            .entry(r.path.to_owned())
            .or_default()
            .insert(r.method.as_str().to_ascii_lowercase(), Value::Object(op));
    }
    add_links(&mut paths);
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert(
        "ApiError".into(),
        json!({"type": "object", "required": ["success", "error", "code"], "properties": {
            "success": {"const": false},
            "error": {"type": "string", "description": "Human-readable message."},
            "code": {"type": "string", "description": "Stable UPPER_SNAKE code (see docs/API.md)."},
            "details": {"type": "object", "properties": {
                "field": {"type": "string"}, "stepId": {"type": "string"},
                "cycle": {"type": "array", "items": {"type": "string"}}}}
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Maestro",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable multi-agent orchestration: agents, workflows, executions, events.",
            "license": {"name": "MIT", "identifier": "MIT"}
        },
        "servers": [{"url": "http://127.0.0.1:7300"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "mst_<id>_<secret> tokens; see POST /maestro/tokens"}},
            "schemas": schemas
        }
    })
}

/// OpenAPI links: what a created resource's id leads to. Clients can follow
/// them, and stateful API fuzzing (schemathesis) chains the calls through them:
/// (operation, success status, path parameter, where the answer holds it, the
/// operations that take it).
const LINKS: &[(&str, u16, &str, &str, &[&str])] = &[
    (
        "registerAgent",
        201,
        "agentId",
        "/agent/id",
        &[
            "getAgent",
            "upsertAgent",
            "deregisterAgent",
            "updateAgentStatus",
            "heartbeat",
            "getAgentHealth",
            "recordAgentHealth",
            "pollTasks",
        ],
    ),
    (
        "defineWorkflow",
        201,
        "workflowId",
        "/workflow/id",
        &[
            "getWorkflow",
            "updateWorkflow",
            "deleteWorkflow",
            "executeWorkflow",
        ],
    ),
    (
        "executeWorkflow",
        202,
        "executionId",
        "/execution/id",
        &[
            "getExecution",
            "cancelExecution",
            "pauseExecution",
            "resumeExecution",
        ],
    ),
    (
        "executeWorkflow",
        200,
        "executionId",
        "/execution/id",
        &["getExecution", "cancelExecution"],
    ),
    (
        "executeWorkflow",
        202,
        "correlationId",
        "/execution/context/correlationId",
        &["getEventsByCorrelation"],
    ),
    ("createToken", 201, "tokenId", "/token/id", &["revokeToken"]),
    (
        "createSubscription",
        201,
        "subscriptionId",
        "/subscription/id",
        &["deleteSubscription"],
    ),
];

fn add_links(paths: &mut BTreeMap<String, Map<String, Value>>) {
    for (from, status, param, pointer, targets) in LINKS {
        let Some(response) = paths
            .values_mut()
            .flat_map(|ops| ops.values_mut())
            .find(|op| op["operationId"] == *from)
            .and_then(|op| op["responses"].get_mut(status.to_string()))
        else {
            continue;
        };
        let links = response
            .as_object_mut()
            .map(|r| r.entry("links").or_insert_with(|| json!({})));
        if let Some(Value::Object(links)) = links {
            for target in *targets {
                links.insert(
                    format!("{target}:{param}"),
                    json!({"operationId": target,
                           "parameters": {*param: format!("$response.body#{pointer}")}}),
                );
            }
        }
    }
}

/// A success answer that is not JSON. An event stream is described one event
/// at a time (as tools that read `text/event-stream` expect): `id` is the seq,
/// `event` the type and `data` the event's JSON.
fn raw_answer(content_type: &str) -> serde_json::Value {
    let schema = if content_type == "text/event-stream" {
        json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "id": {"type": "string", "description": "The event's seq."},
                "event": {"type": "string", "description": "The event's type."},
                "data": {
                    "type": "string",
                    "description": "The event (ChoreographyEvent) as JSON.",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/ChoreographyEvent"}
                }
            }
        })
    } else {
        json!({"type": "string"})
    };
    json!({"description": "Success", "content": {content_type: {"schema": schema}}})
}

/// The schema of a path id (API.md "Ids"): agent and workflow ids have a
/// character set; the others are 1–256 characters.
fn path_id_schema(name: &str) -> serde_json::Value {
    match name {
        "agentId" | "workflowId" => json!({
            "type": "string", "minLength": 1, "maxLength": 128,
            "pattern": "^[A-Za-z0-9._:-]{1,128}$"
        }),
        _ => json!({"type": "string", "minLength": 1, "maxLength": 256}),
    }
}

#[cfg(test)]
mod tests {
    /// Every JSON success answer is documented by a type of
    /// `maestro_core::protocol` (a component), never described inline.
    #[test]
    fn json_answers_are_protocol_types() {
        let doc = super::document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for (status, answer) in op["responses"].as_object().unwrap() {
                    if !status.starts_with('2') {
                        continue;
                    }
                    let Some(schema) = answer.pointer("/content/application~1json/schema") else {
                        continue;
                    };
                    if op["operationId"] == "openapi" {
                        continue;
                    }
                    let name = schema["$ref"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("#/components/schemas/"))
                        .unwrap_or_else(|| panic!("{method} {path} {status}: inline {schema}"));
                    assert!(schemas.contains_key(name), "{name}");
                }
            }
        }
    }
}
