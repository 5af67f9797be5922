//! The embedded bus: topics as a durable log in the node's SQLite file, with consumer
//! groups and committed offsets — the semantics the Kafka adapter gives in production,
//! so a message accepted by `publish` survives a crash and is handled at least once.
//!
//! New messages wake waiting subscribers through a `watch` channel per topic, so
//! delivery does not wait for a poll interval.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, OptionalExtension};
use tokio::sync::watch;

use herald_actors::domain::{BusMessage, Topic};
use herald_actors::ports::{Bus, BusError, StoreError, Subscription};

use super::memory::MemoryBus;
use crate::backends::store::sqlite::SqliteDb;

/// Messages fetched per read.
const FETCH: u32 = 256;
/// Handled messages between offset writes at most (see `SqliteSubscription::commit`).
const COMMIT_EVERY: u32 = 64;
/// Commits between prunes of fully consumed messages.
const PRUNE_EVERY: u64 = 512;

fn bus_error(err: StoreError) -> BusError {
    BusError::Unavailable(err.to_string())
}

/// Where a consumer group that has never committed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest retained message (Kafka `auto.offset.reset=earliest`).
    Earliest,
    /// Only messages published after subscribing (`latest`).
    Latest,
}

/// The embedded bus.
pub struct SqliteBus {
    db: Arc<SqliteDb>,
    wakers: HashMap<Topic, watch::Sender<i64>>,
    start_from: HashMap<String, StartFrom>,
    commits: Arc<AtomicU64>,
    /// Topics kept in memory instead (see [`SqliteBus::keep_in_memory`]).
    memory: Option<MemoryBus>,
}

impl SqliteBus {
    /// A bus over `db`. Groups listed in `latest_groups` start at the end of their
    /// topic the first time they subscribe; all others start at the beginning.
    pub fn new(db: Arc<SqliteDb>, latest_groups: &[&str]) -> Self {
        let wakers = Topic::ALL
            .into_iter()
            .map(|t| (t, watch::channel(0).0))
            .collect();
        let start_from = latest_groups
            .iter()
            .map(|g| ((*g).to_owned(), StartFrom::Latest))
            .collect();
        Self {
            db,
            wakers,
            start_from,
            commits: Arc::new(AtomicU64::new(0)),
            memory: None,
        }
    }

    /// Keeps `topics` in memory rather than in the database: for topics whose
    /// messages are durable elsewhere already (see [`MemoryBus`]). Every group starts
    /// at the oldest message held: the log begins with the process, so that is what a
    /// group that starts at the end would want too — minus the window between the
    /// first publish and its subscription, which it must not miss.
    #[must_use]
    pub fn keep_in_memory(mut self, topics: &[Topic]) -> Self {
        self.memory = Some(MemoryBus::new(topics, &[]));
        self
    }

    /// The in-memory bus, when it carries `topic`.
    fn in_memory(&self, topic: Topic) -> Option<&MemoryBus> {
        self.memory.as_ref().filter(|m| m.carries(topic))
    }
}

#[async_trait]
impl Bus for SqliteBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        if let Some(memory) = self.in_memory(topic) {
            return memory.publish(topic, key, payload).await;
        }
        let key = key.to_owned();
        let offset = self
            .db
            .write(move |conn| {
                conn.execute(
                    "INSERT INTO bus_messages (topic, key, payload, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![topic.as_str(), key, payload.as_ref(), chrono::Utc::now().timestamp_millis()],
                )
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(conn.last_insert_rowid())
            })
            .await
            .map_err(bus_error)?;
        if let Some(waker) = self.wakers.get(&topic) {
            waker.send_replace(offset);
        }
        Ok(())
    }

    /// The batch in one transaction: one commit, one wake-up.
    async fn publish_batch(
        &self,
        topic: Topic,
        messages: &[(String, Bytes)],
    ) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        if let Some(memory) = self.in_memory(topic) {
            return memory.publish_batch(topic, messages).await;
        }
        let owned = messages.to_vec();
        let offset = self
            .db
            .write(move |conn| {
                let tx = conn
                    .transaction()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let now = chrono::Utc::now().timestamp_millis();
                {
                    let mut insert = tx
                        .prepare_cached(
                            "INSERT INTO bus_messages (topic, key, payload, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                        )
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    for (key, payload) in &owned {
                        insert
                            .execute(params![topic.as_str(), key, payload.as_ref(), now])
                            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    }
                }
                let last = tx.last_insert_rowid();
                tx.commit()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(last)
            })
            .await
            .map_err(bus_error)?;
        if let Some(waker) = self.wakers.get(&topic) {
            waker.send_replace(offset);
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        if let Some(memory) = self.in_memory(topic) {
            return memory.subscribe(topic, group).await;
        }
        let start = self
            .start_from
            .get(group)
            .copied()
            .unwrap_or(StartFrom::Earliest);
        let grp = group.to_owned();
        let committed = self
            .db
            .write(move |conn| {
                let existing: Option<i64> = conn
                    .query_row(
                        "SELECT committed FROM bus_offsets WHERE grp = ?1 AND topic = ?2",
                        params![grp, topic.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                if let Some(offset) = existing {
                    return Ok(offset);
                }
                let initial: i64 = match start {
                    StartFrom::Earliest => 0,
                    StartFrom::Latest => conn
                        .query_row(
                            "SELECT COALESCE(MAX(\"offset\"), 0) FROM bus_messages",
                            [],
                            |r| r.get(0),
                        )
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                };
                conn.execute(
                    "INSERT INTO bus_offsets (grp, topic, committed) VALUES (?1, ?2, ?3)",
                    params![grp, topic.as_str(), initial],
                )
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(initial)
            })
            .await
            .map_err(bus_error)?;
        let waker = self
            .wakers
            .get(&topic)
            .map(watch::Sender::subscribe)
            .ok_or_else(|| BusError::Unavailable(format!("unknown topic {topic}")))?;
        Ok(Box::new(SqliteSubscription {
            db: Arc::clone(&self.db),
            topic,
            group: group.to_owned(),
            position: committed,
            buffer: VecDeque::new(),
            waker,
            commits: Arc::clone(&self.commits),
            handled: None,
        }))
    }
}

/// A group's cursor on one topic.
struct SqliteSubscription {
    db: Arc<SqliteDb>,
    topic: Topic,
    group: String,
    /// Highest offset fetched into `buffer`.
    position: i64,
    buffer: VecDeque<BusMessage>,
    waker: watch::Receiver<i64>,
    commits: Arc<AtomicU64>,
    /// The highest handled offset not yet written, and how many handled messages
    /// it stands for.
    handled: Option<(i64, u32)>,
}

impl SqliteSubscription {
    async fn fetch(&mut self) -> Result<(), BusError> {
        let (topic, position) = (self.topic, self.position);
        let rows = self
            .db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT \"offset\", key, payload FROM bus_messages
                         WHERE topic = ?1 AND \"offset\" > ?2 ORDER BY \"offset\" LIMIT ?3",
                    )
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let rows = stmt
                    .query_map(params![topic.as_str(), position, FETCH], |r| {
                        let payload: Vec<u8> = r.get(2)?;
                        Ok(BusMessage {
                            topic,
                            partition: 0,
                            offset: r.get(0)?,
                            key: r.get(1)?,
                            payload: Bytes::from(payload),
                        })
                    })
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await
            .map_err(bus_error)?;
        if let Some(last) = rows.last() {
            self.position = last.offset;
        }
        self.buffer.extend(rows);
        Ok(())
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Result<BusMessage, BusError> {
        loop {
            if let Some(message) = self.buffer.pop_front() {
                return Ok(message);
            }
            // Mark the current value seen before reading, so a publish that lands
            // between the read and the wait still wakes us.
            self.waker.borrow_and_update();
            self.fetch().await?;
            if self.buffer.is_empty() {
                super::wait_for_publish(&mut self.waker).await;
            }
        }
    }

    /// Offsets are written once per fetched batch (when its last message was handled)
    /// or every [`COMMIT_EVERY`] messages, not once per message: at-least-once holds —
    /// only handled offsets are written — and a crash replays at most one batch.
    async fn commit(&mut self, message: &BusMessage) -> Result<(), BusError> {
        let count = self.handled.map_or(0, |(_, n)| n) + 1;
        self.handled = Some((message.offset, count));
        if !self.buffer.is_empty() && count < COMMIT_EVERY {
            return Ok(());
        }
        self.handled = None;
        let (group, topic, offset) = (self.group.clone(), self.topic, message.offset);
        let prune = self.commits.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1;
        self.db
            .write(move |conn| {
                conn.prepare_cached(
                    "UPDATE bus_offsets SET committed = MAX(committed, ?3) WHERE grp = ?1 AND topic = ?2",
                )
                .and_then(|mut update| update.execute(params![group, topic.as_str(), offset]))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                if prune {
                    // Messages every group of the topic has handled are not needed.
                    conn.execute(
                        "DELETE FROM bus_messages WHERE topic = ?1 AND \"offset\" <=
                         (SELECT MIN(committed) FROM bus_offsets WHERE topic = ?1)",
                        [topic.as_str()],
                    )
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                }
                Ok(())
            })
            .await
            .map_err(bus_error)
    }

    async fn lag(&mut self) -> Option<u64> {
        let (group, topic) = (self.group.clone(), self.topic);
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT COUNT(*) FROM bus_messages WHERE topic = ?1 AND \"offset\" >
                     (SELECT committed FROM bus_offsets WHERE grp = ?2 AND topic = ?1)",
                    params![topic.as_str(), group],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await
            .ok()
            .map(|n| n.max(0) as u64)
    }
}
