//! The real binary, killed with SIGKILL and restarted on the same data directory:
//! nothing acknowledged is lost and nothing is done twice.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use herald_actors::domain::{Topic, User, UserCreated};

use crate::helpers::{bus_for, production, Backdrop, Node, TestApp};

/// The services of a production-mode run (`None` in embedded mode), shared by the
/// node before and after the kill.
async fn backdrop() -> Option<Arc<Backdrop>> {
    if production() {
        Some(Arc::new(Backdrop::create().await))
    } else {
        None
    }
}

async fn welcomes(app: &TestApp, token: &str) -> usize {
    let history = app.history(token, 0, 500).await;
    history.body["notifications"].as_array().map_or(0, |list| {
        list.iter().filter(|n| n["event"] == "welcome").count()
    })
}

#[actix_web::test]
async fn a_signup_acknowledged_before_a_crash_is_welcomed_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = backdrop().await;

    // A node that acknowledges signups but does not relay the outbox: its events are
    // only in the database when it dies.
    let node = Node::start_on(
        dir.path(),
        backdrop.clone(),
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
    let user: User = serde_json::from_value(signup.body["user"].clone()).unwrap();
    let token = node
        .app
        .login("ada@example.com", "correct horse")
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        welcomes(&node.app, &token).await,
        0,
        "relay is off: no welcome yet"
    );
    assert!(node.app.mails().is_empty());
    node.kill();
    if backdrop.is_some() {
        crate::helpers::wait_out_consumer_session(std::time::Instant::now()).await;
    }

    let node = Node::start_on(dir.path(), backdrop.clone(), &[]);
    let app = &node.app;
    app.eventually("the welcome notification", || async {
        (welcomes(app, &token).await == 1).then_some(())
    })
    .await;
    app.eventually("the welcome email", || async {
        (app.mails().len() == 1).then_some(())
    })
    .await;

    // The same event delivered a second time (as after a crash mid-handling) changes
    // nothing: still one welcome, one email.
    let bus = bus_for(dir.path(), backdrop.as_deref());
    let again = UserCreated {
        event_id: uuid::Uuid::new_v4(),
        user: user.clone(),
    };
    bus.publish(
        Topic::UserCreated,
        &user.id.to_string(),
        Bytes::from(serde_json::to_vec(&again).unwrap()),
    )
    .await
    .unwrap();
    app.eventually("the duplicate event to be handled", || async {
        let health = app.get("/api/health/actors", None).await;
        health.body["actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "consumer:user.created" && a["processed"] == 2)
            .then_some(())
    })
    .await;
    assert_eq!(welcomes(app, &token).await, 1);
    assert_eq!(app.mails().len(), 1);
    // The replayed signup still answers from the stored response.
    let replay = app
        .signup(
            &json!({ "email": "ada@example.com", "name": "Ada", "password": "correct horse" }),
            Some("k"),
        )
        .await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body["user"]["id"], user.id.to_string());
}

#[actix_web::test]
async fn users_and_history_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = backdrop().await;
    let node = Node::start_on(dir.path(), backdrop.clone(), &[]);
    let user = node.app.create_user("Ada").await;
    let publisher = node.app.publisher_token();
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = node
            .app
            .publish(
                &publisher,
                &json!({ "user_id": user.id, "event": "note", "payload": { "n": n } }),
                None,
            )
            .await;
        assert_eq!(reply.status, 202);
        ids.push(reply.body["id"].clone());
    }
    node.kill();
    if backdrop.is_some() {
        crate::helpers::wait_out_consumer_session(std::time::Instant::now()).await;
    }

    let node = Node::start_on(dir.path(), backdrop.clone(), &[]);
    let login = node.app.login(&user.email, &user.password).await;
    assert_eq!(login.status, 200, "the user survived");
    let token = login.body["token"].as_str().unwrap();
    let history = node.app.history(token, 0, 50).await;
    let notes: Vec<_> = history.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["event"] == "note")
        .map(|n| n["id"].clone())
        .collect();
    assert_eq!(notes, ids);
    // Tokens signed before the crash still work: the secret is stable.
    assert_eq!(node.app.me(Some(&user.token)).await.status, 200);
}
