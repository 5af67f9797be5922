//! The node under test, as the scenarios see it: where it listens, how to mint its
//! tokens, which process to read in `/proc`, and optionally its bus.

use std::net::SocketAddr;
use std::sync::Arc;

use herald::auth::jwt::TokenService;
use herald_actors::ports::Bus;

use crate::procfs::{self, Sample};

/// Which path publishes take.
#[derive(Clone)]
pub enum Via {
    /// `POST /api/notifications` over HTTP: stored, then put on the bus by the node.
    Http,
    /// Straight onto the node's `notifications` topic, the way a node's writer puts
    /// committed notifications there: Kafka in production, the node's in-process topic
    /// when the node runs inside the harness (embedded mode).
    Bus {
        /// The bus adapter, from the engine's own library.
        bus: Arc<dyn Bus>,
        /// `kafka` or `memory`, for reports.
        name: &'static str,
    },
}

impl Via {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Bus { name, .. } => name,
        }
    }
}

impl std::fmt::Debug for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A node the scenarios run against.
#[derive(Debug, Clone)]
pub struct Target {
    /// HTTP and WebSocket address.
    pub addr: SocketAddr,
    /// Signs tokens the node accepts (same secret).
    pub tokens: TokenService,
    /// Where the node's memory and CPU are read (`None`: not measured).
    pub process: Option<NodeProcess>,
    /// `embedded`, `embedded-in-process` or `production`, for reports.
    pub mode: &'static str,
}

/// Where a node runs, for `/proc` readings.
#[derive(Debug, Clone, Copy)]
pub enum NodeProcess {
    /// A process of its own; the harness is this process.
    Own(u32),
    /// Inside this process (the in-process bus needs that): CPU is told apart by
    /// thread, memory is the whole process's.
    Shared,
}

/// Whether a thread of this process belongs to an in-process node, by the names the
/// node's threads carry: its system thread ([`NODE_THREAD`]), actix's server and
/// arbiter threads, and the SQLite connection threads.
pub fn is_node_thread(name: &str) -> bool {
    name.starts_with(NODE_THREAD) || name.starts_with("actix-") || name.starts_with("sqlite-")
}

/// The name of the thread an in-process node's actix system runs on.
pub const NODE_THREAD: &str = "herald-node";

impl Target {
    /// A reading of the node, if it is measured.
    pub fn sample_node(&self) -> Option<Sample> {
        match self.process? {
            NodeProcess::Own(pid) => procfs::sample(pid).ok(),
            NodeProcess::Shared => procfs::sample_threads(std::process::id(), is_node_thread).ok(),
        }
    }

    /// A reading of the harness: this process, less the node's threads when they are
    /// in it.
    pub fn sample_harness(&self) -> Option<Sample> {
        let pid = std::process::id();
        match self.process {
            Some(NodeProcess::Shared) => procfs::sample_threads(pid, |n| !is_node_thread(n)).ok(),
            _ => procfs::sample(pid).ok(),
        }
    }
}
