//! The `user.created` topic handler: stores the new user's `welcome` notification,
//! queues their welcome email, and tells connected users someone joined (id and name
//! only — never the email). Every step is keyed by the user id, so a redelivered event
//! changes nothing.

use actix::prelude::*;
use async_trait::async_trait;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Arc;

use crate::consumer::{HandleError, TopicHandler};
use crate::domain::{Audience, BusMessage, EventName, MailJob, NewNotification, UserCreated};
use crate::mailer::Mailer;
use crate::messages::{Nudge, Publish};
use crate::ports::Store;
use crate::writer::NotificationWriter;

/// Handles `user.created`.
pub struct UserCreatedHandler {
    writer: Addr<NotificationWriter>,
    store: Arc<dyn Store>,
    mailer: Addr<Mailer>,
}

impl UserCreatedHandler {
    /// A handler writing through `writer` and queueing mail in `store` for `mailer`.
    pub fn new(
        writer: Addr<NotificationWriter>,
        store: Arc<dyn Store>,
        mailer: Addr<Mailer>,
    ) -> Self {
        Self {
            writer,
            store,
            mailer,
        }
    }

    async fn publish(&self, notification: NewNotification) -> Result<(), HandleError> {
        self.writer
            .send(Publish {
                notification,
                response: None,
            })
            .await
            .map_err(|e| HandleError::Transient(format!("writer unavailable: {e}")))?
            .map(|_| ())
            .map_err(|e| HandleError::Transient(e.to_string()))
    }
}

fn event(name: &str) -> Result<EventName, HandleError> {
    EventName::parse(name).map_err(|e| HandleError::Poison(e.to_string()))
}

fn raw(value: serde_json::Value) -> Result<Box<RawValue>, HandleError> {
    serde_json::value::to_raw_value(&value).map_err(|e| HandleError::Poison(e.to_string()))
}

/// The welcome email for a new user.
pub fn welcome_mail(created: &UserCreated) -> MailJob {
    let name = created.user.name.as_str();
    MailJob {
        id: format!("welcome-{}", created.user.id),
        to: created.user.email.clone(),
        to_name: name.to_owned(),
        subject: "Welcome to Herald".to_owned(),
        body: format!(
            "Hello {name},\n\nwelcome to Herald! Your account is ready: log in and open a \
             WebSocket to receive notifications the moment they happen.\n\n— Herald\n"
        ),
        attempts: 0,
    }
}

#[async_trait]
impl TopicHandler for UserCreatedHandler {
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError> {
        let created: UserCreated = serde_json::from_slice(&message.payload)
            .map_err(|e| HandleError::Poison(format!("not a user.created event: {e}")))?;
        let user = &created.user;

        self.publish(NewNotification {
            audience: Audience::User(user.id),
            event: event("welcome")?,
            payload: raw(json!({
                "user_id": user.id,
                "name": user.name,
                "message": format!("Welcome to Herald, {}!", user.name.as_str()),
            }))?,
            dedupe_key: Some(format!("welcome:{}", user.id)),
        })
        .await?;

        self.store
            .enqueue_mail(&welcome_mail(&created))
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?;
        self.mailer.do_send(Nudge);

        self.publish(NewNotification {
            audience: Audience::Broadcast,
            event: event("user.joined")?,
            payload: raw(json!({ "id": user.id, "name": user.name }))?,
            dedupe_key: Some(format!("joined:{}", user.id)),
        })
        .await
    }
}
