//! `resume`: replay from history, then live, with no gap and no duplicate across the
//! switch.

use std::collections::HashSet;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};
use herald_actors::domain::UserId;

#[actix_web::test]
async fn resume_from_the_middle_while_pushes_continue_sees_every_id_once_in_order() {
    // Small replay pages, so the replay spans many history queries while pushes arrive.
    let app = spawn_app_with(|s| s.websocket.replay_page = 16).await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();

    let mut stored = Vec::new();
    for n in 0..500 {
        let reply = app
            .publish(
                &publisher,
                &json!({ "user_id": user, "event": "tick", "payload": { "n": n } }),
                None,
            )
            .await;
        assert_eq!(reply.status, 202);
        stored.push(reply.body["id"].as_i64().unwrap());
    }
    let resume_after = stored[249];

    let mut ws = app.connect(&format!("token={token}")).await;
    ws.send_text(&format!(r#"{{"type":"resume","after":{resume_after}}}"#))
        .await;
    let live_publisher = {
        let (address, publisher) = (app.address.clone(), publisher.clone());
        actix_web::rt::spawn(async move {
            let client = crate::helpers::client();
            let mut ids = Vec::new();
            for n in 500..1000 {
                let mut res = client
                    .post(format!("{address}/api/notifications"))
                    .insert_header(("Authorization", format!("Bearer {publisher}")))
                    .send_json(&json!({ "user_id": user, "event": "tick", "payload": { "n": n } }))
                    .await
                    .unwrap();
                assert_eq!(res.status().as_u16(), 202);
                let body: serde_json::Value = res.json().await.unwrap();
                ids.push(body["id"].as_i64().unwrap());
            }
            ids
        })
    };

    let live = live_publisher.await.unwrap();
    let expected: Vec<i64> = stored[250..].iter().chain(live.iter()).copied().collect();
    let mut seen = Vec::with_capacity(expected.len());
    while seen.len() < expected.len() {
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "notification", "unexpected frame {frame}");
        seen.push(frame["id"].as_i64().unwrap());
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates delivered");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    assert_eq!(seen, expected);

    // Nothing more trails behind.
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

#[actix_web::test]
async fn history_pages_ascending_after_an_id() {
    let app = spawn_app().await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let mut ids = Vec::new();
    for n in 0..7 {
        let reply = app
            .publish(
                &publisher,
                &json!({ "user_id": user, "event": "e", "payload": { "n": n } }),
                None,
            )
            .await;
        ids.push(reply.body["id"].as_i64().unwrap());
    }
    let page = app.history(&token, ids[1], 3).await;
    let got: Vec<i64> = page.body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, ids[2..5].to_vec());
    assert_eq!(page.body["next_after"], ids[4]);
    assert_eq!(page.body["notifications"][0]["payload"], json!({ "n": 2 }));
}
