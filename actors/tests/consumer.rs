//! The `Consumer` actor against an in-memory bus: offsets are committed only after a
//! message was handled, in order; poison messages go to the dead-letter topic and do
//! not block the ones behind them; transient failures are retried.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Supervisor;
use async_trait::async_trait;
use bytes::Bytes;

use herald_actors::backoff::Backoff;
use herald_actors::consumer::{Consumer, ConsumerConfig, HandleError, TopicHandler};
use herald_actors::domain::{BusMessage, Topic};
use herald_actors::health::HealthBoard;
use herald_actors::ports::{Bus, BusError, Subscription};

/// Everything that happened, in order, across bus and handler.
type Log = Arc<Mutex<Vec<String>>>;

struct MemoryBus {
    messages: Vec<BusMessage>,
    log: Log,
}

struct MemorySubscription {
    pending: std::collections::VecDeque<BusMessage>,
    log: Log,
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: Topic, _key: &str, payload: Bytes) -> Result<(), BusError> {
        let body: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        self.log.lock().unwrap().push(format!(
            "publish {topic} offset={} error={}",
            body["offset"], body["error"]
        ));
        Ok(())
    }

    async fn subscribe(
        &self,
        _topic: Topic,
        _group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        Ok(Box::new(MemorySubscription {
            pending: self.messages.iter().cloned().collect(),
            log: Arc::clone(&self.log),
        }))
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.log.lock().unwrap().push("closed".into());
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<BusMessage, BusError> {
        match self.pending.pop_front() {
            Some(m) => Ok(m),
            None => std::future::pending().await,
        }
    }

    async fn commit(&mut self, message: &BusMessage) -> Result<(), BusError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("commit {}", message.offset));
        Ok(())
    }

    async fn lag(&mut self) -> Option<u64> {
        Some(self.pending.len() as u64)
    }
}

/// Poison on "poison", fails transiently `flaky` times on "flaky", else succeeds.
struct ScriptedHandler {
    log: Log,
    flaky: Mutex<u32>,
}

#[async_trait]
impl TopicHandler for ScriptedHandler {
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError> {
        let body = std::str::from_utf8(&message.payload).unwrap();
        self.log
            .lock()
            .unwrap()
            .push(format!("handle {}", message.offset));
        match body {
            "\"poison\"" => Err(HandleError::Poison("bad".into())),
            "\"flaky\"" => {
                let mut left = self.flaky.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    Err(HandleError::Transient("try later".into()))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

fn message(offset: i64, body: &str) -> BusMessage {
    BusMessage {
        topic: Topic::Notifications,
        partition: 0,
        offset,
        key: "k".into(),
        payload: Bytes::from(format!("\"{body}\"")),
    }
}

async fn run(messages: Vec<BusMessage>, flaky: u32, until_entries: usize) -> Vec<String> {
    run_consumer(messages, flaky, until_entries).await.0
}

/// Waits until `log` holds `entries` lines.
async fn wait_for(log: &Log, entries: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().len() < entries {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run_consumer(
    messages: Vec<BusMessage>,
    flaky: u32,
    until_entries: usize,
) -> (Vec<String>, actix::Addr<Consumer>, Log, HealthBoard) {
    let log: Log = Arc::default();
    let bus = Arc::new(MemoryBus {
        messages,
        log: Arc::clone(&log),
    });
    let handler = Arc::new(ScriptedHandler {
        log: Arc::clone(&log),
        flaky: Mutex::new(flaky),
    });
    let board = HealthBoard::new();
    let stats = board.register("consumer:notifications", "Consumer", true);
    let config = ConsumerConfig {
        topic: Topic::Notifications,
        group: "test".into(),
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
    };
    let addr = Supervisor::start(move |_| Consumer::new(bus, handler, config, stats));
    wait_for(&log, until_entries).await;
    let entries = log.lock().unwrap().clone();
    (entries, addr, log, board)
}

#[actix_rt::test]
async fn stopping_for_shutdown_closes_the_subscription_after_the_last_commit_for_good() {
    let (_, consumer, log, board) = run_consumer(vec![message(1, "ok")], 0, 2).await;
    consumer
        .send(herald_actors::messages::StopConsuming)
        .await
        .unwrap();
    wait_for(&log, 3).await;
    assert_eq!(*log.lock().unwrap(), vec!["handle 1", "commit 1", "closed"]);
    let stats = board.snapshot();
    let me = stats
        .iter()
        .find(|a| a.name == "consumer:notifications")
        .unwrap();
    assert_eq!(me.status, herald_actors::health::ActorStatus::Stopped);
    assert_eq!(
        me.restarts, 0,
        "a consumer stopped for shutdown is not restarted"
    );
}

#[actix_rt::test]
async fn offsets_are_committed_after_handling_and_poison_is_dead_lettered() {
    let log = run(
        vec![message(1, "ok"), message(2, "poison"), message(3, "ok")],
        0,
        7,
    )
    .await;
    assert_eq!(
        log,
        vec![
            "handle 1",
            "commit 1",
            "handle 2",
            "publish notifications.dlq offset=2 error=\"poison message: bad\"",
            "commit 2",
            "handle 3",
            "commit 3",
        ]
    );
}

#[actix_rt::test]
async fn a_transient_failure_is_retried_before_the_offset_moves() {
    let log = run(vec![message(1, "flaky"), message(2, "ok")], 2, 6).await;
    assert_eq!(
        log,
        vec!["handle 1", "handle 1", "handle 1", "commit 1", "handle 2", "commit 2"]
    );
}

#[actix_rt::test]
async fn a_message_failing_every_attempt_is_dead_lettered_and_the_next_one_flows() {
    let log = run(vec![message(1, "flaky"), message(2, "ok")], 99, 7).await;
    assert_eq!(
        log,
        vec![
            "handle 1",
            "handle 1",
            "handle 1",
            "publish notifications.dlq offset=1 error=\"transient failure: try later\"",
            "commit 1",
            "handle 2",
            "commit 2",
        ]
    );
}
