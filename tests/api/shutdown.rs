//! Graceful shutdown of the real binary: SIGTERM fails readiness first, closes every
//! session with 1012 over the drain window, loses nothing it acknowledged and exits
//! within its timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::json;

use herald_actors::domain::UserId;

use crate::helpers::{client, production, Backdrop, Node, TestApp, WsClient};

/// Sessions held open when the signal arrives.
const SESSIONS: usize = 1_000;

async fn analytics_connections(app: &TestApp) -> u64 {
    app.get("/api/analytics", None).await.body["connections"]
        .as_u64()
        .unwrap_or(0)
}

/// Publishes targeted notifications to `user` until the node stops answering, and
/// returns the ids it acknowledged with 202.
async fn publish_until_refused(address: String, token: String, user: UserId) -> Vec<i64> {
    let http = client();
    let mut acknowledged = Vec::new();
    for n in 0.. {
        let sent = http
            .post(format!("{address}/api/notifications"))
            .bearer_auth(&token)
            .send_json(&json!({ "user_id": user, "event": "e", "payload": { "n": n } }))
            .await;
        let Ok(mut reply) = sent else { break };
        if reply.status().as_u16() != 202 {
            // A node that is going away may refuse; that is not an acknowledgement.
            if reply.status().is_server_error() {
                break;
            }
            panic!("unexpected status {}", reply.status());
        }
        let body: serde_json::Value = match reply.json().await {
            Ok(body) => body,
            Err(_) => break,
        };
        acknowledged.push(body["id"].as_i64().expect("id"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acknowledged
}

/// Every id in the user's history, page by page.
async fn all_history_ids(app: &TestApp, token: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let after = ids.last().copied().unwrap_or(0);
        let page = app.history(token, after, 500).await;
        let list = page.body["notifications"].as_array().unwrap().clone();
        if list.is_empty() {
            return ids;
        }
        ids.extend(list.iter().map(|n| n["id"].as_i64().unwrap()));
    }
}

#[actix_web::test]
async fn sigterm_closes_every_session_with_1012_loses_nothing_acknowledged_and_exits_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = if production() {
        Some(Arc::new(Backdrop::create().await))
    } else {
        None
    };
    // Generous: the node must finish by draining, well before the timeout cuts it off.
    let timeout_secs = 60;
    let mut node = Node::start_on(
        dir.path(),
        backdrop.clone(),
        &[
            ("HERALD__SHUTDOWN__DRAIN_WINDOW_SECS", "2"),
            ("HERALD__SHUTDOWN__TIMEOUT_SECS", "60"),
        ],
    );
    let app = &node.app;
    let ada = app.create_user("Ada").await;

    let tokens = app.tokens.clone();
    let mut sessions: Vec<WsClient> = stream::iter(0..SESSIONS)
        .map(|_| {
            let token = tokens.issue(UserId::new(), "", 3600).unwrap();
            async move { app.connect(&format!("token={token}")).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    app.eventually("every session to register", || async {
        (analytics_connections(app).await >= SESSIONS as u64).then_some(())
    })
    .await;

    let publishing = actix_web::rt::spawn(publish_until_refused(
        app.address.clone(),
        app.publisher_token(),
        ada.id,
    ));
    app.eventually("some notifications to be acknowledged", || async {
        (app.history(&ada.token, 0, 10).await.body["notifications"]
            .as_array()
            .is_some_and(|l| l.len() > 1))
        .then_some(())
    })
    .await;
    // Acknowledged just before the signal; its welcome still has to come.
    let late = app.create_user("Late").await;

    node.terminate();
    let app = &node.app;
    app.eventually("readiness to fail while the node drains", || async {
        (app.get("/readyz", None).await.status == 503).then_some(())
    })
    .await;
    let codes = futures_util::future::join_all(sessions.iter_mut().map(WsClient::close_code)).await;
    let not_1012: Vec<_> = codes.iter().filter(|&&c| c != 1012).collect();
    assert!(
        not_1012.is_empty(),
        "{} of {SESSIONS} sessions closed otherwise: {:?}",
        not_1012.len(),
        &not_1012[..not_1012.len().min(10)]
    );
    let status = node
        .exited_within(Duration::from_secs(timeout_secs + 5))
        .await
        .expect("the node exits within its shutdown timeout");
    assert!(status.success(), "clean exit, got {status}");
    let log = node.log.lock().unwrap().join("\n");
    assert!(log.contains("drained"), "the drain ran to its end:\n{log}");
    assert!(
        !log.contains("shutdown timeout reached"),
        "the node stopped by draining, not by its timeout:\n{log}"
    );
    let acknowledged = publishing.await.unwrap();
    assert!(!acknowledged.is_empty());
    drop(node);

    // Everything acknowledged is there after a restart on the same data.
    let node = Node::start_on(dir.path(), backdrop, &[]);
    let app = &node.app;
    let stored = all_history_ids(app, &ada.token).await;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    app.eventually("the welcome of the last signup", || async {
        let history = app.history(&late.token, 0, 50).await;
        history.body["notifications"]
            .as_array()
            .is_some_and(|l| l.iter().filter(|n| n["event"] == "welcome").count() == 1)
            .then_some(())
    })
    .await;
}
