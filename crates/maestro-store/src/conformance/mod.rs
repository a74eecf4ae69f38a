//! The conformance suite: what every `Store` backend must do, as async checks that
//! panic with a message naming the check and the difference.
//!
//! [`run_all`] runs every check, one after the other, on one store. Give it a
//! fresh store that nothing else writes to while it runs (the seq checks expect
//! to be the only writer). Each check uses ids, tags and time windows of its own,
//! so it tolerates the rows earlier checks left behind; a backend's test file can
//! also run each check on its own fresh store.
//!
//! ```no_run
//! # async fn demo() {
//! let store = maestro_store::MemoryStore::new();
//! maestro_store::conformance::run_all(&store).await;
//! # }
//! ```

mod fixtures;
mod queue;

use std::collections::BTreeSet;
use std::sync::Arc;

use maestro_core::Error;
use maestro_core::model::{
    ChoreographyEvent, EventFilter, EventType, ExecutionStatus, StepExecution, StepStatus,
    WorkflowExecution,
};
use maestro_core::ports::{
    AttemptRow, Batch, Claimed, Committed, EventOrder, ExecutionQuery, IDEMPOTENCY_TTL_MS,
    IdempotencyRecord, KeyClaim, StepRow, Store, SubscriptionRecord, TokenRecord,
};
use serde_json::json;

use fixtures::*;
pub use queue::{concurrent_leases, concurrent_leases_spawned, leases, tasks};

/// Run every check on `store` (see the module doc for what it expects).
pub async fn run_all(store: &dyn Store) {
    agents(store).await;
    workflow_revisions(store).await;
    workflow_listing(store).await;
    workflow_delete(store).await;
    commit_and_get_execution(store).await;
    commit_upserts_overwrite(store).await;
    commit_is_atomic(store).await;
    query_executions(store).await;
    unfinished_executions(store).await;
    execution_stats(store).await;
    idempotency_keys(store).await;
    idempotency_key_expiry(store).await;
    concurrent_key_claims(store).await;
    event_seqs(store).await;
    query_events(store).await;
    event_payloads(store).await;
    json_documents(store).await;
    tokens(store).await;
    subscriptions(store).await;
    config(store).await;
    tasks(store).await;
    leases(store).await;
    concurrent_commits(store).await;
    concurrent_leases(store).await;
    retention(store).await;
}

fn is_already_exists(e: &Error) -> bool {
    matches!(e, Error::AlreadyExists { .. })
}

/// Agents: put/get/list/delete, upsert, and the write-only inbound secret.
pub async fn agents(store: &dyn Store) {
    let a1 = agent("conf-agent-1", Some("s3cret"));
    let a2 = agent("conf-agent-2", None);
    // Inserted out of order: the list is ordered by id.
    store.put_agent(&a2).await.expect("agents: put a2");
    store.put_agent(&a1).await.expect("agents: put a1");

    let got = store.get_agent("conf-agent-1").await.expect("agents: get");
    assert_eq!(
        got.as_ref(),
        Some(&a1),
        "agents: get must return the agent as put"
    );
    assert_eq!(
        got.and_then(|a| a.inbound_secret).as_deref(),
        Some("s3cret"),
        "agents: the inbound secret must survive a round trip"
    );
    assert_eq!(
        store
            .get_agent("conf-agent-missing")
            .await
            .expect("agents: get missing"),
        None,
        "agents: an unknown id must not be found"
    );
    let listed: Vec<_> = store
        .list_agents()
        .await
        .expect("agents: list")
        .into_iter()
        .filter(|a| a.id.starts_with("conf-agent-"))
        .collect();
    assert_eq!(listed, vec![a1.clone(), a2.clone()], "agents: list by id");

    let mut changed = a1.clone();
    changed.status = maestro_core::model::AgentStatus::Offline;
    changed.status_hold = true;
    changed.last_heartbeat += 5;
    changed.inbound_secret = Some("rotated".to_owned());
    changed.capabilities.clear();
    store.put_agent(&changed).await.expect("agents: upsert");
    assert_eq!(
        store
            .get_agent(&a1.id)
            .await
            .expect("agents: get after upsert"),
        Some(changed.clone()),
        "agents: put must replace the whole agent"
    );
    changed.inbound_secret = None;
    store
        .put_agent(&changed)
        .await
        .expect("agents: clear secret");
    assert_eq!(
        store
            .get_agent(&a1.id)
            .await
            .expect("agents: get")
            .and_then(|a| a.inbound_secret),
        None,
        "agents: putting an agent without a secret must clear the stored one"
    );

    assert!(
        store.delete_agent(&a1.id).await.expect("agents: delete"),
        "agents: deleting an existing agent answers true"
    );
    assert!(
        !store
            .delete_agent(&a1.id)
            .await
            .expect("agents: delete again"),
        "agents: deleting a deleted agent answers false"
    );
    assert_eq!(
        store.get_agent(&a1.id).await.expect("agents: get deleted"),
        None,
        "agents: a deleted agent is gone"
    );
}

/// Workflow revisions: latest and explicit, and duplicates refused.
pub async fn workflow_revisions(store: &dyn Store) {
    let r1 = workflow("conf-wf-rev", 1, &["alpha", "beta"]);
    let r2 = workflow("conf-wf-rev", 2, &["alpha"]);
    store
        .insert_workflow_revision(&r1)
        .await
        .expect("workflow_revisions: insert r1");
    store
        .insert_workflow_revision(&r2)
        .await
        .expect("workflow_revisions: insert r2");
    assert_eq!(
        store
            .get_workflow("conf-wf-rev", None)
            .await
            .expect("get latest"),
        Some(r2.clone()),
        "workflow_revisions: without a revision, the latest"
    );
    assert_eq!(
        store
            .get_workflow("conf-wf-rev", Some(1))
            .await
            .expect("get r1"),
        Some(r1.clone()),
        "workflow_revisions: an explicit revision"
    );
    assert_eq!(
        store
            .get_workflow("conf-wf-rev", Some(3))
            .await
            .expect("get r3"),
        None,
        "workflow_revisions: a revision that does not exist"
    );
    assert_eq!(
        store
            .get_workflow("conf-wf-none", None)
            .await
            .expect("get unknown"),
        None,
        "workflow_revisions: an unknown workflow"
    );
    let mut dup = r2.clone();
    dup.name = "a concurrent update".to_owned();
    let err = store
        .insert_workflow_revision(&dup)
        .await
        .expect_err("workflow_revisions: a duplicate (id, revision) must be refused");
    assert!(
        is_already_exists(&err),
        "workflow_revisions: duplicate (id, revision) must be AlreadyExists, got {err:?}"
    );
    assert_eq!(
        store
            .get_workflow("conf-wf-rev", None)
            .await
            .expect("get latest"),
        Some(r2),
        "workflow_revisions: a refused duplicate must not change the stored revision"
    );
}

/// `list_workflows`: latest revisions of non-deleted workflows, by id, all tags,
/// paging and total.
pub async fn workflow_listing(store: &dyn Store) {
    let tag = "conf-list";
    // Insert out of id order; `b` has two revisions, `d` lacks the second tag.
    for w in [
        workflow("conf-list-c", 1, &[tag, "x"]),
        workflow("conf-list-a", 1, &[tag, "x"]),
        workflow("conf-list-b", 1, &[tag]),
        workflow("conf-list-b", 2, &[tag, "x", "extra"]),
        workflow("conf-list-d", 1, &[tag]),
        // Tags are whole words: "x,y" is one tag, and "con" is not "conf-list".
        workflow("conf-list-e", 1, &["x,y", "con"]),
    ] {
        store
            .insert_workflow_revision(&w)
            .await
            .expect("workflow_listing: insert");
    }
    let page = store
        .list_workflows(&[tag.to_owned()], 100, 0)
        .await
        .expect("workflow_listing: list");
    let ids: Vec<(&str, u64)> = page
        .items
        .iter()
        .map(|w| (w.id.as_str(), w.revision))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("conf-list-a", 1),
            ("conf-list-b", 2),
            ("conf-list-c", 1),
            ("conf-list-d", 1)
        ],
        "workflow_listing: latest revisions, by id, with the tag"
    );
    assert_eq!(page.total, 4, "workflow_listing: total");
    assert_eq!(
        page.items[1],
        workflow("conf-list-b", 2, &[tag, "x", "extra"]),
        "workflow_listing: whole documents"
    );

    let page = store
        .list_workflows(&[tag.to_owned(), "x".to_owned()], 100, 0)
        .await
        .expect("workflow_listing: two tags");
    let ids: Vec<&str> = page.items.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["conf-list-a", "conf-list-b", "conf-list-c"],
        "workflow_listing: every tag must be carried"
    );
    assert_eq!(page.total, 3, "workflow_listing: total with two tags");

    let page = store
        .list_workflows(&[tag.to_owned()], 2, 1)
        .await
        .expect("workflow_listing: page");
    let ids: Vec<&str> = page.items.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["conf-list-b", "conf-list-c"],
        "workflow_listing: limit 2 offset 1"
    );
    assert_eq!(page.total, 4, "workflow_listing: total ignores paging");

    let page = store
        .list_workflows(&[tag.to_owned()], 10, 10)
        .await
        .expect("workflow_listing: past the end");
    assert!(
        page.items.is_empty(),
        "workflow_listing: offset past the end"
    );
    assert_eq!(page.total, 4, "workflow_listing: total past the end");

    for (tags, expected) in [
        (vec!["x,y".to_owned()], vec!["conf-list-e"]),
        (vec!["x".to_owned(), "y".to_owned()], vec![]),
        (vec!["con".to_owned()], vec!["conf-list-e"]),
    ] {
        let page = store
            .list_workflows(&tags, 100, 0)
            .await
            .expect("workflow_listing: tag edge cases");
        let ids: Vec<&str> = page
            .items
            .iter()
            .map(|w| w.id.as_str())
            .filter(|id| id.starts_with("conf-list-"))
            .collect();
        assert_eq!(
            ids, expected,
            "workflow_listing: tags {tags:?} must match whole tags only"
        );
    }
}

/// Deleting hides the workflow but keeps its revisions readable by number; a
/// newer revision makes it visible again.
pub async fn workflow_delete(store: &dyn Store) {
    let id = "conf-wf-del";
    let r1 = workflow(id, 1, &["conf-del"]);
    let r2 = workflow(id, 2, &["conf-del"]);
    store
        .insert_workflow_revision(&r1)
        .await
        .expect("insert r1");
    store
        .insert_workflow_revision(&r2)
        .await
        .expect("insert r2");
    assert!(
        store.delete_workflow(id).await.expect("delete"),
        "workflow_delete: deleting an existing workflow answers true"
    );
    assert!(
        !store.delete_workflow(id).await.expect("delete again"),
        "workflow_delete: deleting a deleted workflow answers false"
    );
    assert!(
        !store
            .delete_workflow("conf-wf-never")
            .await
            .expect("delete unknown"),
        "workflow_delete: deleting an unknown workflow answers false"
    );
    assert_eq!(
        store.get_workflow(id, None).await.expect("get latest"),
        None,
        "workflow_delete: a deleted workflow has no latest revision"
    );
    assert_eq!(
        store.get_workflow(id, Some(1)).await.expect("get r1"),
        Some(r1.clone()),
        "workflow_delete: revisions stay readable by number (pinned executions resume)"
    );
    assert_eq!(
        store.get_workflow(id, Some(2)).await.expect("get r2"),
        Some(r2.clone()),
        "workflow_delete: the last revision stays readable by number"
    );
    let listed = store
        .list_workflows(&["conf-del".to_owned()], 100, 0)
        .await
        .expect("list");
    assert!(
        listed.items.is_empty() && listed.total == 0,
        "workflow_delete: a deleted workflow is not listed"
    );

    let err = store
        .insert_workflow_revision(&workflow(id, 1, &["conf-del"]))
        .await
        .expect_err("workflow_delete: revisions of a deleted workflow still exist");
    assert!(
        is_already_exists(&err),
        "workflow_delete: re-inserting a kept revision is AlreadyExists, got {err:?}"
    );
    let r3 = workflow(id, 3, &["conf-del"]);
    store
        .insert_workflow_revision(&r3)
        .await
        .expect("workflow_delete: re-create with a newer revision");
    assert_eq!(
        store.get_workflow(id, None).await.expect("get latest"),
        Some(r3.clone()),
        "workflow_delete: re-created workflow is visible again"
    );
    let listed = store
        .list_workflows(&["conf-del".to_owned()], 100, 0)
        .await
        .expect("list");
    assert_eq!(
        listed.items,
        vec![r3],
        "workflow_delete: re-created workflow is listed"
    );
}

fn two_executions(prefix: &str, created_at: u64) -> (WorkflowExecution, WorkflowExecution) {
    let e1 = execution(
        &format!("{prefix}-1"),
        &format!("{prefix}-wf"),
        ExecutionStatus::Running,
        created_at,
        vec![
            step(
                "verify",
                StepStatus::Completed,
                Some("agent-a"),
                vec![
                    failed_attempt(1, Some("agent-b"), created_at + 2),
                    attempt(2, Some("agent-a"), created_at + 20),
                ],
            ),
            step(
                "sign",
                StepStatus::Running,
                Some("agent-a"),
                vec![attempt(1, Some("agent-a"), created_at + 40)],
            ),
            step("notify", StepStatus::Pending, None, vec![]),
        ],
    );
    let e2 = execution(
        &format!("{prefix}-2"),
        &format!("{prefix}-wf"),
        ExecutionStatus::Failed,
        created_at + 1,
        vec![
            step(
                "only",
                StepStatus::Failed,
                Some("agent-c"),
                vec![failed_attempt(1, Some("agent-c"), created_at + 3)],
            ),
            step("fallback", StepStatus::Skipped, None, vec![]),
        ],
    );
    (e1, e2)
}

async fn get(store: &dyn Store, id: &str, check: &str) -> WorkflowExecution {
    store
        .get_execution(id)
        .await
        .unwrap_or_else(|e| panic!("{check}: get_execution {id}: {e}"))
        .unwrap_or_else(|| panic!("{check}: execution {id} not found after commit"))
}

/// A batch with two executions, their steps and attempts and events commits in
/// one go and reads back equal to what was written.
pub async fn commit_and_get_execution(store: &dyn Store) {
    let (e1, e2) = two_executions("conf-commit", 2_000_000);
    let mut batch = rows_of(&[(&e1, &["t1"]), (&e2, &["t2"])]);
    // A header may carry step executions: they are ignored (steps are rows).
    let mut header_with_steps = (*batch.executions[1]).clone();
    header_with_steps.execution.step_executions = e1.step_executions.clone();
    batch.executions[1] = Arc::new(header_with_steps);
    // Step rows may carry attempts: they are ignored (attempts are rows).
    batch.steps[0].step.attempts = vec![attempt(9, Some("ignored"), 1)];
    batch.events = vec![
        engine_event(EventType::WorkflowStarted, &e1.id, 10),
        engine_event(EventType::WorkflowFailed, &e2.id, 11),
    ];
    let last = store.last_seq().await.expect("last_seq");
    let events = store
        .commit(batch)
        .await
        .expect("commit_and_get_execution: commit")
        .events;
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![last + 1, last + 2],
        "commit_and_get_execution: events get the next seqs, in order"
    );
    assert_eq!(events[0].id, format!("evt_{}", last + 1));
    assert_eq!(events[0].event_type, EventType::WorkflowStarted);

    assert_eq!(
        get(store, &e1.id, "commit_and_get_execution").await,
        e1,
        "commit_and_get_execution: first execution reassembled (steps in position order, attempts in order)"
    );
    assert_eq!(
        get(store, &e2.id, "commit_and_get_execution").await,
        e2,
        "commit_and_get_execution: second execution reassembled"
    );
    assert_eq!(
        store
            .get_execution("conf-commit-missing")
            .await
            .expect("get missing"),
        None,
        "commit_and_get_execution: unknown execution"
    );
    assert!(
        store
            .commit(Batch::default())
            .await
            .expect("commit_and_get_execution: empty batch")
            == Committed::default(),
        "commit_and_get_execution: an empty batch commits nothing"
    );
}

/// Upserts replace rows: header status, a step's state, a new attempt; a header
/// alone leaves the steps alone; the later of two rows in one batch wins.
pub async fn commit_upserts_overwrite(store: &dyn Store) {
    let (e1, _) = two_executions("conf-upsert", 2_100_000);
    store
        .commit(rows_of(&[(&e1, &["t"])]))
        .await
        .expect("commit_upserts_overwrite: first commit");

    let mut e = e1.clone();
    e.status = ExecutionStatus::Completed;
    e.completed_at = Some(e.created_at + 99);
    e.result = Some(object(json!({"done": true})));
    // Header alone: steps and attempts must stay.
    store
        .commit(Batch {
            executions: vec![header_of(&e, &["t"])],
            ..Batch::default()
        })
        .await
        .expect("commit_upserts_overwrite: header update");
    assert_eq!(
        get(store, &e.id, "commit_upserts_overwrite").await,
        e,
        "commit_upserts_overwrite: a header update keeps the steps"
    );

    // Step "sign" completes on its second attempt (a new attempt row), and the
    // first attempt is updated with its error.
    let sign = e.step_executions.get_mut("sign").expect("sign step");
    sign.status = StepStatus::Completed;
    sign.outputs = Some(object(json!({"signature": "abc"})));
    sign.retry_count = 1;
    sign.attempts[0] = failed_attempt(1, Some("agent-a"), sign.attempts[0].started_at);
    sign.attempts.push(attempt(2, Some("agent-d"), 2_100_100));
    let sign = sign.clone();
    // `context.stepOutputs` follows from the step rows.
    e.derive_step_outputs();
    let mut running = sign.clone();
    running.status = StepStatus::Running;
    running.outputs = None;
    store
        .commit(Batch {
            steps: vec![
                // The same row twice in one batch: the later one wins.
                StepRow {
                    execution_id: e.id.clone(),
                    position: 1,
                    step: running,
                },
                StepRow {
                    execution_id: e.id.clone(),
                    position: 1,
                    step: StepExecution {
                        attempts: Vec::new(),
                        ..sign.clone()
                    },
                },
            ],
            attempts: sign
                .attempts
                .iter()
                .map(|a| AttemptRow {
                    execution_id: e.id.clone(),
                    step_id: "sign".to_owned(),
                    attempt: a.clone(),
                })
                .collect(),
            ..Batch::default()
        })
        .await
        .expect("commit_upserts_overwrite: step update");
    assert_eq!(
        get(store, &e.id, "commit_upserts_overwrite").await,
        e,
        "commit_upserts_overwrite: step and attempt rows replaced, new attempt added, later duplicate wins"
    );

    // Positions decide the order: move "notify" first.
    let notify = e.step_executions.get("notify").expect("notify").clone();
    store
        .commit(Batch {
            steps: vec![
                StepRow {
                    execution_id: e.id.clone(),
                    position: 0,
                    step: notify.clone(),
                },
                StepRow {
                    execution_id: e.id.clone(),
                    position: 2,
                    step: StepExecution {
                        attempts: Vec::new(),
                        ..e.step_executions.0[0].clone()
                    },
                },
            ],
            ..Batch::default()
        })
        .await
        .expect("commit_upserts_overwrite: reorder");
    let got = get(store, &e.id, "commit_upserts_overwrite").await;
    let order: Vec<&str> = got
        .step_executions
        .iter()
        .map(|s| s.step_id.as_str())
        .collect();
    assert_eq!(
        order,
        vec!["notify", "sign", "verify"],
        "commit_upserts_overwrite: steps come back in position order"
    );
}

/// A batch that breaks a rule commits nothing: a step row without its execution
/// is refused, and none of the batch's other rows or events become visible.
pub async fn commit_is_atomic(store: &dyn Store) {
    let (e1, _) = two_executions("conf-atomic", 2_200_000);
    let mut batch = rows_of(&[(&e1, &[])]);
    batch.steps.push(StepRow {
        execution_id: "conf-atomic-nowhere".to_owned(),
        position: 0,
        step: step("orphan", StepStatus::Pending, None, vec![]),
    });
    batch.events = vec![engine_event(EventType::WorkflowStarted, &e1.id, 1)];
    let last = store.last_seq().await.expect("last_seq");
    store
        .commit(batch)
        .await
        .expect_err("commit_is_atomic: a step row without its execution must be refused");
    assert_eq!(
        store.get_execution(&e1.id).await.expect("get"),
        None,
        "commit_is_atomic: nothing of a refused batch is stored"
    );
    assert_eq!(
        store.last_seq().await.expect("last_seq"),
        last,
        "commit_is_atomic: a refused batch allocates no seq"
    );

    let mut batch = rows_of(&[(&e1, &[])]);
    batch.attempts.push(AttemptRow {
        execution_id: e1.id.clone(),
        step_id: "no-such-step".to_owned(),
        attempt: attempt(1, None, 1),
    });
    store
        .commit(batch)
        .await
        .expect_err("commit_is_atomic: an attempt row without its step must be refused");
    assert_eq!(
        store.get_execution(&e1.id).await.expect("get"),
        None,
        "commit_is_atomic: nothing of a refused batch is stored"
    );

    // The store is still usable afterwards.
    store
        .commit(rows_of(&[(&e1, &[])]))
        .await
        .expect("commit_is_atomic: a valid batch after a refused one");
    assert_eq!(get(store, &e1.id, "commit_is_atomic").await, e1);
}

fn ids(page: &[WorkflowExecution]) -> Vec<&str> {
    page.iter().map(|e| e.id.as_str()).collect()
}

/// Every filter of `query_executions`, paging, total and newest-first order.
pub async fn query_executions(store: &dyn Store) {
    // This check's executions all have created_at in [BASE, BASE + 100].
    const BASE: u64 = 3_000_000;
    let window = |q: ExecutionQuery| ExecutionQuery {
        created_after: q.created_after.or(Some(BASE)),
        created_before: q.created_before.or(Some(BASE + 100)),
        limit: if q.limit == 0 { 100 } else { q.limit },
        ..q
    };
    let mk = |n: u32, wf: &str, status, at: u64, agent: &str| {
        execution(
            &format!("conf-q-{n}"),
            wf,
            status,
            at,
            vec![step(
                "s",
                StepStatus::Completed,
                Some(agent),
                vec![attempt(1, Some(agent), at)],
            )],
        )
    };
    let q1 = mk(1, "conf-q-wf-a", ExecutionStatus::Running, BASE, "qa-1");
    let q2 = mk(
        2,
        "conf-q-wf-a",
        ExecutionStatus::Completed,
        BASE + 10,
        "qa-2",
    );
    let mut q3 = mk(3, "conf-q-wf-b", ExecutionStatus::Failed, BASE + 20, "qa-1");
    // Agent qa-3 served only the first attempt of q3's step.
    q3.step_executions.0[0].attempts = vec![
        failed_attempt(1, Some("qa-3"), BASE + 19),
        attempt(2, Some("qa-1"), BASE + 20),
    ];
    let mut q4 = mk(
        4,
        "conf-q-wf-b",
        ExecutionStatus::Pending,
        BASE + 30,
        "qa-2",
    );
    q4.context.correlation_id = "conf-q-shared".to_owned();
    let mut q5 = mk(5, "conf-q-wf-c", ExecutionStatus::Paused, BASE + 30, "qa-2");
    q5.context.correlation_id = "conf-q-shared".to_owned();
    let q6 = mk(
        6,
        "conf-q-wf-c",
        ExecutionStatus::Cancelled,
        BASE + 100,
        "qa-1",
    );
    store
        .commit(rows_of(&[
            (&q1, &["crypto", "auth"]),
            (&q2, &["crypto"]),
            (&q3, &["auth"]),
            (&q4, &["crypto", "auth", "x"]),
        ]))
        .await
        .expect("query_executions: commit");
    store
        .commit(rows_of(&[(&q5, &[]), (&q6, &["auth"])]))
        .await
        .expect("query_executions: commit");

    let run = |q: ExecutionQuery| async move {
        store
            .query_executions(&q)
            .await
            .unwrap_or_else(|e| panic!("query_executions {q:?}: {e}"))
    };

    let all = run(window(ExecutionQuery::default())).await;
    // Newest first; q4 and q5 share created_at: the higher id first.
    assert_eq!(
        ids(&all.items),
        vec![
            "conf-q-6", "conf-q-5", "conf-q-4", "conf-q-3", "conf-q-2", "conf-q-1"
        ],
        "query_executions: newest first (created_at desc, then id desc)"
    );
    assert_eq!(all.total, 6, "query_executions: total");
    assert_eq!(
        all.items[3], q3,
        "query_executions: items are whole executions with steps and attempts"
    );

    let cases: Vec<(&str, ExecutionQuery, Vec<&str>)> = vec![
        (
            "workflow_id",
            ExecutionQuery {
                workflow_id: Some("conf-q-wf-b".into()),
                ..Default::default()
            },
            vec!["conf-q-4", "conf-q-3"],
        ),
        (
            "one status",
            ExecutionQuery {
                statuses: vec![ExecutionStatus::Running],
                ..Default::default()
            },
            vec!["conf-q-1"],
        ),
        (
            "statuses any-of",
            ExecutionQuery {
                statuses: vec![ExecutionStatus::Pending, ExecutionStatus::Failed],
                ..Default::default()
            },
            vec!["conf-q-4", "conf-q-3"],
        ),
        (
            "agent_id (step agent)",
            ExecutionQuery {
                agent_id: Some("qa-1".into()),
                ..Default::default()
            },
            vec!["conf-q-6", "conf-q-3", "conf-q-1"],
        ),
        (
            "agent_id (an earlier attempt's agent)",
            ExecutionQuery {
                agent_id: Some("qa-3".into()),
                ..Default::default()
            },
            vec!["conf-q-3"],
        ),
        (
            "one tag",
            ExecutionQuery {
                tags: vec!["crypto".into()],
                ..Default::default()
            },
            vec!["conf-q-4", "conf-q-2", "conf-q-1"],
        ),
        (
            "all tags",
            ExecutionQuery {
                tags: vec!["crypto".into(), "auth".into()],
                ..Default::default()
            },
            vec!["conf-q-4", "conf-q-1"],
        ),
        (
            "tag prefix does not match",
            ExecutionQuery {
                tags: vec!["cry".into()],
                ..Default::default()
            },
            vec![],
        ),
        (
            "correlation_id",
            ExecutionQuery {
                correlation_id: Some("conf-q-shared".into()),
                ..Default::default()
            },
            vec!["conf-q-5", "conf-q-4"],
        ),
        (
            "created_after is inclusive",
            ExecutionQuery {
                created_after: Some(BASE + 30),
                ..Default::default()
            },
            vec!["conf-q-6", "conf-q-5", "conf-q-4"],
        ),
        (
            "created_before is inclusive",
            ExecutionQuery {
                created_before: Some(BASE + 10),
                ..Default::default()
            },
            vec!["conf-q-2", "conf-q-1"],
        ),
        (
            "filters combine",
            ExecutionQuery {
                workflow_id: Some("conf-q-wf-a".into()),
                statuses: vec![ExecutionStatus::Completed, ExecutionStatus::Running],
                agent_id: Some("qa-2".into()),
                tags: vec!["crypto".into()],
                ..Default::default()
            },
            vec!["conf-q-2"],
        ),
    ];
    for (name, q, expected) in cases {
        let page = run(window(q)).await;
        assert_eq!(ids(&page.items), expected, "query_executions: {name}");
        assert_eq!(
            page.total,
            expected.len() as u64,
            "query_executions: total for {name}"
        );
    }

    let page = run(window(ExecutionQuery {
        limit: 2,
        offset: 1,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        ids(&page.items),
        vec!["conf-q-5", "conf-q-4"],
        "query_executions: limit 2 offset 1"
    );
    assert_eq!(page.total, 6, "query_executions: total ignores paging");
    let page = run(window(ExecutionQuery {
        limit: 10,
        offset: 6,
        ..Default::default()
    }))
    .await;
    assert!(
        page.items.is_empty() && page.total == 6,
        "query_executions: offset past the end: no items, total still 6"
    );
}

/// Pending, running and paused executions, oldest first, with their steps.
pub async fn unfinished_executions(store: &dyn Store) {
    const BASE: u64 = 4_000_000;
    let mut all = Vec::new();
    for (i, status) in ExecutionStatus::ALL.iter().enumerate() {
        let (mut e, _) = two_executions(&format!("conf-unf-{i}"), BASE - i as u64);
        e.status = *status;
        all.push(e);
    }
    let rows: Vec<(&WorkflowExecution, &[&str])> = all.iter().map(|e| (e, &[][..])).collect();
    store
        .commit(rows_of(&rows))
        .await
        .expect("unfinished_executions: commit");
    let got: Vec<WorkflowExecution> = store
        .unfinished_executions()
        .await
        .expect("unfinished_executions")
        .into_iter()
        .filter(|e| e.id.starts_with("conf-unf-"))
        .collect();
    // Index i was created at BASE - i: paused (2) is the oldest.
    let expected: Vec<WorkflowExecution> = vec![all[2].clone(), all[1].clone(), all[0].clone()];
    assert_eq!(
        got, expected,
        "unfinished_executions: pending/running/paused, oldest first, with steps and attempts"
    );

    assert!(
        store
            .has_active_executions("conf-unf-0-wf")
            .await
            .expect("has_active_executions"),
        "has_active_executions: a pending execution is active"
    );
    assert!(
        !store
            .has_active_executions("conf-unf-3-wf")
            .await
            .expect("has_active_executions"),
        "has_active_executions: only a completed execution"
    );
    assert!(
        !store
            .has_active_executions("conf-unf-none")
            .await
            .expect("has_active_executions"),
        "has_active_executions: no executions at all"
    );
}

/// Counts by status and the wall time of finished executions.
pub async fn execution_stats(store: &dyn Store) {
    let before = store.execution_stats().await.expect("execution_stats");
    let count = |s: &maestro_core::ports::ExecutionStats, st: ExecutionStatus| {
        s.by_status
            .iter()
            .find(|(x, _)| *x == st)
            .map_or(0, |(_, n)| *n)
    };
    const BASE: u64 = 5_000_000;
    let mut rows = Vec::new();
    for (i, status) in [
        ExecutionStatus::Completed,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Running,
        ExecutionStatus::Pending,
        ExecutionStatus::Cancelled,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = execution(
            &format!("conf-stats-{i}"),
            "conf-stats-wf",
            status,
            BASE,
            vec![],
        );
        if status.is_terminal() {
            e.started_at = Some(BASE + 10);
            e.completed_at = Some(BASE + 10 + 100 * (i as u64 + 1));
        }
        rows.push(e);
    }
    // A cancelled execution that never started has no wall time.
    let mut never_started = execution(
        "conf-stats-x",
        "conf-stats-wf",
        ExecutionStatus::Cancelled,
        BASE,
        vec![],
    );
    never_started.started_at = None;
    rows.push(never_started);
    let refs: Vec<(&WorkflowExecution, &[&str])> = rows.iter().map(|e| (e, &[][..])).collect();
    store
        .commit(rows_of(&refs))
        .await
        .expect("execution_stats: commit");

    let after = store.execution_stats().await.expect("execution_stats");
    assert_eq!(
        after.by_status.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        ExecutionStatus::ALL.to_vec(),
        "execution_stats: every status, in ExecutionStatus::ALL order"
    );
    for (status, delta) in [
        (ExecutionStatus::Completed, 2),
        (ExecutionStatus::Failed, 1),
        (ExecutionStatus::Running, 1),
        (ExecutionStatus::Pending, 1),
        (ExecutionStatus::Cancelled, 2),
        (ExecutionStatus::Paused, 0),
        (ExecutionStatus::RolledBack, 0),
    ] {
        assert_eq!(
            count(&after, status) - count(&before, status),
            delta,
            "execution_stats: count of {status:?}"
        );
    }
    // Finished with both timestamps: indexes 0, 1, 2, 5 → 100 + 200 + 300 + 600.
    assert_eq!(
        after.finished_count - before.finished_count,
        4,
        "execution_stats: finished_count counts finished executions with start and end"
    );
    assert_eq!(
        after.finished_time_sum_ms - before.finished_time_sum_ms,
        1_200,
        "execution_stats: finished_time_sum_ms"
    );
}

/// A claim of `key` (workflow `wf`) made at `now` by the new execution `by`
/// (`None`: a probe), lasting 24 h.
fn claim(wf: &str, key: &str, hash: &str, by: Option<&str>, now: u64) -> KeyClaim {
    KeyClaim {
        workflow_id: wf.to_owned(),
        key: key.to_owned(),
        request_hash: hash.to_owned(),
        execution_id: by.map(str::to_owned),
        now,
        expires_at: now + IDEMPOTENCY_TTL_MS,
    }
}

fn taken(execution_id: &str, hash: &str) -> Claimed {
    Claimed::Taken {
        execution_id: execution_id.to_owned(),
        request_hash: hash.to_owned(),
    }
}

/// Execute idempotency keys: claimed inside the commit, scoped by workflow; a
/// claim that finds a live one loses, its execution (rows, events) is not
/// written and the rest of the batch commits; two claims of a key in one batch
/// are decided in order; probes write nothing.
pub async fn idempotency_keys(store: &dyn Store) {
    let t0 = 6_000_000;
    let (e1, e2) = two_executions("conf-idem", t0);
    let mut batch = rows_of(&[(&e1, &[]), (&e2, &[])]);
    batch.claims = vec![
        claim("conf-idem-wf", "key-1", "hash-1", Some(&e1.id), t0),
        claim("conf-idem-other", "key-1", "hash-2", Some(&e2.id), t0),
    ];
    let done = store.commit(batch).await.expect("idempotency_keys: commit");
    assert_eq!(
        done.claims,
        vec![Claimed::Won, Claimed::Won],
        "idempotency_keys: free keys are won"
    );
    let first = IdempotencyRecord {
        workflow_id: "conf-idem-wf".to_owned(),
        key: "key-1".to_owned(),
        request_hash: "hash-1".to_owned(),
        execution_id: e1.id.clone(),
        created_at: t0,
        expires_at: t0 + IDEMPOTENCY_TTL_MS,
    };
    let key = |wf: &'static str, k: &'static str| store.get_idempotency_key(wf, k);
    assert_eq!(
        key("conf-idem-wf", "key-1").await.expect("get"),
        Some(first.clone()),
        "idempotency_keys: stored with the batch"
    );
    assert_eq!(
        key("conf-idem-other", "key-1")
            .await
            .expect("get")
            .map(|r| r.execution_id),
        Some(e2.id.clone()),
        "idempotency_keys: keys are scoped by workflow"
    );
    assert_eq!(
        key("conf-idem-wf", "key-2").await.expect("get"),
        None,
        "idempotency_keys: unknown key"
    );

    // A race lost: the loser's rows and events are not written, the rest of
    // the batch (another execution, a free key, an event) is.
    let loser = execution(
        "conf-idem-loser",
        "conf-idem-wf",
        ExecutionStatus::Running,
        t0 + 10,
        vec![step(
            "s",
            StepStatus::Running,
            Some("a"),
            vec![attempt(1, Some("a"), t0 + 10)],
        )],
    );
    let bystander = execution(
        "conf-idem-bystander",
        "conf-idem-wf",
        ExecutionStatus::Pending,
        t0 + 10,
        vec![step("s", StepStatus::Pending, None, vec![])],
    );
    let mut batch = rows_of(&[(&loser, &[]), (&bystander, &[])]);
    batch.claims = vec![
        claim("conf-idem-wf", "key-1", "hash-9", Some(&loser.id), t0 + 10),
        claim(
            "conf-idem-wf",
            "key-2",
            "hash-2",
            Some(&bystander.id),
            t0 + 10,
        ),
    ];
    batch.events = vec![
        engine_event(EventType::WorkflowStarted, &loser.id, t0 + 10),
        engine_event(EventType::AgentEvent, "conf-idem-other-event", t0 + 10),
    ];
    let last = store.last_seq().await.expect("last_seq");
    let done = store
        .commit(batch)
        .await
        .expect("idempotency_keys: a batch with a lost claim still commits");
    assert_eq!(
        done.claims,
        vec![taken(&e1.id, "hash-1"), Claimed::Won],
        "idempotency_keys: a live claim holds its key (with its request hash)"
    );
    assert_eq!(
        done.events
            .iter()
            .map(|e| (e.seq, e.correlation_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(last + 1, "conf-idem-other-event")],
        "idempotency_keys: the loser's events are not written"
    );
    assert_eq!(
        store.get_execution(&loser.id).await.expect("get loser"),
        None,
        "idempotency_keys: the execution that lost its claim is not written"
    );
    assert_eq!(
        get(store, &bystander.id, "idempotency_keys").await,
        bystander
    );
    assert_eq!(
        key("conf-idem-wf", "key-1").await.expect("get"),
        Some(first),
        "idempotency_keys: a lost claim changes nothing"
    );

    // Two claims of one key in one batch: decided in order.
    let (a, b) = two_executions("conf-idem-dup", t0 + 20);
    let mut batch = rows_of(&[(&a, &[]), (&b, &[])]);
    batch.claims = vec![
        claim("conf-idem-wf", "key-3", "hash-a", Some(&a.id), t0 + 20),
        claim("conf-idem-wf", "key-3", "hash-b", Some(&b.id), t0 + 20),
    ];
    let done = store.commit(batch).await.expect("idempotency_keys: dup");
    assert_eq!(
        done.claims,
        vec![Claimed::Won, taken(&a.id, "hash-a")],
        "idempotency_keys: the second claim of a key in a batch finds the first"
    );
    assert_eq!(get(store, &a.id, "idempotency_keys").await, a);
    assert_eq!(store.get_execution(&b.id).await.expect("get"), None);

    // Probes answer without writing.
    let done = store
        .commit(Batch {
            claims: vec![
                claim("conf-idem-wf", "key-1", "hash-x", None, t0 + 30),
                claim("conf-idem-wf", "key-probe", "hash-x", None, t0 + 30),
            ],
            ..Batch::default()
        })
        .await
        .expect("idempotency_keys: probes");
    assert_eq!(
        done.claims,
        vec![taken(&e1.id, "hash-1"), Claimed::Free],
        "idempotency_keys: probes"
    );
    assert_eq!(
        key("conf-idem-wf", "key-probe").await.expect("get"),
        None,
        "idempotency_keys: a probe claims nothing"
    );
}

/// A claim expires `expires_at` after its creation, once its execution finished
/// (whichever is later); an expired claim is re-pointed at the next execution
/// of its key, which then holds it for another 24 h. Time is the `now` the
/// claims carry (the engine's clock), never the database's.
pub async fn idempotency_key_expiry(store: &dyn Store) {
    const WF: &str = "conf-exp-wf";
    let day = IDEMPOTENCY_TTL_MS;
    let t0 = 7_000_000;
    let new_exec =
        |id: &str, status: ExecutionStatus, at: u64| execution(id, WF, status, at, vec![]);
    let try_claim = |id: &'static str, hash: &'static str, now: u64| async move {
        let e = new_exec(id, ExecutionStatus::Pending, now);
        let mut batch = rows_of(&[(&e, &[])]);
        batch.claims = vec![claim(WF, "k", hash, Some(id), now)];
        let done = store
            .commit(batch)
            .await
            .expect("idempotency_key_expiry: commit");
        let stored = store.get_execution(id).await.expect("get").is_some();
        assert_eq!(
            stored,
            done.claims[0] == Claimed::Won,
            "idempotency_key_expiry: {id} is written exactly when its claim wins"
        );
        done.claims[0].clone()
    };
    let first = new_exec("conf-exp-1", ExecutionStatus::Running, t0);
    let mut batch = rows_of(&[(&first, &[])]);
    batch.claims = vec![claim(WF, "k", "h1", Some(&first.id), t0)];
    store
        .commit(batch)
        .await
        .expect("idempotency_key_expiry: first");

    assert_eq!(
        try_claim("conf-exp-2", "h2", t0 + day + 1).await,
        taken("conf-exp-1", "h1"),
        "idempotency_key_expiry: a claim whose execution still runs after 24 h holds"
    );
    let mut finished = first.clone();
    finished.status = ExecutionStatus::Completed;
    finished.completed_at = Some(t0 + 5);
    store
        .commit(rows_of(&[(&finished, &[])]))
        .await
        .expect("idempotency_key_expiry: finish");
    assert_eq!(
        try_claim("conf-exp-3", "h1", t0 + day - 1).await,
        taken("conf-exp-1", "h1"),
        "idempotency_key_expiry: a finished execution's claim holds for 24 h"
    );
    assert_eq!(
        try_claim("conf-exp-4", "h4", t0 + day).await,
        Claimed::Won,
        "idempotency_key_expiry: after 24 h, once finished, the key starts a new execution"
    );
    let t1 = t0 + day;
    assert_eq!(
        store.get_idempotency_key(WF, "k").await.expect("get"),
        Some(IdempotencyRecord {
            workflow_id: WF.to_owned(),
            key: "k".to_owned(),
            request_hash: "h4".to_owned(),
            execution_id: "conf-exp-4".to_owned(),
            created_at: t1,
            expires_at: t1 + day,
        }),
        "idempotency_key_expiry: the claim is re-pointed, with the new request's hash and times"
    );
    assert_eq!(
        try_claim("conf-exp-5", "h4", t1 + 1_000).await,
        taken("conf-exp-4", "h4"),
        "idempotency_key_expiry: the new claim holds for the next 24 h"
    );
    assert_eq!(
        try_claim("conf-exp-6", "h6", t1 + 3 * day).await,
        taken("conf-exp-4", "h4"),
        "idempotency_key_expiry: ... and as long as its execution is unfinished"
    );
    // A claim whose execution no longer exists counts as finished.
    store
        .commit(Batch {
            claims: vec![claim(WF, "ghost", "g", Some("conf-exp-ghost"), t0)],
            ..Batch::default()
        })
        .await
        .expect("idempotency_key_expiry: ghost");
    let done = store
        .commit(Batch {
            claims: vec![
                claim(WF, "ghost", "g2", None, t0 + day - 1),
                claim(WF, "ghost", "g2", None, t0 + day),
            ],
            ..Batch::default()
        })
        .await
        .expect("idempotency_key_expiry: probes");
    assert_eq!(
        done.claims,
        vec![taken("conf-exp-ghost", "g"), Claimed::Free],
        "idempotency_key_expiry: probes judge expiry like claims"
    );
}

/// Eight commits at once each create an execution per key for the same keys:
/// every key has exactly one winner, the one its stored claim names, and only
/// the winners are written.
pub async fn concurrent_key_claims(store: &dyn Store) {
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        claim_round(store, "conf-race", 0),
        claim_round(store, "conf-race", 1),
        claim_round(store, "conf-race", 2),
        claim_round(store, "conf-race", 3),
        claim_round(store, "conf-race", 4),
        claim_round(store, "conf-race", 5),
        claim_round(store, "conf-race", 6),
        claim_round(store, "conf-race", 7),
    );
    check_claim_race(store, "conf-race", vec![a, b, c, d, e, f, g, h]).await;
}

/// [`concurrent_key_claims`] from 8 spawned tasks (several threads at once).
pub async fn concurrent_key_claims_spawned(store: Arc<dyn Store>) {
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move { claim_round(&*store, "conf-race-t", task).await })
        })
        .collect();
    let mut rounds = Vec::new();
    for h in handles {
        rounds.push(h.await.expect("concurrent_key_claims: task panicked"));
    }
    check_claim_race(&*store, "conf-race-t", rounds).await;
}

const RACED_KEYS: usize = 12;

/// One contender: an execution per key (in a shuffled key order), all in one
/// batch; the answers by key.
async fn claim_round(store: &dyn Store, wf: &str, task: usize) -> Vec<Claimed> {
    let now = 8_000_000 + task as u64;
    let execs: Vec<WorkflowExecution> = (0..RACED_KEYS)
        .map(|k| {
            execution(
                &format!("{wf}-{task}-{k}"),
                wf,
                ExecutionStatus::Pending,
                now,
                vec![step("s", StepStatus::Pending, None, vec![])],
            )
        })
        .collect();
    let order: Vec<usize> = (0..RACED_KEYS)
        .map(|i| (i * 5 + task) % RACED_KEYS)
        .collect();
    let rows: Vec<(&WorkflowExecution, &[&str])> =
        order.iter().map(|&k| (&execs[k], &[][..])).collect();
    let mut batch = rows_of(&rows);
    batch.claims = order
        .iter()
        .map(|&k| {
            claim(
                wf,
                &format!("k{k}"),
                &format!("h{task}"),
                Some(&execs[k].id),
                now,
            )
        })
        .collect();
    let done = store
        .commit(batch)
        .await
        .unwrap_or_else(|e| panic!("concurrent_key_claims: task {task}: {e}"));
    let mut by_key = vec![Claimed::Free; RACED_KEYS];
    for (i, &k) in order.iter().enumerate() {
        by_key[k] = done.claims[i].clone();
    }
    by_key
}

async fn check_claim_race(store: &dyn Store, wf: &str, rounds: Vec<Vec<Claimed>>) {
    for k in 0..RACED_KEYS {
        let stored = store
            .get_idempotency_key(wf, &format!("k{k}"))
            .await
            .expect("concurrent_key_claims: get")
            .expect("concurrent_key_claims: the key is claimed");
        let winners: Vec<usize> = (0..rounds.len())
            .filter(|&t| rounds[t][k] == Claimed::Won)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "concurrent_key_claims: key k{k} has one winner: {rounds:?}"
        );
        let w = winners[0];
        assert_eq!(stored.execution_id, format!("{wf}-{w}-{k}"));
        for (t, r) in rounds.iter().enumerate() {
            let exists = store
                .get_execution(&format!("{wf}-{t}-{k}"))
                .await
                .expect("concurrent_key_claims: get execution")
                .is_some();
            assert_eq!(
                exists,
                t == w,
                "concurrent_key_claims: only the winner is written"
            );
            if t != w {
                assert_eq!(
                    r[k],
                    taken(&stored.execution_id, &format!("h{w}")),
                    "concurrent_key_claims: the others are told who won"
                );
            }
        }
    }
}

fn seqs(events: &[ChoreographyEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Seqs are strictly increasing and contiguous across commits and appends.
pub async fn event_seqs(store: &dyn Store) {
    let s = store.last_seq().await.expect("last_seq");
    let committed = store
        .commit(Batch {
            events: (0..3)
                .map(|i| engine_event(EventType::StepCompleted, "conf-seq", 100 + i))
                .collect(),
            ..Batch::default()
        })
        .await
        .expect("event_seqs: commit")
        .events;
    assert_eq!(
        seqs(&committed),
        vec![s + 1, s + 2, s + 3],
        "event_seqs: commit"
    );
    let appended = store
        .append_events(vec![
            engine_event(EventType::AgentEvent, "conf-seq", 200),
            engine_event(EventType::AgentAlert, "conf-seq", 201),
        ])
        .await
        .expect("event_seqs: append");
    assert_eq!(
        seqs(&appended),
        vec![s + 4, s + 5],
        "event_seqs: append_events continues"
    );
    assert!(
        store
            .append_events(vec![])
            .await
            .expect("append none")
            .is_empty(),
        "event_seqs: appending nothing"
    );
    let (e, _) = two_executions("conf-seq", 7_000_000);
    assert!(
        store
            .commit(rows_of(&[(&e, &[])]))
            .await
            .expect("commit without events")
            .events
            .is_empty(),
        "event_seqs: a batch without events returns none"
    );
    assert_eq!(
        store.last_seq().await.expect("last_seq"),
        s + 5,
        "event_seqs: last_seq"
    );
    let stored = store
        .query_events(
            &EventFilter {
                after: Some(s),
                ..Default::default()
            },
            EventOrder::Ascending,
            100,
        )
        .await
        .expect("event_seqs: query");
    let mut expected = committed;
    expected.extend(appended);
    assert_eq!(
        stored, expected,
        "event_seqs: stored events equal the returned ones"
    );
}

/// Every filter of `query_events`, both orders, limits.
pub async fn query_events(store: &dyn Store) {
    let s = store.last_seq().await.expect("last_seq");
    let spec = |event_type, source, target, workflow, execution, correlation, timestamp| {
        event(fixtures::EventSpec {
            event_type,
            source,
            target,
            workflow,
            execution,
            correlation,
            timestamp,
            payload: json!({"t": timestamp}),
        })
    };
    use EventType as T;
    let new = [
        spec(
            T::WorkflowStarted,
            "maestro",
            None,
            Some("qe-wf-1"),
            Some("qe-x-1"),
            "qe-c-1",
            8_000,
        ),
        spec(
            T::StepCompleted,
            "maestro",
            Some("qe-agent"),
            Some("qe-wf-1"),
            Some("qe-x-1"),
            "qe-c-1",
            8_001,
        ),
        spec(T::AgentEvent, "qe-agent", None, None, None, "qe-c-2", 8_002),
        spec(
            T::StepFailed,
            "maestro",
            Some("qe-other"),
            Some("qe-wf-2"),
            Some("qe-x-2"),
            "qe-c-2",
            8_003,
        ),
        spec(
            T::AgentAlert,
            "qe-agent",
            Some("qe-other"),
            None,
            None,
            "qe-c-3",
            8_004,
        ),
        spec(
            T::WorkflowCompleted,
            "maestro",
            None,
            Some("qe-wf-1"),
            Some("qe-x-1"),
            "qe-c-1",
            8_005,
        ),
    ];
    // Split across a commit and an append: one log.
    let mut all = store
        .commit(Batch {
            events: new[..3].to_vec(),
            ..Batch::default()
        })
        .await
        .expect("query_events: commit")
        .events;
    all.extend(
        store
            .append_events(new[3..].to_vec())
            .await
            .expect("query_events: append"),
    );
    let pick =
        |idx: &[usize]| -> Vec<ChoreographyEvent> { idx.iter().map(|&i| all[i].clone()).collect() };
    let base = EventFilter {
        after: Some(s),
        ..Default::default()
    };
    let run = |f: EventFilter, order: EventOrder, limit: usize| async move {
        store
            .query_events(&f, order, limit)
            .await
            .unwrap_or_else(|e| panic!("query_events {f:?}: {e}"))
    };
    let cases: Vec<(&str, EventFilter, Vec<usize>)> = vec![
        ("no filter", base.clone(), vec![0, 1, 2, 3, 4, 5]),
        (
            "one type",
            EventFilter {
                event_types: vec![T::StepFailed],
                ..base.clone()
            },
            vec![3],
        ),
        (
            "types any-of",
            EventFilter {
                event_types: vec![T::AgentEvent, T::AgentAlert, T::WorkflowStarted],
                ..base.clone()
            },
            vec![0, 2, 4],
        ),
        (
            "agent_id matches source or target",
            EventFilter {
                agent_id: Some("qe-agent".into()),
                ..base.clone()
            },
            vec![1, 2, 4],
        ),
        (
            "agent_id as target only",
            EventFilter {
                agent_id: Some("qe-other".into()),
                ..base.clone()
            },
            vec![3, 4],
        ),
        (
            "source_agent",
            EventFilter {
                source_agent: Some("qe-agent".into()),
                ..base.clone()
            },
            vec![2, 4],
        ),
        (
            "workflow_id",
            EventFilter {
                workflow_id: Some("qe-wf-1".into()),
                ..base.clone()
            },
            vec![0, 1, 5],
        ),
        (
            "execution_id",
            EventFilter {
                execution_id: Some("qe-x-2".into()),
                ..base.clone()
            },
            vec![3],
        ),
        (
            "correlation_id",
            EventFilter {
                correlation_id: Some("qe-c-2".into()),
                ..base.clone()
            },
            vec![2, 3],
        ),
        (
            "since is inclusive",
            EventFilter {
                since: Some(8_003),
                ..base.clone()
            },
            vec![3, 4, 5],
        ),
        (
            "after is exclusive",
            EventFilter {
                after: Some(all[3].seq),
                ..Default::default()
            },
            vec![4, 5],
        ),
        (
            "filters combine",
            EventFilter {
                event_types: vec![T::StepCompleted, T::WorkflowCompleted, T::AgentEvent],
                workflow_id: Some("qe-wf-1".into()),
                source_agent: Some("maestro".into()),
                since: Some(8_002),
                ..base.clone()
            },
            vec![5],
        ),
    ];
    for (name, filter, expected) in cases {
        for order in [EventOrder::Ascending, EventOrder::Newest] {
            assert_eq!(
                run(filter.clone(), order, 100).await,
                pick(&expected),
                "query_events: {name} ({order:?})"
            );
        }
    }
    assert_eq!(
        run(base.clone(), EventOrder::Ascending, 2).await,
        pick(&[0, 1]),
        "query_events: Ascending answers the first `limit` after `after`"
    );
    assert_eq!(
        run(base.clone(), EventOrder::Newest, 2).await,
        pick(&[4, 5]),
        "query_events: Newest answers the newest `limit`, in ascending order"
    );
    assert_eq!(
        run(
            EventFilter {
                correlation_id: Some("qe-c-1".into()),
                ..Default::default()
            },
            EventOrder::Newest,
            2
        )
        .await,
        pick(&[1, 5]),
        "query_events: Newest without `after`"
    );
    assert_eq!(
        run(
            EventFilter {
                correlation_id: Some("qe-c-1".into()),
                ..Default::default()
            },
            EventOrder::Ascending,
            2
        )
        .await,
        pick(&[0, 1]),
        "query_events: Ascending without `after` starts at the beginning"
    );
    assert!(
        run(base.clone(), EventOrder::Ascending, 0).await.is_empty(),
        "query_events: limit 0"
    );
    assert!(
        run(
            EventFilter {
                after: Some(all[5].seq),
                ..Default::default()
            },
            EventOrder::Newest,
            10
        )
        .await
        .is_empty(),
        "query_events: nothing after the last seq"
    );
}

/// Payloads of any JSON type and metadata survive the log; `count_events_since`.
pub async fn event_payloads(store: &dyn Store) {
    // Timestamps above every other check's, so the counts below are exact.
    const T0: u64 = 9_000_000_000_000;
    let payloads = [
        tricky_json(),
        json!("just a string"),
        json!(null),
        json!(42),
        json!([1, {"a": null}]),
        json!({}),
    ];
    let new: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = engine_event(EventType::AgentEvent, "conf-payload", T0 + i as u64);
            e.payload = p.clone();
            e.metadata = match i {
                0 => Some(object(tricky_json())),
                1 => Some(serde_json::Map::new()),
                _ => None,
            };
            e
        })
        .collect();
    let s = store.last_seq().await.expect("last_seq");
    let written = store
        .append_events(new)
        .await
        .expect("event_payloads: append");
    let read = store
        .query_events(
            &EventFilter {
                after: Some(s),
                ..Default::default()
            },
            EventOrder::Ascending,
            100,
        )
        .await
        .expect("event_payloads: query");
    assert_eq!(
        read, written,
        "event_payloads: payloads and metadata round trip"
    );
    assert_eq!(
        store
            .count_events_since(T0 + 2)
            .await
            .expect("count_events_since"),
        4,
        "count_events_since: timestamp >= since"
    );
    assert_eq!(
        store
            .count_events_since(T0 + 100)
            .await
            .expect("count_events_since"),
        0,
        "count_events_since: none that recent"
    );
    // count_events agrees with what query_events finds, for several filters.
    for f in [
        EventFilter::default(),
        EventFilter {
            since: Some(T0 + 2),
            ..Default::default()
        },
        EventFilter {
            event_types: vec![EventType::AgentEvent, EventType::AgentAlert],
            ..Default::default()
        },
        EventFilter {
            correlation_id: Some("no-such-correlation".into()),
            ..Default::default()
        },
    ] {
        let all = store
            .query_events(&f, EventOrder::Ascending, usize::MAX >> 1)
            .await
            .expect("count_events: query");
        assert_eq!(
            store.count_events(&f).await.expect("count_events"),
            all.len() as u64,
            "count_events: the number query_events finds for {f:?}"
        );
    }
}

/// JSON documents come back as written: object keys in their order (the
/// workspace keeps insertion order, and so do API answers built from stored
/// rows), and strings with any character, `\u{0}` included (an agent may answer
/// one; a store that refused it would fail a whole group commit).
pub async fn json_documents(store: &dyn Store) {
    let doc = || {
        json!({
            "zeta": 1, "alpha": {"y": [3, {"b": 1, "a": 2}], "x": null},
            "nul": "before\u{0}after", "mid": "\u{1}\u{7f}\u{fffd}", "m": 0.5
        })
    };
    let text = |v: &serde_json::Value| serde_json::to_string(v).expect("json");
    let map = |v: serde_json::Value| object(v);

    // An execution: variables, step inputs and outputs, its error.
    let mut e = execution(
        "conf-json-1",
        "conf-json-wf",
        ExecutionStatus::Failed,
        9_100_000,
        vec![step(
            "s",
            StepStatus::Completed,
            Some("a"),
            vec![attempt(1, Some("a"), 9_100_001)],
        )],
    );
    e.context.variables = map(doc());
    e.step_executions.0[0].inputs = map(doc());
    e.step_executions.0[0].outputs = Some(map(doc()));
    e.context.step_outputs = [("s".to_owned(), map(doc()))].into_iter().collect();
    if let Some(err) = e.error.as_mut() {
        err.details = Some(doc());
    }
    let mut batch = rows_of(&[(&e, &[])]);
    let mut ev = engine_event(EventType::AgentEvent, "conf-json-1", 8_900);
    ev.payload = doc();
    ev.metadata = Some(map(doc()));
    batch.events = vec![ev];
    let written = store
        .commit(batch)
        .await
        .expect("json_documents: commit")
        .events;
    let got = get(store, "conf-json-1", "json_documents").await;
    assert_eq!(got, e, "json_documents: the execution round trips");
    for (what, stored) in [
        ("variables", serde_json::to_value(&got.context.variables)),
        (
            "step inputs",
            serde_json::to_value(&got.step_executions.0[0].inputs),
        ),
        (
            "step outputs",
            serde_json::to_value(&got.step_executions.0[0].outputs),
        ),
        (
            "error details",
            serde_json::to_value(got.error.as_ref().map(|x| &x.details)),
        ),
    ] {
        assert_eq!(
            text(&stored.expect("json")),
            text(&doc()),
            "json_documents: {what} keep their keys' order and every character"
        );
    }

    // The event log.
    let read = store
        .query_events(
            &EventFilter {
                after: Some(written[0].seq - 1),
                correlation_id: Some("conf-json-1".into()),
                ..Default::default()
            },
            EventOrder::Ascending,
            1,
        )
        .await
        .expect("json_documents: query events");
    assert_eq!(read, written, "json_documents: the event round trips");
    assert_eq!(
        text(&read[0].payload),
        text(&doc()),
        "json_documents: event payload"
    );
    assert_eq!(
        text(&serde_json::Value::Object(
            read[0].metadata.clone().expect("metadata")
        )),
        text(&doc()),
        "json_documents: event metadata"
    );

    // A poll task's body.
    let task = maestro_core::ports::TaskRecord {
        task_id: "conf-json-task".to_owned(),
        agent_id: "conf-json-agent".to_owned(),
        capability: "c".to_owned(),
        execution_id: "conf-json-1".to_owned(),
        step_id: "s".to_owned(),
        attempt: 1,
        compensation: false,
        body: doc(),
        status: maestro_core::ports::TaskStatus::Queued,
        lease_expires_at: None,
        result: None,
        created_at: 1,
        updated_at: 1,
    };
    store
        .enqueue_task(&task)
        .await
        .expect("json_documents: enqueue");
    let got = store
        .get_task("conf-json-task")
        .await
        .expect("json_documents: get task")
        .expect("the task");
    assert_eq!(text(&got.body), text(&doc()), "json_documents: task body");
    // The task stays queued: `tasks` purges the finished tasks of the store.
}

/// Tokens: insert, duplicates refused, get, list by creation, revoke once.
pub async fn tokens(store: &dyn Store) {
    let token = |id: &str, created_at| TokenRecord {
        id: id.to_owned(),
        role: "agent".to_owned(),
        agent_id: Some("sentinel-1".to_owned()),
        name: format!("token {id}"),
        secret_hash: format!("sha256-of-{id}"),
        created_at,
        expires_at: Some(created_at + 1_000),
        revoked_at: None,
    };
    let t1 = token("conf-tok-b", 10);
    let t2 = TokenRecord {
        agent_id: None,
        expires_at: None,
        role: "admin".to_owned(),
        ..token("conf-tok-a", 20)
    };
    store.insert_token(&t1).await.expect("tokens: insert");
    store.insert_token(&t2).await.expect("tokens: insert");
    let err = store
        .insert_token(&t1)
        .await
        .expect_err("tokens: a duplicate id must be refused");
    assert!(
        is_already_exists(&err),
        "tokens: duplicate id is AlreadyExists, got {err:?}"
    );
    assert_eq!(
        store.get_token(&t1.id).await.expect("get"),
        Some(t1.clone()),
        "tokens: get (secret hash included)"
    );
    assert_eq!(store.get_token("conf-tok-none").await.expect("get"), None);
    let listed: Vec<TokenRecord> = store
        .list_tokens()
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.id.starts_with("conf-tok-"))
        .collect();
    assert_eq!(
        listed,
        vec![t1.clone(), t2.clone()],
        "tokens: listed by creation time"
    );
    assert!(
        store.revoke_token(&t1.id, 50).await.expect("revoke"),
        "tokens: revoking a live token answers true"
    );
    assert!(
        !store.revoke_token(&t1.id, 60).await.expect("revoke again"),
        "tokens: revoking a revoked token answers false"
    );
    assert!(
        !store
            .revoke_token("conf-tok-none", 60)
            .await
            .expect("revoke unknown"),
        "tokens: revoking an unknown token answers false"
    );
    assert_eq!(
        store
            .get_token(&t1.id)
            .await
            .expect("get")
            .and_then(|t| t.revoked_at),
        Some(50),
        "tokens: the first revocation time is kept"
    );
}

/// Subscriptions: insert, list by creation, delete.
pub async fn subscriptions(store: &dyn Store) {
    let s1 = SubscriptionRecord {
        id: "conf-sub-b".to_owned(),
        event_types: vec![EventType::WorkflowCompleted, EventType::WorkflowFailed],
        agent_id: Some("sentinel-1".to_owned()),
        workflow_id: None,
        url: "http://127.0.0.1:9999/hook".to_owned(),
        secret: "whsec".to_owned(),
        created_at: 1,
    };
    let s2 = SubscriptionRecord {
        id: "conf-sub-a".to_owned(),
        event_types: vec![EventType::Audit],
        agent_id: None,
        workflow_id: Some("wf".to_owned()),
        created_at: 2,
        ..s1.clone()
    };
    store
        .insert_subscription(&s1)
        .await
        .expect("subscriptions: insert");
    store
        .insert_subscription(&s2)
        .await
        .expect("subscriptions: insert");
    let err = store
        .insert_subscription(&s1)
        .await
        .expect_err("subscriptions: duplicate id must be refused");
    assert!(
        is_already_exists(&err),
        "subscriptions: duplicate is AlreadyExists, got {err:?}"
    );
    let listed = |subs: Vec<SubscriptionRecord>| -> Vec<SubscriptionRecord> {
        subs.into_iter()
            .filter(|s| s.id.starts_with("conf-sub-"))
            .collect()
    };
    assert_eq!(
        listed(store.list_subscriptions().await.expect("list")),
        vec![s1.clone(), s2.clone()],
        "subscriptions: listed by creation time, secrets included"
    );
    // The delivery cursor starts at 0 and only moves forward.
    let cursor = |id: &str| {
        let id = id.to_owned();
        async move { store.subscription_cursor(&id).await.expect("cursor") }
    };
    assert_eq!(
        cursor(&s1.id).await,
        Some(0),
        "subscriptions: a new cursor is 0"
    );
    assert!(
        store
            .set_subscription_cursor(&s1.id, 42)
            .await
            .expect("set cursor")
    );
    assert!(
        store
            .set_subscription_cursor(&s1.id, 7)
            .await
            .expect("set cursor")
    );
    assert_eq!(
        cursor(&s1.id).await,
        Some(42),
        "subscriptions: the cursor never goes back"
    );
    assert_eq!(
        cursor(&s2.id).await,
        Some(0),
        "subscriptions: cursors are per subscription"
    );
    assert_eq!(cursor("conf-sub-none").await, None);
    assert!(
        !store
            .set_subscription_cursor("conf-sub-none", 1)
            .await
            .expect("set cursor"),
        "subscriptions: no cursor for an unknown subscription"
    );
    assert!(
        store.delete_subscription(&s1.id).await.expect("delete"),
        "subscriptions: delete"
    );
    assert_eq!(
        cursor(&s1.id).await,
        None,
        "subscriptions: the cursor goes with it"
    );
    assert!(
        !store
            .delete_subscription(&s1.id)
            .await
            .expect("delete again"),
        "subscriptions: deleting twice answers false"
    );
    assert_eq!(
        listed(store.list_subscriptions().await.expect("list")),
        vec![s2],
        "subscriptions: the deleted one is gone"
    );
}

/// Runtime config: one JSON object, replaced as a whole.
pub async fn config(store: &dyn Store) {
    let a = json!({"agentTimeoutMs": 500, "defaultRetryPolicy": {"maxAttempts": 5}});
    store.save_config(&a).await.expect("config: save");
    assert_eq!(
        store.load_config().await.expect("config: load"),
        Some(a),
        "config: load"
    );
    let b = json!({"logLevel": "debug"});
    store.save_config(&b).await.expect("config: save again");
    assert_eq!(
        store.load_config().await.expect("config: load"),
        Some(b),
        "config: saving replaces the whole object"
    );
}

const TASKS: usize = 8;
const BATCHES_PER_TASK: usize = 50;
const EVENTS_PER_BATCH: usize = 3;

async fn commit_many(store: &dyn Store, task: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for b in 0..BATCHES_PER_TASK {
        let id = format!("conf-conc-{task}-{b}");
        let e = execution(
            &id,
            "conf-conc-wf",
            ExecutionStatus::Running,
            10,
            vec![step(
                "s",
                StepStatus::Running,
                Some("a"),
                vec![attempt(1, Some("a"), 10)],
            )],
        );
        let mut batch = rows_of(&[(&e, &[])]);
        batch.events = (0..EVENTS_PER_BATCH)
            .map(|i| engine_event(EventType::StepStarted, &id, i as u64))
            .collect();
        let events = store
            .commit(batch)
            .await
            .unwrap_or_else(|err| panic!("concurrent_commits: task {task} batch {b}: {err}"))
            .events;
        let got = seqs_of(&events);
        assert!(
            got.windows(2).all(|w| w[1] == w[0] + 1),
            "concurrent_commits: a batch's seqs are contiguous, got {got:?}"
        );
        if let (Some(prev), Some(first)) = (seqs.last(), got.first()) {
            assert!(first > prev, "concurrent_commits: one task's seqs increase");
        }
        seqs.extend(got);
    }
    seqs
}

fn seqs_of(events: &[ChoreographyEvent]) -> Vec<u64> {
    seqs(events)
}

fn check_contiguous(before: u64, all: Vec<u64>, stored: &[ChoreographyEvent]) {
    let n = (TASKS * BATCHES_PER_TASK * EVENTS_PER_BATCH) as u64;
    let set: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        set.len(),
        all.len(),
        "concurrent_commits: no seq handed out twice"
    );
    assert_eq!(
        set.into_iter().collect::<Vec<_>>(),
        (before + 1..=before + n).collect::<Vec<_>>(),
        "concurrent_commits: seqs are exactly last+1..=last+N"
    );
    assert_eq!(
        seqs(stored),
        (before + 1..=before + n).collect::<Vec<_>>(),
        "concurrent_commits: the stored log has no gap"
    );
}

/// 8 tasks polled concurrently, 50 batches each with events: seqs are exactly the
/// next `N`, no gap, no duplicate; each batch's seqs contiguous.
pub async fn concurrent_commits(store: &dyn Store) {
    let before = store.last_seq().await.expect("last_seq");
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        commit_many(store, 0),
        commit_many(store, 1),
        commit_many(store, 2),
        commit_many(store, 3),
        commit_many(store, 4),
        commit_many(store, 5),
        commit_many(store, 6),
        commit_many(store, 7),
    );
    let all: Vec<u64> = [a, b, c, d, e, f, g, h].into_iter().flatten().collect();
    let stored = store
        .query_events(
            &EventFilter {
                after: Some(before),
                ..Default::default()
            },
            EventOrder::Ascending,
            100_000,
        )
        .await
        .expect("concurrent_commits: query");
    check_contiguous(before, all, &stored);
}

/// Like [`concurrent_commits`], with 8 spawned tasks (on a multi-threaded runtime
/// they commit from several threads at once).
pub async fn concurrent_commits_spawned(store: Arc<dyn Store>) {
    let before = store.last_seq().await.expect("last_seq");
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move { commit_many(&*store, task).await })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("concurrent_commits_spawned: task panicked"));
    }
    let stored = store
        .query_events(
            &EventFilter {
                after: Some(before),
                ..Default::default()
            },
            EventOrder::Ascending,
            100_000,
        )
        .await
        .expect("concurrent_commits_spawned: query");
    check_contiguous(before, all, &stored);
}

/// Retention: finished executions that ended before the horizon go with their
/// steps, attempts and idempotency keys, unfinished ones and newer ones stay;
/// old events go, seqs are never reused. Runs last in `run_all` (it removes
/// old rows of every check).
pub async fn retention(store: &dyn Store) {
    let horizon = 100_000;
    let old_done = execution(
        "conf-ret-done",
        "conf-ret-wf",
        ExecutionStatus::Completed,
        1_000,
        vec![step(
            "s",
            StepStatus::Completed,
            Some("a"),
            vec![attempt(1, Some("a"), 1_001)],
        )],
    );
    let old_failed = execution(
        "conf-ret-failed",
        "conf-ret-wf",
        ExecutionStatus::Failed,
        2_000,
        vec![],
    );
    let old_running = execution(
        "conf-ret-running",
        "conf-ret-wf",
        ExecutionStatus::Running,
        3_000,
        vec![],
    );
    let recent = execution(
        "conf-ret-recent",
        "conf-ret-wf",
        ExecutionStatus::Completed,
        200_000,
        vec![],
    );
    let mut batch = rows_of(&[
        (&old_done, &[]),
        (&old_failed, &[]),
        (&old_running, &[]),
        (&recent, &[]),
    ]);
    batch.claims = vec![claim(
        "conf-ret-wf",
        "conf-ret-key",
        "h",
        Some(&old_done.id),
        1_000,
    )];
    batch.events = vec![
        engine_event(EventType::AgentEvent, "conf-ret-done", 10),
        engine_event(EventType::AgentEvent, "conf-ret-done", 20),
        engine_event(EventType::AgentEvent, "conf-ret-recent", 200_000),
    ];
    let written = store.commit(batch).await.expect("retention: commit").events;
    let last = store.last_seq().await.expect("retention: last_seq");

    // While its key claim is live, an old finished execution stays.
    let claim_live = 50_000;
    let n = store
        .purge_executions(horizon, claim_live, 1_000_000)
        .await
        .expect("retention: purge_executions");
    assert!(n >= 1, "retention: the unclaimed old execution goes ({n})");
    assert_eq!(
        get(store, "conf-ret-done", "retention").await,
        old_done,
        "retention: an execution a live claim points at stays"
    );
    assert!(
        store
            .get_idempotency_key("conf-ret-wf", "conf-ret-key")
            .await
            .expect("retention: key")
            .is_some(),
        "retention: a live claim is never deleted"
    );
    // In batches of one: each call deletes at most `limit`.
    let now = 1_000 + IDEMPOTENCY_TTL_MS;
    let mut deleted = n;
    loop {
        let n = store
            .purge_executions(horizon, now, 1)
            .await
            .expect("retention: purge_executions");
        assert!(
            n <= 1,
            "retention: purge_executions deleted {n} with limit 1"
        );
        if n == 0 {
            break;
        }
        deleted += n;
    }
    assert!(
        deleted >= 2,
        "retention: both old finished executions deleted ({deleted})"
    );
    for gone in ["conf-ret-done", "conf-ret-failed"] {
        assert!(
            store
                .get_execution(gone)
                .await
                .expect("retention: get")
                .is_none(),
            "retention: {gone} was purged"
        );
    }
    assert_eq!(
        get(store, "conf-ret-running", "retention").await,
        old_running,
        "retention: an unfinished execution is never purged"
    );
    assert_eq!(get(store, "conf-ret-recent", "retention").await, recent);
    assert!(
        store
            .get_idempotency_key("conf-ret-wf", "conf-ret-key")
            .await
            .expect("retention: key")
            .is_none(),
        "retention: the expired key of a purged execution goes with it"
    );

    loop {
        let n = store
            .purge_events(horizon, 1)
            .await
            .expect("retention: purge_events");
        assert!(n <= 1, "retention: purge_events deleted {n} with limit 1");
        if n == 0 {
            break;
        }
    }
    let left = store
        .query_events(
            &EventFilter {
                after: Some(written[0].seq - 1),
                ..Default::default()
            },
            EventOrder::Ascending,
            100,
        )
        .await
        .expect("retention: query");
    assert_eq!(
        left.first(),
        written.last(),
        "retention: only the recent event is left"
    );
    assert!(
        left.iter().all(|e| e.timestamp >= horizon),
        "retention: {left:?}"
    );
    assert_eq!(
        store.last_seq().await.expect("retention: last_seq"),
        last,
        "retention: last_seq unchanged"
    );
    let next = store
        .append_events(vec![engine_event(
            EventType::AgentEvent,
            "conf-ret-recent",
            300_000,
        )])
        .await
        .expect("retention: append");
    assert_eq!(next[0].seq, last + 1, "retention: seqs are not reused");
}
