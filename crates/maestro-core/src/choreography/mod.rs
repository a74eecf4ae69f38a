//! The Choreography Engine: workflow validation, conditions, placeholder substitution.

use crate::model::RetryPolicy;
use crate::{Error, Result};

pub fn validate_retry_policy(p: &RetryPolicy) -> Result<()> {
    if p.max_attempts == 0 {
        return Err(
            Error::validation("retryPolicy.maxAttempts must be at least 1").field("maxAttempts"),
        );
    }
    Ok(())
}
