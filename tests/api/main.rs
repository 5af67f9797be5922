//! End-to-end tests of the embedded engine: the real server on port 0 (or the real
//! binary), real sockets, real files.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test should fail loudly at the first broken expectation"
)]

mod analytics;
mod bad_input;
mod breaker;
mod cli;
mod hardening;
mod helpers;
mod mail;
mod metrics;
mod production;
mod rate_limit;
mod redis;
mod restart;
mod resume;
mod shutdown;
mod smtp_sink;
mod store;
mod supervision;
mod users;
mod websocket;
mod writer;
