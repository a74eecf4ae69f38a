//! Every rule of the execution semantics (docs/EXECUTION.md), checked on the pure machine.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::*;
use crate::choreography::{CelBudget, WorkflowPlan};
use crate::model::{
    EventType, ExecutionStatus, MaestroConfig, RollbackStatus, StepStatus, Workflow,
};
use crate::ports::InvokeError;

pub(super) struct TestEnv {
    pub now: u64,
    pub config: MaestroConfig,
    /// (agent, capability) → compensation capability.
    pub compensations: HashMap<(String, String), String>,
    pub jitter_draws: Vec<u64>,
}

impl TestEnv {
    pub fn new() -> Self {
        let mut config = MaestroConfig::default();
        config.default_retry_policy.max_attempts = 1;
        TestEnv {
            now: 1_000,
            config,
            compensations: HashMap::new(),
            jitter_draws: Vec::new(),
        }
    }
}

impl Env for TestEnv {
    fn now(&self) -> u64 {
        self.now
    }
    fn config(&self) -> &MaestroConfig {
        &self.config
    }
    fn jitter(&mut self, max: u64) -> u64 {
        self.jitter_draws.push(max);
        max / 2
    }
    fn compensation_for(&self, agent_id: &str, capability: &str) -> Option<String> {
        self.compensations
            .get(&(agent_id.to_owned(), capability.to_owned()))
            .cloned()
    }
}

pub(super) fn workflow(v: Value) -> (Arc<Workflow>, Arc<WorkflowPlan>) {
    let mut w: Workflow = serde_json::from_value(v).expect("workflow json");
    w.revision = 1;
    crate::choreography::validate_workflow(&w, &Default::default()).expect("valid workflow");
    let plan = WorkflowPlan::new(&w).expect("plan");
    (Arc::new(w), Arc::new(plan))
}

fn start(v: Value, env: &mut TestEnv) -> (ExecutionState, Vec<Action>) {
    let mut inputs = Map::new();
    inputs.insert("x".into(), json!(5));
    start_with(v, inputs, env)
}

fn start_with(
    v: Value,
    inputs: Map<String, Value>,
    env: &mut TestEnv,
) -> (ExecutionState, Vec<Action>) {
    let (w, p) = workflow(v);
    let mut st = ExecutionState::new("exec-1".into(), w, p, inputs, None, None, env.now);
    let acts = st.apply(Input::Start, env);
    (st, acts)
}

fn calls(acts: &[Action]) -> Vec<&Call> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Invoke(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn call_ids(acts: &[Action]) -> Vec<String> {
    calls(acts).iter().map(|c| c.step_id.clone()).collect()
}

fn events(acts: &[Action]) -> Vec<EventType> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Publish(e) => Some(e.event_type),
            _ => None,
        })
        .collect()
}

fn timers(acts: &[Action]) -> Vec<(TimerKey, u64)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::SetTimer { key, at } => Some((key.clone(), *at)),
            _ => None,
        })
        .collect()
}

fn ok(step: &str, attempt: u32, out: Value) -> Input {
    Input::AttemptFinished {
        step_id: step.into(),
        attempt,
        agent_id: Some("agent-1".into()),
        outcome: Ok(out.as_object().cloned().unwrap_or_default()),
    }
}

fn fail(step: &str, attempt: u32, code: &str, retryable: bool) -> Input {
    Input::AttemptFinished {
        step_id: step.into(),
        attempt,
        agent_id: Some("agent-1".into()),
        outcome: Err(InvokeError::new(code, "boom", retryable)),
    }
}

fn comp_ok(step: &str, attempt: u32) -> Input {
    Input::CompensationFinished {
        step_id: step.into(),
        attempt,
        agent_id: Some("agent-1".into()),
        outcome: Ok(Map::new()),
    }
}

fn comp_fail(step: &str, attempt: u32) -> Input {
    Input::CompensationFinished {
        step_id: step.into(),
        attempt,
        agent_id: Some("agent-1".into()),
        outcome: Err(InvokeError::new("NOPE", "cannot undo", false)),
    }
}

fn status(st: &ExecutionState, step: &str) -> StepStatus {
    st.execution().step_executions.get(step).unwrap().status
}

fn chain3() -> Value {
    json!({"id": "w", "name": "chain", "steps": [
        {"id": "a", "capability": "c", "inputs": {"x": "${x}"}},
        {"id": "b", "capability": "c", "dependencies": ["a"], "inputs": {"v": "${a_out}"}},
        {"id": "c", "capability": "c", "dependencies": ["b"]}
    ], "expectedOutputs": {"final": "string"}})
}

#[test]
fn chain_runs_in_order_and_completes_with_outputs() {
    let mut env = TestEnv::new();
    let mut inputs = Map::new();
    inputs.insert("x".into(), json!(5));
    let (mut st, acts) = start_with(chain3(), inputs, &mut env);
    assert_eq!(events(&acts)[0], EventType::WorkflowStarted);
    assert_eq!(call_ids(&acts), vec!["a"]);
    assert_eq!(
        calls(&acts)[0].inputs["x"],
        json!(5),
        "whole placeholder keeps the type"
    );
    assert!(
        timers(&acts)
            .iter()
            .any(|(k, at)| *k == TimerKey::WorkflowTimeout && *at == 1_000 + 300_000)
    );
    let acts = st.apply(ok("a", 1, json!({"a_out": "A"})), &mut env);
    assert_eq!(call_ids(&acts), vec!["b"]);
    assert_eq!(calls(&acts)[0].inputs["v"], json!("A"));
    let acts = st.apply(ok("b", 1, json!({})), &mut env);
    assert_eq!(call_ids(&acts), vec!["c"]);
    let acts = st.apply(ok("c", 1, json!({"final": "done"})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
    assert!(acts.contains(&Action::Finished));
    assert_eq!(events(&acts).last(), Some(&EventType::WorkflowCompleted));
    let e = st.execution();
    assert_eq!(e.outputs.as_ref().unwrap()["a"], json!({"a_out": "A"}));
    assert_eq!(e.result.as_ref().unwrap()["final"], json!("done"));
}

#[test]
fn parallel_steps_then_join() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c"}, {"id": "b", "capability": "c"},
            {"id": "j", "capability": "c", "dependencies": ["a", "b"]}]}),
        &mut env,
    );
    assert_eq!(call_ids(&acts), vec!["a", "b"]);
    assert!(call_ids(&st.apply(ok("a", 1, json!({})), &mut env)).is_empty());
    assert_eq!(
        call_ids(&st.apply(ok("b", 1, json!({})), &mut env)),
        vec!["j"]
    );
}

#[test]
fn false_condition_skips_but_dependents_run_without_its_outputs() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "verify", "capability": "c"},
            {"id": "issue", "capability": "c", "dependencies": ["verify"],
             "condition": {"type": "comparison", "variable": "verified", "operator": "eq", "value": true}},
            {"id": "after", "capability": "c", "dependencies": ["issue"]}]}),
        &mut env,
    );
    let acts = st.apply(ok("verify", 1, json!({"verified": false})), &mut env);
    assert_eq!(status(&st, "issue"), StepStatus::Skipped);
    assert!(events(&acts).contains(&EventType::StepSkipped));
    assert_eq!(
        call_ids(&acts),
        vec!["after"],
        "skip by condition satisfies dependents"
    );
    st.apply(ok("after", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
}

#[test]
fn retries_follow_backoff_and_cap() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 4, "delayMs": 100, "backoffMultiplier": 3, "maxDelayMs": 500}}]}),
        &mut env,
    );
    let mut expected = vec![100, 300, 500].into_iter();
    for attempt in 1..=3u32 {
        let acts = st.apply(fail("a", attempt, "FLAKY", true), &mut env);
        let t = timers(&acts);
        let delay = expected.next().unwrap();
        assert_eq!(
            t,
            vec![(
                TimerKey::Retry {
                    step_id: "a".into(),
                    attempt: attempt + 1
                },
                env.now + delay
            )]
        );
        assert!(events(&acts).contains(&EventType::StepRetrying));
        assert!(call_ids(&acts).is_empty(), "no call before the timer");
        env.now += delay;
        let acts = st.apply(Input::Timer(t[0].0.clone()), &mut env);
        assert_eq!(calls(&acts)[0].attempt, attempt + 1);
    }
    let acts = st.apply(fail("a", 4, "FLAKY", true), &mut env);
    assert!(timers(&acts).is_empty());
    assert_eq!(status(&st, "a"), StepStatus::Failed);
    assert_eq!(st.status(), ExecutionStatus::Failed);
    let s = st.execution().step_executions.get("a").unwrap();
    assert_eq!(s.retry_count, 3);
    assert_eq!(s.attempts.len(), 4);
}

#[test]
fn jitter_draws_from_env() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 2, "delayMs": 1000, "jitter": true}}]}),
        &mut env,
    );
    let acts = st.apply(fail("a", 1, "X", true), &mut env);
    assert_eq!(env.jitter_draws, vec![1000]);
    assert_eq!(timers(&acts)[0].1, env.now + 500);
}

#[test]
fn stale_retry_timer_is_ignored() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 3, "delayMs": 10}}]}),
        &mut env,
    );
    st.apply(fail("a", 1, "X", true), &mut env);
    let acts = st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 2,
        }),
        &mut env,
    );
    assert_eq!(call_ids(&acts), vec!["a"]);
    let again = st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 2,
        }),
        &mut env,
    );
    assert!(
        call_ids(&again).is_empty(),
        "a timer that fired twice sends once"
    );
}

#[test]
fn non_retryable_errors_are_not_retried() {
    for (code, retryable) in [("BAD_INPUT", false), ("LISTED", true)] {
        let mut env = TestEnv::new();
        let (mut st, _) = start(
            json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
                "retryPolicy": {"maxAttempts": 5, "delayMs": 10, "nonRetryableCodes": ["LISTED"]}}]}),
            &mut env,
        );
        let acts = st.apply(fail("a", 1, code, retryable), &mut env);
        assert!(timers(&acts).is_empty(), "{code} was retried");
        assert_eq!(st.status(), ExecutionStatus::Failed);
        assert_eq!(st.execution().error.as_ref().unwrap().code, code);
    }
}

#[test]
fn skip_handler_skips_and_execution_goes_on() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c", "errorHandler": {"type": "skip", "action": ""}},
            {"id": "b", "capability": "c", "dependencies": ["a"]}]}),
        &mut env,
    );
    let acts = st.apply(fail("a", 1, "X", false), &mut env);
    assert_eq!(status(&st, "a"), StepStatus::Skipped);
    assert_eq!(call_ids(&acts), vec!["b"]);
    st.apply(ok("b", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
}

#[test]
fn fallback_runs_in_place_and_lends_its_outputs() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "primary", "errorHandler": {"type": "fallback", "action": "fb"}},
            {"id": "fb", "capability": "backup"},
            {"id": "b", "capability": "c", "dependencies": ["a"], "inputs": {"v": "${steps.a.outputs.v}"}}]}),
        &mut env,
    );
    assert_eq!(
        call_ids(&acts),
        vec!["a"],
        "fallback-only step is never scheduled on its own"
    );
    let acts = st.apply(fail("a", 1, "X", false), &mut env);
    assert_eq!(call_ids(&acts), vec!["fb"]);
    assert_eq!(calls(&acts)[0].capability, "backup");
    let acts = st.apply(ok("fb", 1, json!({"v": 42})), &mut env);
    assert_eq!(status(&st, "a"), StepStatus::Completed);
    assert_eq!(call_ids(&acts), vec!["b"]);
    assert_eq!(calls(&acts)[0].inputs["v"], json!(42));
    st.apply(ok("b", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
}

#[test]
fn unused_fallback_is_skipped_and_failed_fallback_fails_the_step() {
    let wf = json!({"id": "w", "name": "n", "steps": [
        {"id": "a", "capability": "primary", "errorHandler": {"type": "fallback", "action": "fb"}},
        {"id": "fb", "capability": "backup"}]});
    let mut env = TestEnv::new();
    let (mut st, _) = start(wf.clone(), &mut env);
    st.apply(ok("a", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
    assert_eq!(status(&st, "fb"), StepStatus::Skipped);

    let (mut st, _) = start(wf, &mut env);
    st.apply(fail("a", 1, "X", false), &mut env);
    st.apply(fail("fb", 1, "Y", false), &mut env);
    assert_eq!(status(&st, "a"), StepStatus::Failed);
    assert_eq!(st.status(), ExecutionStatus::Failed);
}

#[test]
fn callback_handler_posts_then_on_error_applies() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c", "errorHandler": {"type": "callback", "action": "http://127.0.0.1:9/hook"}}]}),
        &mut env,
    );
    let acts = st.apply(fail("a", 1, "X", false), &mut env);
    let cb = acts.iter().find_map(|a| match a {
        Action::Callback { url, body, .. } => Some((url.clone(), body.clone())),
        _ => None,
    });
    let (url, body) = cb.expect("callback action");
    assert_eq!(url, "http://127.0.0.1:9/hook");
    assert_eq!(body["error"]["code"], "X");
    assert_eq!(body["execution"]["id"], "exec-1");
    assert_eq!(
        st.status(),
        ExecutionStatus::Running,
        "waits for the callback"
    );
    st.apply(
        Input::CallbackFinished {
            step_id: "a".into(),
            delivered: true,
        },
        &mut env,
    );
    assert_eq!(st.status(), ExecutionStatus::Failed);
}

#[test]
fn retry_handler_adds_one_round_with_its_policy_and_numbering_continues() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 2, "delayMs": 10},
            "errorHandler": {"type": "retry", "action": "", "params": {"maxAttempts": 2, "delayMs": 777}}}]}),
        &mut env,
    );
    st.apply(fail("a", 1, "X", true), &mut env);
    st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 2,
        }),
        &mut env,
    );
    let acts = st.apply(fail("a", 2, "X", true), &mut env);
    assert_eq!(
        timers(&acts),
        vec![(
            TimerKey::Retry {
                step_id: "a".into(),
                attempt: 3
            },
            env.now + 777
        )]
    );
    let acts = st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 3,
        }),
        &mut env,
    );
    assert_eq!(calls(&acts)[0].attempt, 3);
    let acts = st.apply(fail("a", 3, "X", true), &mut env);
    assert_eq!(
        timers(&acts)[0].0,
        TimerKey::Retry {
            step_id: "a".into(),
            attempt: 4
        }
    );
    st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 4,
        }),
        &mut env,
    );
    st.apply(fail("a", 4, "X", true), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Failed, "only one extra round");
    assert_eq!(
        st.execution()
            .step_executions
            .get("a")
            .unwrap()
            .attempts
            .len(),
        4
    );
}

#[test]
fn on_error_continue_runs_independent_steps_and_skips_dependents() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "onError": "continue", "steps": [
            {"id": "a", "capability": "c"}, {"id": "b", "capability": "c"},
            {"id": "a2", "capability": "c", "dependencies": ["a"]},
            {"id": "a3", "capability": "c", "dependencies": ["a2"]},
            {"id": "b2", "capability": "c", "dependencies": ["b"]}]}),
        &mut env,
    );
    let acts = st.apply(fail("a", 1, "X", false), &mut env);
    assert_eq!(status(&st, "a2"), StepStatus::Skipped);
    assert_eq!(status(&st, "a3"), StepStatus::Skipped);
    let s = st.execution().step_executions.get("a3").unwrap();
    assert_eq!(s.error.as_ref().unwrap().code, "DEPENDENCY_FAILED");
    assert!(call_ids(&acts).is_empty());
    let acts = st.apply(ok("b", 1, json!({})), &mut env);
    assert_eq!(call_ids(&acts), vec!["b2"]);
    st.apply(ok("b2", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Failed);
}

#[test]
fn on_error_stop_lets_running_finish_and_schedules_nothing() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c"}, {"id": "b", "capability": "c"},
            {"id": "b2", "capability": "c", "dependencies": ["b"]}]}),
        &mut env,
    );
    let acts = st.apply(fail("a", 1, "X", false), &mut env);
    assert!(!acts.contains(&Action::Finished), "b still running");
    assert_eq!(st.status(), ExecutionStatus::Running);
    let acts = st.apply(ok("b", 1, json!({})), &mut env);
    assert!(call_ids(&acts).is_empty(), "nothing new after a stop");
    assert_eq!(st.status(), ExecutionStatus::Failed);
    assert_eq!(status(&st, "b"), StepStatus::Completed);
    assert_eq!(
        status(&st, "b2"),
        StepStatus::Pending,
        "never reached stays pending"
    );
    let terminal: Vec<_> = events(&acts)
        .into_iter()
        .filter(|e| e.is_terminal())
        .collect();
    assert_eq!(terminal, vec![EventType::WorkflowFailed]);
}

fn rollback_wf() -> Value {
    json!({"id": "w", "name": "n", "onError": "rollback", "steps": [
        {"id": "a", "capability": "reserve", "inputs": {"n": 1}},
        {"id": "b", "capability": "charge", "dependencies": ["a"],
         "compensate": {"capability": "refund", "inputs": {"charge": "${steps.b.outputs.chargeId}"}}},
        {"id": "n", "capability": "noop", "dependencies": ["b"]},
        {"id": "c", "capability": "ship", "dependencies": ["n"]}]})
}

#[test]
fn rollback_compensates_in_reverse_completion_order() {
    let mut env = TestEnv::new();
    env.compensations.insert(
        ("agent-1".into(), "reserve".into()),
        "reserve_rollback".into(),
    );
    let (mut st, _) = start(rollback_wf(), &mut env);
    st.apply(ok("a", 1, json!({"r": 1})), &mut env);
    st.apply(ok("b", 1, json!({"chargeId": "ch_1"})), &mut env);
    st.apply(ok("n", 1, json!({})), &mut env);
    let acts = st.apply(fail("c", 1, "X", false), &mut env);
    // n has no compensation: logged as skipped; b first (refund), then a.
    let c = calls(&acts);
    assert_eq!(c.len(), 1, "one compensation at a time");
    assert!(c[0].compensation);
    assert_eq!(
        (c[0].step_id.as_str(), c[0].capability.as_str()),
        ("b", "refund")
    );
    assert_eq!(c[0].inputs["charge"], json!("ch_1"));
    let log = st.execution().rollback_log.clone().unwrap();
    assert_eq!(
        log.iter().map(|e| e.step_id.as_str()).collect::<Vec<_>>(),
        vec!["n", "b", "a"]
    );
    assert_eq!(log[0].status, RollbackStatus::Skipped);
    assert_eq!(
        log[1].status,
        RollbackStatus::Pending,
        "executed only after success"
    );
    let acts = st.apply(comp_ok("b", 1), &mut env);
    let c = calls(&acts);
    assert_eq!(
        (c[0].step_id.as_str(), c[0].capability.as_str()),
        ("a", "reserve_rollback")
    );
    assert_eq!(
        c[0].inputs,
        json!({"inputs": {"n": 1}, "outputs": {"r": 1}})
            .as_object()
            .unwrap()
            .clone()
    );
    let acts = st.apply(comp_ok("a", 1), &mut env);
    assert_eq!(st.status(), ExecutionStatus::RolledBack);
    assert_eq!(events(&acts).last(), Some(&EventType::WorkflowRolledBack));
    assert_eq!(status(&st, "b"), StepStatus::Compensated);
    let log = st.execution().rollback_log.clone().unwrap();
    assert!(
        log[1..]
            .iter()
            .all(|e| e.status == RollbackStatus::Executed)
    );
}

#[test]
fn failing_compensation_is_retried_then_execution_fails_with_log() {
    let mut env = TestEnv::new();
    env.compensations.insert(
        ("agent-1".into(), "reserve".into()),
        "reserve_rollback".into(),
    );
    let (mut st, _) = start(rollback_wf(), &mut env);
    st.apply(ok("a", 1, json!({})), &mut env);
    st.apply(ok("b", 1, json!({"chargeId": "x"})), &mut env);
    st.apply(fail("n", 1, "X", false), &mut env);
    // b's compensation fails (non-retryable), a's still runs.
    let acts = st.apply(comp_fail("b", 1), &mut env);
    assert_eq!(calls(&acts)[0].step_id, "a");
    st.apply(comp_ok("a", 1), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Failed);
    let log = st.execution().rollback_log.clone().unwrap();
    assert_eq!(log[0].status, RollbackStatus::Failed);
    assert_eq!(log[1].status, RollbackStatus::Executed);

    // Retryable compensation errors are retried with the step's policy.
    let mut wf = rollback_wf();
    wf["steps"][1]["retryPolicy"] = json!({"maxAttempts": 2, "delayMs": 50});
    let (mut st, _) = start(wf, &mut env);
    st.apply(ok("a", 1, json!({})), &mut env);
    st.apply(ok("b", 1, json!({"chargeId": "x"})), &mut env);
    st.apply(fail("n", 1, "X", false), &mut env);
    let acts = st.apply(
        Input::CompensationFinished {
            step_id: "b".into(),
            attempt: 1,
            agent_id: None,
            outcome: Err(InvokeError::new("TEMP", "later", true)),
        },
        &mut env,
    );
    assert_eq!(
        timers(&acts),
        vec![(
            TimerKey::CompensationRetry {
                step_id: "b".into(),
                attempt: 2
            },
            env.now + 50
        )]
    );
    let acts = st.apply(
        Input::Timer(TimerKey::CompensationRetry {
            step_id: "b".into(),
            attempt: 2,
        }),
        &mut env,
    );
    assert_eq!(
        (calls(&acts)[0].step_id.as_str(), calls(&acts)[0].attempt),
        ("b", 2)
    );
}

#[test]
fn rollback_disabled_acts_as_stop() {
    let mut env = TestEnv::new();
    env.config.enable_rollback = false;
    let (mut st, _) = start(rollback_wf(), &mut env);
    st.apply(ok("a", 1, json!({})), &mut env);
    let acts = st.apply(fail("b", 1, "X", false), &mut env);
    assert!(calls(&acts).is_empty());
    assert_eq!(st.status(), ExecutionStatus::Failed);
    assert!(st.execution().rollback_log.is_none());
}

#[test]
fn cancel_mid_run() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(chain3(), &mut env);
    let acts = st.apply(
        Input::Cancel {
            reason: Some("user".into()),
        },
        &mut env,
    );
    assert_eq!(st.status(), ExecutionStatus::Cancelled);
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::CancelCall { step_id, attempt: 1, .. } if step_id == "a"))
    );
    let a = st.execution().step_executions.get("a").unwrap();
    assert_eq!(a.status, StepStatus::Skipped);
    assert_eq!(a.error.as_ref().unwrap().code, "CANCELLED");
    assert_eq!(status(&st, "b"), StepStatus::Pending);
    assert_eq!(events(&acts).last(), Some(&EventType::WorkflowCancelled));
    // The late answer is recorded, changes nothing.
    let acts = st.apply(ok("a", 1, json!({})), &mut env);
    assert!(acts.is_empty());
    let a = st.execution().step_executions.get("a").unwrap();
    assert_eq!(
        a.attempts[0].late_result.as_ref().unwrap().outcome,
        "completed"
    );
    assert_eq!(a.status, StepStatus::Skipped);
}

#[test]
fn cancel_pending_publishes_only_the_terminal_event() {
    let mut env = TestEnv::new();
    let (w, p) = workflow(chain3());
    let mut st = ExecutionState::new("e".into(), w, p, Map::new(), None, None, env.now);
    let acts = st.apply(Input::Cancel { reason: None }, &mut env);
    assert_eq!(events(&acts), vec![EventType::WorkflowCancelled]);
    assert_eq!(st.status(), ExecutionStatus::Cancelled);
}

#[test]
fn cancel_with_compensation_enabled_compensates_and_stays_cancelled() {
    let mut env = TestEnv::new();
    env.config.enable_compensation = true;
    env.compensations
        .insert(("agent-1".into(), "c".into()), "c_rollback".into());
    let (mut st, _) = start(chain3(), &mut env);
    st.apply(ok("a", 1, json!({"a_out": 1})), &mut env);
    let acts = st.apply(Input::Cancel { reason: None }, &mut env);
    assert_eq!(calls(&acts)[0].capability, "c_rollback");
    assert!(!acts.contains(&Action::Finished));
    let acts = st.apply(comp_ok("a", 1), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Cancelled);
    assert_eq!(events(&acts).iter().filter(|e| e.is_terminal()).count(), 1);
}

#[test]
fn pause_holds_new_work_and_resume_continues() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(chain3(), &mut env);
    let acts = st.apply(Input::Pause, &mut env);
    assert_eq!(events(&acts), vec![EventType::WorkflowPaused]);
    let acts = st.apply(ok("a", 1, json!({"a_out": 1})), &mut env);
    assert!(call_ids(&acts).is_empty(), "paused: b waits");
    assert_eq!(st.status(), ExecutionStatus::Paused);
    let acts = st.apply(Input::Resume, &mut env);
    assert_eq!(events(&acts)[0], EventType::WorkflowResumed);
    assert_eq!(call_ids(&acts), vec!["b"]);
}

#[test]
fn retry_due_while_paused_runs_on_resume() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 2, "delayMs": 10}}]}),
        &mut env,
    );
    st.apply(Input::Pause, &mut env);
    st.apply(fail("a", 1, "X", true), &mut env);
    env.now += 20;
    let acts = st.apply(
        Input::Timer(TimerKey::Retry {
            step_id: "a".into(),
            attempt: 2,
        }),
        &mut env,
    );
    assert!(call_ids(&acts).is_empty());
    let acts = st.apply(Input::Resume, &mut env);
    assert_eq!(calls(&acts)[0].attempt, 2);
}

#[test]
fn workflow_timeout_fails_and_abandons_running_calls() {
    let mut env = TestEnv::new();
    let mut wf = chain3();
    wf["maxDuration"] = json!(5_000);
    let (mut st, acts) = start(wf, &mut env);
    assert!(timers(&acts).contains(&(TimerKey::WorkflowTimeout, 6_000)));
    env.now = 6_000;
    let acts = st.apply(Input::Timer(TimerKey::WorkflowTimeout), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Failed);
    assert_eq!(
        st.execution().error.as_ref().unwrap().code,
        "WORKFLOW_TIMEOUT"
    );
    assert!(acts.iter().any(|a| matches!(a, Action::CancelCall { .. })));
    assert_eq!(events(&acts).iter().filter(|e| e.is_terminal()).count(), 1);
    st.apply(ok("a", 1, json!({})), &mut env);
    let a = st.execution().step_executions.get("a").unwrap();
    assert_eq!(a.status, StepStatus::Failed);
    assert!(a.attempts[0].late_result.is_some());
    // A second timer firing is ignored.
    assert!(
        st.apply(Input::Timer(TimerKey::WorkflowTimeout), &mut env)
            .is_empty()
    );
}

#[test]
fn unresolved_variable_fails_without_retry() {
    let mut env = TestEnv::new();
    let (st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "c",
            "retryPolicy": {"maxAttempts": 3, "delayMs": 10}, "inputs": {"u": "${missing}"}}]}),
        &mut env,
    );
    assert!(calls(&acts).is_empty());
    assert!(
        timers(&acts)
            .iter()
            .all(|(k, _)| *k == TimerKey::WorkflowTimeout)
    );
    assert_eq!(st.status(), ExecutionStatus::Failed);
    assert_eq!(
        st.execution().error.as_ref().unwrap().code,
        "UNRESOLVED_VARIABLE"
    );
}

/// The condition evaluations asked by `acts`.
fn checks(acts: &[Action]) -> Vec<ConditionCheck> {
    acts.iter()
        .filter_map(|a| match a {
            Action::EvaluateCondition(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn verdict(c: &ConditionCheck) -> Input {
    Input::ConditionEvaluated {
        step_id: c.step_id.clone(),
        verdict: c.evaluate(&CelBudget::default()),
    }
}

/// Do what the executor does with condition evaluations until none is asked for;
/// every action, in order.
fn settle(st: &mut ExecutionState, mut acts: Vec<Action>, env: &mut TestEnv) -> Vec<Action> {
    let mut all = Vec::new();
    loop {
        let asked = checks(&acts);
        all.append(&mut acts);
        if asked.is_empty() {
            return all;
        }
        for c in asked {
            acts.extend(st.apply(verdict(&c), env));
        }
    }
}

fn cel_step(id: &str, expression: &str, deps: &[&str]) -> Value {
    json!({"id": id, "capability": "c", "dependencies": deps,
           "condition": {"type": "expression", "expression": expression}})
}

#[test]
fn cel_error_fails_with_condition_error() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [cel_step("a", "1 / 0 == 1", &[])]}),
        &mut env,
    );
    settle(&mut st, acts, &mut env);
    assert_eq!(
        st.execution().error.as_ref().unwrap().code,
        "CONDITION_ERROR"
    );
}

/// A CEL condition is evaluated by the executor: the step stays pending, is not begun
/// twice while its verdict is awaited, and the execution waits for it.
#[test]
fn cel_condition_is_evaluated_off_the_machine_once() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c"},
            cel_step("t", "x == 5", &[]),
            cel_step("f", "x == 6", &["a"])]}),
        &mut env,
    );
    assert_eq!(call_ids(&acts), vec!["a"]);
    let asked = checks(&acts);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].step_id, "t");
    assert_eq!(status(&st, "t"), StepStatus::Pending);
    // `a` completes: `f` is asked for, `t` is not asked again.
    let acts = st.apply(ok("a", 1, json!({})), &mut env);
    let again = checks(&acts);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].step_id, "f");
    assert_eq!(
        st.status(),
        ExecutionStatus::Running,
        "verdicts are awaited"
    );
    let acts = st.apply(verdict(&asked[0]), &mut env);
    assert_eq!(call_ids(&acts), vec!["t"]);
    // A verdict delivered twice (a stale one) changes nothing.
    assert!(st.apply(verdict(&asked[0]), &mut env).is_empty());
    st.apply(verdict(&again[0]), &mut env);
    assert_eq!(status(&st, "f"), StepStatus::Skipped);
    st.apply(ok("t", 1, json!({})), &mut env);
    assert_eq!(st.status(), ExecutionStatus::Completed);
}

/// A verdict is not persisted: after a restart the step is begun, and its condition
/// evaluated, again; so is a fallback's.
#[test]
fn recover_evaluates_awaited_conditions_again() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [
            cel_step("a", "x == 5", &[]),
            {"id": "p", "capability": "c", "errorHandler": {"type": "fallback", "action": "fb"}},
            cel_step("fb", "x == 5", &[])]}),
        &mut env,
    );
    assert_eq!(call_ids(&acts), vec!["p"]);
    let acts = st.apply(fail("p", 1, "X", false), &mut env);
    assert_eq!(checks(&acts)[0].step_id, "fb");
    let (w, p) = (st.workflow().clone(), st.plan().clone());
    let mut back = ExecutionState::restore(st.execution().clone(), w, p);
    let acts = back.apply(Input::Recover, &mut env);
    let mut asked: Vec<String> = checks(&acts).into_iter().map(|c| c.step_id).collect();
    asked.sort();
    assert_eq!(asked, vec!["a", "fb"]);
    let acts = settle(&mut back, acts, &mut env);
    let mut called = call_ids(&acts);
    called.sort();
    assert_eq!(called, vec!["a", "fb"]);
}

/// No step starts while paused: a verdict that arrives then is dropped, and the step
/// is evaluated again on resume.
#[test]
fn verdict_while_paused_waits_for_resume() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [cel_step("a", "x == 5", &[])]}),
        &mut env,
    );
    let asked = checks(&acts);
    st.apply(Input::Pause, &mut env);
    let acts = st.apply(verdict(&asked[0]), &mut env);
    assert!(call_ids(&acts).is_empty());
    assert_eq!(status(&st, "a"), StepStatus::Pending);
    assert_eq!(st.status(), ExecutionStatus::Paused, "work is left");
    let acts = st.apply(Input::Resume, &mut env);
    let acts = settle(&mut st, acts, &mut env);
    assert_eq!(call_ids(&acts), vec!["a"]);
}

/// Over the budget with this execution's values: `CONDITION_ERROR`, naming the limit.
#[test]
fn condition_over_budget_on_the_values_fails_the_step() {
    let mut env = TestEnv::new();
    let (mut st, acts) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c"},
            cel_step("b", "steps.a.outputs.items.exists(x, steps.a.outputs.items.exists(y, x == y + 1))", &["a"])]}),
        &mut env,
    );
    settle(&mut st, acts, &mut env);
    let items: Vec<u32> = (0..2000).collect();
    let acts = st.apply(ok("a", 1, json!({"items": items})), &mut env);
    settle(&mut st, acts, &mut env);
    let err = st.step(1).error.clone().expect("failed");
    assert_eq!(err.code, "CONDITION_ERROR");
    assert!(err.message.contains("celMaxCost"), "{}", err.message);
}

#[test]
fn recover_resends_the_same_attempt_and_rearms_timers() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(
        json!({"id": "w", "name": "n", "steps": [
            {"id": "a", "capability": "c"},
            {"id": "r", "capability": "c", "retryPolicy": {"maxAttempts": 3, "delayMs": 100}}]}),
        &mut env,
    );
    st.apply(fail("r", 1, "X", true), &mut env);
    let record = st.execution().clone();
    let (w, p) = (st.workflow().clone(), st.plan().clone());
    let mut back = ExecutionState::restore(record, w, p);
    let acts = back.apply(Input::Recover, &mut env);
    let c = calls(&acts);
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].step_id.as_str(), c[0].attempt),
        ("a", 1),
        "same attempt number"
    );
    assert!(timers(&acts).contains(&(
        TimerKey::Retry {
            step_id: "r".into(),
            attempt: 2
        },
        env.now + 100
    )));
    assert!(
        timers(&acts)
            .iter()
            .any(|(k, _)| *k == TimerKey::WorkflowTimeout)
    );
    assert!(events(&acts).is_empty(), "recovery publishes nothing new");
}

#[test]
fn changes_name_exactly_the_rows_touched() {
    let mut env = TestEnv::new();
    let (mut st, _) = start(chain3(), &mut env);
    let c = st.take_changes();
    assert!(c.header);
    assert_eq!(c.steps.len(), 3);
    assert_eq!(c.attempts, vec![(0, 1)]);
    st.apply(ok("a", 1, json!({"a_out": 1})), &mut env);
    let c = st.take_changes();
    assert!(
        !c.header,
        "a step completion does not rewrite the execution row"
    );
    assert_eq!(c.steps, vec![0, 1]);
    assert_eq!(c.attempts, vec![(0, 1), (1, 1)]);
    assert!(st.take_changes().is_empty());
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// Random DAG (edges from lower to higher index) and a random script of
    /// agent outcomes: the machine never dispatches a step before its
    /// dependencies finished, never re-runs a completed step, and terminates.
    fn arb_case() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u8>, u8)> {
        (2usize..9)
            .prop_flat_map(|n| {
                let deps = (0..n)
                    .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(3)))
                    .collect::<Vec<_>>();
                (deps, proptest::collection::vec(0u8..6, 64), 0u8..3)
            })
            .prop_map(|(deps, outcomes, mode)| {
                let deps = deps
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut d)| {
                        d.retain(|&x| x < i);
                        d.sort();
                        d.dedup();
                        d
                    })
                    .collect();
                (deps, outcomes, mode)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn machine_invariants((deps, outcomes, mode) in arb_case()) {
            let on_error = ["stop", "continue", "rollback"][mode as usize];
            let steps: Vec<Value> = deps.iter().enumerate().map(|(i, d)| {
                let mut s = json!({"id": format!("s{i}"), "capability": "c",
                    "dependencies": d.iter().map(|x| format!("s{x}")).collect::<Vec<_>>(),
                    "retryPolicy": {"maxAttempts": 2, "delayMs": 5}});
                if i % 3 == 1 { s["errorHandler"] = json!({"type": "skip", "action": ""}); }
                s
            }).collect();
            let mut env = TestEnv::new();
            env.compensations.insert(("agent-1".into(), "c".into()), "c_rollback".into());
            let (mut st, acts) = start(json!({"id": "w", "name": "n", "onError": on_error, "steps": steps}), &mut env);
            let mut pending: Vec<Action> = acts;
            let mut script = outcomes.into_iter().cycle();
            let mut completed_once = std::collections::HashSet::new();
            let mut terminal_events = 0;
            for _round in 0..500 {
                if pending.is_empty() { break; }
                let a = pending.remove(0);
                env.now += 1;
                let input = match a {
                    Action::Invoke(c) if c.compensation => {
                        if script.next().unwrap() % 2 == 0 { comp_ok(&c.step_id, c.attempt) } else { comp_fail(&c.step_id, c.attempt) }
                    }
                    Action::Invoke(c) => {
                        let i: usize = c.step_id[1..].parse().unwrap();
                        for &d in &deps[i] {
                            let ds = st.step(d).status;
                            prop_assert!(matches!(ds, StepStatus::Completed | StepStatus::Skipped | StepStatus::Compensated),
                                "s{i} dispatched before dependency s{d} finished ({ds:?})");
                        }
                        prop_assert!(!completed_once.contains(&c.step_id), "completed step {} invoked again", c.step_id);
                        match script.next().unwrap() {
                            0..=2 => { completed_once.insert(c.step_id.clone()); ok(&c.step_id, c.attempt, json!({"v": 1})) }
                            3 => fail(&c.step_id, c.attempt, "T", true),
                            _ => fail(&c.step_id, c.attempt, "P", false),
                        }
                    }
                    Action::SetTimer { key, at } => { env.now = env.now.max(at); Input::Timer(key) }
                    Action::Publish(e) => { if e.event_type.is_terminal() { terminal_events += 1; } continue; }
                    _ => continue,
                };
                // Workflow timeout timers are far away: skip them unless nothing else is left.
                if matches!(input, Input::Timer(TimerKey::WorkflowTimeout)) && !pending.is_empty() {
                    pending.push(Action::SetTimer { key: TimerKey::WorkflowTimeout, at: 0 });
                    continue;
                }
                let more = st.apply(input, &mut env);
                pending.extend(more);
            }
            prop_assert!(st.status().is_terminal(), "did not terminate: {:?}", st.status());
            for a in pending { if let Action::Publish(e) = a && e.event_type.is_terminal() { terminal_events += 1; } }
            prop_assert_eq!(terminal_events, 1);
        }
    }
}

fn refusal(acts: &[Action]) -> Option<&Refusal> {
    match acts {
        [Action::Refused(r)] => Some(r),
        _ => None,
    }
}

#[test]
fn control_inputs_that_do_not_apply_are_refused_with_the_current_status() {
    let mut env = TestEnv::new();
    // Pending: cancel applies; pause and resume are refused.
    let (w, p) = workflow(chain3());
    let mut st = ExecutionState::new("e".into(), w, p, Map::new(), None, None, env.now);
    st.take_changes();
    for (input, op) in [
        (Input::Pause, ControlOp::Pause),
        (Input::Resume, ControlOp::Resume),
    ] {
        let acts = st.apply(input, &mut env);
        let r = refusal(&acts).expect("refused while pending");
        assert_eq!((r.op, r.status), (op, ExecutionStatus::Pending));
        assert!(st.take_changes().is_empty(), "a refusal changes nothing");
    }

    // Running: resume is refused, pause applies, a second pause is refused.
    let (mut st, _) = start(chain3(), &mut env);
    st.take_changes();
    let acts = st.apply(Input::Resume, &mut env);
    assert_eq!(
        refusal(&acts).map(|r| (r.op, r.status, r.why)),
        Some((
            ControlOp::Resume,
            ExecutionStatus::Running,
            "it is not paused"
        ))
    );
    assert!(st.take_changes().is_empty(), "a refusal changes nothing");
    assert!(refusal(&st.apply(Input::Pause, &mut env)).is_none());
    let acts = st.apply(Input::Pause, &mut env);
    assert_eq!(
        refusal(&acts).map(|r| (r.status, r.why)),
        Some((ExecutionStatus::Paused, "it is already paused"))
    );

    // Cancelled (finished): every control input is refused, nothing changes.
    let acts = st.apply(Input::Cancel { reason: None }, &mut env);
    assert_eq!(st.status(), ExecutionStatus::Cancelled);
    assert!(refusal(&acts).is_none());
    st.take_changes();
    for (input, op) in [
        (Input::Cancel { reason: None }, ControlOp::Cancel),
        (Input::Pause, ControlOp::Pause),
        (Input::Resume, ControlOp::Resume),
    ] {
        let acts = st.apply(input, &mut env);
        let r = refusal(&acts).expect("refused once finished");
        assert_eq!(
            (r.op, r.status, r.why),
            (op, ExecutionStatus::Cancelled, "it already finished")
        );
        assert!(st.take_changes().is_empty());
    }
    assert_eq!(
        Refusal::finished(ControlOp::Pause, ExecutionStatus::Completed).message("x"),
        "cannot pause execution x: it already finished (status completed)"
    );
}

#[test]
fn compensating_refuses_pause_and_cancel() {
    let mut env = TestEnv::new();
    env.compensations
        .insert(("agent-1".into(), "reserve".into()), "release".into());
    let (mut st, _) = start(rollback_wf(), &mut env);
    st.apply(ok("a", 1, json!({})), &mut env);
    let acts = st.apply(fail("b", 1, "X", false), &mut env);
    assert!(!calls(&acts).is_empty(), "compensating");
    assert_eq!(st.phase(), Phase::Compensating);
    st.take_changes();
    for (input, op) in [
        (Input::Pause, ControlOp::Pause),
        (Input::Cancel { reason: None }, ControlOp::Cancel),
    ] {
        let acts = st.apply(input, &mut env);
        let r = refusal(&acts).expect("refused while compensating");
        assert_eq!(
            (r.op, r.status, r.why),
            (op, ExecutionStatus::Running, "it is compensating")
        );
        assert!(st.take_changes().is_empty());
    }
}
