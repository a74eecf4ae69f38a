//! maestro-engine integration tests: one binary, one module per area.

mod crash;
mod executor;
mod facade;
mod health;
mod idempotency;
pub mod support;
