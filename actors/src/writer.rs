//! `NotificationWriter`: the one writer that stores notifications and puts them on the
//! `notifications` topic. Handling one `Publish` at a time means the bus sees
//! notifications in commit order, so per-user ids never arrive out of order — the
//! property `resume` relies on (database sequences alone do not give it under
//! concurrent transactions).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use tracing::{error, instrument};
use uuid::Uuid;

use crate::domain::{Notification, Topic};
use crate::health::{ActorStats, ActorStatus};
use crate::messages::Publish;
use crate::ports::{Bus, Store, StoreError};

/// How often the writer reports its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Stores notifications and publishes them, one at a time.
pub struct NotificationWriter {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    stats: Arc<ActorStats>,
}

impl NotificationWriter {
    /// A writer over `store` and `bus`.
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, stats: Arc<ActorStats>) -> Self {
        Self { store, bus, stats }
    }
}

impl Actor for NotificationWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Running);
        self.stats.heartbeat();
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, _| act.stats.heartbeat());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for NotificationWriter {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
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
    type Result = AtomicResponse<Self, Result<(Arc<Notification>, bool), StoreError>>;

    #[instrument(skip_all, name = "writer.publish")]
    fn handle(&mut self, msg: Publish, _: &mut Self::Context) -> Self::Result {
        let store = Arc::clone(&self.store);
        let bus = Arc::clone(&self.bus);
        let stats = Arc::clone(&self.stats);
        AtomicResponse::new(Box::pin(
            async move {
                let (notification, inserted) = store
                    .insert_notification(&msg.notification, msg.response.as_ref())
                    .await?;
                let key = notification
                    .user_id
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                // The notification is stored: the publish is acknowledged even if the
                // bus is down, and the client finds it in history on resume.
                if let Err(err) = bus
                    .publish(Topic::Notifications, &key, encode_stored(&notification))
                    .await
                {
                    stats.failed(1);
                    error!(error = %err, id = notification.id, "stored notification not published");
                } else {
                    stats.processed(1);
                }
                Ok((Arc::new(notification), inserted))
            }
            .into_actor(self),
        ))
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
