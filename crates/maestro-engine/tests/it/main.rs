//! maestro-engine integration tests: one binary, one module per area.

mod crash;
mod executor;
mod facade;
pub mod support;
