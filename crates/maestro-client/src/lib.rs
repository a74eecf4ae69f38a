//! # maestro-client
//!
//! - [`client::Client`]: a typed client of the whole Maestro HTTP API.
//! - [`agent`]: the agent SDK — declare capabilities with typed inputs and
//!   outputs, implement each as an async fn, then serve the push protocol or
//!   run a poll loop.

pub mod agent;
pub mod client;
#[cfg(feature = "demo")]
pub mod demo;
mod error;

pub use error::Error;
