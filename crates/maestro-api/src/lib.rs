//! Maestro's Integration Layer: how Maestro talks to the world over HTTP.
//!
//! - The HTTP API of API.md: [`router`] over an [`AppState`] (a running
//!   [`maestro_engine::Maestro`], the token [`auth::Auth`], [`ApiOptions`]).
//!   Routes, their roles and their documentation are one table
//!   ([`routes::table`]); the router and the OpenAPI document
//!   ([`openapi::document`]) are both built from it. Every failure becomes an
//!   answer in one place, [`ApiError`].
//! - [`push::HttpPushInvoker`]: the `transport: http` agent protocol, and
//!   [`push::HttpHealthProbe`] for the health checker.
//! - [`outbound::HttpOutbound`]: callbacks, guarded by the `outboundAllowList`
//!   ([`outbound::AllowList`]).
//! - [`serve`]: run the router on a listener until a shutdown signal, then drain.
//!
//! ```no_run
//! use std::sync::Arc;
//! use maestro_api::outbound::{AllowList, HttpOutbound};
//!
//! # async fn wire(mut options: maestro_engine::MaestroOptions) {
//! // No list configured and the server listens on 127.0.0.1: loopback and
//! // private receivers are allowed; metadata addresses never are.
//! let outbound = HttpOutbound::new(AllowList::default_for_listen(true));
//! options.outbound = Some(Arc::new(outbound));
//! # }
//! ```

mod audit;
pub mod auth;
mod error;
mod extract;
pub mod metrics;
pub mod openapi;
pub mod outbound;
pub mod push;
mod redact;
pub mod routes;
mod server;
mod state;

pub use error::{ApiError, ApiResult};
pub use routes::router;
pub use server::serve;
pub use state::{ApiOptions, AppState};
