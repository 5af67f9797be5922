//! The `user.activity` and `api.hit` topic handler: counts the users an event names
//! into the day's HyperLogLog. Counting is idempotent, so at-least-once delivery never
//! inflates DAU.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;

use crate::consumer::{HandleError, TopicHandler};
use crate::domain::{ActivityEvent, BusMessage};
use crate::ports::{ActivityStore, StoreError};

/// Counts active users.
pub struct ActivityHandler {
    store: Arc<dyn ActivityStore>,
}

impl ActivityHandler {
    /// A handler counting into `store`.
    pub fn new(store: Arc<dyn ActivityStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl TopicHandler for ActivityHandler {
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError> {
        let event: ActivityEvent = serde_json::from_slice(&message.payload)
            .map_err(|e| HandleError::Poison(format!("not an activity event: {e}")))?;
        let users = event.users().map_err(HandleError::Poison)?;
        let day = event.at.unwrap_or_else(Utc::now).date_naive();
        self.store
            .record(day, &users)
            .await
            .map_err(|e: StoreError| HandleError::Transient(e.to_string()))
    }
}
