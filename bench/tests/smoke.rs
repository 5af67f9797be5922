//! Smoke test of the harness: a node started in-process (embedded mode, port 0), a few
//! sessions, a few targeted pushes and broadcasts; every message arrives exactly once.
//! No timing is asserted.

#![allow(
    clippy::expect_used,
    reason = "a test should fail loudly at the first broken expectation"
)]

use std::sync::mpsc;
use std::time::Duration;

use secrecy::SecretString;

use herald::auth::jwt::TokenService;
use herald::config::Settings;
use herald::startup::Application;
use herald_bench::publish::Load;
use herald_bench::scenarios::{self, FanoutSpec, PushSpec, SessionSpec};
use herald_bench::target::{Target, Via};

const SECRET: &str = "bench-smoke-secret-bench-smoke-secret-01";

/// Starts a node on its own thread (actix runs its own system) and returns its target.
fn start_node(dir: &std::path::Path) -> Target {
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.data_dir = dir.to_owned();
    settings.server.workers = 1;
    settings.auth.jwt_secret = Some(SecretString::from(SECRET.to_owned()));
    // One publisher on one address sends faster than the per-IP API quota allows.
    settings.rate_limit.enabled = false;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let app = Application::build(settings).await.expect("node builds");
            tx.send(app.port()).expect("port sent");
            app.run_until_stopped().await.expect("node runs");
        });
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node started");
    Target {
        addr: ([127, 0, 0, 1], port).into(),
        tokens: TokenService::new(&SecretString::from(SECRET.to_owned())).expect("tokens"),
        pid: Some(std::process::id()),
        mode: "embedded",
    }
}

fn sessions(count: usize) -> SessionSpec {
    SessionSpec {
        count,
        concurrency: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_pushes_and_broadcasts_arrive_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = start_node(dir.path());

    let push = scenarios::push(
        "smoke",
        &target,
        Via::Http,
        PushSpec {
            sessions: sessions(5),
            load: Load {
                rate: 50.0,
                duration: Duration::from_millis(400),
                workers: 2,
                payload_bytes: 200,
            },
            drain: Duration::from_secs(20),
            warmup: Duration::from_secs(20),
        },
    )
    .await
    .expect("push scenario runs");
    println!("{}", push.table());
    let delivery = push.delivery.expect("delivery report");
    assert_eq!(delivery.accepted, 20, "{delivery:?}");
    assert_eq!(delivery.delivered, 20, "{delivery:?}");
    assert_eq!(delivery.lost, 0, "{delivery:?}");
    assert_eq!(delivery.duplicated, 0, "{delivery:?}");
    assert_eq!(push.sessions.expect("sessions").open, 5);

    let fanout = scenarios::fanout(
        &target,
        Via::Http,
        FanoutSpec {
            sessions: sessions(3),
            count: 4,
            duration: Duration::from_secs(20),
            window: 2,
            payload_bytes: 100,
            drain: Duration::from_secs(20),
            warmup: Duration::from_secs(20),
        },
    )
    .await
    .expect("fan-out scenario runs");
    println!("{}", fanout.json_line());
    let delivery = fanout.delivery.expect("delivery report");
    assert_eq!(delivery.accepted, 4, "{delivery:?}");
    assert_eq!(delivery.delivered, 12, "{delivery:?}");
    assert_eq!(delivery.lost, 0, "{delivery:?}");
    assert_eq!(delivery.duplicated, 0, "{delivery:?}");
}
