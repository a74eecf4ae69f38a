//! End-to-end tests of `maestro serve`: the real server on 127.0.0.1:0 with a
//! temp data dir, driven over HTTP, with agents as real HTTP servers.

mod api;
mod auth;
mod cel_budget;
mod cli;
#[cfg(feature = "postgres")]
mod cluster;
mod config_live;
mod connections;
mod datadir;
mod faults;
mod health;
mod hostile;
mod idempotency;
mod killloop;
mod openapi;
#[cfg(feature = "postgres")]
mod pg;
mod poll;
mod process;
mod sdk;
mod sensitive;
mod sse;
mod support;
mod urls;
mod validation;
mod webhooks;
