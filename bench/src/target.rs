//! The node under test, as the scenarios see it: where it listens, how to mint its
//! tokens, which process to read in `/proc`, and optionally its bus.

use std::net::SocketAddr;
use std::sync::Arc;

use herald::auth::jwt::TokenService;
use herald_actors::ports::Bus;

/// Which path publishes take.
#[derive(Clone)]
pub enum Via {
    /// `POST /api/notifications` over HTTP: stored, then put on the bus by the node.
    Http,
    /// Straight onto the node's `notifications` topic, the way another node's writer
    /// would put it there (Kafka in production, the SQLite log in embedded mode).
    Bus {
        /// The bus adapter, from the engine's own library.
        bus: Arc<dyn Bus>,
        /// `kafka` or `sqlite`, for reports.
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
    /// The node's process, for memory and CPU readings (`None`: not measured).
    pub pid: Option<u32>,
    /// `embedded` or `production`, for reports.
    pub mode: &'static str,
}
