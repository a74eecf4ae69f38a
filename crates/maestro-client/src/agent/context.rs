//! A task as Maestro sends it, and what a handler learns about it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// One call of a capability: the push body of `POST <endpoint>/invoke`, and
/// (with `leaseExpiresAt`) a polled task (API.md "Agent protocol"). Unknown
/// fields are ignored, so newer servers can add some.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub execution_id: String,
    #[serde(default)]
    pub workflow_id: String,
    #[serde(default)]
    pub step_id: String,
    #[serde(default)]
    pub attempt: u32,
    pub capability: String,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default)]
    pub correlation_id: String,
    /// Wall-clock deadline of the attempt, ms since the Unix epoch.
    #[serde(default)]
    pub deadline: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Poll tasks: when the lease runs out, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<u64>,
    /// Not part of the push body (where it is the `Idempotency-Key` header);
    /// taken when a server sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The agent running the handler.
    pub agent_id: String,
    pub task_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    pub step_id: String,
    pub capability: String,
    /// 1 for the first call of a step, +1 per retry.
    pub attempt: u32,
    pub correlation_id: String,
    /// Wall-clock deadline of the attempt (ms since the Unix epoch; 0 when
    /// not given). Maestro stops waiting then (push); a poll task's lease
    /// is extended by the SDK's heartbeats instead.
    pub deadline: u64,
    pub timeout_ms: u64,
    /// `<executionId>:<stepId>:<attempt>`, or
    /// `<executionId>:<stepId>:compensate:<attempt>` for a compensation. The
    /// same for a repeated delivery of one attempt: use it to make side
    /// effects idempotent.
    pub idempotency_key: String,
    pub traceparent: Option<String>,
    /// Poll tasks: the lease's end when the task was handed out.
    pub lease_expires_at: Option<u64>,
    /// Fired when Maestro cancels the call (push `/cancel`, or a poll lease
    /// heartbeat answering `cancelRequested`), when the lease is lost, and
    /// when a graceful shutdown outlasts its grace period.
    pub cancel: CancellationToken,
}

impl TaskContext {
    /// The context of `task` run by `agent_id`. The idempotency key is the
    /// task's `idempotencyKey` when given, else its task id (Maestro uses the
    /// key as the task id).
    pub fn new(task: &Task, agent_id: &str, cancel: CancellationToken) -> Self {
        let idempotency_key = task
            .idempotency_key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| task.task_id.clone());
        TaskContext {
            agent_id: agent_id.to_owned(),
            task_id: task.task_id.clone(),
            execution_id: task.execution_id.clone(),
            workflow_id: task.workflow_id.clone(),
            step_id: task.step_id.clone(),
            capability: task.capability.clone(),
            attempt: task.attempt,
            correlation_id: task.correlation_id.clone(),
            deadline: task.deadline,
            timeout_ms: task.timeout_ms,
            idempotency_key,
            traceparent: task.traceparent.clone(),
            lease_expires_at: task.lease_expires_at,
            cancel,
        }
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the call is cancelled (use in `tokio::select!`).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Whether this call undoes an earlier one (a compensation).
    pub fn is_compensation(&self) -> bool {
        self.idempotency_key.contains(":compensate:")
    }

    /// Time left until [`deadline`](Self::deadline); `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        (self.deadline > 0).then(|| Duration::from_millis(self.deadline.saturating_sub(now_ms())))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_the_push_body_and_a_poll_task() {
        let t: Task = serde_json::from_value(json!({
            "taskId": "e:s:2", "executionId": "e", "workflowId": "w", "stepId": "s",
            "attempt": 2, "capability": "sign", "inputs": {"data": "x"},
            "correlationId": "c", "deadline": 5, "timeoutMs": 10, "traceparent": "00-x",
            "leaseExpiresAt": 7, "somethingNew": true
        }))
        .unwrap();
        let ctx = TaskContext::new(&t, "a", CancellationToken::new());
        assert_eq!(ctx.idempotency_key, "e:s:2");
        assert_eq!(ctx.attempt, 2);
        assert_eq!(ctx.lease_expires_at, Some(7));
        assert!(!ctx.is_compensation());
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
        let t = Task {
            idempotency_key: Some("e:s:compensate:1".into()),
            ..t
        };
        assert!(TaskContext::new(&t, "a", CancellationToken::new()).is_compensation());
    }
}
