//! Checks of the poll-task queue ([`TaskStore`](maestro_core::ports::TaskStore))
//! and of named leases ([`LeaseStore`](maestro_core::ports::LeaseStore)).
//!
//! Only these checks write tasks and leases. `expire_leases` (task leases) and
//! `purge_tasks` act on the whole store, so each check uses a time window of
//! its own (the concurrent checks' leases end far after the `tasks` window) and
//! `leases` releases every lease it took.

use std::collections::BTreeSet;
use std::sync::Arc;

use maestro_core::Error;
use maestro_core::model::Timestamp;
use maestro_core::ports::{Store, TaskFinish, TaskRecord, TaskStatus};
use serde_json::json;

use super::fixtures::tricky_json;

fn task(id: &str, agent: &str, capability: &str, created_at: Timestamp) -> TaskRecord {
    TaskRecord {
        task_id: id.to_owned(),
        agent_id: agent.to_owned(),
        capability: capability.to_owned(),
        execution_id: format!("exec-of-{id}"),
        step_id: "step".to_owned(),
        attempt: 2,
        compensation: false,
        body: json!({"taskId": id, "capability": capability, "inputs": tricky_json(),
                     "deadline": 1_764_100_010_000u64, "timeoutMs": 10_000}),
        status: TaskStatus::Queued,
        lease_expires_at: None,
        result: None,
        created_at,
        updated_at: created_at,
    }
}

fn leased(mut t: TaskRecord, now: Timestamp, until: Timestamp) -> TaskRecord {
    t.status = TaskStatus::Leased;
    t.lease_expires_at = Some(until);
    t.updated_at = now;
    t
}

fn ids(tasks: &[TaskRecord]) -> Vec<&str> {
    tasks.iter().map(|t| t.task_id.as_str()).collect()
}

/// Only this check's tasks (the expiry sweep is store-wide).
fn own(tasks: Vec<TaskRecord>) -> Vec<TaskRecord> {
    tasks
        .into_iter()
        .filter(|t| t.task_id.starts_with("conf-task-"))
        .collect()
}

async fn status_of(store: &dyn Store, id: &str) -> Option<TaskStatus> {
    store
        .get_task(id)
        .await
        .unwrap_or_else(|e| panic!("tasks: get {id}: {e}"))
        .map(|t| t.status)
}

/// Poll tasks: enqueue (duplicate ids refused), leasing (oldest first, capability
/// filter, `max`, never twice), extending (owner only, while leased), finishing
/// (only from Leased), the expiry sweep, cancelling an agent's tasks, purging.
pub async fn tasks(store: &dyn Store) {
    const A1: &str = "conf-task-agent-1";
    const A2: &str = "conf-task-agent-2";
    let t0: Timestamp = 1_000_000;
    let mut a = task("conf-task-a", A1, "sign", t0 + 3);
    a.compensation = true;
    a.attempt = 1;
    let b = task("conf-task-b", A1, "sign", t0 + 1);
    let c = task("conf-task-c", A1, "hash", t0 + 2);
    let d = task("conf-task-d", A1, "sign", t0 + 4);
    let x = task("conf-task-x", A2, "sign", t0);

    // Enqueued out of creation order: leasing goes by creation time.
    for t in [&d, &a, &x, &c, &b] {
        store.enqueue_task(t).await.expect("tasks: enqueue");
    }
    let err = store
        .enqueue_task(&a)
        .await
        .expect_err("tasks: a duplicate task id must be refused");
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "tasks: duplicate id is AlreadyExists, got {err:?}"
    );
    assert_eq!(
        store.get_task(&a.task_id).await.expect("tasks: get"),
        Some(a.clone()),
        "tasks: get returns the task as enqueued"
    );
    assert_eq!(
        store.get_task("conf-task-none").await.expect("tasks: get"),
        None,
        "tasks: an unknown id is not found"
    );

    // Oldest first, only the asked capabilities, at most `max`.
    let now = t0 + 10;
    let got = store
        .lease_tasks(A1, &["sign".to_owned()], 2, now, 1_000)
        .await
        .expect("tasks: lease");
    let a = leased(a, now, now + 1_000);
    let b = leased(b, now, now + 1_000);
    assert_eq!(
        got,
        vec![b.clone(), a.clone()],
        "tasks: lease the oldest `max` tasks of the capability, as Leased until now + lease"
    );
    assert_eq!(
        store.get_task(&b.task_id).await.expect("tasks: get"),
        Some(b.clone()),
        "tasks: a leased task is stored as leased"
    );
    // No capability: any; what is leased is not leased again.
    let now = t0 + 20;
    let got = store
        .lease_tasks(A1, &[], 10, now, 500)
        .await
        .expect("tasks: lease");
    let c = leased(c, now, now + 500);
    let d = leased(d, now, now + 500);
    assert_eq!(
        got,
        vec![c.clone(), d.clone()],
        "tasks: an empty capability list leases any capability; leased tasks are not leased again"
    );
    assert!(
        store
            .lease_tasks(A1, &[], 10, now, 500)
            .await
            .expect("tasks: lease")
            .is_empty(),
        "tasks: nothing left to lease"
    );
    assert!(
        store
            .lease_tasks(A2, &["hash".to_owned(), "verify".to_owned()], 10, now, 500)
            .await
            .expect("tasks: lease")
            .is_empty(),
        "tasks: a task of another capability is not leased"
    );
    assert!(
        store
            .lease_tasks(A2, &[], 0, now, 500)
            .await
            .expect("tasks: lease")
            .is_empty(),
        "tasks: max 0 leases nothing"
    );
    assert_eq!(status_of(store, &x.task_id).await, Some(TaskStatus::Queued));

    // Extending: only the owner, only while leased.
    assert!(
        !store
            .extend_lease(&b.task_id, A2, t0 + 5_000, t0 + 30)
            .await
            .expect("tasks: extend"),
        "tasks: another agent cannot extend the lease"
    );
    assert!(
        !store
            .extend_lease(&x.task_id, A2, t0 + 5_000, t0 + 30)
            .await
            .expect("tasks: extend"),
        "tasks: a queued task has no lease to extend"
    );
    assert!(
        !store
            .extend_lease("conf-task-none", A1, t0 + 5_000, t0 + 30)
            .await
            .expect("tasks: extend"),
        "tasks: extending an unknown task answers false"
    );
    assert!(
        store
            .extend_lease(&b.task_id, A1, t0 + 5_000, t0 + 30)
            .await
            .expect("tasks: extend"),
        "tasks: the owner extends its lease"
    );
    let mut b = b;
    b.lease_expires_at = Some(t0 + 5_000);
    b.updated_at = t0 + 30;
    assert_eq!(
        store.get_task(&b.task_id).await.expect("tasks: get"),
        Some(b.clone()),
        "tasks: the extended lease is stored"
    );

    // Finishing: only from Leased.
    let outputs = json!({"outputs": {"signature": "sig", "tricky": tricky_json()}});
    assert!(
        store
            .finish_task(
                &a.task_id,
                TaskStatus::Completed,
                Some(outputs.clone()),
                t0 + 40
            )
            .await
            .expect("tasks: finish"),
        "tasks: finishing a leased task answers true"
    );
    let mut a = a;
    a.status = TaskStatus::Completed;
    a.result = Some(outputs.clone());
    a.updated_at = t0 + 40;
    assert_eq!(
        store.get_task(&a.task_id).await.expect("tasks: get"),
        Some(a.clone()),
        "tasks: a finished task keeps its result"
    );
    assert!(
        !store
            .finish_task(&a.task_id, TaskStatus::Completed, Some(outputs), t0 + 41)
            .await
            .expect("tasks: finish again"),
        "tasks: finishing twice answers false"
    );
    assert!(
        !store
            .extend_lease(&a.task_id, A1, t0 + 5_000, t0 + 41)
            .await
            .expect("tasks: extend finished"),
        "tasks: a finished task's lease cannot be extended"
    );
    assert!(
        !store
            .finish_task(&x.task_id, TaskStatus::Failed, None, t0 + 41)
            .await
            .expect("tasks: finish queued"),
        "tasks: a queued task cannot be finished"
    );
    assert!(
        !store
            .finish_task("conf-task-none", TaskStatus::Failed, None, t0 + 41)
            .await
            .expect("tasks: finish unknown"),
        "tasks: finishing an unknown task answers false"
    );
    let err = store
        .finish_task(&b.task_id, TaskStatus::Expired, None, t0 + 41)
        .await
        .expect_err("tasks: finishing as anything but completed/failed is refused");
    assert!(
        matches!(err, Error::InvalidState(_)),
        "tasks: finishing as expired is InvalidState, got {err:?}"
    );
    assert_eq!(
        status_of(store, &a.task_id).await,
        Some(TaskStatus::Completed)
    );
    assert_eq!(status_of(store, &b.task_id).await, Some(TaskStatus::Leased));

    // The expiry sweep: leases that ended before `now` (c and d end at t0 + 520).
    assert_eq!(
        own(store.expire_leases(t0 + 520).await.expect("tasks: expire")),
        vec![],
        "tasks: a lease ending exactly now has not expired yet"
    );
    let mut c = c;
    let mut d = d;
    for t in [&mut c, &mut d] {
        t.status = TaskStatus::Expired;
        t.updated_at = t0 + 521;
    }
    assert_eq!(
        own(store.expire_leases(t0 + 521).await.expect("tasks: expire")),
        vec![c.clone(), d.clone()],
        "tasks: leases that ended before now expire, returned oldest first"
    );
    assert_eq!(
        store.get_task(&c.task_id).await.expect("tasks: get"),
        Some(c.clone()),
        "tasks: an expired task is stored as expired"
    );
    assert!(
        !store
            .finish_task(&c.task_id, TaskStatus::Completed, Some(json!({})), t0 + 530)
            .await
            .expect("tasks: finish expired"),
        "tasks: a task whose lease expired cannot be finished"
    );
    assert!(
        !store
            .extend_lease(&d.task_id, A1, t0 + 5_000, t0 + 530)
            .await
            .expect("tasks: extend expired"),
        "tasks: an expired lease cannot be extended"
    );
    assert_eq!(
        own(store.expire_leases(t0 + 530).await.expect("tasks: expire")),
        vec![],
        "tasks: the sweep expires a task once; the extended lease of b still runs"
    );
    assert!(
        store
            .finish_task(
                &b.task_id,
                TaskStatus::Failed,
                Some(json!({"error": {"code": "E", "message": "m", "retryable": false}})),
                t0 + 540
            )
            .await
            .expect("tasks: fail"),
        "tasks: failing a leased task answers true"
    );
    assert_eq!(status_of(store, &b.task_id).await, Some(TaskStatus::Failed));

    // Cancelling an agent's tasks: queued and leased ones only.
    let e = task("conf-task-e", A1, "sign", t0 + 5);
    let f = task("conf-task-f", A1, "sign", t0 + 6);
    store.enqueue_task(&f).await.expect("tasks: enqueue");
    store.enqueue_task(&e).await.expect("tasks: enqueue");
    assert_eq!(
        ids(&store
            .lease_tasks(A1, &[], 1, t0 + 550, 1_000)
            .await
            .expect("tasks: lease")),
        vec!["conf-task-e"]
    );
    let cancelled = store
        .cancel_agent_tasks(A1, t0 + 600)
        .await
        .expect("tasks: cancel");
    assert_eq!(
        ids(&cancelled),
        vec!["conf-task-e", "conf-task-f"],
        "tasks: cancelling an agent's tasks cancels its queued and leased ones, oldest first"
    );
    assert!(
        cancelled
            .iter()
            .all(|t| t.status == TaskStatus::Cancelled && t.updated_at == t0 + 600),
        "tasks: cancelled tasks are returned as cancelled: {cancelled:?}"
    );
    for (id, status) in [
        (&a.task_id, TaskStatus::Completed),
        (&b.task_id, TaskStatus::Failed),
        (&c.task_id, TaskStatus::Expired),
        (&e.task_id, TaskStatus::Cancelled),
        (&f.task_id, TaskStatus::Cancelled),
        (&x.task_id, TaskStatus::Queued),
    ] {
        assert_eq!(
            status_of(store, id).await,
            Some(status),
            "tasks: after cancelling {A1}'s tasks, {id}"
        );
    }
    assert!(
        store
            .cancel_agent_tasks(A1, t0 + 610)
            .await
            .expect("tasks: cancel again")
            .is_empty(),
        "tasks: cancelling again finds nothing"
    );
    assert!(
        !store
            .finish_task(&e.task_id, TaskStatus::Completed, None, t0 + 610)
            .await
            .expect("tasks: finish cancelled"),
        "tasks: a cancelled task cannot be finished"
    );
    assert_eq!(
        ids(&store
            .cancel_agent_tasks(A2, t0 + 620)
            .await
            .expect("tasks: cancel")),
        vec!["conf-task-x"],
        "tasks: cancelling another agent's tasks"
    );

    // Purging finished tasks by their last change: a (t0+40), c and d (t0+521),
    // b (t0+540), e and f (t0+600), x (t0+620).
    let old_queued = task("conf-task-g", A2, "sign", t0);
    store
        .enqueue_task(&old_queued)
        .await
        .expect("tasks: enqueue");
    assert_eq!(
        store.purge_tasks(t0 + 521).await.expect("tasks: purge"),
        1,
        "tasks: purge deletes finished tasks updated strictly before the bound"
    );
    assert_eq!(status_of(store, &a.task_id).await, None, "tasks: a purged");
    assert_eq!(
        store.purge_tasks(t0 + 601).await.expect("tasks: purge"),
        5,
        "tasks: purge b, c, d, e, f"
    );
    assert_eq!(
        status_of(store, &x.task_id).await,
        Some(TaskStatus::Cancelled)
    );
    assert_eq!(
        status_of(store, &old_queued.task_id).await,
        Some(TaskStatus::Queued),
        "tasks: an unfinished task is never purged"
    );
    assert_eq!(
        store.purge_tasks(t0 + 10_000).await.expect("tasks: purge"),
        1,
        "tasks: purge x"
    );
    assert_eq!(
        status_of(store, &old_queued.task_id).await,
        Some(TaskStatus::Queued)
    );

    // lease_ms 0: each task's lease is its own attempt timeout (body.timeoutMs),
    // the default when absent.
    let mut p1 = task("conf-task-p1", "conf-agent-p", "sign", t0 + 1);
    p1.body["timeoutMs"] = json!(250);
    let mut p2 = task("conf-task-p2", "conf-agent-p", "sign", t0 + 2);
    p2.body
        .as_object_mut()
        .expect("object body")
        .remove("timeoutMs");
    store.enqueue_task(&p1).await.expect("tasks: enqueue");
    store.enqueue_task(&p2).await.expect("tasks: enqueue");
    let got = store
        .lease_tasks("conf-agent-p", &[], 10, t0 + 700, 0)
        .await
        .expect("tasks: lease per task");
    assert_eq!(ids(&got), vec!["conf-task-p1", "conf-task-p2"]);
    assert_eq!(
        got.iter().map(|t| t.lease_expires_at).collect::<Vec<_>>(),
        vec![
            Some(t0 + 700 + 250),
            Some(t0 + 700 + maestro_core::ports::DEFAULT_TASK_LEASE_MS)
        ],
        "tasks: lease_ms 0 leases each task for its timeoutMs"
    );

    // Batches: enqueue_tasks tells inserted from existing; finish_tasks
    // answers per task, in order.
    let b1 = task("conf-task-b1", "conf-agent-b", "sign", t0 + 1);
    let b2 = task("conf-task-b2", "conf-agent-b", "sign", t0 + 2);
    assert_eq!(
        store
            .enqueue_tasks(&[b1.clone(), b2.clone(), b1.clone()])
            .await
            .expect("tasks: enqueue batch"),
        vec![true, true, false],
        "tasks: a batch inserts new tasks and reports existing ones"
    );
    assert_eq!(
        ids(&store
            .lease_tasks("conf-agent-b", &[], 1, t0 + 710, 1_000)
            .await
            .expect("tasks: lease")),
        vec!["conf-task-b1"]
    );
    let finishes = [
        TaskFinish {
            task_id: b1.task_id.clone(),
            status: TaskStatus::Completed,
            result: Some(json!({"outputs": {"ok": true}})),
        },
        TaskFinish {
            task_id: b2.task_id.clone(),
            status: TaskStatus::Completed,
            result: None,
        },
    ];
    assert_eq!(
        store
            .finish_tasks(&finishes, t0 + 720)
            .await
            .expect("tasks: finish batch"),
        vec![true, false],
        "tasks: only the leased task of a batch is finished"
    );
    let got = store
        .get_task(&b1.task_id)
        .await
        .expect("tasks: get")
        .expect("b1");
    assert_eq!(got.status, TaskStatus::Completed);
    assert_eq!(got.result, Some(json!({"outputs": {"ok": true}})));
    assert_eq!(got.updated_at, t0 + 720);
    assert_eq!(
        status_of(store, &b2.task_id).await,
        Some(TaskStatus::Queued)
    );

    // Cancelling one task: queued or leased only, once.
    let h = task("conf-task-h", A2, "sign", t0 + 7);
    store.enqueue_task(&h).await.expect("tasks: enqueue");
    assert!(
        store
            .cancel_task(&h.task_id, t0 + 630)
            .await
            .expect("tasks: cancel one"),
        "tasks: a queued task can be cancelled"
    );
    assert_eq!(
        status_of(store, &h.task_id).await,
        Some(TaskStatus::Cancelled)
    );
    assert!(
        !store
            .cancel_task(&h.task_id, t0 + 631)
            .await
            .expect("tasks: cancel one"),
        "tasks: cancelling a cancelled task answers false"
    );
    assert!(
        !store
            .cancel_task(&a.task_id, t0 + 631)
            .await
            .expect("tasks: cancel one"),
        "tasks: a completed task cannot be cancelled"
    );
    assert!(
        !store
            .cancel_task("conf-task-none", t0 + 631)
            .await
            .expect("tasks: cancel one"),
        "tasks: cancelling an unknown task answers false"
    );
    let k = task("conf-task-k", "conf-agent-k", "sign", t0 + 8);
    store.enqueue_task(&k).await.expect("tasks: enqueue");
    assert_eq!(
        ids(&store
            .lease_tasks("conf-agent-k", &[], 1, t0 + 640, 1_000)
            .await
            .expect("tasks: lease")),
        vec!["conf-task-k"]
    );
    assert!(
        store
            .cancel_task(&k.task_id, t0 + 650)
            .await
            .expect("tasks: cancel one"),
        "tasks: a leased task can be cancelled"
    );
    assert!(
        !store
            .finish_task(&k.task_id, TaskStatus::Completed, None, t0 + 660)
            .await
            .expect("tasks: finish cancelled"),
        "tasks: a cancelled task cannot be finished"
    );
}

/// Named leases: acquire when free, lapsed or own; not while another node
/// holds it; release by the owner only.
pub async fn leases(store: &dyn Store) {
    const A: &str = "conf-node-a";
    const B: &str = "conf-node-b";
    const L1: &str = "conf-lease-1";
    const L2: &str = "conf-lease-2";
    const L3: &str = "conf-lease-3";
    let acquire = |id: &'static str, node: &'static str, now: Timestamp, ttl: u64| async move {
        store
            .acquire_lease(id, node, now, ttl)
            .await
            .unwrap_or_else(|e| panic!("leases: acquire {id} for {node}: {e}"))
    };

    assert!(
        acquire(L1, A, 1_000, 100).await,
        "leases: a free lease is taken"
    );
    assert!(
        !acquire(L1, B, 1_050, 100).await,
        "leases: a lease held by another node is not taken"
    );
    assert!(
        !acquire(L1, B, 1_100, 100).await,
        "leases: a lease ending exactly now has not lapsed"
    );
    assert!(
        acquire(L1, A, 1_090, 100).await,
        "leases: the holder renews its lease (now until 1190)"
    );
    assert!(
        !acquire(L1, B, 1_150, 100).await,
        "leases: the renewed lease still holds"
    );
    assert!(
        acquire(L1, B, 1_191, 100).await,
        "leases: a lapsed lease is taken over"
    );
    assert!(
        !store.release_lease(L1, A).await.expect("leases: release"),
        "leases: a node cannot release a lease it does not hold"
    );
    assert!(
        !acquire(L1, A, 1_200, 100).await,
        "leases: the former holder lost it"
    );
    assert!(
        store.release_lease(L1, B).await.expect("leases: release"),
        "leases: the holder releases"
    );
    assert!(
        !store.release_lease(L1, B).await.expect("leases: release"),
        "leases: releasing twice answers false"
    );
    assert!(
        acquire(L1, A, 1_200, 100).await,
        "leases: a released lease is free"
    );

    // Several leases at once, each with its own end.
    assert!(acquire(L2, A, 1_200, 100).await);
    assert!(acquire(L3, B, 1_200, 50).await);
    assert!(
        !acquire(L2, B, 1_300, 100).await,
        "leases: a lease ending exactly now has not lapsed"
    );
    assert!(
        acquire(L3, A, 1_251, 100).await,
        "leases: a shorter lease lapses first"
    );
    assert!(
        !acquire(L3, B, 1_300, 100).await,
        "leases: the new holder keeps it"
    );

    for id in [L1, L2, L3] {
        assert!(
            store.release_lease(id, A).await.expect("leases: release"),
            "leases: release {id}"
        );
        assert!(
            acquire(id, B, 1_300, 100).await,
            "leases: released {id} is free"
        );
        assert!(
            store.release_lease(id, B).await.expect("leases: release"),
            "leases: release {id} again"
        );
    }
}

const LEASE_WORKERS: usize = 8;
const LEASE_BATCH: usize = 5;
const QUEUED: usize = 100;
/// After the `tasks` check's window, and leased for long: the `tasks` sweep
/// never expires these.
const CONC_T0: Timestamp = 2_000_000_000;

async fn enqueue_many(store: &dyn Store, agent: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for i in 0..QUEUED {
        // Enqueued in an order unrelated to creation time.
        let n = (i * 37) % QUEUED;
        let t = task(
            &format!("{agent}-{n:03}"),
            agent,
            "sign",
            CONC_T0 + n as u64,
        );
        store
            .enqueue_task(&t)
            .await
            .expect("concurrent_leases: enqueue");
        all.insert(t.task_id);
    }
    all
}

/// Lease batches of at most `LEASE_BATCH` until none is left.
async fn lease_until_empty(store: &dyn Store, agent: &str, worker: usize) -> Vec<String> {
    let mut got = Vec::new();
    // A backend that hands out a task twice must fail the check, not loop forever.
    for _ in 0..=QUEUED {
        let batch = store
            .lease_tasks(agent, &[], LEASE_BATCH, CONC_T0 + 1_000, 3_600_000)
            .await
            .unwrap_or_else(|e| panic!("concurrent_leases: worker {worker}: {e}"));
        if batch.is_empty() {
            return got;
        }
        assert!(
            batch.len() <= LEASE_BATCH,
            "concurrent_leases: at most max tasks per call, got {}",
            batch.len()
        );
        assert!(
            batch.windows(2).all(|w| w[0].created_at < w[1].created_at)
                && batch.iter().all(|t| t.status == TaskStatus::Leased),
            "concurrent_leases: a batch is leased tasks, oldest first: {:?}",
            ids(&batch)
        );
        got.extend(batch.into_iter().map(|t| t.task_id));
    }
    panic!("concurrent_leases: worker {worker} still gets tasks after {QUEUED} calls");
}

async fn check_each_once(store: &dyn Store, agent: &str, all: BTreeSet<String>, got: Vec<String>) {
    let handed: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(
        handed.len(),
        got.len(),
        "concurrent_leases: no task handed out twice"
    );
    assert_eq!(handed, all, "concurrent_leases: every task handed out");
    for id in &all {
        assert_eq!(
            status_of(store, id).await,
            Some(TaskStatus::Leased),
            "concurrent_leases: {id} is stored as leased"
        );
    }
    assert!(
        store
            .lease_tasks(agent, &[], QUEUED, CONC_T0 + 2_000, 1_000)
            .await
            .expect("concurrent_leases: lease")
            .is_empty(),
        "concurrent_leases: nothing left to lease"
    );
}

/// 8 callers polled concurrently, each leasing batches of 5 from 100 queued
/// tasks until none is left: every task is handed out exactly once.
pub async fn concurrent_leases(store: &dyn Store) {
    const AGENT: &str = "conf-conc-lease-agent";
    let all = enqueue_many(store, AGENT).await;
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        lease_until_empty(store, AGENT, 0),
        lease_until_empty(store, AGENT, 1),
        lease_until_empty(store, AGENT, 2),
        lease_until_empty(store, AGENT, 3),
        lease_until_empty(store, AGENT, 4),
        lease_until_empty(store, AGENT, 5),
        lease_until_empty(store, AGENT, 6),
        lease_until_empty(store, AGENT, 7),
    );
    let got: Vec<String> = [a, b, c, d, e, f, g, h].into_iter().flatten().collect();
    check_each_once(store, AGENT, all, got).await;
}

/// Like [`concurrent_leases`], with 8 spawned tasks (on a multi-threaded runtime
/// they lease from several threads at once).
pub async fn concurrent_leases_spawned(store: Arc<dyn Store>) {
    const AGENT: &str = "conf-conc-lease-spawned";
    let all = enqueue_many(&*store, AGENT).await;
    let handles: Vec<_> = (0..LEASE_WORKERS)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move { lease_until_empty(&*store, AGENT, worker).await })
        })
        .collect();
    let mut got = Vec::new();
    for h in handles {
        got.extend(h.await.expect("concurrent_leases_spawned: task panicked"));
    }
    check_each_once(&*store, AGENT, all, got).await;
}
