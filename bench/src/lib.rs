//! `herald-bench`: the load harness of issue 6. It runs as its own process against a
//! running Herald node (usually one it spawned itself), opens authenticated WebSocket
//! sessions from many loopback addresses, publishes targeted pushes or broadcasts over
//! the public HTTP API or straight onto the node's bus, and measures end-to-end push
//! latency (from a timestamp carried in each payload), delivered messages per second,
//! lost and duplicated messages, and the node's memory and CPU from `/proc`.
//!
//! # Layout
//! - `main.rs`: the command line — one subcommand per scenario (`seed`, `idle`,
//!   `throughput`, `fanout`, `signup`, `kafka`, and the general `push`).
//! - [`node`]: spawns the `herald` binary with a fresh data dir, a generated secret and
//!   (production mode) a fresh PostgreSQL schema and Kafka topic prefix.
//! - [`target`]: what scenarios need to know about a node; [`target::Via`] is the path
//!   publishes take (HTTP, or the bus).
//! - [`sessions`]: the fleet of WebSocket sessions and the tasks reading them.
//! - [`publish`]: open-loop targeted pushes, flow-controlled broadcasts, warm-up.
//! - [`stats`]: the shared counters and latency histograms; payload format.
//! - [`procfs`]: resident memory and CPU of a process from `/proc`.
//! - [`scenarios`]: the scenarios, each producing a [`report::Report`].
//! - [`report`]: the human table and the JSON line.
//! - [`http`]: a one-connection HTTP/1.1 client (hyper).
//!
//! Nothing here asserts timings; the smoke test (`tests/smoke.rs`) only checks that a
//! few pushes and broadcasts arrive exactly once.

pub mod http;
pub mod node;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod scenarios;
pub mod sessions;
pub mod stats;
pub mod target;

/// Raises this process's open-file soft limit to its hard limit (sessions are file
/// descriptors). A node the harness spawns inherits the raised limit — the engine does
/// not raise its own.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    Ok(rlimit::increase_nofile_limit(u64::MAX)?)
}
