//! End-to-end tests of `maestro serve`: the real server on 127.0.0.1:0 with a
//! temp data dir, driven over HTTP, with agents as real HTTP servers.

mod api;
mod auth;
mod cli;
#[cfg(feature = "postgres")]
mod cluster;
mod faults;
mod health;
mod hostile;
mod killloop;
mod openapi;
#[cfg(feature = "postgres")]
mod pg;
mod poll;
mod process;
mod sdk;
mod sse;
mod support;
mod webhooks;
