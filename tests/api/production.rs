//! The engine in production mode — PostgreSQL, Kafka, Redis and SMTP, all real — doing
//! its main job end to end. Kafka: `HERALD_TEST_KAFKA_BROKERS` (default
//! 127.0.0.1:9092, started by `scripts/kafka-up`); each test uses its own topic prefix,
//! schema, node id and SMTP listener.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use herald::backends::bus::kafka::{KafkaBus, KafkaSettings};
use herald::config::Mode;
use herald_actors::domain::{Topic, UserId};
use herald_actors::ports::Bus;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};

use crate::helpers::{spawn_app_with, PgTestDb, TestApp};
use crate::smtp_sink::SmtpSink;

pub fn kafka_brokers() -> String {
    std::env::var("HERALD_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A production-mode node with everything it runs on.
struct ProductionApp {
    app: TestApp,
    sink: SmtpSink,
    db: PgTestDb,
    topic_prefix: String,
}

impl ProductionApp {
    async fn start() -> Self {
        let db = PgTestDb::create().await;
        let sink = SmtpSink::start().await;
        let topic_prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
        let (url, prefix, port) = (db.url.clone(), topic_prefix.clone(), sink.port);
        let app = spawn_app_with(move |s| {
            s.mode = Mode::Production;
            s.postgres.url = Some(url.into());
            s.kafka.brokers = Some(kafka_brokers());
            s.kafka.topic_prefix = prefix;
            s.kafka.partitions = 2;
            s.redis.url = Some(crate::redis::redis_url());
            s.smtp.host = Some("127.0.0.1".into());
            s.smtp.port = port;
            s.smtp.tls = herald::backends::mail::smtp::TlsMode::None;
            s.mail.from = "Herald <herald@example.com>".into();
        })
        .await;
        let node = Self {
            app,
            sink,
            db,
            topic_prefix,
        };
        node.wait_for_delivery().await;
        node
    }

    /// Kafka assigns partitions a moment after a consumer joins, and the delivery
    /// group starts at the end of the topic: publish until a push gets through.
    async fn wait_for_delivery(&self) {
        let publisher = self.app.publisher_token();
        let user = UserId::new();
        let token = self.app.tokens.issue(user, "", 3600).unwrap();
        let mut ws = self.app.connect(&format!("token={token}")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reply = self
                .app
                .publish(
                    &publisher,
                    &json!({ "user_id": user, "event": "warmup", "payload": {} }),
                    None,
                )
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
            let frame = tokio::time::timeout(Duration::from_millis(1500), ws.next_json()).await;
            if frame.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery never started"
            );
        }
    }

    fn bus(&self) -> KafkaBus {
        KafkaBus::new(
            KafkaSettings {
                brokers: kafka_brokers(),
                partitions: 2,
                replication_factor: 1,
                linger_ms: 0,
                topic_prefix: self.topic_prefix.clone(),
            },
            &[],
        )
        .unwrap()
    }

    async fn cleanup(self) {
        self.db.cleanup().await;
    }
}

#[actix_web::test]
async fn production_signup_welcomes_over_kafka_and_mails_over_smtp_once() {
    let node = ProductionApp::start().await;
    let app = &node.app;
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

    let sink = node.sink.clone();
    app.eventually("both welcome emails at the SMTP listener", || async {
        (sink.messages().len() >= 2).then_some(())
    })
    .await;
    let mails = node.sink.messages();
    let to_ada: Vec<_> = mails
        .iter()
        .filter(|m| m.to == vec![format!("<{}>", ada.email)])
        .collect();
    assert_eq!(to_ada.len(), 1, "exactly one welcome email for Ada");
    assert!(to_ada[0].data.contains("Subject: Welcome to Herald"));
    assert!(to_ada[0].data.contains("Hello Ada,"));
    node.cleanup().await;
}

#[actix_web::test]
async fn production_a_poison_message_goes_to_the_dead_letter_topic_and_the_rest_flows() {
    let node = ProductionApp::start().await;
    let app = &node.app;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let mut ws = app.connect(&format!("token={token}")).await;

    node.bus()
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
    dlq.subscribe(&[&format!("{}notifications.dlq", node.topic_prefix)])
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
    node.cleanup().await;
}
