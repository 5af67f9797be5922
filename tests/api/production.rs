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

use crate::helpers::{kafka_brokers, spawn_production_app_with, TestApp};

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
