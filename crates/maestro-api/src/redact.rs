//! What a caller may see of `sensitive` outputs: admins everything, everyone
//! else `"***"` (see `maestro_engine::redact`).

use maestro_core::model::{ChoreographyEvent, WorkflowExecution};
pub use maestro_engine::redact::SensitiveIndex;

use crate::auth::Principal;
use crate::state::AppState;

/// `None` when nothing needs masking for this caller.
pub fn index_for(s: &AppState, p: &Principal) -> Option<SensitiveIndex> {
    if p.is_admin() {
        return None;
    }
    SensitiveIndex::from_registry(s.maestro.registry())
}

/// An execution as `p` may see it.
pub async fn execution(s: &AppState, p: &Principal, e: WorkflowExecution) -> WorkflowExecution {
    match index_for(s, p) {
        Some(idx) => maestro_engine::redact::execution(&s.maestro, &idx, e).await,
        None => e,
    }
}

/// An event as the holder of `idx` may see it.
pub fn event(idx: Option<&SensitiveIndex>, e: ChoreographyEvent) -> ChoreographyEvent {
    maestro_engine::redact::event(idx, e)
}
