//! Ports: what the actors need from the outside world. The app crate implements each
//! with an embedded adapter (SQLite, files) and production ones, and the actors never
//! learn which one runs.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{
    BusMessage, Email, MailJob, NewNotification, Notification, NotificationId, OutboxEvent, Topic,
    User, UserId,
};

/// Errors from the store. `Unavailable` is transient (retry later); the others describe
/// the request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email is already registered (case-insensitively).
    #[error("email already registered")]
    EmailTaken,
    /// The backend could not be reached or failed; worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A response to remember under an idempotency key, written in the same transaction as
/// the work it describes so a crash cannot separate them.
#[derive(Debug, Clone)]
pub struct IdempotentResponse {
    /// Key scope, e.g. `signup` or `publish:{user}`.
    pub scope: String,
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// HTTP status to replay.
    pub status: u16,
    /// Body to replay. For a notification insert the store fills in `{"id": N}` itself.
    pub body: Bytes,
}

/// What the store found when a request claimed an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is new and now held by this request.
    Claimed,
    /// A finished request used the key with the same body: replay its response.
    Replay {
        /// Stored status.
        status: u16,
        /// Stored body.
        body: Bytes,
    },
    /// The key was used with a different request body.
    Mismatch,
    /// A request with this key is still running.
    InFlight,
}

/// A mail that exhausted its attempts, as operators inspect it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadMail {
    /// The mail's stable id (e.g. `welcome-{user}`).
    pub id: String,
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// When it was given up on.
    pub failed_at: DateTime<Utc>,
}

/// A user with the password hash, for login only.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: User,
    /// PHC-format argon2id hash.
    pub password_hash: String,
}

/// Durable state: users, idempotency keys, the outbox, notification history, mail queue.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates a user, its `user.created` outbox event and (optionally) the idempotent
    /// response in one transaction.
    async fn create_user(
        &self,
        user: &User,
        password_hash: &str,
        event: &OutboxEvent,
        response: Option<&IdempotentResponse>,
    ) -> Result<(), StoreError>;

    /// Looks a user up by email, case-insensitively.
    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError>;

    /// Looks a user up by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;

    /// Claims an idempotency key for a request whose body hashes to `request_hash`.
    /// A claim older than `in_flight_timeout_secs` that never completed (its request
    /// died) is taken over.
    async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        in_flight_timeout_secs: i64,
    ) -> Result<IdempotencyClaim, StoreError>;

    /// Stores the response for a claimed key (for requests that wrote nothing else).
    async fn complete_idempotency_key(
        &self,
        response: &IdempotentResponse,
    ) -> Result<(), StoreError>;

    /// Drops a claim so the client may retry (used when the request failed on our side).
    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Deletes idempotency keys older than `older_than`.
    async fn prune_idempotency_keys(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Stores a notification and returns it with its id. With a `dedupe_key` that was
    /// used before, returns the earlier notification and `false`. With `response`, the
    /// idempotent response `{"id": N}` is stored in the same transaction.
    async fn insert_notification(
        &self,
        notification: &NewNotification,
        response: Option<&IdempotentResponse>,
    ) -> Result<(Notification, bool), StoreError>;

    /// Stores several notifications, in order, as [`Store::insert_notification`] does
    /// one: the group commit of the notification writer. Ids grow in `batch` order.
    /// Adapters that can commit the whole batch in one transaction override this; the
    /// default stores them one by one.
    ///
    /// # Errors
    /// One result per item; an adapter that commits the batch at once fails every
    /// item together (nothing of the batch is stored then).
    async fn insert_notifications(
        &self,
        batch: &[(&NewNotification, Option<&IdempotentResponse>)],
    ) -> Vec<Result<(Notification, bool), StoreError>> {
        let mut results = Vec::with_capacity(batch.len());
        for (notification, response) in batch {
            results.push(self.insert_notification(notification, *response).await);
        }
        results
    }

    /// Deletes notifications created before `older_than` (history retention).
    async fn prune_notifications(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The user's notifications with `after < id < before`, ascending, at most `limit`.
    async fn history(
        &self,
        user: UserId,
        after: NotificationId,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Outbox events not yet published, oldest first.
    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Marks outbox events as published.
    async fn mark_outbox_published(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Queues an email unless one with the same id was ever queued. Returns whether it
    /// was new.
    async fn enqueue_mail(&self, job: &MailJob) -> Result<bool, StoreError>;

    /// Queued mail due at `now`, oldest first.
    async fn due_mail(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<MailJob>, StoreError>;

    /// Records that a mail was accepted by the transport.
    async fn mark_mail_sent(&self, id: &str) -> Result<(), StoreError>;

    /// Dead-lettered mail, most recent first, at most `limit`.
    async fn dead_mail(&self, limit: u32) -> Result<Vec<DeadMail>, StoreError>;

    /// Queues a dead-lettered mail again with a fresh attempt budget, due now.
    /// Returns `false` when no dead mail has this id.
    async fn redrive_mail(&self, id: &str) -> Result<bool, StoreError>;

    /// Records a failed attempt: retry at `retry_at`, or dead-letter it when `None`.
    async fn mark_mail_failed(
        &self,
        id: &str,
        attempts: u32,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
    ) -> Result<(), StoreError>;
}

/// Distinct active users per UTC day, as HyperLogLog sketches: Redis in production so
/// every node counts into the same keys, an in-process sketch persisted in SQLite when
/// embedded.
#[async_trait]
pub trait ActivityStore: Send + Sync + 'static {
    /// Counts `users` as active on `day` (`PFADD`). Counting a user twice changes
    /// nothing, so a redelivered event is harmless.
    async fn record(&self, day: NaiveDate, users: &[&str]) -> Result<(), StoreError>;

    /// The estimated number of distinct users active on any of `days` (`PFCOUNT`, or
    /// `PFMERGE` then `PFCOUNT` for several days).
    async fn distinct(&self, days: &[NaiveDate]) -> Result<u64, StoreError>;
}

/// Bus errors; all are transient from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus could not be reached or refused the operation.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A topic-based log with consumer groups and at-least-once delivery: the in-process
/// bus in embedded mode, Kafka in production.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends a message; returns once the bus has durably accepted it.
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError>;

    /// Appends several messages to `topic`, in order; returns once the bus durably
    /// accepted all of them. Adapters override it to write or send the batch at once;
    /// the default publishes one by one.
    ///
    /// # Errors
    /// When any message was not accepted (earlier ones may have been).
    async fn publish_batch(
        &self,
        topic: Topic,
        messages: &[(String, Bytes)],
    ) -> Result<(), BusError> {
        for (key, payload) in messages {
            self.publish(topic, key, payload.clone()).await?;
        }
        Ok(())
    }

    /// Joins consumer group `group` on `topic`, starting after its committed offset.
    async fn subscribe(&self, topic: Topic, group: &str)
        -> Result<Box<dyn Subscription>, BusError>;
}

/// One consumer's cursor on a topic.
#[async_trait]
pub trait Subscription: Send + 'static {
    /// Waits for the next message.
    async fn next(&mut self) -> Result<BusMessage, BusError>;

    /// Records that `message` and everything before it were handled.
    async fn commit(&mut self, message: &BusMessage) -> Result<(), BusError>;

    /// How many messages wait behind the cursor, when the backend knows.
    async fn lag(&mut self) -> Option<u64>;
}

/// Mail transport errors, split the way retry logic needs them.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Worth retrying (connection refused, 4xx, timeout, disk full).
    #[error("temporary mail failure: {0}")]
    Transient(String),
    /// The relay refused for good (5xx); retried anyway, since relays answer 5xx for
    /// their own misconfiguration too.
    #[error("permanent mail failure: {0}")]
    Permanent(String),
    /// The message itself can never be sent by any relay (a recipient the mail library
    /// refuses): dead-lettered at once, and not counted against the relay's breaker.
    #[error("undeliverable mail: {0}")]
    Undeliverable(String),
}

/// Sends one email. Sending the same `job.id` twice must not produce two emails where
/// the transport allows it (the file transport overwrites; SMTP uses the Message-ID).
#[async_trait]
pub trait MailTransport: Send + Sync + 'static {
    /// Hands the mail to the transport.
    async fn send(&self, job: &MailJob) -> Result<(), MailError>;
}

/// Registry mirror errors; all transient.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The mirror backend could not be reached or failed.
    #[error("registry mirror unavailable: {0}")]
    Unavailable(String),
}

/// The cluster-wide copy of which node holds which user's sockets (Redis in
/// production), so a push can be routed to the node that holds the socket and
/// operators can see every connection. Entries carry a TTL refreshed by heartbeats: a
/// node that dies leaves nothing behind for longer than that.
#[async_trait]
pub trait RegistryMirror: Send + Sync + 'static {
    /// Records that `socket` of `user` is open on this node.
    async fn add(&self, user: UserId, socket: &str) -> Result<(), MirrorError>;

    /// Records that `socket` of `user` closed.
    async fn remove(&self, user: UserId, socket: &str) -> Result<(), MirrorError>;

    /// Heartbeat: keeps this node's liveness key and all of `sockets` alive.
    async fn refresh(&self, sockets: &[(UserId, String)]) -> Result<(), MirrorError>;

    /// The nodes that hold live sockets of `user`.
    async fn nodes_of(&self, user: UserId) -> Result<Vec<String>, MirrorError>;
}
