//! What a caller may see of `sensitive` outputs: admins everything, everyone
//! else the sensitive values masked as `"***"` (the rule is in
//! `maestro_engine::redact`).

use maestro_core::model::WorkflowExecution;
use maestro_engine::redact::{EventMasker, SensitiveIndex};

use crate::auth::Principal;
use crate::state::AppState;

/// An execution as `p` may see it.
pub async fn execution(s: &AppState, p: &Principal, e: WorkflowExecution) -> WorkflowExecution {
    if p.is_admin() {
        return e;
    }
    match SensitiveIndex::from_registry(s.maestro.registry()) {
        Some(idx) => maestro_engine::redact::execution(&**s.maestro.store(), &idx, e).await,
        None => e,
    }
}

/// What masks events for `p` (a listing, a stream); `None` for admins.
pub fn events(s: &AppState, p: &Principal) -> Option<EventMasker> {
    (!p.is_admin())
        .then(|| EventMasker::new(s.maestro.store().clone(), s.maestro.registry().clone()))
}
