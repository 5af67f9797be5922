//! DAU/MAU and request rates as operators read them from `/api/analytics` and
//! `/metrics`: HyperLogLog counts of real activity (logins, WebSocket sessions,
//! `api.hit` events from other services), kept across restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use herald_actors::domain::UserId;

use crate::helpers::{production, spawn_app, Backdrop, Node, TestApp};

/// Reports `users` as active through the ingestion endpoint, in batches of 1,000.
async fn report_hits(app: &TestApp, users: &[String]) -> usize {
    let auth = format!("Bearer {}", app.publisher_token());
    let mut messages = 0;
    for batch in users.chunks(1_000) {
        let reply = app
            .post_raw(
                "/api/analytics/hits",
                "application/json",
                json!({ "user_ids": batch }).to_string().into_bytes(),
                &[("Authorization", &auth)],
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.body);
        assert_eq!(reply.body["accepted"], batch.len());
        messages += 1;
    }
    messages
}

/// Messages the consumer of `topic` handled so far.
async fn handled(app: &TestApp, topic: &str) -> u64 {
    let health = app.get("/api/health/actors", None).await;
    health.body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == format!("consumer:{topic}"))
        .and_then(|a| a["processed"].as_u64())
        .unwrap_or(0)
}

async fn analytics(app: &TestApp) -> Value {
    let reply = app.get("/api/analytics", None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

/// Waits until the `api.hit` consumer handled `messages`, then reads DAU and MAU.
async fn counts_after(app: &TestApp, messages: u64) -> (u64, u64) {
    app.eventually("the hits to be counted", || async {
        (handled(app, "api.hit").await >= messages).then_some(())
    })
    .await;
    let body = analytics(app).await;
    (body["dau"].as_u64().unwrap(), body["mau"].as_u64().unwrap())
}

/// The activity of test set-up (a production node's delivery probe connects a
/// socket) is counted before a test takes its baseline.
async fn settled_baseline(app: &TestApp) -> u64 {
    if app.backdrop.is_some() {
        app.eventually("the set-up activity to be counted", || async {
            (handled(app, "user.activity").await >= 1).then_some(())
        })
        .await;
    }
    analytics(app).await["dau"].as_u64().unwrap()
}

fn service_users(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-user-{i}")).collect()
}

#[actix_web::test]
async fn dau_counts_ten_thousand_distinct_users_within_two_percent_and_repeats_do_not_count() {
    let app = spawn_app().await;
    let baseline = settled_baseline(&app).await;
    let users = service_users(10_000, "svc");

    let sent = report_hits(&app, &users).await as u64;
    let (dau, mau) = counts_after(&app, sent).await;
    let counted = dau - baseline;
    assert!(
        (9_800..=10_200).contains(&counted),
        "10,000 active users reported as {counted}"
    );
    assert!(mau >= dau, "MAU {mau} < DAU {dau}");

    // The same users again: not one more.
    let again = report_hits(&app, &users).await as u64;
    let (dau_again, mau_again) = counts_after(&app, sent + again).await;
    assert_eq!(dau_again, dau);
    assert_eq!(mau_again, mau);

    // The gauge in /metrics follows (it is refreshed every few seconds).
    app.eventually("herald_dau in /metrics", || async {
        let text = String::from_utf8(app.get("/metrics", None).await.raw).unwrap();
        text.contains("# TYPE herald_dau gauge")
            .then_some(())
            .filter(|()| text.contains(&format!("\nherald_dau {dau}\n")))
    })
    .await;
}

#[actix_web::test]
async fn logins_and_websocket_sessions_count_as_activity_once_per_user() {
    let app = spawn_app().await;
    let baseline = settled_baseline(&app).await;

    // One user logs in (twice), another connects (twice) and sends frames.
    let ada = app.create_user("Ada").await;
    assert_eq!(app.login(&ada.email, &ada.password).await.status, 200);
    let bob = UserId::new();
    let token = app.tokens.issue(bob, "", 3600).unwrap();
    for _ in 0..2 {
        let mut ws = app.connect(&format!("token={token}")).await;
        ws.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(ws.next_reply().await["type"], "pong");
    }

    let dau = app
        .eventually("both users to be counted", || async {
            let dau = analytics(&app).await["dau"].as_u64().unwrap();
            (dau >= baseline + 2).then_some(dau)
        })
        .await;
    assert_eq!(dau, baseline + 2);
}

#[actix_web::test]
async fn reported_hits_are_validated() {
    let app = spawn_app().await;
    let publisher = format!("Bearer {}", app.publisher_token());
    let user = format!(
        "Bearer {}",
        app.tokens.issue(UserId::new(), "", 3600).unwrap()
    );
    let post = |body: Value, auth: Option<String>| {
        let app = &app;
        async move {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| ("Authorization", a))
                .into_iter()
                .collect();
            app.post_raw(
                "/api/analytics/hits",
                "application/json",
                body.to_string().into_bytes(),
                &headers,
            )
            .await
        }
    };
    let ok = json!({ "user_ids": ["u1"] });
    assert_eq!(post(ok.clone(), None).await.status, 401);
    assert_eq!(post(ok.clone(), Some(user)).await.status, 403);
    for bad in [
        json!({ "user_ids": [] }),
        json!({}),
        json!({ "user_ids": [""] }),
        json!({ "user_ids": ["x".repeat(257)] }),
        json!({ "user_ids": service_users(1_001, "big") }),
    ] {
        let reply = post(bad, Some(publisher.clone())).await;
        assert_eq!(reply.status, 422, "{:?}", reply.body);
        assert_eq!(reply.body["code"], "validation_failed");
    }
    let reply = post(
        json!({ "user_ids": ["u1"], "extra": 1 }),
        Some(publisher.clone()),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(post(ok, Some(publisher)).await.status, 202);
}

#[actix_web::test]
async fn dau_survives_a_kill_and_restart_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let backdrop = if production() {
        Some(Arc::new(Backdrop::create().await))
    } else {
        None
    };
    let node = Node::start_on(dir.path(), backdrop.clone(), &[]);
    let users = service_users(500, "restart");
    let sent = report_hits(&node.app, &users).await as u64;
    let (dau, _) = counts_after(&node.app, sent).await;
    assert!((490..=510).contains(&dau), "500 users counted as {dau}");
    node.kill();

    let node = Node::start_on(dir.path(), backdrop, &[]);
    assert_eq!(analytics(&node.app).await["dau"].as_u64().unwrap(), dau);
}

#[actix_web::test]
async fn qps_reports_a_paced_load_within_ten_percent_over_the_last_minute() {
    const RATE: u32 = 20;
    let app = spawn_app().await;
    // Just over a minute of load, so the whole window is covered.
    let mut ticks = tokio::time::interval(Duration::from_millis(1_000 / u64::from(RATE)));
    let until = Instant::now() + Duration::from_secs(62);
    while Instant::now() < until {
        ticks.tick().await;
        assert_eq!(app.get("/livez", None).await.status, 200);
    }
    let qps = analytics(&app).await["qps"]["last_1m"].as_f64().unwrap();
    let expected = f64::from(RATE);
    assert!(
        (qps - expected).abs() <= expected * 0.1,
        "a load of {expected}/s reported as {qps}/s"
    );
}
