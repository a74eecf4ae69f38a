//! The original's metrics, configuration and integration test cases, on the
//! durable SQLite store.

use std::sync::Arc;
use std::time::Duration;

use maestro_core::model::{EventFilter, EventType, ExecutionStatus, StepStatus};
use maestro_core::ports::InvokeError;
use maestro_engine::ExecuteOptions;
use serde_json::json;

use crate::support::*;

fn auth_flow() -> serde_json::Value {
    json!({
        "id": "auth-flow", "name": "Authentication Flow", "version": "1.0",
        "steps": [
            {"id": "verify-user", "agentId": "sentinel-1", "capability": "verify-identity",
             "inputs": {"userId": "${userId}"}},
            {"id": "issue-token", "agentId": "bridge-1", "capability": "issue-jwt",
             "inputs": {"userId": "${userId}"}, "dependencies": ["verify-user"],
             "condition": {"type": "comparison", "operator": "eq", "variable": "verified", "value": true}}
        ],
        "expectedOutputs": {"token": "string"}
    })
}

async fn sqlite_maestro(dir: &tempfile::TempDir) -> maestro_engine::Maestro {
    let store = maestro_store::SqliteStore::open(&dir.path().join("maestro.db"))
        .await
        .unwrap();
    maestro_with(Arc::new(store), test_config()).await
}

async fn auth_agents(m: &maestro_engine::Maestro, calls: &Calls) {
    agent(
        m,
        "sentinel-1",
        &["verify-identity"],
        calls,
        |inv| async move { Ok(obj(json!({"verified": inv.inputs["userId"] == "alice"}))) },
    )
    .await;
    agent(m, "bridge-1", &["issue-jwt"], calls, |inv| async move {
        Ok(obj(
            json!({"token": format!("jwt:{}", inv.inputs["userId"].as_str().unwrap_or(""))}),
        ))
    })
    .await;
}

#[tokio::test]
async fn coordinates_a_multi_agent_workflow_and_tracks_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    let calls = Calls::default();
    auth_agents(&m, &calls).await;
    m.define_workflow(workflow(auth_flow()), "admin")
        .await
        .unwrap();

    let mut live = m.subscribe(
        EventFilter {
            event_types: vec![EventType::WorkflowCompleted],
            ..Default::default()
        },
        16,
    );
    let e = run(&m, "auth-flow", json!({"userId": "alice"})).await;
    assert_eq!(e.status, ExecutionStatus::Completed);
    assert_eq!(e.result.as_ref().unwrap()["token"], json!("jwt:alice"));
    assert_eq!(
        e.outputs.as_ref().unwrap()["verify-user"]["verified"],
        json!(true)
    );
    let got = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.execution_id.as_deref(), Some(e.id.as_str()));

    // Not verified: the token step is skipped, the execution still completes.
    let e2 = run(&m, "auth-flow", json!({"userId": "mallory"})).await;
    assert_eq!(e2.status, ExecutionStatus::Completed);
    assert_eq!(
        e2.step_executions.get("issue-token").unwrap().status,
        StepStatus::Skipped
    );
    assert!(e2.result.unwrap().get("token").is_none());

    let evs = m
        .get_events_by_correlation(&e.context.correlation_id, None, 100)
        .await
        .unwrap();
    assert_eq!(evs.first().unwrap().event_type, EventType::WorkflowStarted);
    assert_eq!(evs.last().unwrap().event_type, EventType::WorkflowCompleted);
    assert_eq!(
        evs.iter()
            .filter(|e| e.event_type == EventType::StepCompleted)
            .count(),
        2
    );
    m.shutdown().await;
}

#[tokio::test]
async fn metrics_and_agent_health_come_from_real_runs() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    let calls = Calls::default();
    auth_agents(&m, &calls).await;
    agent(&m, "broken-1", &["explode"], &calls, |_| async {
        Err(InvokeError::new("KABOOM", "no", false))
    })
    .await;
    m.define_workflow(workflow(auth_flow()), "admin")
        .await
        .unwrap();
    m.define_workflow(
        workflow(
            json!({"id": "boom", "name": "b", "steps": [{"id": "x", "capability": "explode"}]}),
        ),
        "admin",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        run(&m, "auth-flow", json!({"userId": "alice"})).await;
    }
    run(&m, "boom", json!({})).await;
    let metrics = m.get_metrics().await.unwrap();
    assert_eq!(metrics.total_workflows, 2);
    assert_eq!(metrics.total_executions, 4);
    assert_eq!(metrics.completed_workflows, 3);
    assert_eq!(metrics.failed_workflows, 1);
    assert!((metrics.success_rate - 75.0).abs() < 1e-9);
    assert_eq!(metrics.active_executions, 0);
    assert!(metrics.event_throughput > 0.0);
    assert!(metrics.average_execution_time >= 0.0);
    let h = m.get_agent_health("sentinel-1").unwrap();
    assert_eq!(h.capabilities[0].invocations, 3);
    assert_eq!(h.error_rate, 0.0);
    let broken = m.get_agent_health("broken-1").unwrap();
    assert_eq!(broken.error_rate, 1.0);
    assert!(broken.score < h.score);
    assert_eq!(m.get_all_agent_health().len(), 3);
    assert!(metrics.agent_health_scores.contains_key("bridge-1"));
    m.shutdown().await;
}

#[tokio::test]
async fn config_is_validated_applied_and_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    assert_eq!(m.get_config().max_concurrent_workflows, 100);
    let c = m
        .update_config(&json!({"agentTimeoutMs": 1234, "enableCompensation": true}))
        .await
        .unwrap();
    assert_eq!(c.agent_timeout_ms, 1234);
    assert!(
        m.update_config(&json!({"maxConcurrentWorkflows": 0}))
            .await
            .is_err()
    );
    assert!(m.update_config(&json!({"unknownKey": 1})).await.is_err());
    assert_eq!(
        m.get_config().agent_timeout_ms,
        1234,
        "a refused patch changes nothing"
    );
    m.shutdown().await;
    let m = sqlite_maestro(&dir).await;
    assert_eq!(m.get_config().agent_timeout_ms, 1234);
    assert!(m.get_config().enable_compensation);
    m.shutdown().await;
}

#[tokio::test]
async fn registry_workflows_and_subscriptions_through_the_facade() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    let calls = Calls::default();
    auth_agents(&m, &calls).await;
    let dup = m
        .register_agent(agent_json("sentinel-1", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), "ALREADY_EXISTS");
    assert_eq!(m.find_agents_by_capability("issue-jwt")[0].id, "bridge-1");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sub = m.subscribe_to_events(
        EventFilter {
            event_types: vec![EventType::AgentDeregistered],
            ..Default::default()
        },
        move |e| {
            let s = s2.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push(e.target_agent.clone().unwrap_or_default())
            }
        },
    );
    m.deregister_agent("bridge-1").await.unwrap();
    for _ in 0..100 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.lock().unwrap().as_slice(), ["bridge-1"]);
    assert!(m.unsubscribe_from_events(&sub));
    assert!(m.get_agent("bridge-1").is_none());

    let wf = m
        .define_workflow(workflow(auth_flow()), "admin")
        .await
        .unwrap();
    assert_eq!(wf.revision, 1);
    assert_eq!(
        m.define_workflow(workflow(auth_flow()), "admin")
            .await
            .unwrap_err()
            .code(),
        "ALREADY_EXISTS"
    );
    let up = m
        .update_workflow("auth-flow", &json!({"description": "v2"}))
        .await
        .unwrap();
    assert_eq!((up.revision, up.description.as_str()), (2, "v2"));
    assert_eq!(
        m.get_workflow("auth-flow", Some(1))
            .await
            .unwrap()
            .unwrap()
            .description,
        ""
    );
    assert_eq!(m.list_workflows(&[], 10, 0).await.unwrap().total, 1);
    let cyc = m
        .define_workflow(
            workflow(json!({"id": "c", "name": "c", "steps": [
            {"id": "a", "capability": "x", "dependencies": ["b"]},
            {"id": "b", "capability": "x", "dependencies": ["a"]}]})),
            "admin",
        )
        .await
        .unwrap_err();
    assert_eq!(cyc.code(), "CYCLE_DETECTED");
    m.delete_workflow("auth-flow").await.unwrap();
    assert!(m.get_workflow("auth-flow", None).await.unwrap().is_none());
    m.shutdown().await;
}

#[tokio::test]
async fn graceful_restart_resumes_unfinished_executions() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Calls::default();
    let m = sqlite_maestro(&dir).await;
    agent(&m, "a", &["slow"], &calls, |_| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok(obj(json!({})))
    })
    .await;
    m.define_workflow(workflow(json!({"id": "w", "name": "n", "steps": [
        {"id": "s1", "capability": "slow"}, {"id": "s2", "capability": "slow", "dependencies": ["s1"]},
        {"id": "s3", "capability": "slow", "dependencies": ["s2"]}]})), "t")
        .await.unwrap();
    let (e, _) = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Shut down with the drain shorter than the call: that call is abandoned.
    m.shutdown().await;
    let mid = m.get_execution(&e.id).await.unwrap().unwrap();
    assert!(!mid.status.is_terminal(), "{mid:#?}");

    let inproc = maestro_engine::invoker::InProcessInvoker::new();
    handlers(&inproc, "a", &["slow"], &calls, |_| async {
        Ok(obj(json!({})))
    });
    let store = maestro_store::SqliteStore::open(&dir.path().join("maestro.db"))
        .await
        .unwrap();
    let m = maestro_with_handlers(Arc::new(store), test_config(), inproc).await;
    let done = m
        .wait_for_execution(&e.id, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Completed);
    // Every step completed exactly once; any re-sent call reused its key.
    for s in ["s1", "s2", "s3"] {
        let keys: Vec<_> = calls
            .all()
            .into_iter()
            .filter(|c| c.key.contains(&format!(":{s}:")))
            .map(|c| c.key)
            .collect();
        assert!(!keys.is_empty());
        assert!(
            keys.iter().all(|k| k == &format!("{}:{s}:1", e.id)),
            "{s}: {keys:?}"
        );
    }
    m.shutdown().await;
}

#[tokio::test]
async fn executions_pin_the_latest_revision_right_after_an_update() {
    let m = maestro().await;
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    m.define_workflow(
        workflow(json!({"id": "w", "name": "n", "steps": [{"id": "s", "capability": "op"}]})),
        "t",
    )
    .await
    .unwrap();
    let first = run(&m, "w", json!({})).await;
    assert_eq!(first.revision, 1);
    m.update_workflow("w", &json!({"steps": [{"id": "s2", "capability": "op"}]}))
        .await
        .unwrap();
    let second = run(&m, "w", json!({})).await;
    assert_eq!(
        second.revision, 2,
        "the cached latest revision was invalidated"
    );
    assert!(second.step_executions.get("s2").is_some());
    m.delete_workflow("w").await.unwrap();
    let err = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND");
    m.shutdown().await;
}

/// Retention deletes finished executions and old events, never an unfinished
/// execution, and the event log's seqs continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_finished_executions_and_old_events() {
    use maestro_engine::retention::{Retention, purge};
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    let calls = Calls::default();
    echo_agent(&m, "echo", &["say"], &calls).await;
    agent(&m, "slow", &["wait"], &calls, |_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(obj(json!({})))
    })
    .await;
    let wf = |id: &str, cap: &str| {
        serde_json::from_value(json!({"id": id, "name": id,
            "steps": [{"id": "s", "capability": cap}]}))
        .unwrap()
    };
    m.define_workflow(wf("quick", "say"), "test").await.unwrap();
    m.define_workflow(wf("stuck", "wait"), "test")
        .await
        .unwrap();
    let mut done = Vec::new();
    for _ in 0..3 {
        let (e, _) = m
            .execute_workflow("quick", ExecuteOptions::default())
            .await
            .unwrap();
        let e = m
            .wait_for_execution(&e.id, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.status, ExecutionStatus::Completed);
        done.push(e.id);
    }
    let (running, _) = m
        .execute_workflow("stuck", ExecuteOptions::default())
        .await
        .unwrap();
    let last = m.store().last_seq().await.unwrap();

    // A horizon in the future: everything finished and every event is old.
    let later = maestro_engine::clock::now_ms() + 1000;
    let p = purge(
        &**m.store(),
        Retention {
            executions_ms: Some(1),
            events_ms: Some(1),
        },
        later,
    )
    .await
    .unwrap();
    assert_eq!(p.executions, 3, "{p:?}");
    assert_eq!(p.events, last, "{p:?}");
    for id in &done {
        assert!(m.get_execution(id).await.unwrap().is_none());
    }
    let still = m.get_execution(&running.id).await.unwrap().unwrap();
    assert_eq!(
        still.status,
        ExecutionStatus::Running,
        "never an unfinished one"
    );
    let e = m
        .publish_event(maestro_core::model::NewEvent::engine(
            EventType::AgentEvent,
            json!({}),
            0,
        ))
        .await
        .unwrap();
    assert_eq!(e.seq, last + 1, "seqs continue after a purge");
    let history = m
        .get_event_history(&EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    m.shutdown().await;
}

/// Polls `done` every 10 ms for up to 5 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// `eventBusBufferSize` is the queue of each `subscribe_to_events`
/// subscription, as configured when it subscribes: a handler that falls
/// further behind loses events, and nobody else is held up.
#[tokio::test]
async fn event_bus_buffer_size_bounds_a_slow_subscription() {
    let m = maestro().await;
    m.update_config(&json!({"eventBusBufferSize": 2}))
        .await
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (g, s) = (gate.clone(), seen.clone());
    m.subscribe_to_events(
        EventFilter {
            event_types: vec![EventType::AgentEvent],
            ..Default::default()
        },
        move |e| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.lock().unwrap().push(e.seq);
                g.acquire().await.unwrap().forget();
            }
        },
    );
    let publish = || {
        m.publish_event(maestro_core::model::NewEvent::engine(
            EventType::AgentEvent,
            json!({}),
            0,
        ))
    };
    let first = publish().await.unwrap().seq;
    eventually("the handler to hold the first event", || {
        *seen.lock().unwrap() == [first]
    })
    .await;
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(publish().await.unwrap().seq);
    }
    eventually("two events lost", || m.bus().dropped_total() == 2).await;
    gate.add_permits(10);
    eventually("the queued events", || {
        *seen.lock().unwrap() == [first, rest[0], rest[1]]
    })
    .await;
    assert_eq!(m.bus().dropped_total(), 2);
    m.shutdown().await;
}

/// The bus keeps no events: after a restart it continues after the store's
/// last seq, and subscribers get only what is committed from then on.
#[tokio::test]
async fn the_bus_continues_after_the_log_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite_maestro(&dir).await;
    let event = || maestro_core::model::NewEvent::engine(EventType::AgentEvent, json!({}), 0);
    let before = m.publish_event(event()).await.unwrap().seq;
    m.shutdown().await;

    let m = sqlite_maestro(&dir).await;
    assert_eq!(m.bus().last_seq(), m.store().last_seq().await.unwrap());
    assert!(m.bus().last_seq() >= before);
    let mut live = m.subscribe(EventFilter::default(), 16);
    let next = m.publish_event(event()).await.unwrap();
    assert!(next.seq > before);
    let got = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .expect("published live")
        .expect("an event");
    assert_eq!(got.seq, next.seq);
    m.shutdown().await;
}
