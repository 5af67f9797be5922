//! Signup, idempotency, login and `me`.

use std::sync::Arc;

use base64::Engine;
use serde_json::json;

use herald_actors::domain::UserId;
use herald_actors::ports::IdempotencyClaim;

use crate::helpers::spawn_app;

fn ada(email: &str) -> serde_json::Value {
    json!({ "email": email, "name": "Ada", "password": "correct horse battery" })
}

#[actix_web::test]
async fn signup_returns_the_new_user_without_secrets() {
    let app = spawn_app().await;
    let reply = app.signup(&ada("ada@example.com"), Some("k-1")).await;
    assert_eq!(reply.status, 201);
    let user = &reply.body["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["name"], "Ada");
    assert!(user["id"].as_str().unwrap().parse::<UserId>().is_ok());
    assert!(user["created_at"].is_string());
    let text = String::from_utf8(reply.raw).unwrap();
    assert!(!text.contains("password") && !text.contains("argon2"));
}

#[actix_web::test]
async fn replaying_a_signup_returns_the_stored_response_and_creates_nothing_new() {
    let app = spawn_app().await;
    let first = app.signup(&ada("ada@example.com"), Some("same-key")).await;
    let second = app.signup(&ada("ada@example.com"), Some("same-key")).await;
    assert_eq!(first.status, 201);
    assert_eq!(second.status, 201);
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(first.raw, second.raw);
    // Exactly one welcome email, even though the signup was sent twice.
    app.eventually("the welcome email", || async {
        (app.mails().len() == 1).then_some(())
    })
    .await;
    assert_eq!(app.mails().len(), 1);
}

#[actix_web::test]
async fn reusing_a_key_with_a_different_body_is_refused() {
    let app = spawn_app().await;
    assert_eq!(
        app.signup(&ada("ada@example.com"), Some("k")).await.status,
        201
    );
    let reply = app.signup(&ada("grace@example.com"), Some("k")).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["code"], "idempotency_key_reused");
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        "application/problem+json"
    );
}

#[actix_web::test]
async fn a_signup_without_idempotency_key_is_refused() {
    let app = spawn_app().await;
    let reply = app.signup(&ada("ada@example.com"), None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["code"], "idempotency_key_missing");
    // Nothing was created: the same email can still sign up.
    assert_eq!(
        app.signup(&ada("ada@example.com"), Some("k")).await.status,
        201
    );
}

#[actix_web::test]
async fn a_key_whose_first_request_is_still_running_gets_409() {
    let app = spawn_app().await;
    let body = ada("ada@example.com");
    // Another request holds the key: claim it the way a running request does.
    let store = app.store().await;
    let fingerprint = herald::http::idempotency::fingerprint(body.to_string().as_bytes());
    let claim = store
        .claim_idempotency_key("signup", "busy", &fingerprint, 60)
        .await
        .unwrap();
    assert_eq!(claim, IdempotencyClaim::Claimed);

    let reply = app.signup(&body, Some("busy")).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.body["code"], "idempotency_in_flight");
    assert!(reply.headers.get("retry-after").is_some());
}

#[actix_web::test]
async fn concurrent_signups_with_one_key_create_one_user() {
    let app = Arc::new(spawn_app().await);
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let app = Arc::clone(&app);
            actix_web::rt::spawn(
                async move { app.signup(&ada("ada@example.com"), Some("race")).await },
            )
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            201 => ids.push(reply.body["user"]["id"].clone()),
            409 => assert_eq!(reply.body["code"], "idempotency_in_flight"),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert!(!ids.is_empty());
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one user only: {ids:?}"
    );
}

#[actix_web::test]
async fn the_same_email_in_another_case_is_taken() {
    let app = spawn_app().await;
    assert_eq!(
        app.signup(&ada("ada@example.com"), Some("a")).await.status,
        201
    );
    let reply = app.signup(&ada("ADA@Example.COM"), Some("b")).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.body["code"], "email_taken");
}

#[actix_web::test]
async fn wrong_password_and_unknown_email_get_the_same_401() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let wrong = app.login(&user.email, "not the password").await;
    let unknown = app.login("nobody@example.com", &user.password).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body["code"], "invalid_credentials");
}

#[actix_web::test]
async fn login_returns_a_bearer_token_that_me_accepts() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let login = app.login(&user.email.to_uppercase(), &user.password).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.body["token_type"], "Bearer");
    assert_eq!(login.body["expires_in"], 3600);
    let me = app.me(login.body["token"].as_str()).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["user"]["id"], user.id.to_string());
    assert_eq!(me.body["user"]["email"], user.email);
}

fn b64(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[actix_web::test]
async fn me_rejects_missing_forged_expired_and_unsigned_tokens() {
    let app = spawn_app().await;
    let user = app.create_user("Ada").await;
    let now = chrono::Utc::now().timestamp();

    let forged = {
        let other =
            herald::auth::jwt::TokenService::new(&secrecy::SecretString::from("z".repeat(40)))
                .unwrap();
        other.issue(user.id, "", 3600).unwrap()
    };
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": user.id, "iat": now - 100, "exp": now - 10, "scope": "" }),
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::TEST_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&json!({ "sub": user.id, "iat": now, "exp": now + 3600, "scope": "publish" }))
    );
    let tampered = {
        let mut parts: Vec<String> = user.token.split('.').map(str::to_owned).collect();
        parts[1] =
            b64(&json!({ "sub": UserId::new(), "iat": now, "exp": now + 3600, "scope": "admin" }));
        parts.join(".")
    };

    assert_eq!(app.me(None).await.status, 401);
    for (what, token) in [
        ("forged", forged),
        ("expired", expired),
        ("alg none", unsigned),
        ("tampered", tampered),
        ("garbage", "abc".into()),
    ] {
        let reply = app.me(Some(&token)).await;
        assert_eq!(reply.status, 401, "{what} token accepted");
        assert_eq!(reply.body["code"], "unauthorized", "{what}");
    }
    assert_eq!(app.me(Some(&user.token)).await.status, 200);
}
