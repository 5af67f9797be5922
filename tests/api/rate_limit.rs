//! Per-IP rate limiting over real sockets: the 101st request in a minute gets 429 with
//! the headers, another address is unaffected, a forged `X-Forwarded-For` changes
//! nothing unless a trusted proxy sent it, and requests pass again after `Retry-After`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::helpers::{spawn_app_with, TestApp};

/// A raw HTTP/1.1 response: status and lower-cased headers.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` from the loopback address `source` (e.g. 127.0.0.2) with extra
/// header lines, on a fresh connection. Each test uses its own source addresses: a
/// production-mode node's set-up traffic comes from 127.0.0.1.
async fn get_from(app: &TestApp, source: &str, path: &str, extra: &[(&str, &str)]) -> RawReply {
    request_from(app, source, "GET", path, extra).await
}

/// Any request with an empty JSON object body (blocking I/O off the test's event loop).
async fn request_from(
    app: &TestApp,
    source: &str,
    method: &'static str,
    path: &str,
    extra: &[(&str, &str)],
) -> RawReply {
    let (port, source, path) = (app.port, source.to_owned(), path.to_owned());
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || raw_request(port, &source, method, &path, &extra))
        .await
        .unwrap()
}

fn raw_request(
    port: u16,
    source: &str,
    method: &str,
    path: &str,
    extra: &[(String, String)],
) -> RawReply {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&server.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if !extra
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        request.push_str("Connection: close\r\n");
    }
    if method == "POST" {
        request.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n");
    }
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    if method == "POST" {
        request.push_str("{}");
    }
    stream.write_all(request.as_bytes()).unwrap();
    // The head, then the body by Content-Length (an upgraded connection stays open).
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    let head = head.trim_end();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    RawReply {
        status,
        headers,
        body,
    }
}

async fn limited_app(tweak: impl FnOnce(&mut herald::config::Settings)) -> TestApp {
    spawn_app_with(|settings| {
        settings.rate_limit.enabled = true;
        tweak(settings);
    })
    .await
}

#[actix_web::test]
async fn the_101st_request_in_a_minute_gets_429_with_the_headers_and_passes_after_retry_after() {
    let app = limited_app(|_| {}).await;
    for n in 0..100 {
        let reply = get_from(&app, "127.0.0.11", "/api/users/me", &[]).await;
        assert_eq!(reply.status, 401, "request {n}");
        assert_eq!(reply.header("ratelimit-policy"), Some("\"api\";q=100;w=60"));
    }
    let limited = get_from(&app, "127.0.0.11", "/api/users/me", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        limited.body.contains("\"code\":\"rate_limited\""),
        "{}",
        limited.body
    );
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"api\";q=100;w=60")
    );
    assert!(limited
        .header("ratelimit")
        .unwrap()
        .starts_with("\"api\";r=0;t="));

    // Another address has its own quota; a forged X-Forwarded-For from an untrusted
    // peer does not move the limited one to a fresh key.
    assert_eq!(
        get_from(&app, "127.0.0.12", "/api/users/me", &[])
            .await
            .status,
        401
    );
    let forged = get_from(
        &app,
        "127.0.0.11",
        "/api/users/me",
        &[("X-Forwarded-For", "203.0.113.77")],
    )
    .await;
    assert_eq!(forged.status, 429);
    // Probes and metrics are never limited.
    assert_eq!(
        get_from(&app, "127.0.0.11", "/livez", &[]).await.status,
        200
    );
    assert_eq!(
        get_from(&app, "127.0.0.11", "/metrics", &[]).await.status,
        200
    );

    // Waiting what Retry-After said is enough.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        get_from(&app, "127.0.0.11", "/api/users/me", &[])
            .await
            .status,
        401
    );
}

#[actix_web::test]
async fn signup_login_and_new_websockets_have_their_own_stricter_limits() {
    let app = limited_app(|settings| {
        settings.rate_limit.signup_per_minute = 3;
        settings.rate_limit.login_per_minute = 2;
        settings.rate_limit.ws_connects_per_minute = 2;
    })
    .await;
    const CLIENT: &str = "127.0.0.21";
    let post = |path: &'static str| {
        let app = &app;
        async move { request_from(app, CLIENT, "POST", path, &[]).await }
    };
    for _ in 0..3 {
        assert_ne!(post("/api/users/signup").await.status, 429);
    }
    let signup = post("/api/users/signup").await;
    assert_eq!(signup.status, 429);
    assert!(signup.body.contains("\"code\":\"rate_limited\""));
    assert_eq!(
        signup.header("ratelimit-policy"),
        Some("\"signup\";q=3;w=60")
    );
    // A percent-encoded path reaches the same route and counts against its limit.
    assert_eq!(post("/api/users/%73ignup").await.status, 429);
    assert_ne!(post("/api/users/login").await.status, 429);
    assert_ne!(post("/api/users/%6Cogin").await.status, 429);
    assert_eq!(post("/api/users/login").await.status, 429);
    assert_eq!(post("/api/users/%6Cogin").await.status, 429);
    // The general API quota is untouched by those.
    assert_eq!(
        get_from(&app, CLIENT, "/api/users/me", &[]).await.status,
        401
    );

    let token = app
        .tokens
        .issue(herald_actors::domain::UserId::new(), "", 3600)
        .unwrap();
    let upgrade = |token: String| {
        let app = &app;
        async move {
            get_from(
                app,
                CLIENT,
                &format!("/ws?token={token}"),
                &[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
            )
            .await
        }
    };
    for _ in 0..2 {
        assert_eq!(upgrade(token.clone()).await.status, 101);
    }
    let refused = upgrade(token).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("ratelimit-policy"), Some("\"ws\";q=2;w=60"));
}

#[actix_web::test]
async fn a_trusted_proxy_speaks_for_its_clients_walking_forwarded_for_from_the_right() {
    let app = limited_app(|settings| {
        settings.rate_limit.api_per_minute = 2;
        settings.rate_limit.trusted_proxies = vec!["127.0.0.3".into()];
    })
    .await;
    let via_proxy = |client: &'static str| {
        let app = &app;
        async move {
            let chain = format!("198.51.100.1, {client}");
            get_from(
                app,
                "127.0.0.3",
                "/api/users/me",
                &[("X-Forwarded-For", &chain)],
            )
            .await
            .status
        }
    };
    assert_eq!(via_proxy("203.0.113.5").await, 401);
    assert_eq!(via_proxy("203.0.113.5").await, 401);
    assert_eq!(via_proxy("203.0.113.5").await, 429);
    // The right-most untrusted entry is the key: another client behind the same proxy
    // is unaffected, and the left-most (client-supplied) entry is not believed.
    assert_eq!(via_proxy("203.0.113.6").await, 401);
}
