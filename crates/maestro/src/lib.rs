//! The `maestro` binary's library part: configuration loading ([`settings`])
//! and the wiring of `maestro serve` ([`serve`]), so that tests can start the
//! real server in-process as well as run the binary.

pub mod cli;
mod private;
pub mod serve;
pub mod settings;
