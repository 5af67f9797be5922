//! The registry mirror in Redis, with the keys of DESIGN §3:
//!
//! - `herald:user:{user_id}:sockets` — hash socket_id → node_id;
//! - `herald:socket:{socket_id}` — the user id, with a TTL refreshed by heartbeats;
//! - `herald:node:{node_id}` — node liveness, with a TTL.
//!
//! Hash fields cannot expire on their own before Redis 7.4, so the user hash gets the
//! TTL as a whole, and readers drop fields whose socket key has expired: a node killed
//! without cleaning up leaves nothing that outlives the TTL.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands};
use deadpool_redis::{Config, Pool, Runtime};

use herald_actors::domain::UserId;
use herald_actors::ports::{MirrorError, RegistryMirror};

fn unavailable(err: impl std::fmt::Display) -> MirrorError {
    MirrorError::Unavailable(err.to_string())
}

/// Key of a user's socket hash.
pub fn user_key(user: UserId) -> String {
    format!("herald:user:{user}:sockets")
}

/// Key of one socket.
pub fn socket_key(socket: &str) -> String {
    format!("herald:socket:{socket}")
}

/// Key of a node's liveness.
pub fn node_key(node: &str) -> String {
    format!("herald:node:{node}")
}

/// The mirror of one node.
pub struct RedisMirror {
    pool: Pool,
    node: String,
    ttl_secs: u64,
}

impl RedisMirror {
    /// A mirror for node `node` at `url` (`redis://host:port/db`); entries live `ttl`
    /// unless refreshed.
    ///
    /// # Errors
    /// When the URL is invalid.
    pub fn new(url: &str, node: String, ttl: Duration) -> Result<Self, MirrorError> {
        let pool = Config::from_url(url)
            .builder()
            .map_err(unavailable)?
            .max_size(8)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        Ok(Self {
            pool,
            node,
            ttl_secs: ttl.as_secs().max(1),
        })
    }

    /// The connection pool, shared with the DAU/MAU counters.
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, MirrorError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Checks Redis answers.
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<(), MirrorError> {
        let mut conn = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[async_trait]
impl RegistryMirror for RedisMirror {
    async fn add(&self, user: UserId, socket: &str) -> Result<(), MirrorError> {
        let mut conn = self.connection().await?;
        let ttl = self.ttl_secs as i64;
        redis::pipe()
            .atomic()
            .hset(user_key(user), socket, &self.node)
            .expire(user_key(user), ttl)
            .set_ex(socket_key(socket), user.to_string(), self.ttl_secs)
            .set_ex(node_key(&self.node), "alive", self.ttl_secs)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn remove(&self, user: UserId, socket: &str) -> Result<(), MirrorError> {
        let mut conn = self.connection().await?;
        redis::pipe()
            .atomic()
            .hdel(user_key(user), socket)
            .del(socket_key(socket))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn refresh(&self, sockets: &[(UserId, String)]) -> Result<(), MirrorError> {
        let mut conn = self.connection().await?;
        let ttl = self.ttl_secs as i64;
        let mut pipe = redis::pipe();
        pipe.set_ex(node_key(&self.node), "alive", self.ttl_secs)
            .ignore();
        for (user, socket) in sockets {
            // Re-creating the entries (not only extending them) heals keys lost to a
            // Redis restart.
            pipe.hset(user_key(*user), socket, &self.node)
                .ignore()
                .expire(user_key(*user), ttl)
                .ignore()
                .set_ex(socket_key(socket), user.to_string(), self.ttl_secs)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn nodes_of(&self, user: UserId) -> Result<Vec<String>, MirrorError> {
        let mut conn = self.connection().await?;
        let sockets: Vec<(String, String)> =
            conn.hgetall(user_key(user)).await.map_err(unavailable)?;
        if sockets.is_empty() {
            return Ok(Vec::new());
        }
        let mut exists = redis::pipe();
        for (socket, _) in &sockets {
            exists.exists(socket_key(socket));
        }
        let alive: Vec<bool> = exists.query_async(&mut conn).await.map_err(unavailable)?;
        let mut nodes = Vec::new();
        let mut stale = Vec::new();
        for ((socket, node), alive) in sockets.into_iter().zip(alive) {
            if alive {
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            } else {
                stale.push(socket);
            }
        }
        if !stale.is_empty() {
            let _: Result<(), _> = conn.hdel(user_key(user), stale).await;
        }
        Ok(nodes)
    }
}
