//! `Mailer`: sends queued mail through the configured transport. The queue lives in the
//! store, so mail survives restarts; each job has a stable id, so it is queued and sent
//! at most once per logical email. Failed sends are retried with exponential backoff and
//! full jitter without holding up the mail behind them, and dead-lettered after the
//! last attempt.
//!
//! A circuit breaker guards the transport: when the relay fails as a whole, mail stops
//! going out (it waits in the queue, nothing is dropped and no attempt is spent) until
//! the breaker's trial calls find the relay healthy again.
//!
//! Every failure is retried, 5xx answers included: relays answer 5xx for their own
//! faults (a relay-access or TLS policy misconfiguration) as often as for a bad
//! recipient, addresses are validated at signup, and after the last attempt the mail
//! is in the dead letters, from where an operator can redrive it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::future::BoxFuture;
use tracing::{error, info, instrument, warn};

use crate::backoff::Backoff;
use crate::breaker::{BreakerConfig, CircuitBreaker, Transition};
use crate::domain::MailJob;
use crate::health::{ActorStats, ActorStatus};
use crate::messages::Nudge;
use crate::ports::{MailError, MailTransport, Store};
use crate::pump::{self, BatchDrainer, Pump};

/// How many due jobs one pass takes.
pub const BATCH: u32 = 50;

/// Mailer tuning.
#[derive(Debug, Clone)]
pub struct MailerConfig {
    /// How often the queue is checked without a nudge (for retries coming due).
    pub poll_interval: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// Attempts before a mail is dead-lettered.
    pub max_attempts: u32,
    /// The circuit breaker around the transport.
    pub breaker: BreakerConfig,
}

/// Sends queued mail.
pub struct Mailer {
    store: Arc<dyn Store>,
    transport: Arc<dyn MailTransport>,
    config: MailerConfig,
    stats: Arc<ActorStats>,
    pump: Pump,
    breaker: Arc<Mutex<CircuitBreaker>>,
}

impl Mailer {
    /// A mailer draining `store`'s queue into `transport`.
    pub fn new(
        store: Arc<dyn Store>,
        transport: Arc<dyn MailTransport>,
        config: MailerConfig,
        stats: Arc<ActorStats>,
    ) -> Self {
        Self {
            breaker: Arc::new(Mutex::new(CircuitBreaker::new(config.breaker))),
            store,
            transport,
            config,
            stats,
            pump: Pump::default(),
        }
    }
}

impl BatchDrainer for Mailer {
    fn pump(&mut self) -> &mut Pump {
        &mut self.pump
    }

    fn stats(&self) -> &ActorStats {
        &self.stats
    }

    fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    fn batch(&self) -> BoxFuture<'static, bool> {
        let store = Arc::clone(&self.store);
        let transport = Arc::clone(&self.transport);
        let config = self.config.clone();
        let stats = Arc::clone(&self.stats);
        let breaker = Arc::clone(&self.breaker);
        Box::pin(async move { send_due(&*store, &*transport, &config, &stats, &breaker).await })
    }
}

/// Sends one batch of due mail; returns whether the batch was full (more may wait).
#[instrument(skip_all)]
async fn send_due(
    store: &dyn Store,
    transport: &dyn MailTransport,
    config: &MailerConfig,
    stats: &ActorStats,
    breaker: &Mutex<CircuitBreaker>,
) -> bool {
    let jobs = match store.due_mail(Utc::now(), BATCH).await {
        Ok(jobs) => jobs,
        Err(err) => {
            warn!(error = %err, "mail queue unreadable");
            stats.set_status(ActorStatus::Degraded);
            return false;
        }
    };
    let full = jobs.len() == BATCH as usize;
    for job in jobs {
        let permit = match breaker.lock() {
            Ok(mut breaker) => breaker.try_acquire(Instant::now()),
            Err(_) => Ok(None),
        };
        match permit {
            Ok(transition) => note_transition(stats, transition),
            Err(_) => {
                // The relay is failing as a whole: the rest waits in the queue, and
                // the poll timer asks again.
                stats.set_status(ActorStatus::Degraded);
                return false;
            }
        }
        let started = Instant::now();
        // `None`: the relay was not to blame (or not reached) and the call does not
        // count for the breaker.
        let Some(success) = send_one(store, transport, config, stats, job).await else {
            if let Ok(mut breaker) = breaker.lock() {
                breaker.release();
            }
            continue;
        };
        let transition = breaker
            .lock()
            .ok()
            .and_then(|mut b| b.record(Instant::now(), success, started.elapsed()));
        note_transition(stats, transition);
    }
    full
}

/// Logs and counts a breaker state change and shows the state in the health details.
fn note_transition(stats: &ActorStats, transition: Option<Transition>) {
    let Some(Transition { from, to }) = transition else {
        return;
    };
    match to {
        crate::breaker::BreakerState::Open => {
            error!(%from, %to, "mail circuit breaker opened: mail waits in the queue")
        }
        _ => warn!(%from, %to, "mail circuit breaker changed state"),
    }
    stats.set_detail("breaker", to.as_str());
    stats.count_detail(&format!("breaker_to_{}", to.as_str()));
}

async fn send_one(
    store: &dyn Store,
    transport: &dyn MailTransport,
    config: &MailerConfig,
    stats: &ActorStats,
    job: MailJob,
) -> Option<bool> {
    let outcome = transport.send(&job).await;
    let success = match &outcome {
        Ok(()) => Some(true),
        Err(MailError::Undeliverable(_)) => None,
        Err(_) => Some(false),
    };
    let recorded = match outcome {
        Ok(()) => {
            info!(mail_id = %job.id, "mail sent");
            stats.processed(1);
            stats.set_status(ActorStatus::Running);
            store.mark_mail_sent(&job.id).await
        }
        Err(err) => {
            stats.failed(1);
            let attempts = job.attempts + 1;
            let retry_at = match &err {
                MailError::Transient(_) | MailError::Permanent(_)
                    if attempts < config.max_attempts =>
                {
                    let delay = config.backoff.delay(attempts - 1);
                    chrono::Duration::from_std(delay)
                        .ok()
                        .map(|d| Utc::now() + d)
                }
                _ => None,
            };
            if retry_at.is_some() {
                warn!(mail_id = %job.id, attempts, error = %err, "mail failed; will retry");
                stats.set_status(ActorStatus::Degraded);
            } else {
                error!(mail_id = %job.id, attempts, error = %err, "mail dead-lettered");
                stats.count_detail("dead_lettered");
            }
            store
                .mark_mail_failed(&job.id, attempts, retry_at, &err.to_string())
                .await
        }
    };
    if let Err(err) = recorded {
        error!(mail_id = %job.id, error = %err, "mail outcome not recorded");
    }
    success
}

impl Actor for Mailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Ok(breaker) = self.breaker.lock() {
            self.stats.set_detail("breaker", breaker.state().as_str());
        }
        pump::start(self, ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for Mailer {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}

impl Handler<Nudge> for Mailer {
    type Result = ();

    fn handle(&mut self, _: Nudge, ctx: &mut Self::Context) {
        pump::drain(self, ctx);
    }
}
