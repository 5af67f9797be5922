//! The `notifications` topic handler: turns a stored notification into one encoded
//! frame and hands it to the registry for the user's sessions, or all sessions.

use actix::prelude::*;
use async_trait::async_trait;

use crate::consumer::{HandleError, TopicHandler};
use crate::domain::{BusMessage, NotificationStored};
use crate::messages::{Broadcast, Deliver, Push};
use crate::registry::Registry;

/// Delivers `notifications` messages to this node's sessions.
pub struct DeliveryHandler {
    registry: Addr<Registry>,
}

impl DeliveryHandler {
    /// A handler delivering through `registry`.
    pub fn new(registry: Addr<Registry>) -> Self {
        Self { registry }
    }
}

#[async_trait]
impl TopicHandler for DeliveryHandler {
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError> {
        let event: NotificationStored = serde_json::from_slice(&message.payload)
            .map_err(|e| HandleError::Poison(format!("not a notification event: {e}")))?;
        let push = Push::of(&event.notification);
        let sent = match event.notification.user_id {
            Some(user_id) => self.registry.send(Deliver { user_id, push }).await,
            None => self.registry.send(Broadcast { push }).await,
        };
        sent.map(|_| ())
            .map_err(|e| HandleError::Transient(format!("registry unavailable: {e}")))
    }
}
