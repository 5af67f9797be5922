//! Regression tests for what an adversarial client found: each one crashed, leaked or
//! answered unclearly before it was fixed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use awc::ws;
use futures_util::SinkExt;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use herald_actors::domain::UserId;

async fn registry_sessions(app: &TestApp) -> u64 {
    let health = app.get("/api/health/actors", None).await;
    health.body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "registry")
        .and_then(|a| a["details"]["sessions"].as_u64())
        .unwrap_or(u64::MAX)
}

#[actix_web::test]
async fn payloads_no_client_could_parse_are_refused_and_history_stays_readable() {
    let app = spawn_app().await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    for payload in [r#"{"a":1e400}"#.to_owned(), deep] {
        let body = format!(r#"{{"user_id":"{user}","event":"e","payload":{payload}}}"#);
        let reply = app.publish_raw(&publisher, body).await;
        assert!(
            matches!(reply.status, 400 | 422),
            "{payload:.40} accepted: {}",
            reply.status
        );
    }
    let history = app.history(&token, 0, 50).await;
    assert_eq!(history.status, 200);
    assert_eq!(history.body["notifications"], json!([]));
}

#[actix_web::test]
async fn history_returns_payloads_byte_for_byte() {
    let app = spawn_app().await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let body = format!(
        r#"{{"user_id":"{user}","event":"e","payload":{{"n":18446744073709551616,"f":0.1}}}}"#
    );
    let reply = app.publish_raw(&app.publisher_token(), body).await;
    assert_eq!(reply.status, 202);
    let history = app.history(&token, 0, 50).await;
    let text = String::from_utf8(history.raw).unwrap();
    assert!(
        text.contains(r#"{"n":18446744073709551616,"f":0.1}"#),
        "{text}"
    );
}

#[actix_web::test]
async fn a_publish_without_a_payload_object_is_a_validation_error() {
    let app = spawn_app().await;
    let publisher = app.publisher_token();
    for body in [
        json!({ "user_id": UserId::new(), "event": "e" }),
        json!({ "user_id": UserId::new(), "event": "e", "payload": null }),
    ] {
        let reply = app.publish(&publisher, &body, None).await;
        assert_eq!(reply.status, 422);
        assert_eq!(reply.body["errors"][0]["field"], "payload");
    }
}

#[actix_web::test]
async fn login_without_a_field_is_a_validation_error_naming_it() {
    let app = spawn_app().await;
    let reply = app
        .post_raw(
            "/api/users/login",
            "application/json",
            br#"{"email":"a@b.co"}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        reply.body["errors"],
        json!([{ "field": "password", "message": "is required" }])
    );
}

#[actix_web::test]
async fn json_arrays_and_other_json_media_types_are_not_request_bodies() {
    let app = spawn_app().await;
    let key = [("Idempotency-Key", "k")];
    let reply = app
        .post_raw(
            "/api/users/signup",
            "application/json",
            br#"["x@y.com","Arr","password123"]"#.to_vec(),
            &key,
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["code"], "invalid_json");
    let object = json!({ "email": "x@y.com", "name": "A", "password": "password123" }).to_string();
    for ct in ["application/problem+json", "application/vnd.evil+json"] {
        let reply = app
            .post_raw("/api/users/signup", ct, object.clone().into_bytes(), &key)
            .await;
        assert_eq!(reply.status, 400, "{ct}");
    }
    let reply = app
        .post_raw(
            "/api/users/signup",
            "application/json; charset=utf-8",
            object.into_bytes(),
            &key,
        )
        .await;
    assert_eq!(reply.status, 201);
}

#[actix_web::test]
async fn a_look_alike_email_is_a_different_account_and_invisible_characters_are_refused() {
    let app = spawn_app().await;
    let password = "correct horse battery";
    let kelvin = app
        .signup(
            &json!({ "email": "\u{212A}elly@x.com", "name": "Fake", "password": password }),
            Some("a"),
        )
        .await;
    assert_eq!(kelvin.status, 201);
    let real = app
        .signup(
            &json!({ "email": "kelly@x.com", "name": "Kelly", "password": password }),
            Some("b"),
        )
        .await;
    assert_eq!(real.status, 201, "the real address is still free");
    let login = app.login("kelly@x.com", password).await;
    let me = app.me(login.body["token"].as_str()).await;
    assert_eq!(me.body["user"]["name"], "Kelly");
    let hidden = app
        .signup(
            &json!({ "email": "kel\u{200B}ly@x.com", "name": "Z", "password": password }),
            Some("c"),
        )
        .await;
    assert_eq!(hidden.status, 422);
}

#[actix_web::test]
async fn a_request_body_that_never_arrives_times_out_with_408() {
    let app = spawn_app_with(|s| s.server.body_timeout_secs = 1).await;
    let port = app.port;
    let response = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"POST /api/users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{\"email\"",
            )
            .unwrap();
        let mut buf = vec![0; 4096];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"));
}

#[actix_web::test]
async fn probes_answer_head_requests() {
    let app = spawn_app().await;
    let res = crate::helpers::client()
        .head(app.url("/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

#[actix_web::test]
async fn a_bad_websocket_query_closes_with_1008_and_says_why() {
    let app = spawn_app().await;
    let token = app.tokens.issue(UserId::new(), "", 3600).unwrap();
    assert_eq!(
        app.connect(&format!("token={token}&after=-1"))
            .await
            .close_code()
            .await,
        1008
    );
    assert_eq!(
        app.connect(&format!("token={token}&after=x"))
            .await
            .close_code()
            .await,
        1008
    );
}

#[actix_web::test]
async fn resume_replays_what_this_connection_already_received_when_asked() {
    let app = spawn_app().await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let mut ws = app.connect(&format!("token={token}")).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.publish_to(&publisher, user, n).await);
        assert_eq!(ws.next_json().await["id"], ids[n]);
    }
    ws.send_text(&format!(r#"{{"type":"resume","after":{}}}"#, ids[0] - 1))
        .await;
    for id in &ids {
        assert_eq!(ws.next_json().await["id"], *id);
    }
}

#[actix_web::test]
async fn a_fragmented_text_message_is_reassembled() {
    let app = spawn_app().await;
    let token = app.tokens.issue(UserId::new(), "", 3600).unwrap();
    let mut client = app.connect(&format!("token={token}")).await;
    for item in [
        actix_http::ws::Item::FirstText(bytes::Bytes::from_static(b"{\"type\"")),
        actix_http::ws::Item::Continue(bytes::Bytes::from_static(b":\"pi")),
        actix_http::ws::Item::Last(bytes::Bytes::from_static(b"ng\"}")),
    ] {
        client
            .framed
            .send(ws::Message::Continuation(item))
            .await
            .unwrap();
    }
    assert_eq!(client.next_reply().await, json!({ "type": "pong" }));
}

#[actix_web::test]
async fn a_client_that_vanishes_without_closing_leaves_the_registry() {
    let app = spawn_app().await;
    let token = app.tokens.issue(UserId::new(), "", 3600).unwrap();
    let port = app.port;
    actix_web::rt::task::spawn_blocking(move || {
        for _ in 0..20 {
            let stream = raw_websocket(port, &token);
            // Reset instead of closing: no close frame, no FIN.
            socket_reset(stream);
        }
    })
    .await
    .unwrap();
    app.eventually("the registry to forget vanished sessions", || async {
        (registry_sessions(&app).await == 0).then_some(())
    })
    .await;
}

/// Opens a WebSocket by hand on a plain TCP socket and returns it after the `101`,
/// for tests that misbehave below the WebSocket protocol.
fn raw_websocket(port: u16, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0; 512];
    let n = stream.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream
}

/// Drops `stream` with SO_LINGER 0, which sends a TCP reset.
fn socket_reset(stream: TcpStream) {
    let socket = socket2::Socket::from(stream);
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_dropped_from_the_registry_then_disconnected() {
    let app = spawn_app_with(|s| {
        s.websocket.outbound_queue = 8;
        s.websocket.heartbeat_interval_secs = 1;
        s.websocket.client_timeout_secs = 3;
    })
    .await;
    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let publisher = app.publisher_token();
    let port = app.port;
    // A raw socket that completes the handshake and then never reads again.
    let stream = actix_web::rt::task::spawn_blocking(move || raw_websocket(port, &token))
        .await
        .unwrap();
    app.eventually("the session to register", || async {
        (registry_sessions(&app).await == 1).then_some(())
    })
    .await;
    let big = "x".repeat(60_000);
    for _ in 0..200 {
        let reply = app
            .publish(
                &publisher,
                &json!({ "user_id": user, "event": "e", "payload": { "big": big } }),
                None,
            )
            .await;
        assert_eq!(reply.status, 202);
    }
    app.eventually("the slow session to be dropped", || async {
        (registry_sessions(&app).await == 0).then_some(())
    })
    .await;
    // Its connection is not kept either: the kernel gives up on a peer that takes no
    // data for the client timeout, and the session ends with it.
    app.eventually("the slow client's connection to end", || async {
        let analytics = app.get("/api/analytics", None).await;
        (analytics.body["connections"] == 0).then_some(())
    })
    .await;
    drop(stream);
}

/// Reads server frames from a raw socket until a close frame; returns its code, or
/// `None` when the connection ends without one.
fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    stream
        .set_read_timeout(Some(crate::helpers::deadline()))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    loop {
        // Server frames are unmasked: [0x88, len, code_hi, code_lo, ...] for a close.
        if let Some(at) = seen.windows(2).position(|w| w[0] == 0x88 && w[1] >= 2) {
            if seen.len() >= at + 4 {
                return Some(u16::from_be_bytes([seen[at + 2], seen[at + 3]]));
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[actix_web::test]
async fn a_frame_announcing_a_huge_length_closes_with_1009_before_its_payload_is_buffered() {
    let app = spawn_app().await;
    let token = app.tokens.issue(UserId::new(), "", 3600).unwrap();
    let port = app.port;
    let code = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = raw_websocket(port, &token);
        // FIN + text, masked, 64-bit length 2^62, then the mask.
        let mut header = vec![0x81, 0xff];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        stream.write_all(&header).unwrap();
        // Keep sending "payload"; the server must not wait for (or keep) it. Writes
        // start failing once the server has closed the connection.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        read_close_code(&mut stream)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1009));
    assert_eq!(app.get("/livez", None).await.status, 200);
}

#[actix_web::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let app = spawn_app().await;
    let token = app.tokens.issue(UserId::new(), "", 3600).unwrap();
    let port = app.port;
    let code = actix_web::rt::task::spawn_blocking(move || {
        let mut stream = raw_websocket(port, &token);
        let payload = [0xff, 0xfe, 0x80];
        let mask = [7u8, 7, 7, 7];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        stream.write_all(&frame).unwrap();
        read_close_code(&mut stream)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1007));
}
