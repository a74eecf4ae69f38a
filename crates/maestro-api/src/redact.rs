//! What a caller may see of `sensitive` outputs: admins everything, everyone
//! else the sensitive values masked as `"***"` (the rule is in
//! `maestro_engine::redact`).

use maestro_core::model::WorkflowExecution;
use maestro_engine::redact::EventMasker;

use crate::auth::Principal;
use crate::state::AppState;

/// An execution as `p` may see it.
pub async fn execution(s: &AppState, p: &Principal, e: WorkflowExecution) -> WorkflowExecution {
    if p.is_admin() {
        return e;
    }
    s.maestro.mask_execution(e).await
}

/// What masks events for `p` (a listing, a stream); `None` for admins.
pub fn events(s: &AppState, p: &Principal) -> Option<EventMasker> {
    (!p.is_admin()).then(|| s.maestro.event_masker())
}
