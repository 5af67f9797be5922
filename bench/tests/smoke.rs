//! Smoke test of the harness: a node started in-process (embedded mode, port 0), a few
//! sessions, a few targeted pushes and broadcasts; every message arrives exactly once.
//! No timing is asserted.

#![allow(
    clippy::expect_used,
    reason = "a test should fail loudly at the first broken expectation"
)]

use std::time::Duration;

use herald_bench::node::{Node, NodeSpec};
use herald_bench::publish::Load;
use herald_bench::scenarios::{self, FanoutSpec, PushSpec, SessionSpec};
use herald_bench::target::Via;

/// An embedded node inside the test's process (port 0, fresh data dir), so both the
/// HTTP path and the node's in-process bus can be driven.
async fn start_node() -> Node {
    Node::start_in_process(&NodeSpec {
        binary: "unused: the node runs in-process".into(),
        workers: Some(1),
        production: None,
        log_level: "warn".into(),
        rate_limits: false,
    })
    .await
    .expect("node starts in-process")
}

fn sessions(count: usize) -> SessionSpec {
    SessionSpec {
        count,
        concurrency: 4,
    }
}

/// Five sessions get 20 targeted pushes and three get 4 broadcasts over `via`: each
/// message arrives exactly once, and the node is measured.
async fn pushes_and_broadcasts_arrive_exactly_once(node: &Node, via: Via) {
    let target = node.target();
    let push = scenarios::push(
        "smoke",
        &target,
        via.clone(),
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
    let server = push.server.expect("the node is measured");
    assert!(server.rss_sessions_kib > 0, "{server:?}");

    let fanout = scenarios::fanout(
        &target,
        via,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_pushes_and_broadcasts_published_over_http_arrive_exactly_once() {
    let node = start_node().await;
    pushes_and_broadcasts_arrive_exactly_once(&node, Via::Http).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_broadcasts_put_on_the_in_process_bus_arrive_exactly_once() {
    let node = start_node().await;
    let bus = node.bus().expect("an in-process node has a bus");
    assert_eq!(bus.name(), "memory");
    pushes_and_broadcasts_arrive_exactly_once(&node, bus).await;
    node.stop().await;
}
