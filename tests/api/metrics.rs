//! `/metrics` and `/api/analytics` after a known workload, read with a real Prometheus
//! text-format parser.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};
use herald_actors::domain::UserId;

async fn scrape(app: &TestApp) -> (prometheus_parse::Scrape, String) {
    let reply = app.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.raw).unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    (
        prometheus_parse::Scrape::parse(lines).expect("valid exposition format"),
        text,
    )
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[actix_web::test]
async fn metrics_count_a_known_workload_exactly() {
    let app = spawn_app().await;
    let signup =
        |email: &str| json!({ "email": email, "name": "Ada", "password": "correct horse battery" });
    for (n, email) in ["a@example.com", "b@example.com", "c@example.com"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            app.signup(&signup(email), Some(&format!("k{n}")))
                .await
                .status,
            201
        );
    }
    assert_eq!(
        app.signup(&signup("A@example.com"), Some("k9"))
            .await
            .status,
        409
    );
    assert_eq!(app.get("/api/nowhere/42", None).await.status, 404);

    let route = [("route", "/api/users/signup"), ("status", "201")];
    let (scrape, text) = app
        .eventually("the signups to be counted", || async {
            let (scrape, text) = scrape(&app).await;
            (value(&scrape, "herald_http_requests_total", &route) == Some(3.0))
                .then_some((scrape, text))
        })
        .await;
    assert_eq!(
        value(
            &scrape,
            "herald_http_requests_total",
            &[("route", "/api/users/signup"), ("status", "409")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "herald_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    let histogram = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "herald_http_request_duration_seconds"
                && s.labels.get("route") == Some("/api/users/signup")
        })
        .expect("a latency histogram for signup");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(
                buckets.last().unwrap().count,
                4.0,
                "+Inf bucket counts every signup"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
    for suffix in ["_bucket{", "_sum{", "_count{"] {
        assert!(
            text.contains(&format!("herald_http_request_duration_seconds{suffix}")),
            "{suffix}"
        );
    }
    // No ids or emails as label values.
    assert!(!text.contains("@example.com") && !text.contains("/api/nowhere/42"));
}

#[actix_web::test]
async fn pushes_connections_and_rates_show_up() {
    let app = spawn_app().await;
    let (before, _) = scrape(&app).await;
    let pushes_before = value(&before, "herald_pushes_total", &[]).unwrap();
    let connections_before = value(&before, "herald_connections", &[]).unwrap();

    let user = UserId::new();
    let token = app.tokens.issue(user, "", 3600).unwrap();
    let mut ws = app.connect(&format!("token={token}")).await;
    let publisher = app.publisher_token();
    for n in 0..2 {
        app.publish_to(&publisher, user, n).await;
        assert_eq!(ws.next_json().await["type"], "notification");
    }
    let (after, text) = scrape(&app).await;
    assert_eq!(
        value(&after, "herald_pushes_total", &[]).unwrap() - pushes_before,
        2.0
    );
    assert_eq!(
        value(&after, "herald_connections", &[]).unwrap() - connections_before,
        1.0
    );
    assert!(text.contains("herald_push_latency_seconds_bucket{le=\"+Inf\"}"));
    assert!(text.contains("herald_actor_restarts_total{actor=\"registry\"} 0"));

    let analytics = app
        .eventually("a request rate over the last minute", || async {
            let analytics = app.get("/api/analytics", None).await;
            (analytics.body["qps"]["last_1m"].as_f64().unwrap_or(0.0) > 0.0).then_some(analytics)
        })
        .await;
    assert!(analytics.body["qps"]["last_1s"].is_number());
    assert_eq!(
        analytics.body["connections"].as_f64().unwrap() - connections_before,
        1.0
    );
}

#[actix_web::test]
async fn every_response_carries_a_request_id_and_sane_client_ids_are_kept() {
    let app = spawn_app().await;
    let fresh = app.get("/livez", None).await;
    let id = fresh.headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(id.len(), 32, "{id}");
    let other = app.get("/api/nowhere", None).await;
    assert_eq!(other.status, 404);
    assert_ne!(
        other.headers.get("x-request-id").unwrap().to_str().unwrap(),
        id
    );

    let get_with = |value: &'static str| {
        let app = &app;
        async move {
            let res = crate::helpers::client()
                .get(app.url("/livez"))
                .insert_header(("X-Request-Id", value))
                .send()
                .await
                .unwrap();
            res.headers()
                .get("x-request-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(get_with("lb-7f3a.1").await, "lb-7f3a.1");
    // Ids that could forge log lines or bloat them are replaced.
    for bad in [
        "two words",
        "a\"quote",
        "x-very-long-id-x-very-long-id-x-very-long-id-x-very-long-id-x-very-long",
    ] {
        assert_ne!(get_with(bad).await, bad);
    }
}

#[actix_web::test]
async fn log_lines_of_a_request_name_its_request_id_and_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::helpers::Node::start_on(dir.path(), None, &[]);
    let password = "correct horse battery staple";
    let reply = node
        .app
        .signup(
            &json!({ "email": "logs@example.com", "name": "Ada", "password": password }),
            Some("log-key"),
        )
        .await;
    assert_eq!(reply.status, 201);
    let id = reply
        .headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let line = node
        .app
        .eventually("the signup's log line", || async {
            let log = node.log.lock().unwrap();
            log.iter().find(|l| l.contains("user signed up")).cloned()
        })
        .await;
    assert!(line.contains(&format!("request_id={id}")), "{line}");
    let log = node.log.lock().unwrap().join("\n");
    assert!(!log.contains(password));
}
