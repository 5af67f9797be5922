//! The in-process bus: topics as logs in memory, with consumer groups and committed
//! offsets — the semantics of the other adapters without their durability.
//!
//! Embedded mode keeps the `notifications` topic here. Its messages need no log of
//! their own: the notification is committed to the store before it is published (a
//! 202 means it is in history), a node that crashes loses its sessions with it, and a
//! client that reconnects replays what it missed with `resume`. Keeping the topic in
//! SQLite as well cost a write, a read and an offset write per batch on the push path.
//!
//! A log keeps what some group that subscribed has not committed yet, up to
//! [`RETAINED_BYTES`] of payload; a group that falls further behind skips the oldest
//! (logged, and still in history) rather than let the node's memory grow without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use tracing::warn;

use herald_actors::domain::{BusMessage, Topic};
use herald_actors::ports::{Bus, BusError, Subscription};

use super::sqlite::StartFrom;

/// Most payload bytes a topic keeps in memory.
pub const RETAINED_BYTES: usize = 64 * 1024 * 1024;
/// Messages handed to a subscription per lock of the log.
const FETCH: usize = 256;

/// One topic's log.
#[derive(Default)]
struct Log {
    /// Offset of `messages[0]`; offsets start at 1, as on the SQLite bus.
    first: i64,
    messages: VecDeque<(String, Bytes)>,
    /// Payload bytes in `messages`.
    bytes: usize,
    /// Committed offset per group that subscribed.
    committed: HashMap<String, i64>,
    /// Messages dropped over the bound since the last warning.
    dropped: u64,
}

impl Log {
    /// Offset the next message gets.
    fn end(&self) -> i64 {
        self.first + self.messages.len() as i64
    }

    /// Drops what every group has committed, and the oldest beyond [`RETAINED_BYTES`].
    fn prune(&mut self, topic: Topic) {
        // Until some group subscribes, everything is kept (up to the bound).
        if let Some(done) = self.committed.values().copied().min() {
            while self.first <= done {
                let Some((_, payload)) = self.messages.pop_front() else {
                    break;
                };
                self.bytes -= payload.len();
                self.first += 1;
            }
        }
        let dropped_before = self.dropped;
        while self.bytes > RETAINED_BYTES {
            let Some((_, payload)) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= payload.len();
            self.first += 1;
            self.dropped += 1;
        }
        // One warning per thousand dropped, not one per publish.
        if self.dropped / 1000 > dropped_before / 1000 || (dropped_before == 0 && self.dropped > 0)
        {
            warn!(%topic, dropped = self.dropped, "a consumer group fell behind; the oldest messages were dropped from memory");
        }
    }

    /// Appends `messages`.
    fn extend(&mut self, messages: &[(String, Bytes)]) {
        self.bytes += messages.iter().map(|(_, p)| p.len()).sum::<usize>();
        self.messages.extend(messages.iter().cloned());
    }
}

/// A topic's log and the wake-up for its subscribers.
struct TopicLog {
    log: Mutex<Log>,
    waker: watch::Sender<i64>,
}

impl TopicLog {
    fn lock(&self) -> Result<MutexGuard<'_, Log>, BusError> {
        self.log
            .lock()
            .map_err(|_| BusError::Unavailable("in-memory topic poisoned".into()))
    }
}

/// The in-memory bus; see the module docs.
pub struct MemoryBus {
    topics: HashMap<Topic, Arc<TopicLog>>,
    start_from: HashMap<String, StartFrom>,
}

impl MemoryBus {
    /// A bus over `topics`. Groups listed in `latest_groups` start at the end of a topic
    /// the first time they subscribe; all others at its oldest retained message.
    pub fn new(topics: &[Topic], latest_groups: &[&str]) -> Self {
        let topics = topics
            .iter()
            .map(|t| {
                let log = Log {
                    first: 1,
                    ..Log::default()
                };
                (
                    *t,
                    Arc::new(TopicLog {
                        log: Mutex::new(log),
                        waker: watch::channel(0).0,
                    }),
                )
            })
            .collect();
        let start_from = latest_groups
            .iter()
            .map(|g| ((*g).to_owned(), StartFrom::Latest))
            .collect();
        Self { topics, start_from }
    }

    /// Whether `topic` lives on this bus.
    pub fn carries(&self, topic: Topic) -> bool {
        self.topics.contains_key(&topic)
    }

    fn topic(&self, topic: Topic) -> Result<&Arc<TopicLog>, BusError> {
        self.topics
            .get(&topic)
            .ok_or_else(|| BusError::Unavailable(format!("topic {topic} is not in memory")))
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        self.publish_batch(topic, &[(key.to_owned(), payload)])
            .await
    }

    /// The batch under one lock, one wake-up.
    async fn publish_batch(
        &self,
        topic: Topic,
        messages: &[(String, Bytes)],
    ) -> Result<(), BusError> {
        let log = self.topic(topic)?;
        let last = {
            let mut guard = log.lock()?;
            guard.extend(messages);
            guard.prune(topic);
            guard.end() - 1
        };
        log.waker.send_replace(last);
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let log = self.topic(topic)?;
        let position = {
            let mut guard = log.lock()?;
            let start = match self.start_from.get(group) {
                Some(StartFrom::Latest) => guard.end() - 1,
                _ => guard.first - 1,
            };
            *guard.committed.entry(group.to_owned()).or_insert(start)
        };
        Ok(Box::new(MemorySubscription {
            log: Arc::clone(log),
            topic,
            group: group.to_owned(),
            position,
            buffer: VecDeque::new(),
            waker: log.waker.subscribe(),
        }))
    }
}

/// A group's cursor on an in-memory topic.
struct MemorySubscription {
    log: Arc<TopicLog>,
    topic: Topic,
    group: String,
    /// Highest offset taken into `buffer`.
    position: i64,
    buffer: VecDeque<BusMessage>,
    waker: watch::Receiver<i64>,
}

impl MemorySubscription {
    fn fetch(&mut self) -> Result<(), BusError> {
        let guard = self.log.lock()?;
        if self.position + 1 < guard.first {
            warn!(topic = %self.topic, group = %self.group, skipped = guard.first - 1 - self.position,
                "messages dropped from memory before this group read them");
            self.position = guard.first - 1;
        }
        let from = (self.position + 1 - guard.first) as usize;
        let taken = guard.messages.range(from..).take(FETCH);
        for (offset, (key, payload)) in (self.position + 1..).zip(taken) {
            self.buffer.push_back(BusMessage {
                topic: self.topic,
                partition: 0,
                offset,
                key: key.clone(),
                payload: payload.clone(),
            });
            self.position = offset;
        }
        Ok(())
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<BusMessage, BusError> {
        loop {
            if let Some(message) = self.buffer.pop_front() {
                return Ok(message);
            }
            // Mark the current value seen before reading, so a publish that lands
            // between the read and the wait still wakes us.
            self.waker.borrow_and_update();
            self.fetch()?;
            if self.buffer.is_empty() {
                super::wait_for_publish(&mut self.waker).await;
            }
        }
    }

    async fn commit(&mut self, message: &BusMessage) -> Result<(), BusError> {
        let mut guard = self.log.lock()?;
        let committed = guard.committed.entry(self.group.clone()).or_default();
        *committed = (*committed).max(message.offset);
        guard.prune(self.topic);
        Ok(())
    }

    async fn lag(&mut self) -> Option<u64> {
        let guard = self.log.lock().ok()?;
        let committed = guard.committed.get(&self.group).copied()?;
        Some((guard.end() - 1 - committed).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(n: usize) -> (String, Bytes) {
        (format!("k{n}"), Bytes::from(format!("{{\"n\":{n}}}")))
    }

    async fn take(sub: &mut Box<dyn Subscription>, count: usize) -> Vec<BusMessage> {
        let mut taken = Vec::new();
        for _ in 0..count {
            taken.push(sub.next().await.unwrap());
        }
        taken
    }

    #[tokio::test]
    async fn a_group_resumes_after_its_commit_and_groups_are_independent() {
        let bus = MemoryBus::new(&[Topic::Notifications], &["live"]);
        bus.publish(Topic::Notifications, "k0", message(0).1)
            .await
            .unwrap();
        let mut live = bus.subscribe(Topic::Notifications, "live").await.unwrap();
        let mut all = bus.subscribe(Topic::Notifications, "all").await.unwrap();
        let batch: Vec<_> = (1..=3).map(message).collect();
        bus.publish_batch(Topic::Notifications, &batch)
            .await
            .unwrap();

        let seen = take(&mut all, 4).await;
        assert_eq!(
            seen.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // A latest group does not see what was published before it subscribed.
        let first = take(&mut live, 1).await.remove(0);
        assert_eq!(first.key, "k1");
        live.commit(&first).await.unwrap();
        assert_eq!(live.lag().await, Some(2));

        // A new subscription of the group (a restarted consumer) starts after the
        // commit: the uncommitted messages come again, the committed one does not.
        drop(live);
        let mut again = bus.subscribe(Topic::Notifications, "live").await.unwrap();
        let replayed = take(&mut again, 2).await;
        assert_eq!(
            replayed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["k2", "k3"]
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded_when_a_group_stops_reading() {
        let bus = MemoryBus::new(&[Topic::Notifications], &[]);
        let mut stuck = bus.subscribe(Topic::Notifications, "stuck").await.unwrap();
        let payload = Bytes::from(vec![b'x'; 64 * 1024]);
        let batch: Vec<_> = (0..64).map(|_| ("k".to_owned(), payload.clone())).collect();
        let batches = RETAINED_BYTES / (64 * 64 * 1024) + 4;
        for _ in 0..batches {
            bus.publish_batch(Topic::Notifications, &batch)
                .await
                .unwrap();
        }
        let log = bus.topic(Topic::Notifications).unwrap();
        let held = log.lock().unwrap().bytes;
        assert!(held <= RETAINED_BYTES, "{held}");
        assert!(held > RETAINED_BYTES - 64 * 1024, "{held}");
        // The group skips to the oldest message still held.
        let next = stuck.next().await.unwrap();
        assert_eq!(next.offset, 4 * 64 + 1);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_on_publish() {
        let bus = Arc::new(MemoryBus::new(&[Topic::Notifications], &[]));
        let mut sub = bus.subscribe(Topic::Notifications, "g").await.unwrap();
        let publisher = Arc::clone(&bus);
        let waiting = tokio::spawn(async move { sub.next().await.unwrap() });
        tokio::task::yield_now().await;
        publisher
            .publish(Topic::Notifications, "k", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), waiting)
            .await
            .expect("woken well before the idle recheck")
            .unwrap();
        assert_eq!(got.key, "k");
    }

    #[tokio::test]
    async fn committed_messages_are_released() {
        let bus = MemoryBus::new(&[Topic::Notifications], &[]);
        let mut sub = bus.subscribe(Topic::Notifications, "g").await.unwrap();
        let batch: Vec<_> = (0..10).map(message).collect();
        bus.publish_batch(Topic::Notifications, &batch)
            .await
            .unwrap();
        let seen = take(&mut sub, 10).await;
        sub.commit(&seen[9]).await.unwrap();
        let log = bus.topic(Topic::Notifications).unwrap();
        assert!(log.lock().unwrap().messages.is_empty());
    }
}
