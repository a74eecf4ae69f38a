//! Workflow validation answers through the real server: the code, and `details`
//! naming the offending step (`stepId`) and field (a path from the body's root),
//! the same for a JSON define, a YAML define and a merge-patch update.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Server;

/// Define (JSON), define (YAML) and update (PATCH of `wf-1`) with these steps; each
/// answer as (status, code, details).
async fn refusals(s: &Server, steps: &Value) -> Vec<(&'static str, StatusCode, Value, Value)> {
    let body = json!({"id": "bad", "name": "B", "steps": steps});
    let mut out = Vec::new();
    let (st, v) = s.post("/maestro/workflows", body.clone()).await;
    out.push(("POST json", st, v["code"].clone(), v["details"].clone()));
    let resp = s
        .client
        .post(s.url("/maestro/workflows"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/yaml")
        .body(serde_norway::to_string(&body).unwrap())
        .send()
        .await
        .unwrap();
    let st = resp.status();
    let v: Value = resp.json().await.unwrap();
    out.push(("POST yaml", st, v["code"].clone(), v["details"].clone()));
    let (st, v) = s
        .patch("/maestro/workflows/wf-1", json!({"steps": steps}))
        .await;
    out.push(("PATCH", st, v["code"].clone(), v["details"].clone()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_details_name_the_offending_step_and_field() {
    let s = Server::start().await;
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "wf-1", "name": "W", "steps": [{"id": "a", "capability": "c"}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    let a = json!({"id": "a", "capability": "c"});
    let with_condition = |c: Value| json!([a, {"id": "b", "capability": "c", "condition": c}]);
    let cmp = |op: &str, value: Value| json!({"type": "comparison", "variable": "x", "operator": op, "value": value});
    // (what, steps, code, details)
    let cases: Vec<(&str, Value, &str, Value)> = vec![
        (
            "a step without capability",
            json!([a, {"id": "b"}]),
            "VALIDATION_FAILED",
            json!({"field": "steps[1].capability", "stepId": "b"}),
        ),
        (
            "an unknown field in a step",
            json!([a, {"id": "b", "capability": "c", "dependancies": ["a"]}]),
            "VALIDATION_FAILED",
            json!({"field": "steps[1].dependancies", "stepId": "b"}),
        ),
        (
            "an unknown field in a step whose id is invalid",
            json!([a, {"id": "b.c", "capability": "c", "dependancies": ["a"]}]),
            "VALIDATION_FAILED",
            json!({"field": "steps[1].dependancies"}),
        ),
        (
            "a bad callback URL",
            json!([a, {"id": "b", "capability": "c",
                "errorHandler": {"type": "callback", "action": "ftp://x"}}]),
            "VALIDATION_FAILED",
            json!({"field": "steps[1].errorHandler.action", "stepId": "b"}),
        ),
        (
            "a fallback target with dependencies",
            json!([a,
                {"id": "b", "capability": "c",
                 "errorHandler": {"type": "fallback", "action": "fb"}},
                {"id": "fb", "capability": "c", "dependencies": ["a"]}]),
            "UNKNOWN_FALLBACK",
            json!({"field": "steps[2].dependencies", "stepId": "fb"}),
        ),
        (
            "an unknown comparison operator",
            with_condition(cmp("approximately", json!(1))),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.operator", "stepId": "b"}),
        ),
        (
            "a comparison without value",
            with_condition(json!({"type": "comparison", "variable": "x", "operator": "eq"})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.value", "stepId": "b"}),
        ),
        (
            "a comparison without variable",
            with_condition(json!({"type": "comparison", "operator": "eq", "value": 1})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.variable", "stepId": "b"}),
        ),
        (
            "in with a string",
            with_condition(cmp("in", json!("x"))),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.value", "stepId": "b"}),
        ),
        (
            "gt with an object",
            with_condition(cmp("gt", json!({"n": 1}))),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.value", "stepId": "b"}),
        ),
        (
            "gt with a boolean",
            with_condition(cmp("gt", json!(true))),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.value", "stepId": "b"}),
        ),
        (
            "a CEL syntax error",
            with_condition(json!({"type": "expression", "expression": "x >"})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.expression", "stepId": "b"}),
        ),
        (
            "an unknown field in a condition",
            with_condition(json!({"type": "expression", "expression": "x > 1", "lang": "cel"})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.lang", "stepId": "b"}),
        ),
        (
            "an unknown condition type",
            with_condition(json!({"type": "python", "code": "x"})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.type", "stepId": "b"}),
        ),
        (
            "a malformed nested condition",
            with_condition(json!({"type": "logical", "operator": "or", "conditions": [
                cmp("eq", json!(1)), {"type": "comparison", "variable": "y"}]})),
            "INVALID_CONDITION",
            json!({"field": "steps[1].condition.conditions[1].operator", "stepId": "b"}),
        ),
        (
            "a javascript condition",
            with_condition(json!({"type": "javascript", "code": "true"})),
            "UNSAFE_CONDITION",
            json!({"field": "steps[1].condition.type", "stepId": "b"}),
        ),
    ];
    let mut failures = Vec::new();
    for (what, steps, code, details) in cases {
        for (how, st, got_code, got_details) in refusals(&s, &steps).await {
            if (st, got_code.as_str(), &got_details)
                != (StatusCode::BAD_REQUEST, Some(code), &details)
            {
                failures.push(format!(
                    "{what} ({how}): expected 400 {code} {details}, got {st} {got_code} {got_details}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing was stored: wf-1 is still at revision 1, `bad` does not exist.
    let (_, v) = s.get("/maestro/workflows/wf-1").await;
    assert_eq!(v["workflow"]["revision"], 1, "{v}");
    let (st, _) = s.get("/maestro/workflows/bad").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // `exists` alone may leave `value` out.
    let (st, v) = s
        .post(
            "/maestro/workflows",
            json!({"id": "ok", "name": "O", "steps": [{"id": "a", "capability": "c",
                "condition": {"type": "comparison", "variable": "x", "operator": "exists"}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    s.stop().await;
}
