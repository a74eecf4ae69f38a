//! # maestro-core
//!
//! The domain of Maestro, free of any runtime or adapter: the types of the HTTP
//! contract, the [`registry`] (Agent Registry data structures: capability index,
//! health windows, routing), the [`choreography`] engine (validation, conditions,
//! placeholder substitution, `getNextSteps`), the execution state machine in
//! [`machine`] (`apply(state, input) -> actions`, a pure function), and the
//! [`ports`] the engine needs: a `Store` for persistence and an `Invoker` to call agents.
//! The [`protocol`] holds the request bodies and answers of every HTTP route.
//!
//! Nothing here reads a clock, touches the network or spawns a task; the
//! `maestro-engine` crate performs what the state machine decides.

pub mod choreography;
mod error;
pub mod machine;
pub mod model;
pub mod ports;
pub mod protocol;
pub mod registry;
pub mod url;

pub use error::{Code, Error, Invalid, step_codes};

pub type Result<T, E = Error> = std::result::Result<T, E>;
