//! `NotificationWriter`: the one writer that stores notifications and puts them on the
//! `notifications` topic. One batch at a time means the bus sees notifications in
//! commit order, so per-user ids never arrive out of order — the property `resume`
//! relies on (database sequences alone do not give it under concurrent transactions).
//!
//! Group commit: publishes that arrive while a batch is being written wait in
//! `pending` and go together in the next batch — one store transaction for all of them
//! where the adapter allows it. Under light load every batch holds one notification and
//! nothing waits; under heavy load the cost of a commit is shared by up to
//! [`MAX_BATCH`] notifications.
//!
//! Two lanes: a publisher is answered as soon as its batch is committed (that is the
//! guarantee a 202 gives: the notification is in history), and the committed
//! notifications queue for the bus, which takes them in commit order, one append at a
//! time, all that queued up in one append. So storing the next batch overlaps waiting
//! for the bus to acknowledge the previous one (on Kafka, most of a push's latency).
//! When the bus falls [`MAX_UNPUBLISHED`] behind, storing waits for it.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{error, instrument};
use uuid::Uuid;

use crate::domain::{Notification, Topic};
use crate::health::{ActorStats, ActorStatus};
use crate::messages::{Flush, Publish};
use crate::ports::{Bus, Store, StoreError};

/// How often the writer reports its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Most notifications written in one batch.
pub const MAX_BATCH: usize = 256;
/// Most committed notifications waiting for the bus before storing pauses.
pub const MAX_UNPUBLISHED: usize = 8 * MAX_BATCH;

/// What a publisher is told: the stored notification and whether it is new.
type Outcome = Result<(Arc<Notification>, bool), StoreError>;

/// One publish waiting for its batch.
struct Waiting {
    publish: Publish,
    reply: oneshot::Sender<Outcome>,
}

/// Stores notifications and publishes them, batch by batch.
pub struct NotificationWriter {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    stats: Arc<ActorStats>,
    pending: Vec<Waiting>,
    /// A batch is being written; the next one starts when it is done.
    writing: bool,
    /// Committed notifications not yet on the bus, in commit order: (key, event).
    unpublished: Vec<(String, Bytes)>,
    /// The append to the bus in flight, if any; the next one starts when it is done.
    /// Kept here too, so a restart in between appends it again (the bus is
    /// at-least-once anyway) rather than losing it.
    in_flight: Option<Arc<Vec<(String, Bytes)>>>,
    /// Who waits for [`Flush`].
    flushed: Vec<oneshot::Sender<()>>,
}

impl NotificationWriter {
    /// A writer over `store` and `bus`.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, stats: Arc<ActorStats>) -> Self {
        Self {
            store,
            bus,
            stats,
            pending: Vec::new(),
            writing: false,
            unpublished: Vec::new(),
            in_flight: None,
            flushed: Vec::new(),
        }
    }

    /// Answers the [`Flush`] waiters once nothing is pending, stored-but-unpublished or
    /// in flight.
    fn answer_flushes(&mut self) {
        let idle = !self.writing
            && self.in_flight.is_none()
            && self.pending.is_empty()
            && self.unpublished.is_empty();
        if idle {
            for waiter in self.flushed.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Writes the next batch unless one is being written (or the bus is too far
    /// behind); chains the one after.
    fn write_next(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.pending.is_empty() || self.unpublished.len() >= MAX_UNPUBLISHED {
            return;
        }
        let take = self.pending.len().min(MAX_BATCH);
        let batch: Vec<Waiting> = self.pending.drain(..take).collect();
        self.writing = true;
        let store = Arc::clone(&self.store);
        let write = async move {
            let results = store_batch(store, &batch).await;
            (batch, results)
        };
        ctx.spawn(write.into_actor(self).map(|(batch, results), act, ctx| {
            act.committed(batch, results);
            act.writing = false;
            act.publish_next(ctx);
            act.write_next(ctx);
            act.answer_flushes();
        }));
    }

    /// Queues what `batch` stored for the bus (in commit order), then answers its
    /// publishers.
    fn committed(&mut self, batch: Vec<Waiting>, results: Vec<Outcome>) {
        let mut results = results.into_iter();
        for waiting in batch {
            let outcome = results.next().unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the store answered fewer items than it was given".into(),
                ))
            });
            if let Ok((notification, _)) = &outcome {
                let key = notification
                    .user_id
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                self.unpublished.push((key, encode_stored(notification)));
            }
            // A publisher that gave up waiting no longer listens; its notification stays.
            let _ = waiting.reply.send(outcome);
        }
    }

    /// Appends everything committed so far to the bus unless an append is in flight;
    /// chains the one after.
    fn publish_next(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || self.unpublished.is_empty() {
            return;
        }
        let messages = Arc::new(std::mem::take(&mut self.unpublished));
        self.in_flight = Some(Arc::clone(&messages));
        let publish = publish_batch(Arc::clone(&self.bus), Arc::clone(&self.stats), messages);
        ctx.spawn(publish.into_actor(self).map(|(), act, ctx| {
            act.in_flight = None;
            act.publish_next(ctx);
            // Storing may have paused while the bus was behind.
            act.write_next(ctx);
            act.answer_flushes();
        }));
    }
}

/// Stores `batch` in one go.
#[instrument(skip_all, name = "writer.batch", fields(size = batch.len()))]
async fn store_batch(store: Arc<dyn Store>, batch: &[Waiting]) -> Vec<Outcome> {
    let items: Vec<_> = batch
        .iter()
        .map(|w| (&w.publish.notification, w.publish.response.as_ref()))
        .collect();
    store
        .insert_notifications(&items)
        .await
        .into_iter()
        .map(|r| r.map(|(n, inserted)| (Arc::new(n), inserted)))
        .collect()
}

/// Appends `messages` to the `notifications` topic. They are stored already: a bus
/// that is down costs their live delivery, not the notifications (clients find them
/// in history on resume).
#[instrument(skip_all, name = "writer.publish", fields(size = messages.len()))]
async fn publish_batch(
    bus: Arc<dyn Bus>,
    stats: Arc<ActorStats>,
    messages: Arc<Vec<(String, Bytes)>>,
) {
    match bus.publish_batch(Topic::Notifications, &messages).await {
        Ok(()) => stats.processed(messages.len() as u64),
        Err(err) => {
            stats.failed(messages.len() as u64);
            error!(error = %err, count = messages.len(), "stored notifications not published");
        }
    }
}

impl Actor for NotificationWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, _| act.stats.heartbeat());
        self.publish_next(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for NotificationWriter {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
        // Waiting publishers learn of the failure (their senders drop) rather than
        // hang; nothing of theirs was acknowledged.
        self.pending.clear();
        self.writing = false;
        // What was committed still goes to the bus, after the restart, in order.
        if let Some(in_flight) = self.in_flight.take() {
            let mut requeued = Arc::unwrap_or_clone(in_flight);
            requeued.append(&mut self.unpublished);
            self.unpublished = requeued;
        }
    }
}

/// The `notifications` topic event, borrowed: encoding it does not copy the payload.
#[derive(Serialize)]
struct StoredRef<'a> {
    event_id: Uuid,
    notification: &'a Notification,
}

/// Encodes the `notifications` topic event (the wire form of
/// [`NotificationStored`](crate::domain::NotificationStored)).
pub fn encode_stored(notification: &Notification) -> Bytes {
    let event = StoredRef {
        event_id: Uuid::new_v4(),
        notification,
    };
    serde_json::to_vec(&event)
        .map(Bytes::from)
        .unwrap_or_default()
}

impl Handler<Publish> for NotificationWriter {
    type Result = ResponseFuture<Outcome>;

    fn handle(&mut self, publish: Publish, ctx: &mut Self::Context) -> Self::Result {
        let (reply, outcome) = oneshot::channel();
        self.pending.push(Waiting { publish, reply });
        self.write_next(ctx);
        Box::pin(async move {
            outcome.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the notification writer restarted".into(),
                ))
            })
        })
    }
}

impl Handler<Flush> for NotificationWriter {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        let (waiter, flushed) = oneshot::channel();
        self.flushed.push(waiter);
        self.answer_flushes();
        Box::pin(async move {
            let _ = flushed.await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventName, NotificationStored, UserId};

    #[test]
    fn the_encoded_event_decodes_as_notification_stored() {
        let notification = Notification {
            id: 42,
            user_id: Some(UserId::new()),
            event: EventName::parse("e").unwrap(),
            payload: serde_json::value::RawValue::from_string(
                r#"{"n":18446744073709551616}"#.into(),
            )
            .unwrap(),
            created_at: chrono::Utc::now(),
        };
        let decoded: NotificationStored =
            serde_json::from_slice(&encode_stored(&notification)).unwrap();
        assert_eq!(decoded.notification.id, 42);
        assert_eq!(decoded.notification.user_id, notification.user_id);
        assert_eq!(
            decoded.notification.payload.get(),
            r#"{"n":18446744073709551616}"#
        );
    }
}
