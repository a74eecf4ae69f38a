//! The CEL budget (docs/SECURITY.md "CEL budget"): a condition too expensive whatever
//! the data is refused at definition; one too expensive on an execution's values fails
//! its step with `CONDITION_ERROR` before running; and a condition being evaluated
//! delays only its own execution.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Agent, Server};

/// A list literal of `n` one-digit numbers.
fn literal(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| (i % 10).to_string()).collect();
    format!("[{}]", items.join(","))
}

fn one_step(id: &str, condition: Option<&str>) -> Value {
    let mut step = json!({"id": "a", "agentId": "w", "capability": "work"});
    if let Some(c) = condition {
        step["condition"] = json!({"type": "expression", "expression": c});
    }
    json!({"id": id, "name": id, "steps": [step]})
}

/// `a` echoes `items`; `b`'s condition walks them twice, nested.
fn nested_over_outputs(id: &str) -> Value {
    json!({"id": id, "name": id, "steps": [
        {"id": "a", "agentId": "w", "capability": "work", "inputs": {"items": "${items}"}},
        {"id": "b", "agentId": "w", "capability": "work", "dependencies": ["a"],
         "condition": {"type": "expression", "expression":
             "steps.a.outputs.items.exists(x, steps.a.outputs.items.exists(y, x == y + 1))"}}]})
}

async fn server_with_worker(
    tweak: impl FnOnce(&mut maestro_server::settings::Settings),
) -> (Server, Agent) {
    let s = Server::start_with(tweak).await;
    let agent = Agent::echo().await;
    s.register_http_agent("w", &agent.endpoint(), &["work"])
        .await;
    (s, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_conditions_are_refused_at_definition() {
    let (s, _agent) = server_with_worker(|_| {}).await;
    let l370 = literal(370);
    let l300 = literal(300);
    for attack in [
        format!("{l370}.map(x, {l370}.filter(y, {l370}.exists(z, z == x + y))).size() > 0"),
        format!("{l300}.map(x, {l300}.map(y, {l300})).size() > 0"),
    ] {
        let (st, v) = s
            .post("/maestro/workflows", one_step("attack", Some(&attack)))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["code"], "INVALID_CONDITION", "{v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains("celMaxCost = 1000000"), "{v}");
    }
    // The limit is a setting.
    s.stop().await;
    let (s, _agent) = server_with_worker(|st| st.server.cel_max_cost = 10).await;
    let (st, v) = s
        .post(
            "/maestro/workflows",
            one_step("small", Some("[1, 2, 3].exists(x, x > 2)")),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("celMaxCost = 10"),
        "{v}"
    );
    s.stop().await;
}

/// Cheap at definition, over the budget on the outputs of an earlier step: the step
/// fails with `CONDITION_ERROR` naming the limit, and other executions run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_over_budget_on_its_values_fails_its_step() {
    let (s, _agent) = server_with_worker(|_| {}).await;
    for wf in [nested_over_outputs("big"), one_step("other", None)] {
        let (st, v) = s.post("/maestro/workflows", wf).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    let items: Vec<u32> = (0..3000).collect();
    let (st, v) = s
        .post(
            "/maestro/workflows/big/execute",
            json!({"inputs": {"items": items}}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let big = v["execution"]["id"].as_str().unwrap().to_owned();
    let (st, v) = s
        .post("/maestro/workflows/other/execute?wait=30000", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "completed", "{v}");
    let e = s.wait_terminal(&big).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["stepExecutions"]["a"]["status"], "completed", "{e}");
    let err = &e["stepExecutions"]["b"]["error"];
    assert_eq!(err["code"], "CONDITION_ERROR", "{e}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("celMaxCost"),
        "{e}"
    );
    s.stop().await;
}

/// A condition within a (raised) budget but slow is evaluated away from the executor's
/// loop: another execution starts and completes while it is still being evaluated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_condition_delays_only_its_own_execution() {
    let (s, _agent) = server_with_worker(|st| st.server.cel_max_cost = u64::MAX).await;
    for wf in [nested_over_outputs("slow"), one_step("other", None)] {
        let (st, v) = s.post("/maestro/workflows", wf).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    // Only the last element is another plus one: both `exists` walk everything.
    let items: Vec<u32> = (0..700).map(|i| 2 * i).chain([1399]).collect();
    let (st, v) = s
        .post(
            "/maestro/workflows/slow/execute",
            json!({"inputs": {"items": items}}),
        )
        .await;
    assert!(st.is_success(), "{v}");
    let slow = v["execution"]["id"].as_str().unwrap().to_owned();
    // `a` done: `b`'s condition is being evaluated.
    loop {
        let (_, v) = s.get(&format!("/maestro/executions/{slow}")).await;
        if v["execution"]["stepExecutions"]["a"]["status"] == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (st, v) = s
        .post("/maestro/workflows/other/execute?wait=30000", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["execution"]["status"], "completed", "{v}");
    let (_, v) = s.get(&format!("/maestro/executions/{slow}")).await;
    assert_eq!(
        v["execution"]["stepExecutions"]["b"]["status"], "pending",
        "still deciding b: {v}"
    );
    let e = s.wait_terminal(&slow).await;
    assert_eq!(e["status"], "completed", "{e}");
    assert_eq!(e["stepExecutions"]["b"]["status"], "completed", "{e}");
    s.stop().await;
}
