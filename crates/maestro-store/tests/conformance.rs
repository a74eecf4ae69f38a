//! The conformance suite against every backend of this crate: each check on a
//! fresh store of its own, plus the whole suite on one store, plus what only a
//! durable backend can show (a restart keeps everything).

use std::sync::Arc;

use maestro_store::MemoryStore;
#[cfg(feature = "sqlite")]
use maestro_store::SqliteStore;
use maestro_store::conformance;
#[cfg(feature = "sqlite")]
use tempfile::TempDir;

#[cfg(feature = "sqlite")]
async fn sqlite(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("data").join("maestro.db"))
        .await
        .expect("open sqlite store")
}

/// PostgreSQL: every check on a fresh schema of its own, on the server of
/// `MAESTRO_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
/// When the server cannot be reached the checks are skipped with a note, unless
/// `CI=true`: then they fail.
#[cfg(feature = "postgres")]
mod pg {
    use std::future::Future;
    use std::sync::Arc;

    use maestro_store::{PostgresStore, ScratchSchema};

    /// Run `test` with the URL of a fresh schema (skipped outside CI when
    /// PostgreSQL is unreachable; see [`ScratchSchema::with_fresh`]).
    pub async fn on_fresh_url<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        ScratchSchema::with_fresh(test).await;
    }

    /// Run `check` on a store over a fresh schema (see [`on_fresh_url`]).
    pub async fn on_fresh_schema<F, Fut>(check: F)
    where
        F: FnOnce(Arc<PostgresStore>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        on_fresh_url(|url| async move {
            let store = Arc::new(
                PostgresStore::connect(&url, 8)
                    .await
                    .expect("connect to the scratch schema"),
            );
            check(store.clone()).await;
            store.close().await;
        })
        .await;
    }
}

macro_rules! checks {
    ($($check:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    conformance::$check(&MemoryStore::new()).await;
                }
            )*
        }
        #[cfg(feature = "sqlite")]
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = TempDir::new().unwrap();
                    let store = sqlite(&dir).await;
                    conformance::$check(&store).await;
                    store.close().await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    pg::on_fresh_schema(|store| async move {
                        conformance::$check(&*store).await;
                    })
                    .await;
                }
            )*
        }
    };
}

checks!(
    agents,
    workflow_revisions,
    workflow_listing,
    workflow_delete,
    commit_and_get_execution,
    commit_upserts_overwrite,
    commit_is_atomic,
    query_executions,
    unfinished_executions,
    execution_stats,
    idempotency_keys,
    idempotency_key_expiry,
    concurrent_key_claims,
    event_seqs,
    query_events,
    event_payloads,
    json_documents,
    tokens,
    subscriptions,
    config,
    concurrent_commits,
    tasks,
    leases,
    concurrent_leases,
    retention,
    run_all,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_commits_from_threads() {
    conformance::concurrent_commits_spawned(Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_commits_from_threads() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(sqlite(&dir).await);
    conformance::concurrent_commits_spawned(store.clone()).await;
    store.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_commits_from_threads() {
    pg::on_fresh_schema(|store| conformance::concurrent_commits_spawned(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_key_claims_from_threads() {
    conformance::concurrent_key_claims_spawned(Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_key_claims_from_threads() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(sqlite(&dir).await);
    conformance::concurrent_key_claims_spawned(store.clone()).await;
    store.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_key_claims_from_threads() {
    pg::on_fresh_schema(|store| conformance::concurrent_key_claims_spawned(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_concurrent_leases_from_threads() {
    conformance::concurrent_leases_spawned(Arc::new(MemoryStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_leases_from_threads() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(sqlite(&dir).await);
    conformance::concurrent_leases_spawned(store.clone()).await;
    store.close().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_leases_from_threads() {
    pg::on_fresh_schema(|store| conformance::concurrent_leases_spawned(store)).await;
}

#[cfg(feature = "sqlite")]
mod durable {
    use std::path::Path;

    use maestro_core::ports::{EventStore, LeaseStore, Store};

    use super::*;

    /// Everything a restart must keep, read through the port.
    #[derive(Debug, PartialEq)]
    struct Snapshot {
        agents: Vec<maestro_core::model::RegisteredAgent>,
        workflows: Vec<maestro_core::model::Workflow>,
        executions: Vec<maestro_core::model::WorkflowExecution>,
        unfinished: Vec<maestro_core::model::WorkflowExecution>,
        stats: maestro_core::ports::ExecutionStats,
        events: Vec<maestro_core::model::ChoreographyEvent>,
        last_seq: u64,
        tokens: Vec<maestro_core::ports::TokenRecord>,
        subscriptions: Vec<maestro_core::ports::SubscriptionRecord>,
        config: Option<serde_json::Value>,
        pinned_revision: Option<maestro_core::model::Workflow>,
        idempotency: Option<maestro_core::ports::IdempotencyRecord>,
        queued_task: Option<maestro_core::ports::TaskRecord>,
        leased_task: Option<maestro_core::ports::TaskRecord>,
        /// `conf-durable-lease` is held (another node cannot take it).
        lease_held: bool,
    }

    async fn snapshot(store: &dyn Store) -> Snapshot {
        let executions = store
            .query_executions(&maestro_core::ports::ExecutionQuery {
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(executions.total as usize, executions.items.len());
        Snapshot {
            agents: store.list_agents().await.unwrap(),
            workflows: store.list_workflows(&[], 100_000, 0).await.unwrap().items,
            executions: executions.items,
            unfinished: store.unfinished_executions().await.unwrap(),
            stats: store.execution_stats().await.unwrap(),
            events: store
                .query_events(
                    &Default::default(),
                    maestro_core::ports::EventOrder::Ascending,
                    1_000_000,
                )
                .await
                .unwrap(),
            last_seq: store.last_seq().await.unwrap(),
            tokens: store.list_tokens().await.unwrap(),
            subscriptions: store.list_subscriptions().await.unwrap(),
            config: store.load_config().await.unwrap(),
            pinned_revision: store.get_workflow("conf-wf-del", Some(1)).await.unwrap(),
            idempotency: store
                .get_idempotency_key("conf-idem-wf", "key-1")
                .await
                .unwrap(),
            queued_task: store.get_task("conf-task-g").await.unwrap(),
            leased_task: store.get_task("conf-conc-lease-agent-042").await.unwrap(),
            lease_held: !store
                .acquire_lease("conf-durable-lease", "node-2", 1_005, 10)
                .await
                .unwrap(),
        }
    }

    fn sync_event(timestamp: u64) -> maestro_core::model::NewEvent {
        maestro_core::model::NewEvent::engine(
            maestro_core::model::EventType::ChoreographySync,
            serde_json::json!({}),
            timestamp,
        )
    }

    async fn assert_restart_keeps(path: &Path, before: &Snapshot) {
        let store = SqliteStore::open(path).await.expect("reopen");
        let after = snapshot(&store).await;
        assert_eq!(&after, before, "a reopened store must hold everything");
        assert!(!after.events.is_empty() && !after.executions.is_empty());
        let next = store.append_events(vec![sync_event(1)]).await.unwrap();
        assert_eq!(
            next[0].seq,
            before.last_seq + 1,
            "the seq counter continues after a restart"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn sqlite_keeps_everything_across_a_clean_restart() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("nested").join("maestro.db");
        let store = SqliteStore::open(&path).await.unwrap();
        conformance::run_all(&store).await;
        assert!(
            store
                .acquire_lease("conf-durable-lease", "node-1", 1_000, 10)
                .await
                .unwrap()
        );
        let before = snapshot(&store).await;
        assert!(before.queued_task.is_some() && before.leased_task.is_some());
        assert!(before.lease_held);
        store.close().await;
        assert_restart_keeps(&path, &before).await;
    }

    /// PostgreSQL: reconnecting (migrations run again, as a no-op) finds
    /// everything, and the seq counter continues.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_keeps_everything_across_a_reconnect() {
        use maestro_store::PostgresStore;
        super::pg::on_fresh_url(|url| async move {
            let store = PostgresStore::connect(&url, 8).await.unwrap();
            conformance::run_all(&store).await;
            assert!(
                store
                    .acquire_lease("conf-durable-lease", "node-1", 1_000, 10)
                    .await
                    .unwrap()
            );
            let before = snapshot(&store).await;
            assert!(before.queued_task.is_some() && before.leased_task.is_some());
            store.close().await;

            let store = PostgresStore::connect(&url, 2).await.expect("reconnect");
            let after = snapshot(&store).await;
            assert_eq!(after, before, "a new pool must find everything");
            let next = store.append_events(vec![sync_event(1)]).await.unwrap();
            assert_eq!(
                next[0].seq,
                before.last_seq + 1,
                "the seq counter continues"
            );
            store.close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn sqlite_keeps_committed_batches_without_a_clean_shutdown() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("maestro.db");
        let store = SqliteStore::open(&path).await.unwrap();
        conformance::commit_and_get_execution(&store).await;
        conformance::event_seqs(&store).await;
        let before = snapshot(&store).await;
        // No close, no checkpoint: the committed state is only in the WAL.
        std::mem::forget(store);
        assert_restart_keeps(&path, &before).await;
    }

    #[tokio::test]
    async fn sqlite_opens_urls() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("by-url").join("maestro.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::open_url(&url).await.unwrap();
        store.append_events(vec![sync_event(1)]).await.unwrap();
        store.close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.last_seq().await.unwrap(), 1);
        store.close().await;

        for bad in [
            "sqlite::memory:",
            "sqlite://x.db?mode=memory",
            "postgres://localhost/db",
        ] {
            let err = SqliteStore::open_url(bad).await.expect_err(bad);
            assert!(
                matches!(err, maestro_store::Error::InvalidUrl { .. }),
                "{bad}: {err}"
            );
        }
    }

    /// Rough cost of one group commit on SQLite: 10 executions × 10 steps, i.e. 100
    /// step rows + 100 attempt rows + 200 events per batch (plus the 10 headers).
    /// `cargo test -p maestro-store --release -- --ignored --nocapture commit_timing`
    #[tokio::test]
    #[ignore = "timing, not a check: run with --release --ignored --nocapture"]
    async fn sqlite_commit_timing() {
        let dir = TempDir::new().unwrap();
        let store = sqlite(&dir).await;
        commit_timing(&store).await;
        store.close().await;
    }

    /// [`sqlite_commit_timing`] on PostgreSQL (a fresh schema).
    #[cfg(feature = "postgres")]
    #[tokio::test]
    #[ignore = "timing, not a check: run with --release --ignored --nocapture"]
    async fn postgres_commit_timing() {
        super::pg::on_fresh_schema(|store| async move { commit_timing(&*store).await }).await;
    }

    async fn commit_timing(store: &dyn Store) {
        use maestro_core::model::{
            Attempt, EventType, ExecutionContext, ExecutionStatus, NewEvent, StepExecution,
            StepMap, StepStatus, WorkflowExecution,
        };
        use maestro_core::ports::{AttemptRow, Batch, ExecutionHeader, StepRow};
        use std::time::{Duration, Instant};

        let header = |id: &str, status| {
            Arc::new(ExecutionHeader {
                execution: WorkflowExecution {
                    id: id.to_owned(),
                    workflow_id: "bench".to_owned(),
                    revision: 1,
                    status,
                    step_executions: StepMap::default(),
                    context: ExecutionContext {
                        execution_id: id.to_owned(),
                        workflow_id: "bench".to_owned(),
                        variables: serde_json::from_value(serde_json::json!({"user": "u-1"}))
                            .unwrap(),
                        step_outputs: Default::default(),
                        correlation_id: id.to_owned(),
                        parent_execution_id: None,
                    },
                    outputs: None,
                    result: None,
                    created_at: 1,
                    started_at: Some(2),
                    completed_at: None,
                    error: None,
                    rollback_log: None,
                    deadline: Some(300_000),
                    cancel_reason: None,
                },
                workflow_tags: vec!["bench".to_owned()],
            })
        };
        let batch = |round: usize| {
            let mut b = Batch::default();
            for x in 0..10 {
                let id = format!("bench-{round}-{x}");
                b.executions.push(header(&id, ExecutionStatus::Running));
                for s in 0..10u32 {
                    let mut step = StepExecution::new(format!("step-{s}"));
                    step.status = StepStatus::Completed;
                    step.agent_id = Some("agent-1".to_owned());
                    step.inputs =
                        serde_json::from_value(serde_json::json!({"n": s, "data": "abcdef"}))
                            .unwrap();
                    step.outputs = Some(
                        serde_json::from_value(serde_json::json!({"ok": true, "value": 42}))
                            .unwrap(),
                    );
                    step.started_at = Some(10);
                    step.completed_at = Some(12);
                    step.duration = Some(2);
                    b.steps.push(StepRow {
                        execution_id: id.clone(),
                        position: s,
                        step: step.clone(),
                    });
                    b.attempts.push(AttemptRow {
                        execution_id: id.clone(),
                        step_id: step.step_id.clone(),
                        attempt: Attempt {
                            attempt: 1,
                            started_at: 10,
                            completed_at: Some(12),
                            error: None,
                            agent_id: Some("agent-1".to_owned()),
                            late_result: None,
                        },
                    });
                    for t in [EventType::StepStarted, EventType::StepCompleted] {
                        let mut e = NewEvent::engine(
                            t,
                            serde_json::json!({"executionId": id, "stepId": step.step_id}),
                            10,
                        );
                        e.execution_id = Some(id.clone());
                        e.workflow_id = Some("bench".to_owned());
                        e.correlation_id = id.clone();
                        b.events.push(e);
                    }
                }
            }
            b
        };
        // Warm up (statement preparation, first pages).
        for round in 0..20 {
            store.commit(batch(round)).await.unwrap();
        }
        let rounds = 300;
        let batches: Vec<Batch> = (20..20 + rounds).map(batch).collect();
        let mut times: Vec<Duration> = Vec::with_capacity(rounds);
        let started = Instant::now();
        for b in batches {
            let t = Instant::now();
            store.commit(b).await.unwrap();
            times.push(t.elapsed());
        }
        let total = started.elapsed();
        times.sort();
        let per = total / rounds as u32;
        println!(
            "commit of 10 headers + 100 steps + 100 attempts + 200 events: mean {per:?}, p50 {:?}, p99 {:?}, max {:?}; {:.0} step rows/s",
            times[rounds / 2],
            times[rounds * 99 / 100],
            times[rounds - 1],
            100.0 * rounds as f64 / total.as_secs_f64()
        );
        // The same batches again: every row is now an update (upsert path).
        let mut times: Vec<Duration> = Vec::with_capacity(rounds);
        let started = Instant::now();
        for round in 20..20 + rounds {
            let b = batch(round);
            let t = Instant::now();
            store.commit(b).await.unwrap();
            times.push(t.elapsed());
        }
        let total = started.elapsed();
        times.sort();
        println!(
            "same batches as updates: mean {:?}, p50 {:?}, p99 {:?}",
            total / rounds as u32,
            times[rounds / 2],
            times[rounds * 99 / 100]
        );
        // An empty-ish commit: the fsync floor.
        let t = Instant::now();
        for i in 0..100 {
            store.append_events(vec![sync_event(i)]).await.unwrap();
        }
        println!("one-event commit (fsync floor): {:?}", t.elapsed() / 100);
    }
}
