//! `ActivityTracker`: turns what users do on this node (log in, connect, send a frame)
//! into `user.activity` events for the DAU/MAU counters. A user is reported at most
//! once per UTC day per node (the counters only need to learn that someone was active,
//! not how often), and reports are batched, so the per-message path costs one
//! `try_send` at most once a day per session.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use futures_util::future::join_all;
use tracing::warn;
use uuid::Uuid;

use crate::domain::{ActivityEvent, ActivitySource, Topic, UserId};
use crate::health::{ActorStats, ActorStatus};
use crate::ports::Bus;

/// How often pending reports are published.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Reports published concurrently per flush.
pub const FLUSH_BATCH: usize = 256;
/// Users remembered as already reported today. Past it the memory is cleared, which
/// only costs redundant (idempotent) reports.
pub const SEEN_CAPACITY: usize = 500_000;
/// Reports waiting for the bus; past it new ones are dropped (counting is approximate
/// by nature, memory must stay bounded when the bus is down).
pub const PENDING_CAPACITY: usize = 100_000;
/// Reports that may wait in the mailbox.
pub const MAILBOX: usize = 16_384;

/// A user did something that makes them active today.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RecordActivity {
    /// Who.
    pub user: UserId,
    /// What they did.
    pub source: ActivitySource,
}

/// Publishes each user's first activity of the day on `user.activity`.
pub struct ActivityTracker {
    bus: Arc<dyn Bus>,
    stats: Arc<ActorStats>,
    day: NaiveDate,
    seen: HashSet<UserId>,
    pending: Vec<RecordActivity>,
    flushing: bool,
}

impl ActivityTracker {
    /// A tracker publishing on `bus`.
    pub fn new(bus: Arc<dyn Bus>, stats: Arc<ActorStats>) -> Self {
        Self {
            bus,
            stats,
            day: Utc::now().date_naive(),
            seen: HashSet::new(),
            pending: Vec::new(),
            flushing: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.is_empty() {
            return;
        }
        self.flushing = true;
        let take = self.pending.len().min(FLUSH_BATCH);
        let batch: Vec<RecordActivity> = self.pending.drain(..take).collect();
        let bus = Arc::clone(&self.bus);
        let at = Utc::now();
        let publish = async move {
            let sends = batch.iter().map(|report| {
                let event = ActivityEvent {
                    event_id: Some(Uuid::new_v4()),
                    user_id: Some(report.user.to_string()),
                    user_ids: Vec::new(),
                    at: Some(at),
                    source: Some(report.source),
                };
                let key = report.user.to_string();
                let bus = Arc::clone(&bus);
                async move {
                    let body = serde_json::to_vec(&event).map(Bytes::from);
                    match body {
                        Ok(body) => bus.publish(Topic::UserActivity, &key, body).await.is_ok(),
                        Err(_) => true,
                    }
                }
            });
            let results = join_all(sends).await;
            let failed: Vec<RecordActivity> = batch
                .into_iter()
                .zip(results)
                .filter_map(|(report, ok)| (!ok).then_some(report))
                .collect();
            (take, failed)
        };
        ctx.spawn(publish.into_actor(self).map(|(sent, failed), act, ctx| {
            act.flushing = false;
            if failed.is_empty() {
                act.stats.processed(sent as u64);
                act.stats.set_status(ActorStatus::Running);
            } else {
                act.stats.failed(failed.len() as u64);
                act.stats.set_status(ActorStatus::Degraded);
                warn!(failed = failed.len(), "activity not published; retrying");
                // Put them back in front, within the bound.
                let room = PENDING_CAPACITY.saturating_sub(act.pending.len());
                let keep = failed.len().min(room);
                act.pending.splice(0..0, failed.into_iter().take(keep));
                return;
            }
            if act.pending.len() >= FLUSH_BATCH {
                act.flush(ctx);
            }
        }));
    }
}

impl Actor for ActivityTracker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        // Reports are collected during the supervisor's restart delay, published after.
        self.flushing = true;
        ctx.run_later(self.stats.restart_delay(), |act, ctx| {
            act.flushing = false;
            act.stats.set_status(ActorStatus::Running);
            act.stats.heartbeat();
            ctx.run_interval(FLUSH_INTERVAL, |act, ctx| {
                act.stats.heartbeat();
                act.stats.set_detail("pending", act.pending.len());
                act.flush(ctx);
            });
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stats.set_status(ActorStatus::Stopped);
    }
}

impl Supervised for ActivityTracker {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.stats.restarted();
    }
}

impl Handler<RecordActivity> for ActivityTracker {
    type Result = ();

    fn handle(&mut self, report: RecordActivity, ctx: &mut Self::Context) {
        let today = Utc::now().date_naive();
        if today != self.day {
            self.day = today;
            self.seen.clear();
        }
        if self.seen.len() >= SEEN_CAPACITY {
            self.seen.clear();
        }
        if !self.seen.insert(report.user) {
            return;
        }
        if self.pending.len() >= PENDING_CAPACITY {
            self.stats.failed(1);
            return;
        }
        self.pending.push(report);
        if self.pending.len() >= FLUSH_BATCH {
            self.flush(ctx);
        }
    }
}
