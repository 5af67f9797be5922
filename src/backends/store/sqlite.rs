//! The embedded store: one SQLite file under the data directory, in WAL mode.
//!
//! All writes go through one connection (SQLite has one writer anyway), which also
//! makes notification ids grow in commit order. Reads use their own connections so
//! they never queue behind writes. Each connection has a thread of its own (see
//! [`SqliteDb`]).
//!
//! Durability: `synchronous=NORMAL` in WAL mode survives a process crash (SIGKILL)
//! without losing a committed transaction; only an OS crash or power loss can drop the
//! last few.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use herald_actors::domain::{
    Audience, Email, EventName, MailJob, NewNotification, Notification, NotificationId,
    OutboxEvent, Topic, User, UserId, UserName,
};
use herald_actors::ports::{
    Credentials, DeadMail, IdempotencyClaim, IdempotentResponse, Store, StoreError,
};

/// The schema, in order. Applied once each and recorded in `schema_migrations`.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "users",
        include_str!("../../../migrations/sqlite/0001_users.sql"),
    ),
    (
        2,
        "outbox",
        include_str!("../../../migrations/sqlite/0002_outbox.sql"),
    ),
    (
        3,
        "notifications",
        include_str!("../../../migrations/sqlite/0003_notifications.sql"),
    ),
    (
        4,
        "mail",
        include_str!("../../../migrations/sqlite/0004_mail.sql"),
    ),
    (
        5,
        "bus",
        include_str!("../../../migrations/sqlite/0005_bus.sql"),
    ),
    (
        6,
        "activity",
        include_str!("../../../migrations/sqlite/0006_activity.sql"),
    ),
];

/// Read connections kept open.
const READERS: usize = 2;
/// How often the WAL is copied back into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// WAL size (pages of 4 KiB, SQLite's default) past which a checkpoint makes the WAL
/// start over: 16 MiB.
const WAL_RESTART_PAGES: i64 = 4096;
/// How long a RESTART checkpoint waits for the writer before it tries again later.
const CHECKPOINT_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Inserts one notification inside `tx` (see [`Store::insert_notification`]).
fn insert_one(
    tx: &rusqlite::Transaction<'_>,
    new: NewNotification,
    response: Option<&IdempotentResponse>,
) -> Result<(Notification, bool), StoreError> {
    if let Some(key) = &new.dedupe_key {
        let existing = tx
            .prepare_cached(
                "SELECT id, user_id, event, payload, created_at FROM notifications WHERE dedupe_key = ?1",
            )
            .and_then(|mut select| select.query_row([key], notification_from_row).optional())
            .map_err(unavailable)?;
        if let Some(existing) = existing {
            return Ok((existing, false));
        }
    }
    let user_id = match new.audience {
        Audience::User(id) => Some(id),
        Audience::Broadcast => None,
    };
    let created_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tx.prepare_cached(
        "INSERT INTO notifications (user_id, event, payload, dedupe_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            user_id.map(|u| u.to_string()),
            new.event.as_str(),
            new.payload.get(),
            new.dedupe_key,
            created_at
        ])
    })
    .map_err(unavailable)?;
    let id: NotificationId = tx.last_insert_rowid();
    if let Some(response) = response {
        let body = serde_json::to_vec(&serde_json::json!({ "id": id })).map_err(unavailable)?;
        store_response(tx, response, &body).map_err(unavailable)?;
    }
    Ok((
        Notification {
            id,
            user_id,
            event: new.event,
            payload: new.payload,
            created_at: parse_time(&created_at),
        },
        true,
    ))
}

/// One round of the checkpoint thread: a PASSIVE checkpoint, which copies the WAL back
/// into the database file (and does its fsyncs) without blocking the writer or the
/// readers. Under steady writes that never quite catches up with the end of the WAL,
/// and the WAL starts over from its beginning only after a checkpoint that did — so it
/// would grow for as long as the load lasts. Past [`WAL_RESTART_PAGES`] a RESTART
/// checkpoint holds the writer back between two of its transactions for the little the
/// PASSIVE one left, and the next write reuses the WAL from its start. A writer that
/// never pauses starves that attempt, so past twice the size the RESTART is
/// queued on the writer thread itself, which cannot miss.
fn checkpoint(conn: &Connection, writer: &mpsc::Sender<WriteJob>, queued: &Arc<AtomicBool>) {
    let wal_pages = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        .unwrap_or(0);
    if wal_pages < WAL_RESTART_PAGES {
        return;
    }
    let restarted = conn
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        .is_ok_and(|busy| busy == 0);
    if !restarted && wal_pages >= 2 * WAL_RESTART_PAGES && !queued.swap(true, Ordering::AcqRel) {
        let queued = Arc::clone(queued);
        let _ = writer.send(Box::new(move |conn: &mut Connection| {
            let _ = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()));
            queued.store(false, Ordering::Release);
        }));
    }
}

/// A call queued for the writer thread.
type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;
/// A call queued for whichever reader thread is free.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The SQLite database: one writer, a few readers, each connection owned by a thread of
/// its own that runs the calls queued for it. Shared by the store and the embedded bus.
///
/// Dedicated threads rather than tokio's blocking pool: a call is one channel send and
/// one wake-up, the writer thread stays warm while work keeps coming (group commits
/// arrive back to back), and no call waits for a pool thread to be found or spawned.
/// A call that panics is contained: its caller's reply channel drops (the caller sees
/// `Unavailable`), an open transaction rolls back as it unwinds, and the thread goes on
/// with the next call. The threads end when the database is dropped.
pub struct SqliteDb {
    /// Migrations this open applied (0 when the schema was up to date).
    migrations_applied: usize,
    writer: mpsc::Sender<WriteJob>,
    readers: mpsc::Sender<ReadJob>,
    /// Dropped with the database, which ends the checkpoint thread.
    _checkpoints: mpsc::Sender<()>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteDb {
    /// Opens (creating if needed) the database at `path`, applies pending migrations
    /// and starts its threads.
    ///
    /// # Errors
    /// When the file cannot be opened, a migration fails or a thread cannot start.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut writer = open_connection(path).map_err(unavailable)?;
        let migrations_applied = migrate(&mut writer).map_err(unavailable)?;
        // Checkpoints (the fsyncs of WAL mode) run on a thread of their own, not inside
        // whichever commit crosses the WAL threshold.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        let (writer_jobs, writer_queue) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = writer_queue.recv() {
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut writer)));
                }
            })
            .map_err(unavailable)?;
        let checkpointer = open_connection(path).map_err(unavailable)?;
        // A RESTART attempt gives up soon rather than stall behind a busy writer.
        checkpointer
            .busy_timeout(CHECKPOINT_BUSY_TIMEOUT)
            .map_err(unavailable)?;
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        let restarts = writer_jobs.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let restart_queued = Arc::new(AtomicBool::new(false));
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    checkpoint(&checkpointer, &restarts, &restart_queued);
                }
            })
            .map_err(unavailable)?;
        let (reader_jobs, reader_queue) = mpsc::channel::<ReadJob>();
        let reader_queue = Arc::new(Mutex::new(reader_queue));
        for n in 0..READERS {
            let conn = open_connection(path).map_err(unavailable)?;
            let queue = Arc::clone(&reader_queue);
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{n}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for a job, so a free reader
                    // takes the next one.
                    let job = match queue.lock().map(|q| q.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&conn)));
                })
                .map_err(unavailable)?;
        }
        Ok(Self {
            migrations_applied,
            writer: writer_jobs,
            readers: reader_jobs,
            _checkpoints: stop_checkpoints,
        })
    }

    /// How many migrations opening the database applied (0: it was up to date).
    pub fn migrations_applied(&self) -> usize {
        self.migrations_applied
    }

    /// Runs `f` on the writer connection, on the writer thread.
    ///
    /// # Errors
    /// The error `f` returns, or `Unavailable` when `f` panicked.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| unavailable("the database writer thread is gone"))?;
        answer
            .await
            .map_err(|_| unavailable("the database call failed (panicked)"))?
    }

    /// Runs `f` on a free reader connection, on its thread.
    ///
    /// # Errors
    /// The error `f` returns, or `Unavailable` when `f` panicked.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.readers
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| unavailable("the database reader threads are gone"))?;
        answer
            .await
            .map_err(|_| unavailable("the database call failed (panicked)"))?
    }
}

/// Applies the migrations not yet applied; returns how many ran. Re-running is a no-op.
///
/// # Errors
/// When a migration fails (it is rolled back).
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<usize> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let tx = conn.transaction()?;
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                params![version, name, Utc::now().to_rfc3339()],
            )?;
            applied += 1;
        }
        tx.commit()?;
    }
    Ok(applied)
}

/// The store port over [`SqliteDb`].
pub struct SqliteStore {
    db: Arc<SqliteDb>,
}

impl SqliteStore {
    /// A store over `db`.
    pub fn new(db: Arc<SqliteDb>) -> Self {
        Self { db }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn parse_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnName(format!("stored {what} is invalid"))
}

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let id: String = row.get("id")?;
    let email: String = row.get("email")?;
    let name: String = row.get("name")?;
    let created_at: String = row.get("created_at")?;
    Ok(User {
        id: id.parse().map_err(|_| corrupt("user id"))?,
        email: Email::parse(&email).map_err(|_| corrupt("email"))?,
        name: UserName::parse(&name).map_err(|_| corrupt("name"))?,
        created_at: parse_time(&created_at),
    })
}

fn notification_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Notification> {
    let user_id: Option<String> = row.get("user_id")?;
    let event: String = row.get("event")?;
    let payload: String = row.get("payload")?;
    let created_at: String = row.get("created_at")?;
    Ok(Notification {
        id: row.get("id")?,
        user_id: user_id
            .map(|u| u.parse::<UserId>())
            .transpose()
            .map_err(|_| corrupt("user id"))?,
        event: EventName::parse(&event).map_err(|_| corrupt("event"))?,
        payload: RawValue::from_string(payload).map_err(|_| corrupt("payload"))?,
        created_at: parse_time(&created_at),
    })
}

fn store_response(
    tx: &rusqlite::Transaction<'_>,
    response: &IdempotentResponse,
    body: &[u8],
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE idempotency_keys SET status = ?3, body = ?4 WHERE scope = ?1 AND key = ?2",
        params![response.scope, response.key, response.status, body],
    )?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }

    async fn create_user(
        &self,
        user: &User,
        password_hash: &str,
        event: &OutboxEvent,
        response: Option<&IdempotentResponse>,
    ) -> Result<(), StoreError> {
        let (user, hash, event, response) = (
            user.clone(),
            password_hash.to_owned(),
            event.clone(),
            response.cloned(),
        );
        self.db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                let inserted = tx.execute(
                    "INSERT INTO users (id, email, email_normalized, name, password_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        user.id.to_string(),
                        user.email.as_str(),
                        user.email.normalized(),
                        user.name.as_str(),
                        hash,
                        user.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    ],
                );
                match inserted {
                    Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                        return Err(StoreError::EmailTaken)
                    }
                    other => other.map_err(unavailable)?,
                };
                tx.execute(
                    "INSERT INTO outbox (topic, key, payload, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![event.topic.as_str(), event.key, event.payload.as_ref(), now_ms()],
                )
                .map_err(unavailable)?;
                if let Some(response) = &response {
                    store_response(&tx, response, &response.body).map_err(unavailable)?;
                }
                tx.commit().map_err(unavailable)
            })
            .await
    }

    async fn credentials_by_email(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let normalized = email.normalized();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT id, email, name, created_at, password_hash FROM users WHERE email_normalized = ?1",
                    [normalized],
                    |row| {
                        Ok(Credentials {
                            user: user_from_row(row)?,
                            password_hash: row.get("password_hash")?,
                        })
                    },
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT id, email, name, created_at FROM users WHERE id = ?1",
                    [id.to_string()],
                    user_from_row,
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        in_flight_timeout_secs: i64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (scope, key, hash) = (scope.to_owned(), key.to_owned(), request_hash.to_owned());
        self.db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                let existing: Option<(String, Option<u16>, Option<Vec<u8>>, i64)> = tx
                    .query_row(
                        "SELECT request_hash, status, body, created_at_ms FROM idempotency_keys
                         WHERE scope = ?1 AND key = ?2",
                        params![scope, key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()
                    .map_err(unavailable)?;
                let now = now_ms();
                let claim = match existing {
                    None => {
                        tx.execute(
                            "INSERT INTO idempotency_keys (scope, key, request_hash, created_at_ms)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![scope, key, hash, now],
                        )
                        .map_err(unavailable)?;
                        IdempotencyClaim::Claimed
                    }
                    Some((stored_hash, _, _, _)) if stored_hash != hash => IdempotencyClaim::Mismatch,
                    Some((_, Some(status), body, _)) => IdempotencyClaim::Replay {
                        status,
                        body: Bytes::from(body.unwrap_or_default()),
                    },
                    Some((_, None, _, created)) if now - created > in_flight_timeout_secs * 1000 => {
                        tx.execute(
                            "UPDATE idempotency_keys SET created_at_ms = ?3 WHERE scope = ?1 AND key = ?2",
                            params![scope, key, now],
                        )
                        .map_err(unavailable)?;
                        IdempotencyClaim::Claimed
                    }
                    Some(_) => IdempotencyClaim::InFlight,
                };
                tx.commit().map_err(unavailable)?;
                Ok(claim)
            })
            .await
    }

    async fn complete_idempotency_key(
        &self,
        response: &IdempotentResponse,
    ) -> Result<(), StoreError> {
        let response = response.clone();
        self.db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                store_response(&tx, &response, &response.body).map_err(unavailable)?;
                tx.commit().map_err(unavailable)
            })
            .await
    }

    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM idempotency_keys WHERE scope = ?1 AND key = ?2 AND status IS NULL",
                    params![scope, key],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }

    async fn prune_idempotency_keys(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = older_than.timestamp_millis();
        self.db
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM idempotency_keys WHERE created_at_ms < ?1",
                    [cutoff],
                )
                .map(|n| n as u64)
                .map_err(unavailable)
            })
            .await
    }

    async fn insert_notification(
        &self,
        notification: &NewNotification,
        response: Option<&IdempotentResponse>,
    ) -> Result<(Notification, bool), StoreError> {
        self.insert_notifications(&[(notification, response)])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("no result".into())))
    }

    /// The whole batch in one transaction: one commit for all of it.
    async fn insert_notifications(
        &self,
        batch: &[(&NewNotification, Option<&IdempotentResponse>)],
    ) -> Vec<Result<(Notification, bool), StoreError>> {
        let owned: Vec<(NewNotification, Option<IdempotentResponse>)> = batch
            .iter()
            .map(|(n, r)| ((*n).clone(), r.cloned()))
            .collect();
        let count = owned.len();
        let written = self
            .db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                let stored = owned
                    .into_iter()
                    .map(|(new, response)| insert_one(&tx, new, response.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?;
                tx.commit().map_err(unavailable)?;
                Ok(stored)
            })
            .await;
        match written {
            Ok(stored) => stored.into_iter().map(Ok).collect(),
            Err(err) => (0..count)
                .map(|_| Err(StoreError::Unavailable(err.to_string())))
                .collect(),
        }
    }

    async fn prune_notifications(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = older_than.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        self.db
            .write(move |conn| {
                conn.execute("DELETE FROM notifications WHERE created_at < ?1", [cutoff])
                    .map(|n| n as u64)
                    .map_err(unavailable)
            })
            .await
    }

    async fn history(
        &self,
        user: UserId,
        after: NotificationId,
        before: Option<NotificationId>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT id, user_id, event, payload, created_at FROM notifications
                         WHERE user_id = ?1 AND id > ?2 AND id < ?3 ORDER BY id LIMIT ?4",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(
                        params![user.to_string(), after, before.unwrap_or(i64::MAX), limit],
                        notification_from_row,
                    )
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)
            })
            .await
    }

    async fn pending_outbox(&self, limit: u32) -> Result<Vec<OutboxEvent>, StoreError> {
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT id, topic, key, payload FROM outbox WHERE published_at_ms IS NULL ORDER BY id LIMIT ?1",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([limit], |r| {
                        let topic: String = r.get(1)?;
                        let payload: Vec<u8> = r.get(3)?;
                        Ok(OutboxEvent {
                            id: r.get(0)?,
                            topic: Topic::from_name(&topic).ok_or_else(|| corrupt("topic"))?,
                            key: r.get(2)?,
                            payload: Bytes::from(payload),
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
            })
            .await
    }

    async fn mark_outbox_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.db
            .write(move |conn| {
                let tx = conn.transaction().map_err(unavailable)?;
                {
                    let mut stmt = tx
                        .prepare_cached("UPDATE outbox SET published_at_ms = ?2 WHERE id = ?1")
                        .map_err(unavailable)?;
                    let now = now_ms();
                    for id in ids {
                        stmt.execute(params![id, now]).map_err(unavailable)?;
                    }
                    // Published events are kept a day for inspection, then dropped.
                    tx.execute(
                        "DELETE FROM outbox WHERE published_at_ms < ?1",
                        [now - 24 * 3600 * 1000],
                    )
                    .map_err(unavailable)?;
                }
                tx.commit().map_err(unavailable)
            })
            .await
    }

    async fn enqueue_mail(&self, job: &MailJob) -> Result<bool, StoreError> {
        let job = job.clone();
        self.db
            .write(move |conn| {
                let now = now_ms();
                conn.execute(
                    "INSERT INTO mail_queue (id, to_email, to_name, subject, body, next_attempt_ms, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (id) DO NOTHING",
                    params![job.id, job.to.as_str(), job.to_name, job.subject, job.body, now],
                )
                .map(|n| n == 1)
                .map_err(unavailable)
            })
            .await
    }

    async fn due_mail(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<MailJob>, StoreError> {
        let now = now.timestamp_millis();
        self.db
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT id, to_email, to_name, subject, body, attempts FROM mail_queue
                         WHERE status = 'pending' AND next_attempt_ms <= ?1 ORDER BY next_attempt_ms LIMIT ?2",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![now, limit], |r| {
                        let to: String = r.get(1)?;
                        Ok(MailJob {
                            id: r.get(0)?,
                            to: Email::parse(&to).map_err(|_| corrupt("email"))?,
                            to_name: r.get(2)?,
                            subject: r.get(3)?,
                            body: r.get(4)?,
                            attempts: r.get(5)?,
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
            })
            .await
    }

    async fn mark_mail_sent(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE mail_queue SET status = 'sent', sent_at_ms = ?2, attempts = attempts + 1 WHERE id = ?1",
                    params![id, now_ms()],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }

    async fn dead_mail(&self, limit: u32) -> Result<Vec<DeadMail>, StoreError> {
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, to_email, subject, attempts, COALESCE(last_error, ''), next_attempt_ms
                         FROM mail_queue WHERE status = 'dead'
                         ORDER BY next_attempt_ms DESC, id LIMIT ?1",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([limit], |r| {
                        Ok(DeadMail {
                            id: r.get(0)?,
                            to: r.get(1)?,
                            subject: r.get(2)?,
                            attempts: r.get(3)?,
                            error: r.get(4)?,
                            failed_at: DateTime::from_timestamp_millis(r.get(5)?)
                                .unwrap_or_default(),
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(unavailable)
            })
            .await
    }

    async fn redrive_mail(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.db
            .write(move |conn| {
                conn.execute(
                    "UPDATE mail_queue SET status = 'pending', attempts = 0, next_attempt_ms = ?2
                     WHERE id = ?1 AND status = 'dead'",
                    params![id, now_ms()],
                )
                .map(|n| n == 1)
                .map_err(unavailable)
            })
            .await
    }

    async fn mark_mail_failed(
        &self,
        id: &str,
        attempts: u32,
        retry_at: Option<DateTime<Utc>>,
        error: &str,
    ) -> Result<(), StoreError> {
        let (id, error) = (id.to_owned(), error.to_owned());
        self.db
            .write(move |conn| {
                let (status, next) = match retry_at {
                    Some(at) => ("pending", at.timestamp_millis()),
                    None => ("dead", now_ms()),
                };
                conn.execute(
                    "UPDATE mail_queue SET status = ?2, attempts = ?3, next_attempt_ms = ?4, last_error = ?5
                     WHERE id = ?1",
                    params![id, status, attempts, next, error],
                )
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }
}
