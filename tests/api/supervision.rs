//! Supervision you can see: a consumer handler that panics is contained, restarted with
//! backoff and visible in `/api/health/actors` and `/metrics`; the message it panics on
//! is dead-lettered; an actor over its restart budget turns `/readyz` 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use herald::startup::Hooks;
use herald_actors::consumer::{HandleError, TopicHandler};
use herald_actors::domain::{BusMessage, Topic, UserId};

use crate::helpers::{bus_for, spawn_app_with_hooks, TestApp};

/// Panics on messages of one topic whose body contains `trigger`; hands the rest to
/// the real handler.
struct PanicOn {
    trigger: &'static str,
    inner: Arc<dyn TopicHandler>,
}

#[async_trait]
impl TopicHandler for PanicOn {
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError> {
        if String::from_utf8_lossy(&message.payload).contains(self.trigger) {
            panic!("injected fault on offset {}", message.offset);
        }
        self.inner.handle(message).await
    }
}

fn panicking_on(trigger: &'static str) -> Hooks {
    panicking_on_topic(Topic::Notifications, trigger)
}

fn panicking_on_topic(target: Topic, trigger: &'static str) -> Hooks {
    Hooks {
        wrap_handler: Some(Arc::new(move |topic, inner| {
            if topic == target {
                Arc::new(PanicOn { trigger, inner }) as Arc<dyn TopicHandler>
            } else {
                inner
            }
        })),
    }
}

async fn actor(app: &TestApp, name: &str) -> Value {
    let health = app.get("/api/health/actors", None).await;
    health.body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no actor {name}"))
}

#[actix_web::test]
async fn a_handler_panic_is_contained_restarted_retried_and_dead_lettered() {
    let app = spawn_app_with_hooks(|_| {}, panicking_on("\"boom\"")).await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let mut ws = app.connect(&format!("token={token}")).await;
    let publisher = app.publisher_token();
    let publish = |event: &'static str| {
        let (app, publisher) = (&app, &publisher);
        async move {
            let reply = app
                .publish(
                    publisher,
                    &json!({ "user_id": user, "event": event, "payload": {} }),
                    None,
                )
                .await;
            assert_eq!(reply.status, 202, "{:?}", reply.body);
            reply.body["id"].as_i64().unwrap()
        }
    };

    publish("before").await;
    ws.next_event("before").await;
    let poison = publish("boom").await;
    let mut after = Vec::new();
    for event in ["after.1", "after.2", "after.3"] {
        after.push(publish(event).await);
    }
    // Everything behind the poison message still arrives, in order.
    for (event, id) in ["after.1", "after.2", "after.3"].iter().zip(&after) {
        assert_eq!(ws.next_event(event).await["id"], *id);
    }

    let consumer = actor(&app, "consumer:notifications").await;
    assert!(
        consumer["restarts"].as_u64().unwrap() >= 3,
        "restarts: {consumer}"
    );
    let metrics = String::from_utf8(app.get("/metrics", None).await.raw).unwrap();
    let restarts = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("herald_actor_restarts_total{actor=\"consumer:notifications\"} ")
        })
        .and_then(|v| v.parse::<u64>().ok())
        .expect("a restarts sample for the consumer");
    assert!(restarts >= 3, "{restarts}");

    // The poison message is in the dead letters, with why.
    let bus = bus_for(&app.data_dir, app.backdrop.as_deref());
    let mut dead = bus
        .subscribe(
            Topic::NotificationsDlq,
            &format!("test-{}", uuid::Uuid::new_v4().simple()),
        )
        .await
        .unwrap();
    let letter = tokio::time::timeout(crate::helpers::deadline(), dead.next())
        .await
        .expect("a dead letter")
        .unwrap();
    let letter: Value = serde_json::from_slice(&letter.payload).unwrap();
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("panicked 3 times"),
        "{letter}"
    );
    assert!(letter["payload"]
        .as_str()
        .unwrap()
        .contains(&format!("\"id\":{poison}")));

    // The node kept serving and is ready again: three restarts are within budget.
    assert_eq!(app.get("/livez", None).await.status, 200);
    app.eventually("the node to be ready", || async {
        (app.get("/readyz", None).await.status == 200).then_some(())
    })
    .await;
    publish("later").await;
    ws.next_event("later").await;
}

#[actix_web::test]
async fn an_actor_over_its_restart_budget_fails_and_makes_the_node_unready() {
    let app = spawn_app_with_hooks(
        |settings| {
            // A small budget in a wide window: a Kafka consumer rejoins its group on
            // each restart, which takes seconds, and a slow CI machine must still
            // cross the budget within the window.
            settings.supervisor.max_restarts = 2;
            settings.supervisor.window_secs = 300;
            settings.supervisor.cooldown_secs = 600;
        },
        // `user.created`: its consumer group starts at the beginning of the topic, so
        // a restarted consumer reads the poison event again, in both modes.
        panicking_on_topic(Topic::UserCreated, "\"Always\""),
    )
    .await;
    for n in 0..3 {
        let signup = app
            .signup(
                &json!({ "email": format!("always{n}@example.com"), "name": "Always", "password": "correct horse" }),
                Some(&format!("always-{n}")),
            )
            .await;
        assert_eq!(signup.status, 201);
    }

    // Each restart of a Kafka consumer is a group rejoin; with the whole production
    // suite sharing one broker, three rejoins can take longer than the usual wait.
    let wait = if app.backdrop.is_some() {
        Duration::from_secs(180)
    } else {
        crate::helpers::deadline()
    };
    let until = Instant::now() + wait;
    let readyz = loop {
        let reply = app.get("/readyz", None).await;
        let failed = reply.body["reasons"]
            .to_string()
            .contains("consumer:user.created failed");
        if reply.status == 503 && failed {
            break reply;
        }
        assert!(
            Instant::now() < until,
            "readyz did not fail within {wait:?}; consumer: {}",
            actor(&app, "consumer:user.created").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(readyz.body["code"], "not_ready");
    assert!(readyz.body["detail"]
        .as_str()
        .unwrap()
        .contains("restarted more than 2 times in 300 s"));
    assert_eq!(
        actor(&app, "consumer:user.created").await["status"],
        "failed"
    );
    assert_eq!(app.get("/livez", None).await.status, 200);
    // Only the failed actor is affected: signups and history still work.
    app.create_user("Ada").await;
}
