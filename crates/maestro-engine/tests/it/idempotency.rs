//! Execute `Idempotency-Key`s decided by the commit that creates the execution
//! (one execution per key, however the requests race; expiry 24 h after the
//! claim and once its execution finished, on the engine's clock), and control
//! commands decided by the state machine (answers consistent with what was
//! committed).

use std::sync::Arc;
use std::time::Duration;

use maestro_core::model::{EventFilter, EventType, ExecutionStatus, WorkflowExecution};
use maestro_core::ports::Store;
use maestro_engine::{ExecuteOptions, Maestro};
use serde_json::{Value, json};

use crate::support::*;

fn keyed(key: &str, v: Value) -> ExecuteOptions {
    ExecuteOptions {
        inputs: obj(json!({ "v": v })),
        idempotency_key: Some(key.to_owned()),
        ..Default::default()
    }
}

async fn one_step(m: &Maestro, id: &str, capability: &str, extra: Value) {
    let mut wf = json!({"id": id, "name": id, "steps": [{"id": "s", "capability": capability}]});
    if let (Some(w), Some(x)) = (wf.as_object_mut(), extra.as_object()) {
        w.extend(x.clone());
    }
    m.define_workflow(workflow(wf), "t").await.unwrap();
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        maestro_store::SqliteStore::open(&dir.path().join("maestro.db"))
            .await
            .unwrap(),
    )
}

/// Many requests with one key at once (same turn and later turns): one
/// execution, one agent call; every other request answers that execution, and
/// one with another body `IDEMPOTENCY_KEY_REUSED`.
async fn concurrent_requests(m: Maestro) {
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    one_step(&m, "w", "op", json!({})).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            if i % 10 == 5 {
                tokio::task::yield_now().await;
            }
            m.execute_workflow("w", keyed("race", json!(1))).await
        }));
    }
    let reuse = {
        let m = m.clone();
        tokio::spawn(async move { m.execute_workflow("w", keyed("race", json!(2))).await })
    };
    let mut ids = Vec::new();
    let mut created = 0;
    let mut reused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((e, existing)) => {
                created += usize::from(!existing);
                ids.push(e.id);
            }
            Err(e) => {
                assert_eq!(e.code(), "IDEMPOTENCY_KEY_REUSED");
                reused += 1;
            }
        }
    }
    match reuse.await.unwrap() {
        // The usual order: the first request won, the other body is refused.
        Err(e) => {
            assert_eq!(e.code(), "IDEMPOTENCY_KEY_REUSED");
            assert_eq!((reused, created), (0, 1), "exactly one request created it");
        }
        // The other body came first: every same-body request is refused.
        Ok((e, existing)) => {
            assert!(!existing);
            assert_eq!(reused, 40);
            ids.push(e.id);
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one execution for the key: {ids:?}");
    let done = m
        .wait_for_execution(&ids[0], Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, ExecutionStatus::Completed);
    let listed = m
        .query_executions(&maestro_core::ports::ExecutionQuery {
            workflow_id: Some("w".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.total, 1, "no losing execution was stored");
    assert_eq!(calls.all().len(), 1, "one set of agent calls");
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_with_one_key_start_one_execution() {
    concurrent_requests(maestro().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_start_one_execution_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_requests(maestro_with(sqlite_store(&dir).await, test_config()).await).await;
}

/// Time moves on the engine's (tokio's paused) clock, which the claims carry to
/// the store (the stores' own checks of the rule, with explicit times, are the
/// conformance suite's `idempotency_key_expiry`): a finished execution's key starts a new execution after 24 h,
/// whose key then holds for another 24 h; a key whose execution still runs
/// after 24 h keeps answering with it.
async fn expiry(m: Maestro) {
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    agent(&m, "slow", &["slow-op"], &calls, |_| async {
        tokio::time::sleep(Duration::from_secs(60 * 3600)).await;
        Ok(obj(json!({})))
    })
    .await;
    one_step(&m, "w", "op", json!({})).await;
    let three_days = 3 * 24 * 3600 * 1000u64;
    m.define_workflow(
        workflow(
            json!({"id": "slow", "name": "slow", "maxDuration": three_days,
            "steps": [{"id": "s", "capability": "slow-op", "timeout": three_days}]}),
        ),
        "t",
    )
    .await
    .unwrap();
    let hour = Duration::from_secs(3600);

    let (a, existing) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    assert!(!existing);
    let (s, _) = m
        .execute_workflow("slow", keyed("s", json!(1)))
        .await
        .unwrap();
    m.wait_for_execution(&a.id, Duration::from_secs(5))
        .await
        .unwrap();

    tokio::time::advance(23 * hour).await;
    let (again, existing) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    assert!(
        existing && again.id == a.id,
        "within 24 h: the same execution"
    );
    let err = m
        .execute_workflow("w", keyed("k", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "IDEMPOTENCY_KEY_REUSED");

    tokio::time::advance(hour + Duration::from_secs(60)).await;
    let (b, existing) = m.execute_workflow("w", keyed("k", json!(2))).await.unwrap();
    assert!(
        !existing && b.id != a.id,
        "after 24 h, finished: a new execution"
    );
    m.wait_for_execution(&b.id, Duration::from_secs(5))
        .await
        .unwrap();
    tokio::time::advance(20 * hour).await;
    let (again, existing) = m.execute_workflow("w", keyed("k", json!(2))).await.unwrap();
    assert!(
        existing && again.id == b.id,
        "the new claim holds for the next 24 h"
    );
    let err = m
        .execute_workflow("w", keyed("k", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        "IDEMPOTENCY_KEY_REUSED",
        "compared with the new request"
    );

    // 45 h after it started, the slow execution still runs: its key holds.
    let (again, existing) = m
        .execute_workflow("slow", keyed("s", json!(1)))
        .await
        .unwrap();
    assert!(
        existing && again.id == s.id,
        "a running execution keeps its key"
    );
    assert_eq!(again.status, ExecutionStatus::Running);
    assert_eq!(calls.of("op").len(), 2);
    assert_eq!(calls.of("slow-op").len(), 1);
    m.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_key_expires_24_h_after_its_claim_once_its_execution_finished() {
    expiry(maestro().await).await;
}

/// A full queue refuses a new key (claiming nothing) but answers a replay of
/// a live key with its execution.
#[tokio::test(start_paused = true)]
async fn a_full_queue_still_answers_a_replay() {
    let store = Arc::new(maestro_store::MemoryStore::new());
    let mut o = maestro_engine::MaestroOptions::new(store);
    o.config = test_config();
    o.config.max_concurrent_workflows = 1;
    o.max_queued_executions = 1;
    o.health_checker = false;
    let m = Maestro::initialize(o).await.unwrap();
    let calls = Calls::default();
    agent(&m, "a", &["hang"], &calls, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(obj(json!({})))
    })
    .await;
    one_step(&m, "w", "hang", json!({})).await;
    let (running, _) = m
        .execute_workflow("w", keyed("k1", json!(1)))
        .await
        .unwrap();
    let (queued, _) = m
        .execute_workflow("w", keyed("k2", json!(1)))
        .await
        .unwrap();
    assert_eq!(queued.status, ExecutionStatus::Pending);
    let err = m
        .execute_workflow("w", keyed("k3", json!(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "QUEUE_FULL");
    for (key, id) in [("k1", &running.id), ("k2", &queued.id)] {
        let (e, existing) = m.execute_workflow("w", keyed(key, json!(1))).await.unwrap();
        assert!(
            existing && &e.id == id,
            "replay of {key} while the queue is full"
        );
    }
    let err = m
        .execute_workflow("w", keyed("k2", json!(2)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "IDEMPOTENCY_KEY_REUSED");
    assert!(
        m.store()
            .get_idempotency_key("w", "k3")
            .await
            .unwrap()
            .is_none(),
        "a refused request claims no key"
    );
    m.shutdown().await;
}

fn status_of(e: &maestro_core::Result<WorkflowExecution>) -> Result<ExecutionStatus, String> {
    match e {
        Ok(x) => Ok(x.status),
        Err(e) => {
            assert_eq!(e.code(), "INVALID_STATE", "{e}");
            Err(e.to_string())
        }
    }
}

/// Cancel racing the completion of the last step: either the cancel is
/// committed (200, `cancelled`, and so it stays) or the completion was (409
/// naming `completed`, and so it stays).
#[tokio::test(start_paused = true)]
async fn cancel_racing_completion_answers_what_was_committed() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a", &["op"], &calls, |_| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(obj(json!({})))
    })
    .await;
    one_step(&m, "w", "op", json!({})).await;
    let (mut won, mut lost) = (0, 0);
    for i in 0..40u64 {
        let (e, _) = m
            .execute_workflow("w", ExecuteOptions::default())
            .await
            .unwrap();
        // Around the moment the agent answers.
        tokio::time::sleep(Duration::from_millis(8 + i % 5)).await;
        let answer = m.cancel_execution(&e.id, None).await;
        let done = m
            .wait_for_execution(&e.id, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        match status_of(&answer) {
            Ok(st) => {
                assert_eq!(st, ExecutionStatus::Cancelled);
                assert_eq!(done.status, ExecutionStatus::Cancelled);
                won += 1;
            }
            Err(msg) => {
                assert!(msg.contains("status completed"), "{msg}");
                assert_eq!(done.status, ExecutionStatus::Completed);
                lost += 1;
            }
        }
    }
    assert!(
        won > 0 && lost > 0,
        "both sides of the race seen: {won}/{lost}"
    );
    m.shutdown().await;
}

/// Pause and cancel sent together: the final state is cancelled either way; a
/// pause answered 200 was committed (its event exists, and its answer shows
/// `paused`), a refused one names the status it met.
#[tokio::test(start_paused = true)]
async fn pause_racing_cancel_answers_what_was_committed() {
    let m = maestro().await;
    let calls = Calls::default();
    agent(&m, "a", &["hang"], &calls, |_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(obj(json!({})))
    })
    .await;
    one_step(&m, "w", "hang", json!({})).await;
    let (mut paused_first, mut cancelled_first) = (0, 0);
    for i in 0..20 {
        let (e, _) = m
            .execute_workflow("w", ExecuteOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (pause, cancel) = if i % 2 == 0 {
            tokio::join!(m.pause_execution(&e.id), m.cancel_execution(&e.id, None))
        } else {
            let (c, p) = tokio::join!(m.cancel_execution(&e.id, None), m.pause_execution(&e.id));
            (p, c)
        };
        assert_eq!(status_of(&cancel), Ok(ExecutionStatus::Cancelled));
        let stored = m.get_execution(&e.id).await.unwrap().unwrap();
        assert_eq!(stored.status, ExecutionStatus::Cancelled);
        let paused_events = m
            .get_event_history(
                &EventFilter {
                    execution_id: Some(e.id.clone()),
                    event_types: vec![EventType::WorkflowPaused],
                    ..Default::default()
                },
                10,
            )
            .await
            .unwrap();
        match status_of(&pause) {
            Ok(st) => {
                assert_eq!(st, ExecutionStatus::Paused);
                assert_eq!(paused_events.len(), 1, "a pause answered 200 was committed");
                paused_first += 1;
            }
            Err(msg) => {
                assert!(msg.contains("status cancelled"), "{msg}");
                assert!(
                    paused_events.is_empty(),
                    "a refused pause committed nothing"
                );
                cancelled_first += 1;
            }
        }
    }
    assert!(paused_first > 0 && cancelled_first > 0);
    // Controls of a finished execution: refused with its status.
    let (e, _) = m
        .execute_workflow("w", ExecuteOptions::default())
        .await
        .unwrap();
    m.cancel_execution(&e.id, None).await.unwrap();
    for r in [
        m.cancel_execution(&e.id, None).await,
        m.pause_execution(&e.id).await,
        m.resume_execution(&e.id).await,
    ] {
        let msg = status_of(&r).unwrap_err();
        assert!(msg.contains("already finished (status cancelled)"), "{msg}");
    }
    let r = m.resume_execution("exec_unknown").await.unwrap_err();
    assert_eq!(r.code(), "NOT_FOUND");
    m.shutdown().await;
}

/// The same on SQLite, in real time: the engine's wall clock is stepped a day
/// forward, and the claims carry it to the SQL (which reads no clock of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expires_on_the_engines_clock_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let m = maestro_with(sqlite_store(&dir).await, test_config()).await;
    let calls = Calls::default();
    echo_agent(&m, "a", &["op"], &calls).await;
    one_step(&m, "w", "op", json!({})).await;
    let (a, _) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    m.wait_for_execution(&a.id, Duration::from_secs(10))
        .await
        .unwrap();
    let hour = 3600 * 1000;
    maestro_engine::clock::step_wall_clock(23 * hour);
    let (again, existing) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    assert!(
        existing && again.id == a.id,
        "within 24 h: the same execution"
    );
    maestro_engine::clock::step_wall_clock(hour + 1000);
    let (b, existing) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    assert!(
        !existing && b.id != a.id,
        "after 24 h, finished: a new execution"
    );
    let (again, existing) = m.execute_workflow("w", keyed("k", json!(1))).await.unwrap();
    assert!(existing && again.id == b.id, "the new claim holds");
    let claim = m
        .store()
        .get_idempotency_key("w", "k")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.execution_id, b.id);
    assert_eq!(claim.expires_at, claim.created_at + 24 * hour);
    assert!(claim.created_at >= a.created_at + 24 * hour);
    m.wait_for_execution(&b.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(calls.all().len(), 2);
    m.shutdown().await;
}
