//! The execution semantics of docs/EXECUTION.md, end to end through the executor with
//! in-process agents (timing with tokio's paused clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use maestro_core::model::{EventFilter, EventType, ExecutionStatus, RollbackStatus, StepStatus};
use maestro_core::ports::InvokeError;
use maestro_engine::ExecuteOptions;
use serde_json::json;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn retries_are_spaced_by_backoff() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "flaky", &["op"], &calls, |_| async {
        Err(InvokeError::new("TEMP", "try later", true))
    })
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "op",
        "retryPolicy": {"maxAttempts": 4, "delayMs": 100, "backoffMultiplier": 2, "maxDelayMs": 300}}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let c = calls.of("op");
    assert_eq!(c.len(), 4);
    let gaps: Vec<u128> = c
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    for (gap, want) in gaps.iter().zip([100u128, 200, 300]) {
        assert!(
            *gap >= want && *gap < want + 20,
            "gap {gap} ms, expected {want} ms ({gaps:?})"
        );
    }
    let keys: Vec<_> = c.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        (1..=4)
            .map(|n| format!("{}:a:{n}", e.id))
            .collect::<Vec<_>>()
    );
    let s = e.step_executions.get("a").unwrap();
    assert_eq!(s.retry_count, 3);
    assert_eq!(s.attempts.len(), 4);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_are_not_retried() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "strict", &["op", "listed"], &calls, |inv| async move {
        if inv.capability == "op" {
            Err(InvokeError::new("BAD_REQUEST", "no", false))
        } else {
            Err(InvokeError::new("QUOTA", "no", true))
        }
    })
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "onError": "continue", "steps": [
        {"id": "a", "capability": "op", "retryPolicy": {"maxAttempts": 5, "delayMs": 10}},
        {"id": "b", "capability": "listed", "retryPolicy": {"maxAttempts": 5, "delayMs": 10, "nonRetryableCodes": ["QUOTA"]}}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(calls.of("op").len(), 1);
    assert_eq!(calls.of("listed").len(), 1);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_fails_retries_and_records_late_answers() {
    let m = maestro().await;
    let calls = Calls::default();
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    agent(&m, "slow", &["op"], &calls, move |_| {
        let n = n2.clone();
        async move {
            // First call answers after 500 ms (too late); the second at once.
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(obj(json!({"v": 1})))
        }
    })
    .await;
    m.define_workflow(
        workflow(
            json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "op",
        "timeout": 100, "retryPolicy": {"maxAttempts": 2, "delayMs": 1000}}]}),
        ),
        "t",
    )
    .await
    .unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Completed);
    let s = e.step_executions.get("a").unwrap();
    assert_eq!(s.attempts.len(), 2);
    assert_eq!(s.attempts[0].error.as_ref().unwrap().code, "STEP_TIMEOUT");
    let late = s.attempts[0]
        .late_result
        .as_ref()
        .expect("late answer recorded");
    assert_eq!(late.outcome, "completed");
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn skip_and_fallback_handlers() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(
        &m,
        "a1",
        &["broken", "backup", "after"],
        &calls,
        |inv| async move {
            match inv.capability.as_str() {
                "broken" => Err(InvokeError::new("DOWN", "down", false)),
                "backup" => Ok(obj(json!({"token": "from-backup"}))),
                _ => Ok(obj(json!({"saw": inv.inputs}))),
            }
        },
    )
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "skipme", "capability": "broken", "errorHandler": {"type": "skip", "action": ""}},
        {"id": "main", "capability": "broken", "errorHandler": {"type": "fallback", "action": "fb"}},
        {"id": "fb", "capability": "backup"},
        {"id": "after", "capability": "after", "dependencies": ["skipme", "main"],
         "inputs": {"t": "${steps.main.outputs.token}"}}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Completed, "{:?}", e.error);
    assert_eq!(
        e.step_executions.get("skipme").unwrap().status,
        StepStatus::Skipped
    );
    assert_eq!(
        e.step_executions
            .get("main")
            .unwrap()
            .fallback_step
            .as_deref(),
        Some("fb")
    );
    let after = calls.of("after");
    assert_eq!(after[0].inputs["t"], json!("from-backup"));
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retry_handler_runs_one_more_round() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a1", &["op"], &calls, |_| async {
        Err(InvokeError::new("X", "x", true))
    })
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [{"id": "a", "capability": "op",
        "retryPolicy": {"maxAttempts": 2, "delayMs": 10},
        "errorHandler": {"type": "retry", "action": "", "params": {"maxAttempts": 3, "delayMs": 50}}}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(calls.of("op").len(), 5, "2 + one round of 3");
    assert_eq!(
        e.step_executions
            .get("a")
            .unwrap()
            .attempts
            .last()
            .unwrap()
            .attempt,
        5
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rollback_really_compensates_in_reverse_order() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(
        &m,
        "shop",
        &["reserve", "reserve_rollback", "charge", "refund", "ship"],
        &calls,
        |inv| async move {
            match inv.capability.as_str() {
                "ship" => Err(InvokeError::new("NO_TRUCK", "no truck", false)),
                "charge" => Ok(obj(json!({"chargeId": "ch_9"}))),
                _ => Ok(obj(json!({}))),
            }
        },
    )
    .await;
    // `charge` declares its compensation through the step; `reserve` through `<cap>_rollback`.
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "onError": "rollback", "steps": [
        {"id": "reserve", "capability": "reserve", "inputs": {"sku": "${sku}"}},
        {"id": "charge", "capability": "charge", "dependencies": ["reserve"],
         "compensate": {"capability": "refund", "inputs": {"id": "${steps.charge.outputs.chargeId}"}}},
        {"id": "ship", "capability": "ship", "dependencies": ["charge"]}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({"sku": "X1"})).await;
    assert_eq!(
        e.status,
        ExecutionStatus::RolledBack,
        "{:?}",
        e.rollback_log
    );
    let order: Vec<_> = calls.all().iter().map(|c| c.capability.clone()).collect();
    assert_eq!(
        order,
        ["reserve", "charge", "ship", "refund", "reserve_rollback"]
    );
    let refund = &calls.of("refund")[0];
    assert_eq!(refund.inputs["id"], json!("ch_9"));
    assert_eq!(refund.key, format!("{}:charge:compensate:1", e.id));
    let rr = &calls.of("reserve_rollback")[0];
    assert_eq!(
        rr.inputs["inputs"]["sku"],
        json!("X1"),
        "default compensation inputs are {{inputs, outputs}}"
    );
    let log = e.rollback_log.unwrap();
    assert!(log.iter().all(|l| l.status == RollbackStatus::Executed));
    assert_eq!(
        e.step_executions.get("charge").unwrap().status,
        StepStatus::Compensated
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn failing_compensation_leaves_execution_failed_with_log() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(
        &m,
        "shop",
        &["reserve", "reserve_rollback", "ship"],
        &calls,
        |inv| async move {
            match inv.capability.as_str() {
                "ship" => Err(InvokeError::new("NO_TRUCK", "no truck", false)),
                "reserve_rollback" => Err(InvokeError::new("STUCK", "cannot release", true)),
                _ => Ok(obj(json!({}))),
            }
        },
    )
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "onError": "rollback", "steps": [
        {"id": "reserve", "capability": "reserve", "retryPolicy": {"maxAttempts": 3, "delayMs": 10}},
        {"id": "ship", "capability": "ship", "dependencies": ["reserve"]}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        calls.of("reserve_rollback").len(),
        3,
        "compensation retried with the step's policy"
    );
    let log = e.rollback_log.unwrap();
    assert_eq!(log[0].status, RollbackStatus::Failed);
    assert_eq!(log[0].error.as_ref().unwrap().code, "STUCK");
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn on_error_stop_and_continue() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a", &["ok", "bad"], &calls, |inv| async move {
        if inv.capability == "bad" {
            Err(InvokeError::new("BAD", "bad", false))
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(obj(json!({})))
        }
    })
    .await;
    let steps = json!([
        {"id": "bad", "capability": "bad"},
        {"id": "slow", "capability": "ok"},
        {"id": "after-bad", "capability": "ok", "dependencies": ["bad"]},
        {"id": "after-slow", "capability": "ok", "dependencies": ["slow"]}]);
    m.define_workflow(
        workflow(json!({"id": "stop", "name": "n", "steps": steps})),
        "t",
    )
    .await
    .unwrap();
    m.define_workflow(
        workflow(json!({"id": "cont", "name": "n", "onError": "continue", "steps": steps})),
        "t",
    )
    .await
    .unwrap();
    let e = run(&m, "stop", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        e.step_executions.get("slow").unwrap().status,
        StepStatus::Completed,
        "running steps finish"
    );
    assert_eq!(
        e.step_executions.get("after-slow").unwrap().status,
        StepStatus::Pending,
        "nothing new after stop"
    );
    let e = run(&m, "cont", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(
        e.step_executions.get("after-slow").unwrap().status,
        StepStatus::Completed
    );
    let ab = e.step_executions.get("after-bad").unwrap();
    assert_eq!(
        (ab.status, ab.error.as_ref().unwrap().code.as_str()),
        (StepStatus::Skipped, "DEPENDENCY_FAILED")
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancel_mid_run_and_pause_resume() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a", &["slow"], &calls, |_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(obj(json!({})))
    })
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "s1", "capability": "slow"}, {"id": "s2", "capability": "slow", "dependencies": ["s1"]}]})), "t")
        .await.unwrap();

    let (e, _) = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = m
        .cancel_execution(&e.id, Some("changed my mind".into()))
        .await
        .unwrap();
    assert_eq!(c.status, ExecutionStatus::Cancelled);
    let s1 = c.step_executions.get("s1").unwrap();
    assert_eq!(
        (s1.status, s1.error.as_ref().unwrap().code.as_str()),
        (StepStatus::Skipped, "CANCELLED")
    );
    assert_eq!(
        c.step_executions.get("s2").unwrap().status,
        StepStatus::Pending
    );
    let again = m.cancel_execution(&e.id, None).await.unwrap_err();
    assert_eq!(again.code(), "INVALID_STATE");

    let (e, _) = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let p = m.pause_execution(&e.id).await.unwrap();
    assert_eq!(p.status, ExecutionStatus::Paused);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = m.get_execution(&e.id).await.unwrap().unwrap();
    assert_eq!(
        p.step_executions.get("s1").unwrap().status,
        StepStatus::Completed
    );
    assert_eq!(
        p.step_executions.get("s2").unwrap().status,
        StepStatus::Pending,
        "paused: s2 waits"
    );
    assert_eq!(
        m.pause_execution(&e.id).await.unwrap_err().code(),
        "INVALID_STATE"
    );
    m.resume_execution(&e.id).await.unwrap();
    let done = m
        .wait_for_execution(&e.id, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Completed);
    let types: Vec<_> = m
        .get_events_by_correlation(&e.id, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert!(
        types.contains(&EventType::WorkflowPaused) && types.contains(&EventType::WorkflowResumed)
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_queues_fifo_and_bounds_the_queue() {
    let store = Arc::new(maestro_store::MemoryStore::new());
    let mut config = test_config();
    config.max_concurrent_workflows = 2;
    let mut o = maestro_engine::MaestroOptions::new(store);
    o.config = config;
    o.health_checker = false;
    o.max_queued_executions = 3;
    let m = maestro_engine::Maestro::initialize(o).await.unwrap();
    let calls = Calls::default();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r2, p2) = (running.clone(), peak.clone());
    agent(&m, "a", &["slow"], &calls, move |_| {
        let (r, p) = (r2.clone(), p2.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(obj(json!({})))
        }
    })
    .await;
    m.define_workflow(
        workflow(json!({"id": "w", "name": "n", "steps": [{"id": "s", "capability": "slow"}]})),
        "t",
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (e, _) = m
            .execute_workflow("w", ExecuteOptions::default())
            .await
            .unwrap();
        let want = if i < 2 {
            ExecutionStatus::Running
        } else {
            ExecutionStatus::Pending
        };
        assert_eq!(e.status, want, "execution {i}");
        ids.push(e.id);
    }
    let full = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(full.code(), "QUEUE_FULL");
    let mut started = Vec::new();
    for id in &ids {
        let e = m
            .wait_for_execution(id, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.status, ExecutionStatus::Completed);
        started.push(e.started_at.unwrap());
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert!(
        started.windows(2).all(|w| w[0] <= w[1]),
        "FIFO: {started:?}"
    );
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idempotent_execute() {
    let m = maestro().await;
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    m.define_workflow(
        workflow(json!({"id": "w", "name": "n", "steps": [{"id": "s", "capability": "op"}]})),
        "t",
    )
    .await
    .unwrap();
    let opts = |v| ExecuteOptions {
        inputs: obj(json!({"v": v})),
        idempotency_key: Some("k-1".into()),
        ..Default::default()
    };
    let (a, existing_a) = m.execute_workflow("w", opts(1)).await.unwrap();
    let (b, existing_b) = m.execute_workflow("w", opts(1)).await.unwrap();
    assert!(!existing_a && existing_b);
    assert_eq!(a.id, b.id);
    let err = m.execute_workflow("w", opts(2)).await.unwrap_err();
    assert_eq!(err.code(), "IDEMPOTENCY_KEY_REUSED");
    m.wait_for_execution(&a.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(calls.all().len(), 1);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn workflow_timeout_fails_the_execution() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a", &["hang"], &calls, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(obj(json!({})))
    })
    .await;
    m.define_workflow(
        workflow(json!({"id": "w", "name": "n", "maxDuration": 300,
        "steps": [{"id": "s", "capability": "hang", "timeout": 60000}]})),
        "t",
    )
    .await
    .unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(e.error.as_ref().unwrap().code, "WORKFLOW_TIMEOUT");
    let d = e.completed_at.unwrap() - e.started_at.unwrap();
    assert!((300..400).contains(&d), "timed out after {d} ms");
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn routing_by_capability_and_max_concurrency() {
    let m = maestro().await;
    let calls = Calls::default();
    let mut a: maestro_core::model::RegisteredAgent = agent_json("only", &["op"]);
    a.max_concurrency = Some(1);
    m.register_agent(a).await.unwrap();
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r2, p2) = (running.clone(), peak.clone());
    handlers(m.in_process(), "only", &["op"], &calls, move |_| {
        let (r, p) = (r2.clone(), p2.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(obj(json!({})))
        }
    });
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "a", "capability": "op"}, {"id": "b", "capability": "op"}, {"id": "c", "capability": "op"},
        {"id": "missing", "capability": "nobody-has-it", "dependencies": ["a", "b", "c"]}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(peak.load(Ordering::SeqCst), 1, "maxConcurrency 1 respected");
    assert_eq!(calls.all().len(), 3);
    assert_eq!(e.status, ExecutionStatus::Failed);
    assert_eq!(e.error.unwrap().code, "CAPABILITY_NOT_FOUND");
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn offline_agent_makes_step_wait_then_no_agent_available() {
    let m = maestro().await;
    let calls = Calls::default();
    echo_agent(&m, "off", &["op"], &calls).await;
    m.update_agent_status("off", maestro_core::model::AgentStatus::Offline)
        .await
        .unwrap();
    m.define_workflow(
        workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "a", "capability": "op", "timeout": 200}]})),
        "t",
    )
    .await
    .unwrap();
    let e = run(&m, "w", json!({})).await;
    assert_eq!(e.error.unwrap().code, "NO_AGENT_AVAILABLE");
    assert!(calls.all().is_empty());
    // Back online while a step waits: it runs.
    let (e, _) = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.update_agent_status("off", maestro_core::model::AgentStatus::Online)
        .await
        .unwrap();
    let e = m
        .wait_for_execution(&e.id, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.status, ExecutionStatus::Completed);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn input_schema_and_output_size_are_enforced() {
    let m = maestro().await;
    let calls = Calls::default();
    let a: maestro_core::model::RegisteredAgent = serde_json::from_value(json!({
        "id": "typed", "type": "t", "transport": "inprocess",
        "capabilities": [{"id": "sign", "inputs": {"data": "string"}}, {"id": "big"}]}))
    .unwrap();
    m.register_agent(a).await.unwrap();
    handlers(m.in_process(), "typed", &["sign"], &calls, |_| async {
        Ok(obj(json!({"signature": "s"})))
    });
    m.in_process().register("typed", "big", |_| async {
        Ok(obj(json!({"blob": "x".repeat(2 << 20)})))
    });
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "onError": "continue", "steps": [
        {"id": "bad", "capability": "sign", "inputs": {"data": 42}, "retryPolicy": {"maxAttempts": 3, "delayMs": 1}},
        {"id": "big", "capability": "big", "retryPolicy": {"maxAttempts": 3, "delayMs": 1}}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    let bad = e.step_executions.get("bad").unwrap();
    assert_eq!(bad.error.as_ref().unwrap().code, "INPUT_SCHEMA_MISMATCH");
    assert_eq!(bad.attempts.len(), 1, "not retried");
    assert!(calls.all().is_empty(), "the agent was never called");
    let big = e.step_executions.get("big").unwrap();
    assert_eq!(big.error.as_ref().unwrap().code, "OUTPUT_TOO_LARGE");
    assert_eq!(big.attempts.len(), 1);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_execution_publishes_started_once_and_one_terminal_event() {
    let m = maestro().await;
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "s1", "capability": "op"}, {"id": "s2", "capability": "op", "dependencies": ["s1"]}]})), "t")
        .await.unwrap();
    let e = run(&m, "w", json!({})).await;
    let evs = m
        .get_event_history(
            &EventFilter {
                execution_id: Some(e.id.clone()),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    let types: Vec<_> = evs.iter().map(|e| e.event_type).collect();
    assert_eq!(
        types,
        vec![
            EventType::WorkflowStarted,
            EventType::StepStarted,
            EventType::StepCompleted,
            EventType::StepStarted,
            EventType::StepCompleted,
            EventType::WorkflowCompleted,
        ]
    );
    assert!(evs.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(evs.iter().all(|ev| ev.correlation_id == e.context.correlation_id && ev.source_agent == "maestro"));
    m.shutdown().await;
}

/// A finished execution holds no timer: its workflow-timeout and retry timers are dropped
/// when it finishes, so the executor's memory does not grow with the rate of executions
/// times `defaultWorkflowTimeout`. A running execution keeps its timeout armed.
#[tokio::test(start_paused = true)]
async fn finished_executions_hold_no_timers() {
    let m = maestro().await;
    let calls = Calls::default();
    let n = Arc::new(AtomicU32::new(0));
    agent(&m, "a", &["flaky", "hang"], &calls, move |inv| {
        let n = n.clone();
        async move {
            if inv.capability == "hang" {
                std::future::pending::<()>().await;
            }
            if n.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                Err(InvokeError::new("TEMP", "again", true))
            } else {
                Ok(obj(json!({})))
            }
        }
    })
    .await;
    m.define_workflow(
        workflow(
            json!({"id": "w", "name": "n", "steps": [{"id": "s", "capability": "flaky",
        "retryPolicy": {"maxAttempts": 3, "delayMs": 50}}]}),
        ),
        "t",
    )
    .await
    .unwrap();
    m.define_workflow(
        workflow(json!({"id": "h", "name": "n", "steps": [{"id": "s", "capability": "hang"}]})),
        "t",
    )
    .await
    .unwrap();
    let (hanging, _) = m
        .execute_workflow("h", ExecuteOptions::default())
        .await
        .unwrap();
    for _ in 0..20 {
        let e = run(&m, "w", json!({})).await;
        assert_eq!(e.status, ExecutionStatus::Completed);
    }
    assert!(
        calls.of("flaky").len() > 20,
        "retries armed retry timers too"
    );
    let timers = || m.executor().stats().timers.load(Ordering::Relaxed);
    for _ in 0..100 {
        if timers() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(timers(), 1, "only the running execution's timeout is armed");
    m.cancel_execution(&hanging.id, None).await.unwrap();
    for _ in 0..100 {
        if timers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(timers(), 0, "a cancelled execution's timeout is dropped");
    m.shutdown().await;
}
