//! The production store: PostgreSQL through a deadpool connection pool.
//!
//! Per-user ordering: a targeted notification is inserted while holding a
//! transaction-scoped advisory lock on its user, so two nodes writing for the same user
//! commit one after the other and the user's ids grow in commit order.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::value::RawValue;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use herald_actors::domain::{
    Audience, Email, EventName, MailJob, NewNotification, Notification, NotificationId,
    OutboxEvent, Topic, User, UserId, UserName,
};
use herald_actors::ports::{
    Credentials, DeadMail, IdempotencyClaim, IdempotentResponse, Store, StoreError,
};

/// The schema, in order, applied once each and recorded in `schema_migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users",
        include_str!("../../../migrations/0001_users.sql"),
    ),
    (
        2,
        "outbox",
        include_str!("../../../migrations/0002_outbox.sql"),
    ),
    (
        3,
        "notifications",
        include_str!("../../../migrations/0003_notifications.sql"),
    ),
    (4, "mail", include_str!("../../../migrations/0004_mail.sql")),
];

/// Advisory lock key serializing migrations across nodes starting together.
const MIGRATION_LOCK: i64 = 0x4845_5241_4c44_0001;

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Opens a pool for `url` (`postgres://user:pass@host:port/db`) with `size` connections.
/// Connections are made lazily; call [`Store::ping`] to check the server answers.
///
/// # Errors
/// When the URL cannot be parsed.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| unavailable(format!("postgres url: {e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(unavailable)
}

/// Applies the migrations not yet applied; returns how many ran. Nodes starting at
/// the same time take turns; re-running is a no-op.
///
/// # Errors
/// When the database is unreachable or a migration fails (it is rolled back).
pub async fn migrate(pool: &Pool) -> Result<usize, StoreError> {
    let mut client = pool.get().await.map_err(unavailable)?;
    let tx = client.transaction().await.map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(unavailable)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(unavailable)?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(unavailable)?
            .is_some();
        if !done {
            tx.batch_execute(sql)
                .await
                .map_err(|e| unavailable(format!("migration {version} ({name}): {e}")))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(unavailable)?;
            applied += 1;
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(applied)
}

/// The store port over PostgreSQL.
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// A store over `pool` (migrated with [`migrate`]).
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// See [`Store::insert_notifications`] on this adapter.
    async fn insert_batch(
        &self,
        batch: &[(&NewNotification, Option<&IdempotentResponse>)],
    ) -> Result<Vec<(Notification, bool)>, StoreError> {
        let mut client = self.client().await?;
        let insert = client
            .prepare_cached(&format!(
                "INSERT INTO notifications (user_id, event, payload, dedupe_key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (dedupe_key) DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
            ))
            .await
            .map_err(unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let user_of = |n: &NewNotification| match n.audience {
            Audience::User(id) => Some(id),
            Audience::Broadcast => None,
        };
        let users: Vec<String> = batch
            .iter()
            .filter_map(|(n, _)| user_of(n))
            .map(|u| u.to_string())
            .collect();
        if !users.is_empty() {
            // Held until commit, like the single insert's lock, and taken in the order
            // of the lock keys whatever the batch's order.
            tx.execute(
                "SELECT pg_advisory_xact_lock(h) FROM (
                     SELECT DISTINCT hashtextextended(u, 0) AS h FROM unnest($1::text[]) AS u
                     ORDER BY h) AS locks",
                &[&users],
            )
            .await
            .map_err(unavailable)?;
        }
        let columns: Vec<(Option<Uuid>, &str, &str, &Option<String>)> = batch
            .iter()
            .map(|(n, _)| {
                (
                    user_of(n).map(|u| u.0),
                    n.event.as_str(),
                    n.payload.get(),
                    &n.dedupe_key,
                )
            })
            .collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 4]> = columns
            .iter()
            .map(|(user, event, payload, key)| {
                [
                    user as &(dyn tokio_postgres::types::ToSql + Sync),
                    event,
                    payload,
                    *key,
                ]
            })
            .collect();
        let inserted =
            futures_util::future::try_join_all(params.iter().map(|row| tx.query_opt(&insert, row)))
                .await
                .map_err(unavailable)?;
        let mut stored = Vec::with_capacity(batch.len());
        for (row, (notification, _)) in inserted.iter().zip(batch) {
            stored.push(match row {
                Some(row) => (notification_from_row(row)?, true),
                // A repeated dedupe key: the row an earlier publish (or an earlier
                // item of this batch) stored.
                None => (stored_with_key(&tx, &notification.dedupe_key).await?, false),
            });
        }
        let bodies: Vec<(&IdempotentResponse, Vec<u8>)> = batch
            .iter()
            .zip(&stored)
            .filter_map(|((_, response), (n, _))| Some(((*response)?, n.id)))
            .map(|(response, id)| {
                serde_json::to_vec(&serde_json::json!({ "id": id }))
                    .map(|body| (response, body))
                    .map_err(unavailable)
            })
            .collect::<Result<_, _>>()?;
        futures_util::future::try_join_all(
            bodies
                .iter()
                .map(|(response, body)| store_response(&tx, response, body)),
        )
        .await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(stored)
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("stored {what} is invalid"))
}

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    let email: String = row.get("email");
    let name: String = row.get("name");
    Ok(User {
        id: UserId(row.get::<_, Uuid>("id")),
        email: Email::parse(&email).map_err(|_| corrupt("email"))?,
        name: UserName::parse(&name).map_err(|_| corrupt("name"))?,
        created_at: row.get("created_at"),
    })
}

fn notification_from_row(row: &Row) -> Result<Notification, StoreError> {
    let event: String = row.get("event");
    let payload: String = row.get("payload");
    Ok(Notification {
        id: row.get("id"),
        user_id: row.get::<_, Option<Uuid>>("user_id").map(UserId),
        event: EventName::parse(&event).map_err(|_| corrupt("event"))?,
        payload: RawValue::from_string(payload).map_err(|_| corrupt("payload"))?,
        created_at: row.get("created_at"),
    })
}

async fn store_response(
    tx: &deadpool_postgres::Transaction<'_>,
    response: &IdempotentResponse,
    body: &[u8],
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2",
        &[
            &response.scope,
            &response.key,
            &(response.status as i16),
            &body,
        ],
    )
    .await
    .map(|_| ())
    .map_err(unavailable)
}

const NOTIFICATION_COLUMNS: &str = "id, user_id, event, payload, created_at";

/// The notification stored earlier under `key`: what an insert that hit the dedupe
/// key's conflict returns instead.
async fn stored_with_key(
    tx: &deadpool_postgres::Transaction<'_>,
    key: &Option<String>,
) -> Result<Notification, StoreError> {
    let row = tx
        .query_one(
            &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE dedupe_key = $1"),
            &[key],
        )
        .await
        .map_err(unavailable)?;
    notification_from_row(&row)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn create_user(
        &self,
        user: &User,
        password_hash: &str,
        event: &OutboxEvent,
        response: Option<&IdempotentResponse>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let inserted = tx
            .execute(
                "INSERT INTO users (id, email, email_normalized, name, password_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &user.id.0,
                    &user.email.as_str(),
                    &user.email.normalized(),
                    &user.name.as_str(),
                    &password_hash,
                    &user.created_at,
                ],
            )
            .await;
        match inserted {
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::EmailTaken)
            }
            other => other.map_err(unavailable)?,
        };
        tx.execute(
            "INSERT INTO outbox (topic, key, payload) VALUES ($1, $2, $3)",
            &[&event.topic.as_str(), &event.key, &event.payload.as_ref()],
        )
        .await
        .map_err(unavailable)?;
        if let Some(response) = response {
            store_response(&tx, response, &response.body).await?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, email, name, created_at, password_hash FROM users WHERE email_normalized = $1",
                &[&email.normalized()],
            )
            .await
            .map_err(unavailable)?;
        row.map(|row| {
            Ok(Credentials {
                user: user_from_row(&row)?,
                password_hash: row.get("password_hash"),
            })
        })
        .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.client()
            .await?
            .query_opt(
                "SELECT id, email, name, created_at FROM users WHERE id = $1",
                &[&id.0],
            )
            .await
            .map_err(unavailable)?
            .map(|row| user_from_row(&row))
            .transpose()
    }

    async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        in_flight_timeout_secs: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let inserted = tx
            .execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
                 ON CONFLICT (scope, key) DO NOTHING",
                &[&scope, &key, &request_hash],
            )
            .await
            .map_err(unavailable)?;
        let claim = if inserted == 1 {
            IdempotencyClaim::Claimed
        } else {
            let row = tx
                .query_one(
                    "SELECT request_hash, status, body,
                            created_at < now() - make_interval(secs => $3) AS stale
                     FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE",
                    &[&scope, &key, &(in_flight_timeout_secs as f64)],
                )
                .await
                .map_err(unavailable)?;
            let stored_hash: String = row.get("request_hash");
            let status: Option<i16> = row.get("status");
            match status {
                _ if stored_hash != request_hash => IdempotencyClaim::Mismatch,
                Some(status) => IdempotencyClaim::Replay {
                    status: status as u16,
                    body: Bytes::from(row.get::<_, Option<Vec<u8>>>("body").unwrap_or_default()),
                },
                None if row.get::<_, bool>("stale") => {
                    tx.execute(
                        "UPDATE idempotency_keys SET created_at = now() WHERE scope = $1 AND key = $2",
                        &[&scope, &key],
                    )
                    .await
                    .map_err(unavailable)?;
                    IdempotencyClaim::Claimed
                }
                None => IdempotencyClaim::InFlight,
            }
        };
        tx.commit().await.map_err(unavailable)?;
        Ok(claim)
    }

    async fn complete_idempotency_key(
        &self,
        response: &IdempotentResponse,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        store_response(&tx, response, &response.body).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND status IS NULL",
                &[&scope, &key],
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn prune_idempotency_keys(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1",
                &[&older_than],
            )
            .await
            .map_err(unavailable)
    }

    async fn insert_notification(
        &self,
        notification: &NewNotification,
        response: Option<&IdempotentResponse>,
    ) -> Result<(Notification, bool), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let user_id = match notification.audience {
            Audience::User(id) => Some(id),
            Audience::Broadcast => None,
        };
        if let Some(user) = user_id {
            // Held until commit: this user's next insert, on any node, waits for us.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&user.to_string()],
            )
            .await
            .map_err(unavailable)?;
        }
        let inserted = tx
            .query_opt(
                &format!(
                    "INSERT INTO notifications (user_id, event, payload, dedupe_key) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (dedupe_key) DO NOTHING RETURNING {NOTIFICATION_COLUMNS}"
                ),
                &[
                    &user_id.map(|u| u.0),
                    &notification.event.as_str(),
                    &notification.payload.get(),
                    &notification.dedupe_key,
                ],
            )
            .await
            .map_err(unavailable)?;
        let (stored, is_new) = match inserted {
            Some(row) => (notification_from_row(&row)?, true),
            None => (stored_with_key(&tx, &notification.dedupe_key).await?, false),
        };
        if let Some(response) = response {
            let body =
                serde_json::to_vec(&serde_json::json!({ "id": stored.id })).map_err(unavailable)?;
            store_response(&tx, response, &body).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok((stored, is_new))
    }

    /// The whole batch in one transaction: its users' advisory locks taken in one
    /// statement, in ascending lock order (so two nodes' batches cannot deadlock), then
    /// the inserts pipelined on the connection — sent together, executed in order, so
    /// ids still grow in batch order. A few round trips per batch instead of four per
    /// notification.
    async fn insert_notifications(
        &self,
        batch: &[(&NewNotification, Option<&IdempotentResponse>)],
    ) -> Vec<Result<(Notification, bool), StoreError>> {
        if let [(notification, response)] = batch {
            return vec![self.insert_notification(notification, *response).await];
        }
        match self.insert_batch(batch).await {
            Ok(stored) => stored.into_iter().map(Ok).collect(),
            Err(err) => batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(err.to_string())))
                .collect(),
        }
    }

    async fn prune_notifications(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM notifications WHERE created_at < $1",
                &[&older_than],
            )
            .await
            .map_err(unavailable)
    }

    async fn history(
        &self,
        user: UserId,
        after: NotificationId,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {NOTIFICATION_COLUMNS} FROM notifications
                     WHERE user_id = $1 AND id > $2 AND id < $3 ORDER BY id LIMIT $4"
                ),
                &[
                    &user.0,
                    &after,
                    &before.unwrap_or(i64::MAX),
                    &i64::from(limit),
                ],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, topic, key, payload FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let topic: String = r.get("topic");
                Ok(OutboxEvent {
                    id: r.get("id"),
                    topic: Topic::from_name(&topic).ok_or_else(|| corrupt("topic"))?,
                    key: r.get("key"),
                    payload: Bytes::from(r.get::<_, Vec<u8>>("payload")),
                })
            })
            .collect()
    }

    async fn mark_outbox_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(unavailable)?;
        // Published events are kept a day for inspection, then dropped.
        client
            .execute(
                "DELETE FROM outbox WHERE published_at < now() - interval '1 day'",
                &[],
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn enqueue_mail(&self, job: &MailJob) -> Result<bool, StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO mail_queue (id, to_email, to_name, subject, body) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
                &[&job.id, &job.to.as_str(), &job.to_name, &job.subject, &job.body],
            )
            .await
            .map(|n| n == 1)
            .map_err(unavailable)
    }

    async fn due_mail(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<MailJob>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, to_email, to_name, subject, body, attempts FROM mail_queue
                 WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
                &[&now, &i64::from(limit)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let to: String = r.get("to_email");
                Ok(MailJob {
                    id: r.get("id"),
                    to: Email::parse(&to).map_err(|_| corrupt("email"))?,
                    to_name: r.get("to_name"),
                    subject: r.get("subject"),
                    body: r.get("body"),
                    attempts: r.get::<_, i32>("attempts").max(0) as u32,
                })
            })
            .collect()
    }

    async fn mark_mail_sent(&self, id: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE mail_queue SET status = 'sent', sent_at = now(), attempts = attempts + 1 WHERE id = $1",
                &[&id],
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn dead_mail(&self, limit: u32) -> Result<Vec<DeadMail>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, to_email, subject, attempts, COALESCE(last_error, ''), next_attempt_at
                 FROM mail_queue WHERE status = 'dead'
                 ORDER BY next_attempt_at DESC, id LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| DeadMail {
                id: r.get(0),
                to: r.get(1),
                subject: r.get(2),
                attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                error: r.get(4),
                failed_at: r.get(5),
            })
            .collect())
    }

    async fn redrive_mail(&self, id: &str) -> Result<bool, StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE mail_queue SET status = 'pending', attempts = 0, next_attempt_at = now()
                 WHERE id = $1 AND status = 'dead'",
                &[&id],
            )
            .await
            .map(|n| n == 1)
            .map_err(unavailable)
    }

    async fn mark_mail_failed(
        &self,
        id: &str,
        attempts: u32,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
    ) -> Result<(), StoreError> {
        let (status, next) = match retry_at {
            Some(at) => ("pending", at),
            None => ("dead", Utc::now()),
        };
        self.client()
            .await?
            .execute(
                "UPDATE mail_queue SET status = $2, attempts = $3, next_attempt_at = $4, last_error = $5 WHERE id = $1",
                &[&id, &status, &(attempts as i32), &next, &error],
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
