//! The mailer against a real SMTP listener that misbehaves on command: the circuit
//! breaker opens on refused connections, 4xx, 5xx and hangs, lets only trial calls
//! through, and closes when the relay recovers; every welcome arrives exactly once.
//! Mail that runs out of attempts is a dead letter an admin can list and redrive.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use herald::config::Settings;
use herald_actors::domain::UserId;

use crate::helpers::{spawn_app_with, TestApp, TestUser};
use crate::smtp_sink::{Behaviour, SmtpSink};

fn use_sink(settings: &mut Settings, sink: &SmtpSink) {
    settings.smtp.host = Some("127.0.0.1".into());
    settings.smtp.port = sink.port;
    settings.smtp.tls = herald::backends::mail::smtp::TlsMode::None;
    settings.smtp.timeout_secs = 1;
    settings.mail.poll_interval_ms = 50;
    settings.mail.backoff_base_ms = 20;
    settings.mail.backoff_cap_ms = 200;
}

async fn mailer(app: &TestApp) -> Value {
    let health = app.get("/api/health/actors", None).await;
    health.body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "Mailer")
        .cloned()
        .unwrap()
}

fn transitions(mailer: &Value, to: &str) -> u64 {
    mailer["details"][format!("breaker_to_{to}")]
        .as_u64()
        .unwrap_or(0)
}

/// Welcome mails the sink accepted, per recipient.
fn delivered(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut per_recipient = HashMap::new();
    for message in sink.messages() {
        if message.data.contains("Subject: Welcome") {
            for to in message.to {
                *per_recipient.entry(to).or_default() += 1;
            }
        }
    }
    per_recipient
}

#[actix_web::test]
async fn smtp_outages_open_the_breaker_only_trials_get_through_and_every_welcome_arrives_once() {
    let sink = SmtpSink::start().await;
    let app = spawn_app_with(|settings| {
        use_sink(settings, &sink);
        settings.mail.max_attempts = 10_000;
        let breaker = &mut settings.mail.breaker;
        breaker.window = 4;
        breaker.min_calls = 2;
        breaker.open_secs = 1;
        breaker.slow_call_ms = 500;
        breaker.half_open_calls = 3;
    })
    .await;

    let mut users: Vec<TestUser> = Vec::new();
    for behaviour in [
        Behaviour::Refuse,
        Behaviour::Defer,
        Behaviour::Reject,
        Behaviour::Hang,
    ] {
        sink.set(behaviour);
        let opened_before = transitions(&mailer(&app).await, "open");
        users.push(app.create_user("Ada").await);
        let open = app
            .eventually(&format!("the breaker to open on {behaviour:?}"), || async {
                let m = mailer(&app).await;
                (m["details"]["breaker"] == "open" && transitions(&m, "open") > opened_before)
                    .then_some(m)
            })
            .await;

        // While it is open, only half-open trial calls reach the relay: at most three
        // connections per move to half-open (without the breaker, three queued mails
        // retried every 200 ms would connect dozens of times).
        let (connections, half_opens) = (sink.connections(), transitions(&open, "half_open"));
        let until = Instant::now() + Duration::from_millis(1_500);
        while Instant::now() < until {
            // Connections first: a trial's transition is recorded before it connects.
            let made = sink.connections() - connections;
            let m = mailer(&app).await;
            let trials = transitions(&m, "half_open") - half_opens;
            assert!(
                made as u64 <= 3 * trials,
                "{made} connections with {trials} half-open periods on {behaviour:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    sink.set(Behaviour::Accept);
    let wanted: Vec<String> = users.iter().map(|u| format!("<{}>", u.email)).collect();
    app.eventually("every welcome delivered", || async {
        let got = delivered(&sink);
        wanted.iter().all(|w| got.contains_key(w)).then_some(())
    })
    .await;
    let m = app
        .eventually("the breaker to close", || async {
            let m = mailer(&app).await;
            (m["details"]["breaker"] == "closed").then_some(m)
        })
        .await;
    assert!(transitions(&m, "closed") >= 1);
    let got = delivered(&sink);
    for w in &wanted {
        assert_eq!(got[w], 1, "{w} got {} welcomes", got[w]);
    }
    let metrics = String::from_utf8(app.get("/metrics", None).await.raw).unwrap();
    assert!(metrics.contains("herald_breaker_state{breaker=\"mail\"} 0\n"));
    assert!(!metrics.contains("herald_breaker_transitions_total{breaker=\"mail\",to=\"open\"} 0\n"));
}

#[actix_web::test]
async fn mail_out_of_attempts_is_a_dead_letter_an_admin_can_list_and_redrive() {
    let sink = SmtpSink::start().await;
    sink.set(Behaviour::Reject);
    let app = spawn_app_with(|settings| {
        use_sink(settings, &sink);
        settings.mail.max_attempts = 2;
        settings.mail.breaker.min_calls = 20;
    })
    .await;
    let user = app.create_user("Ada").await;
    let id = format!("welcome-{}", user.id);

    let admin = app.tokens.issue(UserId::new(), "admin", 3600).unwrap();
    let letter = app
        .eventually("the welcome to be a dead letter", || async {
            let list = app.get("/api/admin/dead-letters", Some(&admin)).await;
            assert_eq!(list.status, 200, "{:?}", list.body);
            list.body["dead_letters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["id"] == id.as_str())
                .cloned()
        })
        .await;
    assert_eq!(letter["kind"], "email");
    assert_eq!(letter["attempts"], 2);
    assert_eq!(letter["to"], user.email.as_str());
    assert!(
        letter["error"].as_str().unwrap().contains("550"),
        "{letter}"
    );

    // Admin scope only.
    let path = format!("/api/admin/dead-letters/{id}/redrive");
    assert_eq!(app.get("/api/admin/dead-letters", None).await.status, 401);
    let plain = app.get("/api/admin/dead-letters", Some(&user.token)).await;
    assert_eq!(plain.status, 403);
    let auth = format!("Bearer {admin}");
    let redrive = |path: String| {
        let (app, auth) = (&app, auth.clone());
        async move {
            app.post_raw(
                &path,
                "application/json",
                Vec::new(),
                &[("Authorization", &auth)],
            )
            .await
        }
    };

    sink.set(Behaviour::Accept);
    let reply = redrive(path.clone()).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    app.eventually("the redriven welcome to arrive", || async {
        delivered(&sink)
            .contains_key(&format!("<{}>", user.email))
            .then_some(())
    })
    .await;
    let list = app.get("/api/admin/dead-letters", Some(&admin)).await;
    assert!(list.body["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["id"] != id.as_str()));
    // Nothing left to redrive.
    let again = redrive(path).await;
    assert_eq!(again.status, 404);
    assert_eq!(again.body["code"], "not_found");
    let bad = app
        .get("/api/admin/dead-letters?limit=0", Some(&admin))
        .await;
    assert_eq!(bad.status, 422);
}

#[actix_web::test]
async fn mail_no_relay_could_send_is_dead_lettered_at_once_without_tripping_the_breaker() {
    let sink = SmtpSink::start().await;
    let app = spawn_app_with(|settings| {
        use_sink(settings, &sink);
        settings.mail.breaker.min_calls = 1;
    })
    .await;
    // Signup refuses such addresses now; mail queued before that (or by other means)
    // still has to be dealt with.
    let store = app.store().await;
    for n in 0..3 {
        let job = herald_actors::domain::MailJob {
            id: format!("legacy-{n}"),
            to: herald_actors::domain::Email::parse(&format!("a..b{n}@example.com")).unwrap(),
            to_name: "A".into(),
            subject: "Hi".into(),
            body: "Hello".into(),
            attempts: 0,
        };
        assert!(store.enqueue_mail(&job).await.unwrap());
    }
    let admin = app.tokens.issue(UserId::new(), "admin", 3600).unwrap();
    app.eventually("the undeliverable mail to be dead letters", || async {
        let list = app.get("/api/admin/dead-letters", Some(&admin)).await;
        let letters = list.body["dead_letters"].as_array().unwrap().clone();
        (letters.len() == 3).then_some(letters)
    })
    .await
    .iter()
    .for_each(|letter| assert_eq!(letter["attempts"], 1, "{letter}"));
    assert_eq!(mailer(&app).await["details"]["breaker"], "closed");
    let user = app.create_user("Ada").await;
    app.eventually("a deliverable welcome to arrive", || async {
        delivered(&sink)
            .contains_key(&format!("<{}>", user.email))
            .then_some(())
    })
    .await;
}
