//! `Consumer`: one actor per bus topic. It reads messages in order, runs the topic's
//! handler, and commits the offset only after the handler finished (at-least-once).
//! A message that cannot be handled goes to the topic's dead-letter topic with the
//! error, so it never blocks the messages behind it.
//!
//! A handler that panics does not take the node down: the panic is caught, the actor
//! stops and its supervisor restarts it (with the restart policy's delay), and the
//! uncommitted message is read again. After [`MAX_PANICS`] panics on the same message
//! it is dead-lettered without running the handler again.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;
use serde::Serialize;
use tracing::{error, info, instrument, warn};

use crate::backoff::Backoff;
use crate::domain::{BusMessage, Topic};
use crate::health::{ActorStats, ActorStatus};
use crate::messages::StopConsuming;
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

/// Panics on one message before it is dead-lettered.
pub const MAX_PANICS: u32 = 3;

/// Why the consume loop ended.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The handler panicked on the message at `position`.
    #[error("handler panicked at partition {}, offset {}: {reason}", position.0, position.1)]
    Panicked {
        position: (i32, i64),
        reason: String,
    },
}

/// Panics seen per message position (partition, offset), with the last panic's text.
type PanicLog = HashMap<(i32, i64), (u32, String)>;

/// The text of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic".to_owned())
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
    /// Survives restarts (actix keeps the actor value), so repeated panics on one
    /// message are counted.
    panics: PanicLog,
    /// The running consume loop, cancelled by [`StopConsuming`].
    running: Option<SpawnHandle>,
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
            panics: HashMap::new(),
            running: None,
        }
    }
}

/// Runs `handler` on `message` with retries; dead-letters what cannot be handled.
///
/// # Errors
/// When the dead-letter topic cannot take the message either (the caller must not
/// commit then), or when the handler panicked (the actor restarts and reads the
/// message again).
#[instrument(skip_all, fields(topic = %message.topic, offset = message.offset))]
async fn handle_one(
    bus: &dyn Bus,
    handler: &dyn TopicHandler,
    config: &ConsumerConfig,
    stats: &ActorStats,
    message: &BusMessage,
    panicked: Option<&(u32, String)>,
) -> Result<(), ConsumeError> {
    let position = (message.partition, message.offset);
    let mut attempt = 0;
    let failure = match panicked {
        Some((count, reason)) if *count >= MAX_PANICS => {
            format!("handler panicked {count} times: {reason}")
        }
        _ => loop {
            let outcome = AssertUnwindSafe(handler.handle(message))
                .catch_unwind()
                .await
                .map_err(|panic| ConsumeError::Panicked {
                    position,
                    reason: panic_text(&*panic),
                })?;
            match outcome {
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
                Err(err) => break err.to_string(),
            }
        },
    };
    stats.failed(1);
    error!(error = %failure, "message dead-lettered");
    let letter = DeadLetter {
        topic: message.topic.as_str(),
        partition: message.partition,
        offset: message.offset,
        key: &message.key,
        error: failure,
        payload: &String::from_utf8_lossy(&message.payload),
    };
    let body = serde_json::to_vec(&letter)
        .map(Bytes::from)
        .unwrap_or_default();
    bus.publish(message.topic.dead_letter(), &message.key, body)
        .await?;
    Ok(())
}

/// The consume loop: returns only when the bus fails or the handler panicked.
async fn consume(
    bus: Arc<dyn Bus>,
    handler: Arc<dyn TopicHandler>,
    config: ConsumerConfig,
    stats: Arc<ActorStats>,
    panics: PanicLog,
) -> Result<(), ConsumeError> {
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
        let panicked = panics.get(&(message.partition, message.offset));
        handle_one(&*bus, &*handler, &config, &stats, &message, panicked).await?;
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
        // The supervisor's restart delay (none on the first start) paces restarts.
        let delay = self.stats.restart_delay();
        let run = consume(
            Arc::clone(&self.bus),
            Arc::clone(&self.handler),
            self.config.clone(),
            Arc::clone(&self.stats),
            self.panics.clone(),
        );
        self.running = Some(ctx.spawn(
            async move {
                tokio::time::sleep(delay).await;
                run.await
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                match result {
                    Err(ConsumeError::Panicked { position, reason }) => {
                        error!(topic = %act.config.topic, partition = position.0, offset = position.1, %reason, "handler panicked; restarting the consumer");
                        act.stats.failed(1);
                        // Only messages not yet committed can come back; keep the log small.
                        act.panics.retain(|(p, o), _| *p != position.0 || *o >= position.1);
                        let entry = act.panics.entry(position).or_insert((0, String::new()));
                        *entry = (entry.0 + 1, reason);
                    }
                    Err(err) => {
                        error!(topic = %act.config.topic, error = %err, "consumer failed; restarting");
                    }
                    Ok(()) => {}
                }
                ctx.stop();
            }),
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Handler<StopConsuming> for Consumer {
    type Result = ();

    /// Cancels the consume loop, dropping the subscription: a message being handled is
    /// not committed and comes again to whoever takes the partition. The actor itself
    /// stays (stopping it would make its supervisor restart it).
    fn handle(&mut self, _: StopConsuming, ctx: &mut Self::Context) {
        if let Some(running) = self.running.take() {
            ctx.cancel_future(running);
            info!(topic = %self.config.topic, group = %self.config.group, "consumer stopped for shutdown");
        }
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Consumer {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}
