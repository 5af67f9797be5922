//! The engine in production mode — PostgreSQL, Kafka, Redis and SMTP, all real — doing
//! its main job end to end. Kafka: `HERALD_TEST_KAFKA_BROKERS` (default
//! 127.0.0.1:9092, started by `scripts/kafka-up`); each test uses its own topic prefix,
//! schema, node id and SMTP listener.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use herald_actors::domain::{Topic, UserId};
use herald_actors::ports::Bus;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};

use crate::helpers::{
    kafka_brokers, spawn_production_app_with, wait_out_consumer_session, Backdrop, Node, TestApp,
};

/// A production-mode node whatever mode the suite runs in.
async fn production_app() -> TestApp {
    spawn_production_app_with(|_| {}).await
}

#[actix_web::test]
async fn production_signup_welcomes_over_kafka_and_mails_over_smtp_once() {
    let app = &production_app().await;
    let backdrop = app.backdrop.clone().unwrap();
    let grace = app.create_user("Grace").await;
    let mut grace_ws = app.connect(&format!("token={}", grace.token)).await;
    grace_ws.send_text(r#"{"type":"ping"}"#).await;
    while grace_ws.next_json().await["type"] != "pong" {}

    let ada = app.create_user("Ada").await;
    let mut ada_ws = app.connect(&format!("token={}&after=0", ada.token)).await;
    let welcome = ada_ws.next_event("welcome").await;
    assert_eq!(welcome["payload"]["user_id"], ada.id.to_string());
    // Grace's own join may still be on its way; Ada's is the one that names her.
    let joined = loop {
        let joined = grace_ws.next_event("user.joined").await;
        if joined["payload"]["id"] == ada.id.to_string() {
            break joined;
        }
    };
    assert_eq!(joined["payload"], json!({ "id": ada.id, "name": "Ada" }));

    let sink = backdrop.sink.clone();
    app.eventually("both welcome emails at the SMTP listener", || async {
        (sink.messages().len() >= 2).then_some(())
    })
    .await;
    let mails = backdrop.sink.messages();
    let to_ada: Vec<_> = mails
        .iter()
        .filter(|m| m.to == vec![format!("<{}>", ada.email)])
        .collect();
    assert_eq!(to_ada.len(), 1, "exactly one welcome email for Ada");
    assert!(to_ada[0].data.contains("Subject: Welcome to Herald"));
    assert!(to_ada[0].data.contains("Hello Ada,"));
}

#[actix_web::test]
async fn production_a_poison_message_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let app = &production_app().await;
    let backdrop = app.backdrop.clone().unwrap();
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let mut ws = app.connect(&format!("token={token}")).await;

    backdrop
        .bus()
        .publish(
            Topic::Notifications,
            &user.to_string(),
            Bytes::from_static(b"{not json"),
        )
        .await
        .unwrap();
    let reply = app
        .publish(
            &app.publisher_token(),
            &json!({ "user_id": user, "event": "after.poison", "payload": {} }),
            None,
        )
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(ws.next_event("after.poison").await["id"], reply.body["id"]);

    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set(
            "group.id",
            format!("dlq-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{}notifications.dlq", backdrop.topic_prefix)])
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), dlq.recv())
        .await
        .expect("a dead letter arrives")
        .unwrap();
    let letter: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(letter["payload"], "{not json");
    let headers = message.headers().expect("dead letters carry headers");
    let error = headers
        .iter()
        .find(|h| h.key == "herald.error")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("the error header");
    assert!(error.contains("poison"), "{error}");
}

/// The id Herald's per-user advisory lock uses, as `pg_locks` shows it.
const LOCK_KEY: &str = "hashtextextended($1, 0)";

#[actix_web::test]
async fn production_a_node_killed_while_handling_user_created_welcomes_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = std::sync::Arc::new(Backdrop::create().await);

    // A node that takes the signup but does not relay it.
    let node = Node::start_on(
        dir.path(),
        Some(backdrop.clone()),
        &[("HERALD__OUTBOX__RELAY", "false")],
    );
    let signup = node
        .app
        .signup(
            &json!({ "email": "ada@example.com", "name": "Ada", "password": "correct horse" }),
            Some("k"),
        )
        .await;
    assert_eq!(signup.status, 201);
    let user: UserId = signup.body["user"]["id"].as_str().unwrap().parse().unwrap();
    let token = node
        .app
        .login("ada@example.com", "correct horse")
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    node.kill();
    let killed_at = std::time::Instant::now();

    // Hold the user's notification lock from outside, so the welcome handler, once
    // Kafka delivered the event, stops half-way: before its offset is committed.
    let (locker, connection) = tokio_postgres::connect(&backdrop.db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(connection);
    let key: i64 = locker
        .query_one(&format!("SELECT {LOCK_KEY}"), &[&user.to_string()])
        .await
        .unwrap()
        .get(0);
    locker
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .unwrap();

    wait_out_consumer_session(killed_at).await;
    let node = Node::start_on(dir.path(), Some(backdrop.clone()), &[]);
    node.app
        .eventually("the welcome handler to block on the lock", || async {
            let waiting: i64 = locker
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                     AND ((classid::bigint << 32) | objid::bigint) = $1",
                    &[&key],
                )
                .await
                .unwrap()
                .get(0);
            (waiting > 0).then_some(())
        })
        .await;
    node.kill();
    let killed_at = std::time::Instant::now();
    locker
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .unwrap();
    wait_out_consumer_session(killed_at).await;

    let node = Node::start_on(dir.path(), Some(backdrop.clone()), &[]);
    let app = &node.app;
    let welcomes = || async {
        let history = app.history(&token, 0, 100).await;
        history.body["notifications"].as_array().map_or(0, |list| {
            list.iter().filter(|n| n["event"] == "welcome").count()
        })
    };
    // The dead node's consumer holds the partition until its session times out, and a
    // loaded broker rebalances slowly: allow more than the usual wait, and say why on
    // failure.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while welcomes().await == 0 {
        if std::time::Instant::now() > until {
            let tail = {
                let log = node.log.lock().unwrap();
                log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>()
            };
            let health = app.get("/api/health/actors", None).await.body;
            panic!(
                "no welcome notification after restart\nhealth: {health}\nlog tail:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.eventually("the welcome email", || async {
        (!app.mails().is_empty()).then_some(())
    })
    .await;
    assert_eq!(welcomes().await, 1, "one welcome notification");
    assert_eq!(app.mails().len(), 1, "one welcome email");
}

#[actix_web::test]
async fn production_logs_are_json_lines_that_name_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = std::sync::Arc::new(Backdrop::create().await);
    let node = Node::start_on(dir.path(), Some(backdrop), &[]);
    let reply = node
        .app
        .signup(
            &json!({ "email": "json-logs@example.com", "name": "Ada", "password": "correct horse battery" }),
            Some("json-log-key"),
        )
        .await;
    assert_eq!(reply.status, 201);
    let id = reply
        .headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let line = node
        .app
        .eventually("the signup's log line", || async {
            let log = node.log.lock().unwrap();
            log.iter().find(|l| l.contains("user signed up")).cloned()
        })
        .await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let spans = event["spans"].as_array().expect("the enclosing spans");
    assert!(
        spans.iter().any(|s| s["request_id"] == id.as_str()),
        "{line}"
    );
    for line in node.log.lock().unwrap().iter() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

#[actix_web::test]
async fn production_api_hits_produced_to_kafka_count_into_the_shared_redis_dau() {
    use deadpool_redis::redis::AsyncCommands;

    let app = production_app().await;
    let backdrop = app.backdrop.clone().unwrap();
    let bus = backdrop.bus();
    for (key, body) in [
        ("a", json!({ "user_id": "kafka-a" })),
        (
            "b",
            json!({ "user_ids": ["kafka-b", "kafka-c", "kafka-a"] }),
        ),
    ] {
        bus.publish(Topic::ApiHit, key, Bytes::from(body.to_string()))
            .await
            .unwrap();
    }
    // The documented key, which every node counts into.
    let key = format!(
        "{}:dau:{}",
        backdrop.counter_prefix,
        chrono::Utc::now().date_naive().format("%Y-%m-%d")
    );
    let mut redis = deadpool_redis::redis::Client::open(crate::helpers::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Both events handled by the api.hit consumer…
    app.eventually("the api.hit events to be handled", || async {
        let health = app.get("/api/health/actors", None).await;
        let processed = health.body["actors"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == "consumer:api.hit")?["processed"]
            .as_u64()?;
        (processed >= 2).then_some(())
    })
    .await;
    // …and counted in Redis: three users, plus the socket the set-up probe opened.
    let direct: u64 = redis.pfcount(&key).await.unwrap();
    assert!((3..=4).contains(&direct), "PFCOUNT {key} = {direct}");
    let dau = app.get("/api/analytics", None).await.body["dau"]
        .as_u64()
        .unwrap();
    assert!((direct..=4).contains(&dau), "DAU {dau}, PFCOUNT {direct}");
}
