//! Bad input gets a clear problem+json 4xx and never takes the server down.

use serde_json::json;

use crate::helpers::{spawn_app, Reply, TestApp};

fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "body: {:?}", reply.body);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/problem+json")
    );
    assert_eq!(reply.body["code"], code);
    assert_eq!(reply.body["status"], status);
    assert!(
        reply.body["type"].is_string()
            && reply.body["title"].is_string()
            && reply.body["detail"].is_string()
    );
}

async fn signup_raw(app: &TestApp, content_type: &str, body: Vec<u8>) -> Reply {
    app.post_raw(
        "/api/users/signup",
        content_type,
        body,
        &[("Idempotency-Key", &uuid::Uuid::new_v4().to_string())],
    )
    .await
}

async fn still_serving(app: &TestApp) {
    assert_eq!(app.get("/livez", None).await.status, 200);
    assert_eq!(app.get("/readyz", None).await.status, 200);
}

#[actix_web::test]
async fn malformed_json_is_400_invalid_json() {
    let app = spawn_app().await;
    for body in [&b"{"[..], b"not json", b"", b"[1,2]", b"{\"email\": 5}"] {
        assert_problem(
            &signup_raw(&app, "application/json", body.to_vec()).await,
            400,
            "invalid_json",
        );
    }
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    assert_problem(
        &signup_raw(&app, "application/json", deep.into_bytes()).await,
        400,
        "invalid_json",
    );
    still_serving(&app).await;
}

#[actix_web::test]
async fn a_wrong_content_type_is_400_invalid_json() {
    let app = spawn_app().await;
    let body =
        json!({ "email": "a@example.com", "name": "A", "password": "long enough" }).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded", ""] {
        assert_problem(
            &signup_raw(&app, ct, body.clone().into_bytes()).await,
            400,
            "invalid_json",
        );
    }
    still_serving(&app).await;
}

#[actix_web::test]
async fn a_2_mib_body_is_413() {
    let app = spawn_app().await;
    let huge = format!(
        r#"{{"email":"a@example.com","name":"{}","password":"long enough"}}"#,
        "x".repeat(2 << 20)
    );
    assert_problem(
        &signup_raw(&app, "application/json", huge.into_bytes()).await,
        413,
        "payload_too_large",
    );
    still_serving(&app).await;
}

#[actix_web::test]
async fn invalid_fields_are_422_with_one_error_per_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "email": "not-an-email", "name": "A", "password": "long enough" }),
            vec!["email"],
        ),
        (
            json!({ "email": "a@example.com", "name": "   ", "password": "long enough" }),
            vec!["name"],
        ),
        (
            json!({ "email": "a@example.com", "name": "A", "password": "short" }),
            vec!["password"],
        ),
        (json!({}), vec!["email", "name", "password"]),
    ];
    for (body, fields) in cases {
        let reply = signup_raw(&app, "application/json", body.to_string().into_bytes()).await;
        assert_problem(&reply, 422, "validation_failed");
        let got: Vec<&str> = reply.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(got, fields);
    }
    still_serving(&app).await;
}

#[actix_web::test]
async fn unknown_fields_are_rejected_by_name() {
    let app = spawn_app().await;
    let body =
        json!({ "email": "a@example.com", "name": "A", "password": "long enough", "admin": true });
    let reply = signup_raw(&app, "application/json", body.to_string().into_bytes()).await;
    assert_problem(&reply, 400, "invalid_json");
    assert!(reply.body["detail"].as_str().unwrap().contains("admin"));
}

#[actix_web::test]
async fn unknown_routes_and_methods_are_problem_json() {
    let app = spawn_app().await;
    assert_problem(&app.get("/api/nope", None).await, 404, "not_found");
    assert_problem(
        &app.get("/api/users/signup", None).await,
        405,
        "method_not_allowed",
    );
    // The WebSocket endpoint exists too; only its method is wrong.
    assert_problem(
        &app.post_raw("/ws", "application/json", b"{}".to_vec(), &[])
            .await,
        405,
        "method_not_allowed",
    );
}

#[actix_web::test]
async fn publishing_needs_the_publish_scope_and_a_valid_body() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let publisher = app.publisher_token();
    let ok = json!({ "user_id": user.id, "event": "order.shipped", "payload": { "n": 1 } });

    assert_problem(
        &app.publish(&user.token, &ok, None).await,
        403,
        "insufficient_scope",
    );
    let reply = app
        .post_raw(
            "/api/notifications",
            "application/json",
            ok.to_string().into_bytes(),
            &[],
        )
        .await;
    assert_problem(&reply, 401, "unauthorized");

    let bad = [
        json!({ "event": "x", "payload": {} }),
        json!({ "user_id": "not-a-uuid", "event": "x", "payload": {} }),
        json!({ "user_id": user.id, "broadcast": true, "event": "x", "payload": {} }),
        json!({ "user_id": user.id, "event": "has spaces", "payload": {} }),
        json!({ "user_id": user.id, "event": "x", "payload": [1, 2] }),
        json!({ "user_id": user.id, "event": "x", "payload": { "big": "y".repeat(70_000) } }),
    ];
    for body in bad {
        assert_problem(
            &app.publish(&publisher, &body, None).await,
            422,
            "validation_failed",
        );
    }
    assert_eq!(app.publish(&publisher, &ok, None).await.status, 202);
}

#[actix_web::test]
async fn history_rejects_bad_paging_parameters() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    for query in [
        "after=-1",
        "after=abc",
        "limit=0",
        "limit=100000",
        "bogus=1",
    ] {
        let reply = app
            .get(&format!("/api/notifications?{query}"), Some(&user.token))
            .await;
        assert_problem(&reply, 422, "validation_failed");
    }
    assert_problem(
        &app.get("/api/notifications", None).await,
        401,
        "unauthorized",
    );
}

#[actix_web::test]
async fn json_nested_past_the_depth_limit_is_refused_and_shallower_json_passes() {
    let app = spawn_app().await;
    let token = app.publisher_token();
    let nested = |depth: usize| {
        // `payload` itself is level 2 inside the body object.
        let inner = format!("{}{}", "[".repeat(depth - 2), "]".repeat(depth - 2));
        format!(
            r#"{{"user_id":"{}","event":"e","payload":{{"deep":{inner}}}}}"#,
            herald_actors::domain::UserId::new()
        )
    };
    let reply = app.publish_raw(&token, nested(33)).await;
    assert_problem(&reply, 400, "invalid_json");
    assert!(
        reply.body["detail"].as_str().unwrap().contains("32 levels"),
        "{:?}",
        reply.body
    );
    assert_eq!(app.publish_raw(&token, nested(32)).await.status, 202);
    still_serving(&app).await;
}

#[actix_web::test]
async fn oversized_request_headers_get_431_problem_json() {
    let app = spawn_app().await;
    let big = "x".repeat(20 * 1024);
    let reply = app.get_with_headers("/livez", &[("X-Padding", &big)]).await;
    assert_problem(&reply, 431, "headers_too_large");
    // Past actix's own 128 KiB buffer the connection is refused before routing; it
    // still answers 431 and the server keeps serving.
    let huge = "x".repeat(200 * 1024);
    let reply = app
        .get_with_headers("/livez", &[("X-Padding", &huge)])
        .await;
    assert_eq!(reply.status, 431);
    assert_eq!(
        app.get_with_headers("/livez", &[("X-Padding", "small")])
            .await
            .status,
        200
    );
    still_serving(&app).await;
}

#[actix_web::test]
async fn an_email_no_mail_could_reach_is_refused_at_signup() {
    let app = spawn_app().await;
    for email in [
        "a..b@example.com",
        "a,b@example.com",
        ".a@example.com",
        "a(b)@example.com",
    ] {
        let body = json!({ "email": email, "name": "A", "password": "long enough" });
        let reply = signup_raw(&app, "application/json", body.to_string().into_bytes()).await;
        assert_problem(&reply, 422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], "email", "{email}");
    }
    still_serving(&app).await;
}
