//! Contract tests of the store port, run against the SQLite adapter (the PostgreSQL
//! adapter will run the same functions).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, SubsecRound, Utc};
use serde_json::value::RawValue;

use herald::backends::store::sqlite::{SqliteDb, SqliteStore};
use herald_actors::domain::{
    Audience, Email, EventName, MailJob, NewNotification, OutboxEvent, Topic, User, UserId,
    UserName,
};
use herald_actors::ports::{IdempotencyClaim, IdempotentResponse, Store, StoreError};

/// Runs each contract against every adapter: `sqlite::NAME` and `postgres::NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    let (_dir, store) = super::sqlite();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    let db = crate::helpers::PgTestDb::create().await;
                    super::$name(db.store().await).await;
                }
            )*
        }
    };
}

contract!(
    store_prunes_notifications_older_than_the_retention,
    store_a_reader_following_history_never_misses_an_id_under_concurrent_writers,
    store_users_are_unique_by_email_case_insensitively_and_carry_an_outbox_event,
    store_idempotency_keys_go_through_claim_replay_mismatch_and_release,
    store_prunes_only_idempotency_keys_older_than_the_cutoff,
    store_notifications_dedupe_by_key_and_page_by_id,
    store_a_batch_of_notifications_gets_ascending_ids_and_dedupes_within_itself,
    store_a_notification_and_its_idempotent_response_commit_together,
    store_mail_is_queued_once_and_retried_when_due,
    store_outbox_events_stay_pending_until_marked_published,
    store_concurrent_batches_over_the_same_users_in_any_order_all_commit,
    store_a_batch_stores_each_idempotent_response_with_its_own_id,
);

fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("herald.db")).unwrap();
    (dir, Arc::new(SqliteStore::new(Arc::new(db))))
}

fn user(email: &str) -> User {
    User {
        id: UserId::new(),
        email: Email::parse(email).unwrap(),
        name: UserName::parse("Ada").unwrap(),
        created_at: Utc::now().trunc_subsecs(6),
    }
}

fn event(user: &User) -> OutboxEvent {
    OutboxEvent {
        id: 0,
        topic: Topic::UserCreated,
        key: user.id.to_string(),
        payload: Bytes::from_static(b"{}"),
    }
}

fn note(user: UserId, dedupe: Option<&str>) -> NewNotification {
    NewNotification {
        audience: Audience::User(user),
        event: EventName::parse("e").unwrap(),
        payload: RawValue::from_string("{\"a\":1}".into()).unwrap(),
        dedupe_key: dedupe.map(str::to_owned),
    }
}

async fn store_users_are_unique_by_email_case_insensitively_and_carry_an_outbox_event(
    store: Arc<dyn Store>,
) {
    let ada = user("Ada@Example.com");
    store
        .create_user(&ada, "hash", &event(&ada), None)
        .await
        .unwrap();
    let twin = user("ada@example.COM");
    assert!(matches!(
        store.create_user(&twin, "hash", &event(&twin), None).await,
        Err(StoreError::EmailTaken)
    ));
    // The failed signup left no outbox event behind.
    assert_eq!(store.pending_outbox(10).await.unwrap().len(), 1);

    let found = store
        .credentials_by_email(&Email::parse("ADA@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.user, ada);
    assert_eq!(found.password_hash, "hash");
    assert_eq!(store.user_by_id(ada.id).await.unwrap(), Some(ada));
    assert_eq!(store.user_by_id(UserId::new()).await.unwrap(), None);
}

async fn store_idempotency_keys_go_through_claim_replay_mismatch_and_release(
    store: Arc<dyn Store>,
) {
    let claim = |key: &'static str, hash: &'static str| {
        let store = Arc::clone(&store);
        async move {
            store
                .claim_idempotency_key("s", key, hash, 60)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("k", "h1").await, IdempotencyClaim::Claimed);
    assert_eq!(claim("k", "h1").await, IdempotencyClaim::InFlight);
    assert_eq!(claim("k", "h2").await, IdempotencyClaim::Mismatch);
    let response = IdempotentResponse {
        scope: "s".into(),
        key: "k".into(),
        status: 201,
        body: Bytes::from_static(b"{\"ok\":true}"),
    };
    store.complete_idempotency_key(&response).await.unwrap();
    assert_eq!(
        claim("k", "h1").await,
        IdempotencyClaim::Replay {
            status: 201,
            body: Bytes::from_static(b"{\"ok\":true}")
        }
    );
    // A released claim can be taken again; a completed one cannot be released.
    assert_eq!(claim("r", "h").await, IdempotencyClaim::Claimed);
    store.release_idempotency_key("s", "r").await.unwrap();
    assert_eq!(claim("r", "h").await, IdempotencyClaim::Claimed);
    store.release_idempotency_key("s", "k").await.unwrap();
    assert!(matches!(
        claim("k", "h1").await,
        IdempotencyClaim::Replay { .. }
    ));
    // A claim whose request died is taken over after the in-flight timeout.
    assert_eq!(
        store
            .claim_idempotency_key("s", "r", "h", 3600)
            .await
            .unwrap(),
        IdempotencyClaim::InFlight
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(
        store.claim_idempotency_key("s", "r", "h", 0).await.unwrap(),
        IdempotencyClaim::Claimed
    );
}

async fn store_prunes_only_idempotency_keys_older_than_the_cutoff(store: Arc<dyn Store>) {
    store
        .claim_idempotency_key("s", "old", "h", 60)
        .await
        .unwrap();
    assert_eq!(
        store
            .prune_idempotency_keys(Utc::now() - Duration::hours(24))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_idempotency_keys(Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .claim_idempotency_key("s", "old", "other", 60)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
}

async fn store_a_batch_of_notifications_gets_ascending_ids_and_dedupes_within_itself(
    store: Arc<dyn Store>,
) {
    let (ada, grace) = (UserId::new(), UserId::new());
    let notes = [
        note(ada, None),
        note(grace, Some("once")),
        note(ada, None),
        note(grace, Some("once")),
        note(ada, None),
    ];
    let batch: Vec<_> = notes.iter().map(|n| (n, None)).collect();
    let results: Vec<_> = store
        .insert_notifications(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results.len(), 5);
    let inserted: Vec<bool> = results.iter().map(|(_, new)| *new).collect();
    assert_eq!(inserted, [true, true, true, false, true]);
    assert_eq!(
        results[3].0.id, results[1].0.id,
        "the duplicate is the first one"
    );
    let ada_ids: Vec<_> = [0, 2, 4].iter().map(|&i| results[i].0.id).collect();
    assert!(ada_ids.windows(2).all(|w| w[0] < w[1]), "{ada_ids:?}");
    let stored: Vec<_> = store
        .history(ada, 0, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(stored, ada_ids);
    assert_eq!(store.history(grace, 0, None, 10).await.unwrap().len(), 1);
}

async fn store_notifications_dedupe_by_key_and_page_by_id(store: Arc<dyn Store>) {
    let ada = UserId::new();
    let (first, inserted) = store
        .insert_notification(&note(ada, Some("welcome:1")), None)
        .await
        .unwrap();
    assert!(inserted);
    let (again, inserted) = store
        .insert_notification(&note(ada, Some("welcome:1")), None)
        .await
        .unwrap();
    assert!(!inserted);
    assert_eq!(again.id, first.id);
    let mut ids = vec![first.id];
    for _ in 0..4 {
        ids.push(
            store
                .insert_notification(&note(ada, None), None)
                .await
                .unwrap()
                .0
                .id,
        );
    }
    store
        .insert_notification(&note(UserId::new(), None), None)
        .await
        .unwrap();
    let page: Vec<_> = store
        .history(ada, ids[0], Some(ids[4]), 10)
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(page, ids[1..4].to_vec());
    assert_eq!(store.history(ada, 0, None, 2).await.unwrap().len(), 2);
    assert_eq!(
        store.history(ada, 0, None, 100).await.unwrap()[0]
            .payload
            .get(),
        "{\"a\":1}"
    );
}

async fn store_a_notification_and_its_idempotent_response_commit_together(store: Arc<dyn Store>) {
    assert_eq!(
        store
            .claim_idempotency_key("p", "k", "h", 60)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
    let response = IdempotentResponse {
        scope: "p".into(),
        key: "k".into(),
        status: 202,
        body: Bytes::new(),
    };
    let (stored, _) = store
        .insert_notification(&note(UserId::new(), None), Some(&response))
        .await
        .unwrap();
    let IdempotencyClaim::Replay { status, body } = store
        .claim_idempotency_key("p", "k", "h", 60)
        .await
        .unwrap()
    else {
        panic!("expected a replay");
    };
    assert_eq!(status, 202);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["id"], stored.id);
}

async fn store_mail_is_queued_once_and_retried_when_due(store: Arc<dyn Store>) {
    let job = MailJob {
        id: "welcome-1".into(),
        to: Email::parse("ada@example.com").unwrap(),
        to_name: "Ada".into(),
        subject: "Hi".into(),
        body: "Hello".into(),
        attempts: 0,
    };
    assert!(store.enqueue_mail(&job).await.unwrap());
    assert!(!store.enqueue_mail(&job).await.unwrap());
    assert_eq!(
        store.due_mail(Utc::now(), 10).await.unwrap(),
        vec![job.clone()]
    );

    let later = Utc::now() + Duration::minutes(5);
    store
        .mark_mail_failed(&job.id, 1, Some(later), "421 try later")
        .await
        .unwrap();
    assert!(store.due_mail(Utc::now(), 10).await.unwrap().is_empty());
    let due = store
        .due_mail(later + Duration::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(due[0].attempts, 1);

    store.mark_mail_sent(&job.id).await.unwrap();
    assert!(store
        .due_mail(later + Duration::days(1), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(
        !store.enqueue_mail(&job).await.unwrap(),
        "a sent mail is never queued again"
    );
}

async fn store_outbox_events_stay_pending_until_marked_published(store: Arc<dyn Store>) {
    for email in ["a@example.com", "b@example.com"] {
        let u = user(email);
        store.create_user(&u, "h", &event(&u), None).await.unwrap();
    }
    let pending = store.pending_outbox(10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending[0].id < pending[1].id);
    store.mark_outbox_published(&[pending[0].id]).await.unwrap();
    let left = store.pending_outbox(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, pending[1].id);
}

/// What `resume` relies on: a reader that repeatedly asks for ids after the last one
/// it saw must, in the end, have seen every id — so no id may become visible after a
/// larger one did. Database sequences alone break this under concurrent transactions.
async fn store_a_reader_following_history_never_misses_an_id_under_concurrent_writers(
    store: Arc<dyn Store>,
) {
    let user = UserId::new();
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            actix_web::rt::spawn(async move {
                for _ in 0..50 {
                    store
                        .insert_notification(&note(user, None), None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut last = 0;
    let mut finished = false;
    loop {
        let page = store.history(user, last, None, 500).await.unwrap();
        if let Some(n) = page.last() {
            last = n.id;
        }
        seen.extend(page.iter().map(|n| n.id));
        if finished {
            break;
        }
        finished = writers.iter().all(|w| w.is_finished());
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all: Vec<_> = store
        .history(user, 0, None, 500)
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(all.len(), 200);
    assert_eq!(seen, all, "the incremental reader missed ids");
}

async fn store_prunes_notifications_older_than_the_retention(store: Arc<dyn Store>) {
    let user = UserId::new();
    let (kept, _) = store
        .insert_notification(&note(user, None), None)
        .await
        .unwrap();
    assert_eq!(
        store
            .prune_notifications(Utc::now() - Duration::days(7))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store.history(user, 0, None, 10).await.unwrap()[0].id,
        kept.id
    );
    assert_eq!(
        store
            .prune_notifications(Utc::now() + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert!(store.history(user, 0, None, 10).await.unwrap().is_empty());
}

#[actix_web::test]
async fn postgres_migrations_apply_once_and_rerunning_is_a_no_op() {
    use herald::backends::store::postgres;
    let db = crate::helpers::PgTestDb::create().await;
    let pool = postgres::pool(&db.url, 2).unwrap();
    assert_eq!(
        postgres::migrate(&pool).await.unwrap(),
        postgres::MIGRATIONS.len()
    );
    assert_eq!(postgres::migrate(&pool).await.unwrap(), 0);
}

#[actix_web::test]
async fn a_database_call_that_panics_fails_alone_and_the_threads_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("herald.db")).unwrap();
    let failed = db
        .write(|_| -> Result<(), StoreError> { panic!("a bug in one call") })
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let failed = db
        .read(|_| -> Result<(), StoreError> { panic!("a bug in one read") })
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    // A transaction the panic interrupted was rolled back; the connection is usable.
    let _ = db
        .write(|conn| -> Result<(), StoreError> {
            let tx = conn.transaction().unwrap();
            tx.execute("CREATE TABLE half_done (x INTEGER)", [])
                .unwrap();
            panic!("mid-transaction")
        })
        .await;
    let tables: i64 = db
        .write(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'half_done'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
        .unwrap();
    assert_eq!(tables, 0);
    let store = SqliteStore::new(Arc::new(db));
    let ada = user("ada@example.com");
    store
        .create_user(&ada, "hash", &event(&ada), None)
        .await
        .expect("the writer still writes after the panics");
}

async fn store_concurrent_batches_over_the_same_users_in_any_order_all_commit(
    store: Arc<dyn Store>,
) {
    // Each batch names the same users in its own order: on PostgreSQL every batch
    // locks all of them, so locks taken in batch order would deadlock (and one batch
    // would fail).
    let users: Vec<UserId> = (0..6).map(|_| UserId::new()).collect();
    let batches = (0..8usize).map(|round| {
        let store = Arc::clone(&store);
        let mut order = users.clone();
        order.rotate_left(round % users.len());
        if round % 2 == 1 {
            order.reverse();
        }
        async move {
            let notes: Vec<_> = order.iter().map(|u| note(*u, None)).collect();
            let batch: Vec<_> = notes.iter().map(|n| (n, None)).collect();
            store.insert_notifications(&batch).await
        }
    });
    for results in futures_util::future::join_all(batches).await {
        for result in results {
            result.expect("every batch commits");
        }
    }
    for user in &users {
        let ids: Vec<_> = store
            .history(*user, 0, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids.len(), 8);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}

async fn store_a_batch_stores_each_idempotent_response_with_its_own_id(store: Arc<dyn Store>) {
    let responses: Vec<IdempotentResponse> = ["k1", "k2"]
        .iter()
        .map(|key| IdempotentResponse {
            scope: "p".into(),
            key: (*key).into(),
            status: 202,
            body: Bytes::new(),
        })
        .collect();
    for response in &responses {
        assert_eq!(
            store
                .claim_idempotency_key("p", &response.key, "h", 60)
                .await
                .unwrap(),
            IdempotencyClaim::Claimed
        );
    }
    let notes = [
        note(UserId::new(), None),
        note(UserId::new(), None),
        note(UserId::new(), None),
    ];
    let batch = [
        (&notes[0], Some(&responses[0])),
        (&notes[1], None),
        (&notes[2], Some(&responses[1])),
    ];
    let stored: Vec<_> = store
        .insert_notifications(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for (response, index) in responses.iter().zip([0, 2]) {
        let IdempotencyClaim::Replay { status, body } = store
            .claim_idempotency_key("p", &response.key, "h", 60)
            .await
            .unwrap()
        else {
            panic!("expected a replay for {}", response.key);
        };
        assert_eq!(status, 202);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["id"], stored[index].0.id);
    }
}

#[actix_web::test]
async fn the_sqlite_wal_stays_bounded_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("herald.db")).unwrap();
    let store = SqliteStore::new(Arc::new(db));
    let wal = dir.path().join("herald.db-wal");
    let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let user = UserId::new();
    // About 120 MiB through the WAL, with no pause for a checkpoint to catch up in.
    let mut largest = 0;
    for _ in 0..240 {
        let notes: Vec<_> = (0..256)
            .map(|_| NewNotification {
                payload: RawValue::from_string(payload.clone()).unwrap(),
                ..note(user, None)
            })
            .collect();
        let batch: Vec<_> = notes.iter().map(|n| (n, None)).collect();
        for result in store.insert_notifications(&batch).await {
            result.unwrap();
        }
        largest = largest.max(wal_size());
    }
    assert!(
        largest < 96 * 1024 * 1024,
        "the WAL grew to {largest} bytes while writes kept coming"
    );
}

#[actix_web::test]
async fn an_in_memory_topic_keeps_what_was_published_before_its_first_subscriber() {
    use herald::backends::bus::sqlite::SqliteBus;
    use herald_actors::ports::Bus;
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("herald.db")).unwrap();
    // The delivery group starts at the end on the database; in memory, the log starts
    // with the process, so a push published before the consumer subscribed is not lost.
    let bus = SqliteBus::new(Arc::new(db), &["delivery"]).keep_in_memory(&[Topic::Notifications]);
    bus.publish(
        Topic::Notifications,
        "u",
        Bytes::from_static(b"{\"early\":true}"),
    )
    .await
    .unwrap();
    let mut delivery = bus
        .subscribe(Topic::Notifications, "delivery")
        .await
        .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), delivery.next())
        .await
        .expect("the early message")
        .unwrap();
    assert_eq!(first.payload.as_ref(), b"{\"early\":true}");
}
