//! Maestro's Integration Layer: how Maestro talks to the world over HTTP.
//!
//! It will hold the HTTP API (axum router, auth, SSE, Prometheus, OpenAPI) and
//! the HTTP-push and poll invokers. For now it provides the outbound side:
//! [`outbound::HttpOutbound`], the real [`maestro_core::ports::Outbound`] port
//! used by `callback` error handlers, guarded by the `outboundAllowList`
//! ([`outbound::AllowList`]).
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

pub mod outbound;
