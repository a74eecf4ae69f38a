//! The audit trail (docs/SECURITY.md): admin actions are committed to the
//! event log as `maestro:audit` events, with who did them (the token id and its
//! role, never a secret).
//!
//! | `action` | when | details |
//! |---|---|---|
//! | `token.created` | `POST /maestro/tokens` | `tokenId`, `role`, `agentId?` |
//! | `token.revoked` | `DELETE /maestro/tokens/{tokenId}` | `tokenId` |
//! | `config.changed` | `PATCH /maestro/config` | `patch` |
//! | `agent.deregistered` | `DELETE /maestro/agents/{agentId}` | `agentId` |
//! | `subscription.created` | `POST /maestro/subscriptions` | `subscriptionId`, `url`, `eventTypes` |
//! | `subscription.deleted` | `DELETE /maestro/subscriptions/{subscriptionId}` | `subscriptionId` |

use maestro_core::model::{EventType, NewEvent};
use maestro_engine::clock::now_ms;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::state::AppState;

/// Commit the audit event of an action that was done. The action stands even
/// when its event cannot be committed (the store failed right after it): that
/// is logged as an error.
pub(crate) async fn record(s: &AppState, who: &Principal, action: &str, details: Value) {
    let mut payload = json!({
        "action": action,
        "actor": {"tokenId": who.token_id, "role": who.role.as_str()},
    });
    if let (Some(p), Value::Object(d)) = (payload.as_object_mut(), details) {
        p.extend(d);
    }
    let mut e = NewEvent::engine(EventType::Audit, payload, now_ms());
    e.correlation_id = format!("audit:{action}");
    if let Err(err) = s.maestro.publish_event(e).await {
        tracing::error!(error = %err, action, token = %who.token_id, "the audit event of an action could not be committed");
    }
}
