//! `Consumer`: one actor per bus topic. It reads messages in order, runs the topic's
//! handler, and commits the offset only after the handler finished (at-least-once).
//! A message that cannot be handled goes to the topic's dead-letter topic with the
//! error, so it never blocks the messages behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tracing::{error, info, instrument, warn};

use crate::backoff::Backoff;
use crate::domain::{BusMessage, Topic};
use crate::health::{ActorStats, ActorStatus};
use crate::ports::{Bus, BusError};

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message itself is bad; retrying cannot help. Dead-lettered at once.
    #[error("poison message: {0}")]
    Poison(String),
    /// Something it needs failed; retried with backoff, then dead-lettered.
    #[error("transient failure: {0}")]
    Transient(String),
}

/// The work a consumer does for each message of its topic.
#[async_trait]
pub trait TopicHandler: Send + Sync + 'static {
    /// Handles one message. Must be idempotent: after a crash the same message can come
    /// again.
    async fn handle(&self, message: &BusMessage) -> Result<(), HandleError>;
}

/// Tuning for a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Topic to read.
    pub topic: Topic,
    /// Consumer group (one per role, so every role sees every message).
    pub group: String,
    /// Attempts for a transiently failing message before it is dead-lettered.
    pub max_attempts: u32,
    /// Delay between attempts, and before resubscribing after the bus failed.
    pub backoff: Backoff,
}

/// The body put on a dead-letter topic.
#[derive(Serialize)]
struct DeadLetter<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: &'a str,
    error: String,
    payload: &'a str,
}

/// Reads one topic and runs its handler.
pub struct Consumer {
    bus: Arc<dyn Bus>,
    handler: Arc<dyn TopicHandler>,
    config: ConsumerConfig,
    stats: Arc<ActorStats>,
    consecutive_failures: u32,
}

impl Consumer {
    /// A consumer of `config.topic` running `handler`.
    pub fn new(
        bus: Arc<dyn Bus>,
        handler: Arc<dyn TopicHandler>,
        config: ConsumerConfig,
        stats: Arc<ActorStats>,
    ) -> Self {
        Self {
            bus,
            handler,
            config,
            stats,
            consecutive_failures: 0,
        }
    }
}

/// Runs `handler` on `message` with retries; dead-letters what cannot be handled.
///
/// # Errors
/// Only when the dead-letter topic cannot take the message either: the caller must not
/// commit then.
#[instrument(skip_all, fields(topic = %message.topic, offset = message.offset))]
async fn handle_one(
    bus: &dyn Bus,
    handler: &dyn TopicHandler,
    config: &ConsumerConfig,
    stats: &ActorStats,
    message: &BusMessage,
) -> Result<(), BusError> {
    let mut attempt = 0;
    let failure = loop {
        match handler.handle(message).await {
            Ok(()) => {
                stats.processed(1);
                return Ok(());
            }
            Err(HandleError::Transient(reason)) if attempt + 1 < config.max_attempts => {
                let delay = config.backoff.delay(attempt);
                warn!(%reason, attempt, ?delay, "handler failed; retrying");
                attempt += 1;
                tokio::time::sleep(delay).await;
            }
            Err(err) => break err,
        }
    };
    stats.failed(1);
    error!(error = %failure, "message dead-lettered");
    let letter = DeadLetter {
        topic: message.topic.as_str(),
        partition: message.partition,
        offset: message.offset,
        key: &message.key,
        error: failure.to_string(),
        payload: &String::from_utf8_lossy(&message.payload),
    };
    let body = serde_json::to_vec(&letter)
        .map(Bytes::from)
        .unwrap_or_default();
    bus.publish(message.topic.dead_letter(), &message.key, body)
        .await
}

/// The consume loop: returns only when the bus fails.
async fn consume(
    bus: Arc<dyn Bus>,
    handler: Arc<dyn TopicHandler>,
    config: ConsumerConfig,
    stats: Arc<ActorStats>,
) -> Result<(), BusError> {
    let mut subscription = bus.subscribe(config.topic, &config.group).await?;
    stats.set_status(ActorStatus::Running);
    info!(topic = %config.topic, group = %config.group, "consumer subscribed");
    let mut lag_checked = Instant::now();
    loop {
        if lag_checked.elapsed() >= Duration::from_secs(1) {
            if let Some(lag) = subscription.lag().await {
                stats.set_detail("lag", lag);
            }
            lag_checked = Instant::now();
        }
        let message = subscription.next().await?;
        handle_one(&*bus, &*handler, &config, &stats, &message).await?;
        subscription.commit(&message).await?;
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.set_detail("topic", self.config.topic.as_str());
        self.stats.set_detail("group", self.config.group.as_str());
        self.stats.heartbeat();
        ctx.run_interval(Duration::from_secs(1), |act, _| act.stats.heartbeat());
        let delay = if self.consecutive_failures == 0 {
            Duration::ZERO
        } else {
            self.config.backoff.delay(self.consecutive_failures)
        };
        let run = consume(
            Arc::clone(&self.bus),
            Arc::clone(&self.handler),
            self.config.clone(),
            Arc::clone(&self.stats),
        );
        let started_at = Instant::now();
        ctx.spawn(
            async move {
                tokio::time::sleep(delay).await;
                run.await
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                if let Err(err) = result {
                    error!(topic = %act.config.topic, error = %err, "consumer failed; restarting");
                }
                // A loop that ran a while before failing starts its backoff afresh.
                if started_at.elapsed() > Duration::from_secs(60) {
                    act.consecutive_failures = 0;
                }
                act.consecutive_failures += 1;
                ctx.stop();
            }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Consumer {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}
