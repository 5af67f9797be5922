//! The `NotificationWriter` on the real SQLite store, with a bus whose appends the test
//! holds back: publishers are answered once their notifications are committed, the bus
//! gets the notifications in commit order, and storing waits when the bus falls too far
//! behind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor;
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use herald::backends::store::sqlite::{SqliteDb, SqliteStore};
use herald_actors::domain::{
    Audience, EventName, NewNotification, NotificationStored, Topic, UserId,
};
use herald_actors::health::HealthBoard;
use herald_actors::messages::Publish;
use herald_actors::ports::{Bus, BusError, Subscription};
use herald_actors::writer::{NotificationWriter, MAX_UNPUBLISHED};

/// A bus that records each append once the test lets it through.
struct HeldBus {
    gate: Semaphore,
    appends: Mutex<Vec<Vec<i64>>>,
}

impl Default for HeldBus {
    fn default() -> Self {
        Self {
            gate: Semaphore::new(0),
            appends: Mutex::default(),
        }
    }
}

#[async_trait]
impl Bus for HeldBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        self.publish_batch(topic, &[(key.to_owned(), payload)])
            .await
    }

    async fn publish_batch(
        &self,
        _topic: Topic,
        messages: &[(String, Bytes)],
    ) -> Result<(), BusError> {
        self.gate.acquire().await.expect("gate open").forget();
        let ids = messages
            .iter()
            .map(|(_, payload)| {
                serde_json::from_slice::<NotificationStored>(payload)
                    .expect("a notification event")
                    .notification
                    .id
            })
            .collect();
        self.appends.lock().unwrap().push(ids);
        Ok(())
    }

    async fn subscribe(&self, _: Topic, _: &str) -> Result<Box<dyn Subscription>, BusError> {
        Err(BusError::Unavailable("not in this test".into()))
    }
}

fn notification(user: UserId) -> NewNotification {
    NewNotification {
        audience: Audience::User(user),
        event: EventName::parse("e").unwrap(),
        payload: RawValue::from_string("{}".into()).unwrap(),
        dedupe_key: None,
    }
}

fn publish(user: UserId) -> Publish {
    Publish {
        notification: notification(user),
        response: None,
    }
}

/// A writer on a fresh SQLite store and a held bus (the data dir lives as long as the
/// first value).
fn held_writer() -> (
    tempfile::TempDir,
    Arc<HeldBus>,
    actix::Addr<NotificationWriter>,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("herald.db")).unwrap();
    let store = Arc::new(SqliteStore::new(Arc::new(db)));
    let bus = Arc::new(HeldBus::default());
    let stats = HealthBoard::new().register("writer", "NotificationWriter", true);
    let writer = NotificationWriter::new(store, Arc::clone(&bus) as Arc<dyn Bus>, stats).start();
    (dir, bus, writer)
}

#[actix_web::test]
async fn publishers_are_answered_on_commit_and_the_bus_gets_every_batch_in_commit_order() {
    let (_dir, bus, writer) = held_writer();
    let user = UserId::new();

    // The bus holds the first append: the publisher is answered anyway.
    let (first, _) = tokio::time::timeout(Duration::from_secs(10), writer.send(publish(user)))
        .await
        .expect("answered while the bus append is still held")
        .unwrap()
        .unwrap();
    // More commits queue up behind the held append.
    let mut ids = vec![first.id];
    for _ in 0..5 {
        let (n, _) = writer.send(publish(user)).await.unwrap().unwrap();
        ids.push(n.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(bus.appends.lock().unwrap().is_empty());

    // Released, the bus gets the first notification, then all that queued in one go.
    bus.gate.add_permits(2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.appends.lock().unwrap().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the appends never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let appends = bus.appends.lock().unwrap().clone();
    assert_eq!(appends, vec![vec![ids[0]], ids[1..].to_vec()]);
}

#[actix_web::test]
async fn storing_waits_when_the_bus_is_too_far_behind() {
    let (_dir, bus, writer) = held_writer();
    let user = UserId::new();

    // One held append plus a full queue behind it.
    let publishes: Vec<_> = (0..=MAX_UNPUBLISHED)
        .map(|_| writer.send(publish(user)))
        .collect();
    for answer in futures_util::future::join_all(publishes).await {
        answer.unwrap().unwrap();
    }
    // The next one is not stored while the bus is that far behind...
    let mut blocked = Box::pin(writer.send(publish(user)));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut blocked)
            .await
            .is_err(),
        "stored although the bus is {MAX_UNPUBLISHED} behind"
    );
    // ...and is once the bus catches up.
    bus.gate.add_permits(usize::MAX >> 4);
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("stored after the bus caught up")
        .unwrap()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let total: usize = bus.appends.lock().unwrap().iter().map(Vec::len).sum();
        if total == MAX_UNPUBLISHED + 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{total} on the bus");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_flush_waits_until_what_was_answered_is_on_the_bus() {
    let (_dir, bus, writer) = held_writer();
    writer.send(publish(UserId::new())).await.unwrap().unwrap();

    let mut flushed = Box::pin(writer.send(herald_actors::messages::Flush));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut flushed)
            .await
            .is_err(),
        "flushed while the append is still held"
    );
    bus.gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), flushed)
        .await
        .expect("flushed once the append went through")
        .unwrap();
    assert_eq!(bus.appends.lock().unwrap().len(), 1);
}
