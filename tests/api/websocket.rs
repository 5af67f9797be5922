//! WebSocket sessions: authentication close codes, frames, live pushes, the signup
//! flow end to end.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};
use awc::ws;
use futures_util::StreamExt;

#[actix_web::test]
async fn a_connection_without_token_is_closed_with_4001() {
    let app = spawn_app().await;
    assert_eq!(app.connect("").await.close_code().await, 4001);
}

#[actix_web::test]
async fn a_connection_with_a_bad_token_is_closed_with_4002() {
    let app = spawn_app().await;
    assert_eq!(app.connect("token=nonsense").await.close_code().await, 4002);
    let expired = crate::helpers::expired_token(herald_actors::domain::UserId::new());
    assert_eq!(
        app.connect(&format!("token={expired}"))
            .await
            .close_code()
            .await,
        4002
    );
}

#[actix_web::test]
async fn a_token_that_expires_while_connected_closes_with_4003() {
    let app = spawn_app().await;
    let token = app
        .tokens
        .issue(herald_actors::domain::UserId::new(), "", 1)
        .unwrap();
    let mut ws = app.connect(&format!("token={token}")).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_reply().await["type"], "pong");
    assert_eq!(ws.close_code().await, 4003);
}

#[actix_web::test]
async fn the_token_is_accepted_in_the_authorization_header() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect_with("", Some(&user.token)).await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_reply().await, json!({ "type": "pong" }));
}

#[actix_web::test]
async fn a_malformed_frame_gets_an_error_frame_and_the_session_stays_usable() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect(&format!("token={}", user.token)).await;
    for bad in [
        "not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"resume","after":"x"}"#,
        r#"{"type":"resume","after":-5}"#,
    ] {
        ws.send_text(bad).await;
        let frame = ws.next_reply().await;
        assert_eq!(frame["type"], "error", "for {bad}");
        assert_eq!(frame["code"], "invalid_frame");
        assert!(frame["detail"].is_string());
    }
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_reply().await["type"], "pong");
}

#[actix_web::test]
async fn a_binary_frame_closes_with_1003() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect(&format!("token={}", user.token)).await;
    ws.send_binary(b"\x00\x01").await;
    assert_eq!(ws.close_code().await, 1003);
}

#[actix_web::test]
async fn an_oversized_frame_closes_with_1009() {
    let app = spawn_app_with(|s| s.websocket.max_frame_bytes = 1024).await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect(&format!("token={}", user.token)).await;
    ws.send_text(&format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(4096)
    ))
    .await;
    assert_eq!(ws.close_code().await, 1009);
}

#[actix_web::test]
async fn signup_welcomes_the_new_user_and_tells_others_without_the_email() {
    let app = spawn_app().await;
    let grace = app.create_user("Grace").await;
    let mut grace_ws = app.connect(&format!("token={}", grace.token)).await;
    // Grace's own welcome may still be on its way; start clean from live frames.
    grace_ws.send_text(r#"{"type":"ping"}"#).await;
    while grace_ws.next_json().await["type"] != "pong" {}

    let ada = app.create_user("Ada").await;
    let mut ada_ws = app.connect(&format!("token={}&after=0", ada.token)).await;
    let welcome = ada_ws.next_event("welcome").await;
    assert_eq!(welcome["type"], "notification");
    assert!(welcome["id"].as_i64().unwrap() > 0);
    assert_eq!(welcome["payload"]["user_id"], ada.id.to_string());
    assert!(welcome["created_at"].is_string());

    // Grace's own join may still be on its way; Ada's is the one that names her.
    let joined = loop {
        let joined = grace_ws.next_event("user.joined").await;
        if joined["payload"]["id"] == ada.id.to_string() {
            break joined;
        }
    };
    assert_eq!(joined["payload"], json!({ "id": ada.id, "name": "Ada" }));
    assert!(!joined.to_string().contains(&ada.email));
    assert!(!joined.to_string().contains('@'));

    // The Message-ID names the mail after the user: welcome-{id}@….
    let text = app
        .eventually("Ada's welcome email", || async {
            app.mails()
                .into_iter()
                .find(|m| m.contains(&format!("welcome-{}@", ada.id)))
        })
        .await;
    assert!(text.contains(&format!("To: Ada <{}>", ada.email)));
    assert!(text.contains("Subject: Welcome to Herald"));
    app.eventually("Grace's welcome email", || async {
        (app.mails().len() >= 2).then_some(())
    })
    .await;
    assert_eq!(app.mails().len(), 2, "one email per user");
}

#[actix_web::test]
async fn a_targeted_push_reaches_only_its_user_and_a_broadcast_reaches_everyone() {
    let app = spawn_app().await;
    let ada = app.create_user("Ada").await;
    let bob = app.create_user("Bob").await;
    let mut ada_ws = app.connect(&format!("token={}", ada.token)).await;
    let mut bob_ws = app.connect(&format!("token={}", bob.token)).await;
    let publisher = app.publisher_token();

    let reply = app
        .publish(
            &publisher,
            &json!({ "user_id": ada.id, "event": "order.shipped", "payload": { "order": 42 } }),
            None,
        )
        .await;
    assert_eq!(reply.status, 202);
    let id = reply.body["id"].as_i64().unwrap();
    let frame = ada_ws.next_event("order.shipped").await;
    assert_eq!(frame["id"], id);
    assert_eq!(frame["payload"], json!({ "order": 42 }));

    let reply = app
        .publish(
            &publisher,
            &json!({ "broadcast": true, "event": "maintenance", "payload": { "at": "noon" } }),
            None,
        )
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        ada_ws.next_event("maintenance").await["payload"]["at"],
        "noon"
    );
    assert_eq!(
        bob_ws.next_event("maintenance").await["payload"]["at"],
        "noon"
    );

    // Bob never saw Ada's order: his history has only his welcome.
    let events = app
        .eventually("Bob's welcome in his history", || async {
            let history = app.history(&bob.token, 0, 50).await;
            let events: Vec<_> = history.body["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["event"].clone())
                .collect();
            (!events.is_empty()).then_some(events)
        })
        .await;
    assert_eq!(events, vec![json!("welcome")]);
}

#[actix_web::test]
async fn a_publish_with_an_idempotency_key_is_stored_once() {
    let app = spawn_app().await;
    let ada = app.create_user("Ada").await;
    let publisher = app.publisher_token();
    let body = json!({ "user_id": ada.id, "event": "invoice", "payload": { "n": 7 } });
    let first = app.publish(&publisher, &body, Some("inv-7")).await;
    let second = app.publish(&publisher, &body, Some("inv-7")).await;
    assert_eq!(first.status, 202);
    assert_eq!(second.status, 202);
    assert_eq!(first.body["id"], second.body["id"]);
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    let history = app.history(&ada.token, 0, 50).await;
    let invoices = history.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["event"] == "invoice")
        .count();
    assert_eq!(invoices, 1);
}

#[actix_web::test]
async fn a_client_that_never_answers_pings_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.websocket.heartbeat_interval_secs = 1;
        s.websocket.client_timeout_secs = 2;
    })
    .await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect(&format!("token={}", user.token)).await;
    let mut pings = 0;
    // Read raw frames without answering the server's pings.
    let code = loop {
        let frame = tokio::time::timeout(crate::helpers::deadline(), ws.framed.next())
            .await
            .expect("server closes idle sessions");
        match frame {
            Some(Ok(ws::Frame::Ping(_))) => pings += 1,
            Some(Ok(ws::Frame::Close(reason))) => break reason.map(|r| u16::from(r.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without close: {other:?}"),
        }
    };
    assert!(pings >= 1, "the server pings while waiting");
    assert_eq!(code, Some(1001));
}

#[actix_web::test]
async fn a_client_that_answers_pings_stays_connected_past_the_idle_timeout() {
    let app = spawn_app_with(|s| {
        s.websocket.heartbeat_interval_secs = 1;
        s.websocket.client_timeout_secs = 2;
    })
    .await;
    let user = app.create_user("Ada").await;
    let mut ws = app.connect(&format!("token={}", user.token)).await;
    // `next` answers pings; wait for three of them, well past the timeout.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(crate::helpers::deadline(), ws.framed.next())
            .await
            .expect("frame")
        {
            Some(Ok(ws::Frame::Ping(p))) => {
                pings += 1;
                futures_util::SinkExt::send(&mut ws.framed, ws::Message::Pong(p))
                    .await
                    .unwrap();
            }
            Some(Ok(ws::Frame::Close(reason))) => panic!("closed: {reason:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_reply().await["type"], "pong");
}

#[actix_web::test]
async fn opening_more_sessions_than_the_per_user_limit_closes_the_oldest_with_4008() {
    let app = spawn_app_with(|s| s.websocket.max_sessions_per_user = 2).await;
    let user = app.create_user("Ada").await;
    let query = format!("token={}", user.token);
    let mut oldest = app.connect(&query).await;
    // Each session is registered before the next opens, so "oldest" is well defined.
    oldest.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(oldest.next_reply().await["type"], "pong");
    let mut second = app.connect(&query).await;
    second.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(second.next_reply().await["type"], "pong");

    let mut third = app.connect(&query).await;
    assert_eq!(oldest.close_code().await, 4008);
    for ws in [&mut second, &mut third] {
        ws.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(ws.next_reply().await["type"], "pong");
    }
    // Another user is not affected by Ada's limit.
    let grace = app.create_user("Grace").await;
    let mut other = app.connect(&format!("token={}", grace.token)).await;
    other.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(other.next_reply().await["type"], "pong");
}
