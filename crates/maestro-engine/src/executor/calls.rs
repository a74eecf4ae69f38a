//! Calls to agents, each on its own task: route to an agent (waiting up to the
//! attempt timeout for one to be free), check the inputs against the
//! capability's declaration, invoke with the per-attempt deadline, check the
//! outputs' size, record the result in the agent's health window, report to the
//! loop. An answer that arrives after the deadline is reported too, and the
//! state machine records it as late.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use maestro_core::machine::Call;
use maestro_core::model::RegisteredAgent;
use maestro_core::ports::{Invocation, InvokeError, Invoker, Outbound, OutboundError};
use maestro_core::registry::Route;
use maestro_core::step_codes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ExecutorStats, Msg};
use crate::clock::now_ms;
use crate::registry::Registry;

/// What call tasks share.
pub struct CallEnv {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) registry: Registry,
    pub(super) invoker: Arc<dyn Invoker>,
    pub(super) outbound: Option<Arc<dyn Outbound>>,
    pub(super) max_output_bytes: usize,
    pub(super) stats: Arc<ExecutorStats>,
}

/// How long a call task keeps listening for a late answer after its deadline.
const LATE_GRACE: Duration = Duration::from_secs(60);
/// Callback deliveries: attempts and first backoff.
const CALLBACK_ATTEMPTS: u32 = 3;
const CALLBACK_BACKOFF_MS: u64 = 200;
const CALLBACK_TIMEOUT_MS: u64 = 10_000;

type CallKey = (String, String, u32, bool);

/// A call in flight: how to cancel it, and whether it waits in the durable
/// task queue (a poll agent's task), which a shutdown need not wait for: the
/// attempt is re-sent at the next start and finds its task.
#[derive(Clone, Default)]
pub(super) struct CallHandle {
    pub cancel: CancellationToken,
    pub durable: Arc<std::sync::atomic::AtomicBool>,
}

/// Calls in flight, so that a cancel can reach them.
#[derive(Default)]
pub(super) struct InFlight {
    calls: HashMap<CallKey, CallHandle>,
}

impl InFlight {
    pub fn start(&mut self, exec_id: &str, call: &Call) -> CallHandle {
        let h = CallHandle::default();
        self.calls.insert(
            (
                exec_id.to_owned(),
                call.step_id.clone(),
                call.attempt,
                call.compensation,
            ),
            h.clone(),
        );
        h
    }
    /// Every call left waits in the durable task queue.
    pub fn only_durable_left(&self) -> bool {
        self.calls
            .values()
            .all(|h| h.durable.load(Ordering::Relaxed))
    }
    pub fn finish(&mut self, exec_id: &str, step_id: &str, attempt: u32, compensation: bool) {
        self.calls.remove(&(
            exec_id.to_owned(),
            step_id.to_owned(),
            attempt,
            compensation,
        ));
    }
    pub fn cancel(&mut self, exec_id: &str, step_id: &str, attempt: u32, compensation: bool) {
        if let Some(t) = self.calls.remove(&(
            exec_id.to_owned(),
            step_id.to_owned(),
            attempt,
            compensation,
        )) {
            t.cancel.cancel();
        }
    }
    pub fn len(&self) -> usize {
        self.calls.len()
    }
}

pub(super) fn spawn_call(
    env: Arc<CallEnv>,
    exec_id: String,
    workflow_id: String,
    correlation_id: String,
    call: Call,
    handle: CallHandle,
) {
    let cancel = handle.cancel.clone();
    tokio::spawn(async move {
        let step_id = call.step_id.clone();
        let attempt = call.attempt;
        let compensation = call.compensation;
        let report = |agent_id: Option<String>, outcome| Msg::CallDone {
            exec_id: exec_id.clone(),
            step_id: step_id.clone(),
            attempt,
            compensation,
            agent_id,
            outcome,
        };
        let timeout = Duration::from_millis(call.timeout_ms.max(1));
        let deadline = tokio::time::Instant::now() + timeout;
        let deadline_ms = now_ms() + call.timeout_ms;

        let agent = match route(&env.registry, &call, deadline).await {
            Ok(a) => a,
            Err(e) => {
                let _ = env.tx.send(report(None, Err(e)));
                return;
            }
        };
        let agent_id = Some(agent.id.clone());
        // Inputs must match what the capability declares.
        if let Some(cap) = agent.capability(&call.capability)
            && let Err(msg) = cap.inputs.check(&call.inputs)
        {
            env.registry.release(&agent.id);
            let e = InvokeError::new(step_codes::INPUT_SCHEMA_MISMATCH, msg, false);
            let _ = env.tx.send(report(agent_id, Err(e)));
            return;
        }
        let invocation = Invocation {
            task_id: maestro_core::ports::Invocation::idempotency_key_for(
                &exec_id,
                &call.step_id,
                attempt,
                compensation,
            ),
            execution_id: exec_id.clone(),
            workflow_id,
            step_id: call.step_id.clone(),
            attempt,
            capability: call.capability.clone(),
            inputs: call.inputs,
            correlation_id,
            deadline: deadline_ms,
            timeout_ms: call.timeout_ms,
            idempotency_key: String::new(),
            compensation,
        };
        let mut invocation = invocation;
        invocation.idempotency_key = invocation.task_id.clone();
        let cancel_copy = invocation.clone();
        let started = tokio::time::Instant::now();
        let fut = env.invoker.invoke(&agent, invocation);
        tokio::pin!(fut);
        let mut cancelled = false;
        // A poll agent's attempt is timed by its lease, which starts when the
        // task is leased (time in the queue does not count).
        let timed = agent.effective_transport() != maestro_core::model::Transport::Poll;
        if !timed {
            handle.durable.store(true, Ordering::Relaxed);
        }
        let first = loop {
            tokio::select! {
                r = &mut fut => break Some(r),
                _ = tokio::time::sleep_until(deadline), if timed => break None,
                _ = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    env.invoker.cancel(&agent, &cancel_copy).await;
                }
            }
        };
        let outcome = match first {
            Some(r) => check_outputs(r, env.max_output_bytes, &agent, &call.capability),
            None => {
                let e = InvokeError::new(
                    step_codes::STEP_TIMEOUT,
                    format!("no answer within {} ms", call.timeout_ms),
                    true,
                );
                record(
                    &env.registry,
                    &agent,
                    &call.capability,
                    false,
                    started.elapsed(),
                );
                let _ = env.tx.send(report(agent_id.clone(), Err(e)));
                // Keep listening for a while: a late answer is recorded, not used.
                if let Ok(late) = tokio::time::timeout(LATE_GRACE, &mut fut).await {
                    env.stats.late_results.fetch_add(1, Ordering::Relaxed);
                    let _ = env.tx.send(report(
                        agent_id,
                        check_outputs(late, env.max_output_bytes, &agent, &call.capability),
                    ));
                }
                env.registry.release(&agent.id);
                return;
            }
        };
        record(
            &env.registry,
            &agent,
            &call.capability,
            outcome.is_ok(),
            started.elapsed(),
        );
        env.registry.release(&agent.id);
        let _ = env.tx.send(report(agent_id, outcome));
    });
}

fn record(reg: &Registry, agent: &RegisteredAgent, capability: &str, ok: bool, took: Duration) {
    let now = now_ms();
    reg.write(|r| r.record_invocation(&agent.id, capability, ok, took.as_millis() as u64, now));
    crate::metrics::step_invocation(&agent.id, capability, ok, took);
}

/// An answer's outputs: within `maxOutputBytes`, and of the types the
/// capability declares (`OUTPUT_SCHEMA_MISMATCH`, not retried: an agent that
/// answers the wrong shape is expected to do it again).
fn check_outputs(
    r: Result<Map<String, Value>, InvokeError>,
    max: usize,
    agent: &RegisteredAgent,
    capability: &str,
) -> Result<Map<String, Value>, InvokeError> {
    let outputs = r?;
    let size = serde_json::to_vec(&outputs)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > max {
        return Err(InvokeError::new(
            step_codes::OUTPUT_TOO_LARGE,
            format!("outputs are {size} bytes, more than maxOutputBytes ({max})"),
            false,
        ));
    }
    if let Some(cap) = agent.capability(capability)
        && let Err(msg) = cap.outputs.check_outputs(&outputs)
    {
        return Err(InvokeError::new(
            step_codes::OUTPUT_SCHEMA_MISMATCH,
            msg,
            false,
        ));
    }
    Ok(outputs)
}

/// Find an agent for the call and take one of its in-flight slots, waiting up to
/// `deadline` while agents with the capability exist but none is free.
async fn route(
    reg: &Registry,
    call: &Call,
    deadline: tokio::time::Instant,
) -> Result<RegisteredAgent, InvokeError> {
    loop {
        let changed = reg.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let picked = reg.write(|r| {
            let picked = match r.route(&call.capability, call.agent_id.as_deref()) {
                Route::Agent(a) => Ok(Some(a.clone())),
                Route::AgentNotFound => Err(InvokeError::new(
                    step_codes::AGENT_NOT_FOUND,
                    format!(
                        "agent {:?} is not registered",
                        call.agent_id.as_deref().unwrap_or("")
                    ),
                    false,
                )),
                Route::CapabilityNotFound => Err(InvokeError::new(
                    step_codes::CAPABILITY_NOT_FOUND,
                    match &call.agent_id {
                        Some(a) => format!(
                            "agent {a:?} does not offer capability {:?}",
                            call.capability
                        ),
                        None => format!(
                            "no registered agent offers capability {:?}",
                            call.capability
                        ),
                    },
                    false,
                )),
                Route::NoneAvailable => Ok(None),
            };
            if let Ok(Some(a)) = &picked {
                r.acquire(&a.id);
            }
            picked
        })?;
        if let Some(a) = picked {
            return Ok(a);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Err(InvokeError::new(
                step_codes::NO_AGENT_AVAILABLE,
                format!(
                    "no agent with capability {:?} was online with free capacity in time",
                    call.capability
                ),
                true,
            ));
        }
    }
}

pub(super) fn spawn_callback(
    env: Arc<CallEnv>,
    exec_id: String,
    step_id: String,
    url: String,
    body: Value,
) {
    // The URL as logs may show it: its userinfo or query may hold a secret.
    let shown = maestro_core::url::shown(&url).into_owned();
    tokio::spawn(async move {
        let delivered = match &env.outbound {
            None => {
                tracing::warn!(url = %shown, "callback not sent: no outbound HTTP configured");
                false
            }
            Some(out) => {
                let delivery = format!("{exec_id}:{step_id}:callback");
                let headers = vec![("X-Maestro-Delivery".to_owned(), delivery)];
                let mut ok = false;
                for n in 0..CALLBACK_ATTEMPTS {
                    match out
                        .post_json(&url, &body, &headers, CALLBACK_TIMEOUT_MS)
                        .await
                    {
                        Ok(_) => {
                            ok = true;
                            break;
                        }
                        Err(e @ (OutboundError::Refused(_) | OutboundError::InvalidUrl(_))) => {
                            tracing::warn!(url = %shown, error = %e, "callback refused");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(url = %shown, error = %e, attempt = n + 1, "callback failed");
                            if n + 1 < CALLBACK_ATTEMPTS {
                                tokio::time::sleep(Duration::from_millis(CALLBACK_BACKOFF_MS << n))
                                    .await;
                            }
                        }
                    }
                }
                ok
            }
        };
        let _ = env.tx.send(Msg::CallbackDone {
            exec_id,
            step_id,
            delivered,
        });
    });
}
