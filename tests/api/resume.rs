//! `resume`: replay from history, then live, with no gap and no duplicate across the
//! switch.

use std::collections::HashSet;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};
use herald_actors::domain::UserId;

/// Publishes `count` targeted notifications for `user` over HTTP from `workers`
/// concurrent clients; returns their ids, ascending.
async fn publish_many(
    address: String,
    publisher: String,
    user: UserId,
    count: usize,
    workers: usize,
) -> Vec<i64> {
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (address, publisher) = (address.clone(), publisher.clone());
            actix_web::rt::spawn(async move {
                let client = crate::helpers::client();
                let mut ids = Vec::new();
                for n in (w..count).step_by(workers) {
                    let mut res = client
                        .post(format!("{address}/api/notifications"))
                        .insert_header(("Authorization", format!("Bearer {publisher}")))
                        .send_json(
                            &json!({ "user_id": user, "event": "tick", "payload": { "n": n } }),
                        )
                        .await
                        .unwrap();
                    assert_eq!(res.status().as_u16(), 202);
                    let body: serde_json::Value = res.json().await.unwrap();
                    ids.push(body["id"].as_i64().unwrap());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids.sort_unstable();
    ids
}

/// Reads notification frames until `expected.len()` arrived, then checks they are
/// exactly `expected`: every id once, ascending.
async fn assert_receives_exactly(ws: &mut crate::helpers::WsClient, expected: &[i64]) {
    let mut seen = Vec::with_capacity(expected.len());
    while seen.len() < expected.len() {
        let frame = ws.next_json().await;
        assert_eq!(frame["type"], "notification", "unexpected frame {frame}");
        seen.push(frame["id"].as_i64().unwrap());
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates delivered");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids out of order");
    assert_eq!(seen, expected, "gap or stray id");
    // Nothing more trails behind.
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_json().await["type"], "pong");
}

// One history row per query in both tests, so a replay takes hundreds of queries while
// pushes keep arriving, and the switch from replay to live happens under load.

#[actix_web::test]
async fn resume_from_the_middle_while_pushes_continue_sees_every_id_once_in_order() {
    let app = spawn_app_with(|s| s.websocket.replay_page = 1).await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let stored = publish_many(app.address.clone(), publisher.clone(), user, 500, 4).await;

    let mut ws = app.connect(&format!("token={token}")).await;
    ws.send_text(&format!(r#"{{"type":"resume","after":{}}}"#, stored[249]))
        .await;
    // Once the first replayed frame is here the resume is under way (it was the first
    // frame the session read); the live pushes start while it replays the rest.
    assert_eq!(ws.next_json().await["id"], stored[250]);
    let live = actix_web::rt::spawn(publish_many(app.address.clone(), publisher, user, 500, 4));

    let live = live.await.unwrap();
    let expected: Vec<i64> = stored[251..].iter().chain(live.iter()).copied().collect();
    assert_receives_exactly(&mut ws, &expected).await;
}

#[actix_web::test]
async fn connecting_with_after_while_pushes_are_being_published_sees_every_id_once_in_order() {
    let app = spawn_app_with(|s| s.websocket.replay_page = 1).await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let stored = publish_many(app.address.clone(), publisher.clone(), user, 2000, 4).await;

    // Publishing is already under way when the session connects and starts replaying.
    let live = actix_web::rt::spawn(publish_many(app.address.clone(), publisher, user, 1000, 4));
    app.eventually("publishing to start", || async {
        let page = app.history(&token, *stored.last().unwrap(), 1).await;
        (!page.body["notifications"].as_array().unwrap().is_empty()).then_some(())
    })
    .await;
    let mut ws = app
        .connect(&format!("token={token}&after={}", stored[9]))
        .await;

    let live = live.await.unwrap();
    let expected: Vec<i64> = stored[10..].iter().chain(live.iter()).copied().collect();
    assert_receives_exactly(&mut ws, &expected).await;
}

#[actix_web::test]
async fn a_resume_that_outgrows_the_outbound_queue_reads_the_rest_from_history() {
    // Far more pushes arrive during the replay than the session may buffer: they are
    // all in history, so the replay goes on rather than closing the session as slow.
    let app = spawn_app_with(|s| {
        s.websocket.replay_page = 1;
        s.websocket.outbound_queue = 128;
    })
    .await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let stored = publish_many(app.address.clone(), publisher.clone(), user, 400, 4).await;

    let mut ws = app.connect(&format!("token={token}")).await;
    ws.send_text(&format!(r#"{{"type":"resume","after":{}}}"#, stored[0]))
        .await;
    assert_eq!(ws.next_json().await["id"], stored[1]);
    let live = publish_many(app.address.clone(), publisher, user, 400, 4).await;
    let expected: Vec<i64> = stored[2..].iter().chain(live.iter()).copied().collect();
    assert_receives_exactly(&mut ws, &expected).await;
}

#[actix_web::test]
async fn history_pages_ascending_after_an_id() {
    let app = spawn_app().await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(app.publish_to(&publisher, user, n).await);
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
